//! Calls through the proxy: sipp UAC -> proxy -> sipp UAS backends, over UDP and TCP.
//!
//! Runs against the sbc, or against Kamailio with `KUBESBC_E2E_PROXY=kamailio`.

use std::collections::BTreeSet;
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient};
use kubesbc_e2e::{
    DispatcherDest, MessageLog, Proxy, ProxyOptions, Sipp, SippTransport, TempDir, UacOptions,
    e2e_tools, free_port, scenario,
};

/// Two backends, round robin: every call succeeds, the calls are spread evenly, and ACK and BYE
/// reach the backend that took the INVITE through the proxy (Record-Route / loose routing).
fn round_robin_calls(transport: SippTransport, label: &str) {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new(label);
    let tcp = transport == SippTransport::Tcp;
    let (p1, p2) = (free_port(), free_port());
    let uas1 = Sipp::uas(&dir, "uas1", &scenario("uas.xml"), p1, transport);
    let uas2 = Sipp::uas(&dir, "uas2", &scenario("uas.xml"), p2, transport);
    let (d1, d2) = (
        DispatcherDest::local(p1, tcp),
        DispatcherDest::local(p2, tcp),
    );
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![d1.clone(), d2.clone()],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&d1.uri, true, Duration::from_secs(10));
    proxy.wait_destination(&d2.uri, true, Duration::from_secs(10));

    let calls = 20;
    let mut uac = Sipp::uac(
        &dir,
        "uac",
        &scenario("uac.xml"),
        free_port(),
        proxy.sip_addr(),
        transport,
        &UacOptions {
            rate: 20,
            calls,
            hold_ms: 100,
            timeout_s: 40,
        },
    );
    let code = uac.wait(Duration::from_secs(60));
    let stats = uac.stats();
    assert_eq!(code, 0, "sipp UAC exit code (0 = all calls ok); {stats:?}");
    assert_eq!(stats.successful, u64::from(calls), "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");

    let (m1, m2) = (uas1.messages(), uas2.messages());
    let (inv1, inv2) = (m1.calls_received("INVITE"), m2.calls_received("INVITE"));
    assert!(inv1.is_disjoint(&inv2), "a call reached both backends");
    assert_eq!(inv1.len() + inv2.len(), calls as usize);
    let half = calls as usize / 2;
    for (n, inv) in [(1, &inv1), (2, &inv2)] {
        assert!(
            inv.len().abs_diff(half) <= 1,
            "round robin: backend {n} got {} calls of {calls} (expected {half} +- 1)",
            inv.len()
        );
    }

    let proxy_hostport = proxy.sip_addr().to_string();
    for (m, inv) in [(&m1, &inv1), (&m2, &inv2)] {
        assert_in_dialog_path(m, inv, &proxy_hostport);
    }
    // The caller's BYEs follow the route set the proxy recorded.
    let uac_log = uac.messages();
    assert_eq!(
        uac_log.responses_received(100).len(),
        calls as usize,
        "every INVITE got a 100 Trying"
    );
    let byes: Vec<_> = uac_log.sent_requests("BYE").collect();
    assert_eq!(
        byes.iter()
            .filter_map(|b| b.call_id())
            .collect::<BTreeSet<_>>()
            .len(),
        calls as usize
    );
    for bye in byes {
        assert!(
            bye.header_values("Route")
                .iter()
                .any(|r| r.contains(&proxy_hostport)),
            "BYE without a Route to the proxy: {bye:?}"
        );
    }
}

/// The backend saw INVITE with a Record-Route of the proxy, then ACK and BYE of the same calls,
/// each relayed by the proxy (its Via on top, the caller's below).
fn assert_in_dialog_path(m: &MessageLog, invites: &BTreeSet<String>, proxy: &str) {
    for inv in m.received_requests("INVITE") {
        assert!(
            inv.header_values("Record-Route")
                .iter()
                .any(|r| r.contains(proxy)),
            "INVITE at the backend has no Record-Route of the proxy {proxy}: {inv:?}"
        );
    }
    assert_eq!(&m.calls_received("ACK"), invites, "ACKs at the backend");
    assert_eq!(&m.calls_received("BYE"), invites, "BYEs at the backend");
    for bye in m.received_requests("BYE") {
        let vias = bye.header_values("Via").join(",");
        let top = vias.split(',').next().unwrap_or_default();
        assert!(
            top.contains(proxy) && vias.split(',').count() >= 2,
            "BYE did not come through the proxy {proxy}: Via {vias}"
        );
    }
}

#[test]
fn udp_calls_round_robin_with_ack_and_bye_via_record_route() {
    round_robin_calls(SippTransport::Udp, "rr-udp");
}

#[test]
fn tcp_calls_round_robin_with_ack_and_bye_via_record_route() {
    round_robin_calls(SippTransport::Tcp, "rr-tcp");
}

/// A backend answering 503 makes the proxy try the next destination: every call succeeds.
#[test]
fn reply_503_fails_over_to_the_next_destination() {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new("failover-503");
    let (p1, p2) = (free_port(), free_port());
    let refusing = Sipp::uas(
        &dir,
        "uas503",
        &scenario("uas_503.xml"),
        p1,
        SippTransport::Udp,
    );
    let good = Sipp::uas(&dir, "uas", &scenario("uas.xml"), p2, SippTransport::Udp);
    let (d1, d2) = (
        DispatcherDest::local(p1, false),
        DispatcherDest::local(p2, false),
    );
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![d1.clone(), d2.clone()],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&d1.uri, true, Duration::from_secs(10));
    proxy.wait_destination(&d2.uri, true, Duration::from_secs(10));
    let calls = 10;
    let mut uac = Sipp::uac(
        &dir,
        "uac",
        &scenario("uac.xml"),
        free_port(),
        proxy.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate: 10,
            calls,
            hold_ms: 50,
            timeout_s: 40,
        },
    );
    assert_eq!(uac.wait(Duration::from_secs(60)), 0, "{:?}", uac.stats());
    assert_eq!(uac.stats().successful, u64::from(calls));
    let refused = refusing.messages().calls_received("INVITE");
    let answered = good.messages().calls_received("INVITE");
    assert_eq!(
        answered.len(),
        calls as usize,
        "every call ends at the good backend"
    );
    assert!(
        !refused.is_empty() && refused.is_subset(&answered),
        "the refusing backend was tried ({} calls) and those calls moved on",
        refused.len()
    );
    // The 503 never reached the caller.
    assert!(uac.messages().responses_received(503).is_empty());
}

/// The caller cancels a ringing call: the CANCEL reaches the backend and the caller gets 487.
#[test]
fn cancel_of_a_ringing_call_reaches_the_backend_and_caller_gets_487() {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new("cancel");
    let p1 = free_port();
    let ringing = Sipp::uas(
        &dir,
        "ring",
        &scenario("uas_ring.xml"),
        p1,
        SippTransport::Udp,
    );
    let d1 = DispatcherDest::local(p1, false);
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![d1.clone()],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&d1.uri, true, Duration::from_secs(10));
    let calls = 3;
    let mut uac = Sipp::uac(
        &dir,
        "uac",
        &scenario("uac_cancel.xml"),
        free_port(),
        proxy.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate: 5,
            calls,
            hold_ms: 0,
            timeout_s: 30,
        },
    );
    assert_eq!(uac.wait(Duration::from_secs(45)), 0, "{:?}", uac.stats());
    assert_eq!(uac.stats().successful, u64::from(calls));
    let caller = uac.messages();
    assert_eq!(caller.responses_received(487).len(), calls as usize);
    let backend = ringing.messages();
    let invites = backend.calls_received("INVITE");
    assert_eq!(invites.len(), calls as usize);
    assert_eq!(
        backend.calls_received("CANCEL"),
        invites,
        "CANCEL at the backend"
    );
    assert_eq!(
        backend.calls_received("ACK"),
        invites,
        "ACK of the 487 at the backend"
    );
}

/// With no destination up, an INVITE gets 503 with Retry-After.
#[test]
fn no_destination_up_gets_503_with_retry_after() {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new("no-dest");
    // Nothing listens there.
    let dead = DispatcherDest::local(free_port(), false);
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![dead.clone()],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&dead.uri, false, Duration::from_secs(15));
    let target = proxy.sip_addr();
    let mut client = SipClient::udp(target);
    let invite = RequestBuilder::invite(&format!("sip:service@{target}"), &client);
    let resp = client
        .request(&invite.build(), Duration::from_secs(8))
        .expect("a final response to the INVITE");
    client.send(&invite.ack(&resp).build());
    assert_eq!(resp.code, 503, "{}", resp.status_line);
    let retry_after: u32 = resp
        .header("Retry-After")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("503 without a numeric Retry-After: {resp:?}"));
    assert!(retry_after > 0);
}
