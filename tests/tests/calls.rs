//! Calls through the proxy: sipp UAC -> proxy -> sipp UAS backends, over UDP and TCP.
//!
//! Runs against the sbc, or against Kamailio with `KUBESBC_E2E_PROXY=kamailio`.

use std::collections::BTreeSet;
use std::time::Duration;

use kubesbc_e2e::sip::invite_once;
use kubesbc_e2e::{
    MessageLog, Proxy, SippTransport, TempDir, Testbed, UacOptions, e2e_tools, free_port, loopback,
    sbc_only,
};

/// Two backends, round robin: every call succeeds, the calls are spread evenly, and ACK and BYE
/// reach the backend that took the INVITE through the proxy (Record-Route / loose routing).
fn round_robin_calls(transport: SippTransport, label: &str) {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new(label);
    let bed = Testbed::builder(&dir)
        .transport(transport)
        .backend("uas1", "uas.xml")
        .backend("uas2", "uas.xml")
        .start();

    let calls = 20;
    let opts = UacOptions::new(calls, 20);
    let run = bed.run_calls(&dir, "uac", "uac.xml", &opts);
    run.assert_all_succeeded(calls);

    let invites = bed.invites();
    let (inv1, inv2) = (&invites[0], &invites[1]);
    assert!(inv1.is_disjoint(inv2), "a call reached both backends");
    assert_eq!(inv1.len() + inv2.len(), calls as usize);
    let half = calls as usize / 2;
    for (n, inv) in [(1, inv1), (2, inv2)] {
        assert!(
            inv.len().abs_diff(half) <= 1,
            "round robin: backend {n} got {} calls of {calls} (expected {half} +- 1)",
            inv.len()
        );
    }

    let proxy_hostport = bed.proxy.sip_addr().to_string();
    for (backend, inv) in bed.backends.iter().zip(&invites) {
        assert_in_dialog_path(&backend.messages(), inv, &proxy_hostport);
    }
    // The caller's BYEs follow the route set the proxy recorded.
    let uac_log = &run.log;
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
    let bed = Testbed::builder(&dir)
        .backend("uas503", "uas_503.xml")
        .backend("uas", "uas.xml")
        .start();
    let calls = 10;
    let opts = UacOptions::new(calls, 10).with_hold_ms(50);
    let run = bed.run_calls(&dir, "uac", "uac.xml", &opts);
    run.assert_all_succeeded(calls);
    let invites = bed.invites();
    let (refused, answered) = (&invites[0], &invites[1]);
    assert_eq!(
        answered.len(),
        calls as usize,
        "every call ends at the good backend"
    );
    assert!(
        !refused.is_empty() && refused.is_subset(answered),
        "the refusing backend was tried ({} calls) and those calls moved on",
        refused.len()
    );
    // The 503 never reached the caller.
    assert!(run.log.responses_received(503).is_empty());
}

/// The caller cancels a ringing call: the CANCEL reaches the backend and the caller gets 487.
#[test]
fn cancel_of_a_ringing_call_reaches_the_backend_and_caller_gets_487() {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new("cancel");
    let bed = Testbed::builder(&dir)
        .backend("ring", "uas_ring.xml")
        .start();
    let calls = 3;
    let opts = UacOptions::new(calls, 5).with_hold_ms(0);
    let run = bed.run_calls(&dir, "uac", "uac_cancel.xml", &opts);
    run.assert_all_succeeded(calls);
    assert_eq!(run.log.responses_received(487).len(), calls as usize);
    let backend = bed.backend(0).messages();
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

/// With no destination up and panic routing off, an INVITE gets 503 with Retry-After
/// (sbc only: panic routing is the sbc's setting).
#[test]
fn no_destination_up_gets_503_with_retry_after() {
    if !sbc_only() || !e2e_tools() {
        return;
    }
    let dir = TempDir::new("no-dest");
    // Nothing listens there.
    let (port, admin, dead) = (free_port(), loopback(free_port()), free_port());
    let config = dir.write(
        "sbc.yaml",
        &format!(
            r#"listeners:
  - transport: udp
    address: "127.0.0.1:{port}"
dispatcher:
  sets:
    - id: 1
      algorithm: round-robin
      destinations:
        - uri: "sip:127.0.0.1:{dead}"
      probing:
        intervalMs: 500
      failover:
        panicRouting: false
admin:
  address: "{admin}"
"#
        ),
    );
    let proxy = Proxy::start_sbc(
        &dir,
        &["--config".into(), config.display().to_string()],
        port,
        admin,
    );
    proxy.wait_destination(
        &format!("sip:127.0.0.1:{dead}"),
        false,
        Duration::from_secs(15),
    );
    let resp = invite_once(proxy.sip_addr(), Duration::from_secs(8))
        .expect("a final response to the INVITE");
    assert_eq!(resp.code, 503, "{}", resp.status_line);
    let retry_after: u32 = resp
        .header("Retry-After")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or_else(|| panic!("503 without a numeric Retry-After: {resp:?}"));
    assert!(retry_after > 0);
}
