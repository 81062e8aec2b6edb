//! TLS with peers we did not write: Debian's Kamailio (tls module) as a TLS backend and as a
//! TLS client, and `openssl s_client` for mutual TLS. The PKI is made by the test.

use std::time::Duration;

use kubesbc_e2e::kamailio::{ClientCert, Kamailio, tls_cfg, tls_tools};
use kubesbc_e2e::pki::{self, Pki, openssl_exchange, s};
use kubesbc_e2e::sip::{RequestBuilder, SipClient};
use kubesbc_e2e::{
    DispatcherDest, MessageLog, Proxy, ProxyOptions, SippTransport, TempDir, Testbed, UacOptions,
    e2e_tools, free_port, loopback, sbc_only, start_backend, start_calls,
};

fn tools() -> bool {
    e2e_tools() && sbc_only() && pki::tools() && tls_tools()
}

/// Kamailio on a TLS port (and a UDP one) relaying to `next_hop`.
fn kamailio(
    dir: &TempDir,
    name: &str,
    pki: &Pki,
    client: ClientCert,
    next_hop: &str,
) -> (Kamailio, u16, u16) {
    let (tls_port, udp_port) = (free_port(), free_port());
    let cfg = tls_cfg(dir, name, pki, client);
    let k = Kamailio::start(
        dir,
        name,
        "tls-peer.cfg",
        &[
            format!("UDP_PORT={udp_port}"),
            format!("TLS_PORT={tls_port}"),
            format!("NEXT_HOP=\"{next_hop}\""),
            format!("TLS_CFG=\"{}\"", s(&cfg)),
        ],
        tls_port,
    );
    (k, tls_port, udp_port)
}

/// Every INVITE `log` received carries a Via of transport `TLS` (someone's hop over TLS).
fn assert_invites_crossed_tls(log: &MessageLog, calls: usize) {
    let invites: Vec<_> = log.received_requests("INVITE").collect();
    assert!(invites.len() >= calls, "{} INVITEs", invites.len());
    for inv in invites {
        assert!(
            inv.header_values("Via")
                .iter()
                .any(|v| v.starts_with("SIP/2.0/TLS ")),
            "INVITE without a TLS hop: {inv:?}"
        );
    }
}

/// The sbc probes a Kamailio TLS backend over TLS (verified against the test CA) until it is
/// up, and calls from a UDP caller reach the sipp UAS behind Kamailio with a TLS hop.
fn calls_to_kamailio_over_tls(label: &str, uri_of: fn(u16) -> String) {
    if !tools() {
        return;
    }
    let dir = TempDir::new(label);
    let pki = Pki::new(&dir);
    let uas = start_backend(&dir, "uas", "uas.xml", SippTransport::Udp);
    let (kam, tls_port, _) = kamailio(
        &dir,
        "kamailio-backend",
        &pki,
        ClientCert::Good,
        &format!("sip:127.0.0.1:{}", uas.port()),
    );
    let uri = uri_of(tls_port);
    let bed = Testbed::builder(&dir)
        .destination(&DispatcherDest {
            set: 1,
            uri: uri.clone(),
        })
        .sbc_args(["--backend-ca".to_owned(), s(&pki.ca)])
        .start();
    assert!(
        kam.logged("got OPTIONS", Duration::from_secs(5)),
        "no probe reached Kamailio:\n{}",
        kam.log_tail()
    );
    let calls = 5;
    let run = bed.run_calls(&dir, "uac", "uac.xml", &UacOptions::new(calls, 5));
    run.assert_all_succeeded(calls);
    assert_invites_crossed_tls(&uas.messages(), calls as usize);
    let log = kam.log_tail();
    assert!(
        log.contains("got INVITE") && log.contains("over tls"),
        "Kamailio did not get the INVITEs over TLS:\n{log}"
    );
    assert!(
        log.contains("got BYE"),
        "the BYEs did not follow the route through Kamailio:\n{log}"
    );
    drop(bed);
}

/// `sip:...;transport=tls` destination: probed and called over TLS.
#[test]
fn kamailio_tls_backend_transport_tls_is_probed_and_called() {
    calls_to_kamailio_over_tls("tls-backend-param", |p| {
        format!("sip:127.0.0.1:{p};transport=tls")
    });
}

/// `sips:` destination: probed and called over TLS.
#[test]
fn kamailio_tls_backend_sips_uri_is_probed_and_called() {
    calls_to_kamailio_over_tls("tls-backend-sips", |p| format!("sips:127.0.0.1:{p}"));
}

/// A TLS backend whose certificate the sbc cannot verify (the system roots do not know the
/// test CA) is marked down: the sbc does not talk to an unverified server.
#[test]
fn tls_backend_with_an_unknown_ca_is_marked_down() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("tls-backend-untrusted");
    let pki = Pki::new(&dir);
    let uas = start_backend(&dir, "uas", "uas.xml", SippTransport::Udp);
    let (kam, tls_port, _) = kamailio(
        &dir,
        "kamailio-backend",
        &pki,
        ClientCert::Good,
        &format!("sip:127.0.0.1:{}", uas.port()),
    );
    let uri = format!("sip:127.0.0.1:{tls_port};transport=tls");
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![DispatcherDest {
                set: 1,
                uri: uri.clone(),
            }],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&uri, false, Duration::from_secs(10));
    assert!(
        !kam.log_tail().contains("got OPTIONS"),
        "a probe went through an unverified TLS connection:\n{}",
        kam.log_tail()
    );
}

/// The sbc's TLS listener with mutual TLS, the sbc started on it and a UDP backend.
fn mtls_sbc(dir: &TempDir, pki: &Pki, backend_port: u16) -> (Proxy, u16) {
    let tls_port = free_port();
    let proxy = Proxy::start(
        dir,
        &ProxyOptions {
            destinations: vec![DispatcherDest::local(backend_port, false)],
            extra_sbc_args: vec![
                "--listen".into(),
                format!("tls:127.0.0.1:{tls_port}"),
                "--tls-cert".into(),
                s(&pki.server_cert),
                "--tls-key".into(),
                s(&pki.server_key),
                "--tls-client-ca".into(),
                s(&pki.ca),
            ],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(
        &format!("sip:127.0.0.1:{backend_port}"),
        true,
        Duration::from_secs(10),
    );
    (proxy, tls_port)
}

/// Kamailio as a TLS client (presenting the good client certificate) forwards a sipp caller's
/// calls to the sbc's mutual-TLS listener; the sbc relays them to a UDP backend; ACK and BYE
/// follow the recorded route.
#[test]
fn kamailio_tls_client_calls_through_the_tls_listener_to_a_udp_backend() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("tls-listener");
    let pki = Pki::new(&dir);
    let uas = start_backend(&dir, "uas", "uas.xml", SippTransport::Udp);
    let (proxy, tls_port) = mtls_sbc(&dir, &pki, uas.port());
    let (kam, _, kam_udp) = kamailio(
        &dir,
        "kamailio-client",
        &pki,
        ClientCert::Good,
        &format!("sip:127.0.0.1:{tls_port};transport=tls"),
    );
    let calls = 5;
    let opts = UacOptions::new(calls, 5);
    let caller = start_calls(
        &dir,
        "uac",
        "uac.xml",
        loopback(kam_udp),
        SippTransport::Udp,
        &opts,
    );
    let run = kubesbc_e2e::CallRun::finish(caller, &opts);
    run.assert_all_succeeded(calls);
    assert_invites_crossed_tls(&uas.messages(), calls as usize);
    assert!(
        kam.log_tail().contains("got reply 200"),
        "Kamailio saw no 200 from the sbc:\n{}",
        kam.log_tail()
    );
    drop(proxy);
}

/// Mutual TLS on the sbc's listener: a client certificate signed by the configured CA gets
/// its OPTIONS answered; no certificate, or one from another CA, gets no SIP answer (the
/// handshake fails), and the sbc logs the refused handshake.
#[test]
fn mtls_accepts_a_good_client_certificate_and_refuses_missing_or_unknown_ones() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("tls-mtls");
    let pki = Pki::new(&dir);
    let uas = start_backend(&dir, "uas", "uas.xml", SippTransport::Udp);
    let (proxy, tls_port) = mtls_sbc(&dir, &pki, uas.port());
    let addr = loopback(tls_port);
    let any = SipClient::udp(addr);
    let options = RequestBuilder::new("OPTIONS", &format!("sip:{addr};transport=tls"), &any)
        .set(
            "Via",
            &format!(
                "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{};rport",
                kubesbc_e2e::sip::token()
            ),
        )
        .build();
    let wait = Duration::from_secs(4);

    let good = openssl_exchange(
        addr,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
        &options,
        wait,
    );
    assert_eq!(
        good.status_line(),
        Some("SIP/2.0 200 OK"),
        "good client certificate: {good:?}"
    );

    let none = openssl_exchange(addr, &pki.ca, None, &options, wait);
    assert_eq!(none.status_line(), None, "no client certificate: {none:?}");
    let stranger = openssl_exchange(
        addr,
        &pki.ca,
        Some((&pki.stranger_cert, &pki.stranger_key)),
        &options,
        wait,
    );
    assert_eq!(
        stranger.status_line(),
        None,
        "certificate of another CA: {stranger:?}"
    );
    let log = proxy.wait_logged("tls handshake failed", Duration::from_secs(3));
    assert!(
        log.matches("tls handshake failed").count() >= 2,
        "both refusals logged:\n{log}"
    );
    // And the good client is still served after the refusals.
    let again = openssl_exchange(
        addr,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
        &options,
        wait,
    );
    assert_eq!(again.status_line(), Some("SIP/2.0 200 OK"), "{again:?}");
}

/// The listener's certificate files are replaced (a rotated Secret): new connections get the
/// new certificate within a few seconds, and a connection opened before keeps working.
#[test]
fn rotated_certificate_files_apply_to_new_connections_and_keep_open_ones() {
    if !tools() {
        return;
    }
    let dir = TempDir::new("tls-rotate");
    let (old, new) = (Pki::new_in(&dir, "old"), Pki::new_in(&dir, "new"));
    let uas = start_backend(&dir, "uas", "uas.xml", SippTransport::Udp);
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(&old.server_cert, &cert);
    copy(&old.server_key, &key);
    let tls_port = free_port();
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![DispatcherDest::local(uas.port(), false)],
            extra_sbc_args: vec![
                "--listen".into(),
                format!("tls:127.0.0.1:{tls_port}"),
                "--tls-cert".into(),
                s(&cert),
                "--tls-key".into(),
                s(&key),
            ],
            ..ProxyOptions::default()
        },
    );
    let addr = loopback(tls_port);
    let options = || {
        let any = SipClient::udp(addr);
        RequestBuilder::new("OPTIONS", &format!("sip:{addr};transport=tls"), &any)
            .set(
                "Via",
                &format!(
                    "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK{};rport",
                    kubesbc_e2e::sip::token()
                ),
            )
            .build()
    };
    let wait = Duration::from_secs(4);
    let mut open = pki::SClient::connect(addr, &old.ca, None);
    open.send(&options());
    open.wait_responses(1, wait);
    assert!(
        open.received().starts_with("SIP/2.0 200"),
        "{}",
        open.received()
    );

    // The key first, then the certificate, as a Secret update may land.
    copy(&new.server_key, &key);
    copy(&new.server_cert, &cert);
    let rotated = kubesbc_e2e::wait_for(Duration::from_secs(10), || {
        openssl_exchange(addr, &new.ca, None, &options(), wait)
            .status_line()
            .map(str::to_owned)
    });
    assert_eq!(
        rotated.as_deref(),
        Some("SIP/2.0 200 OK"),
        "no new connection got the new certificate:\n{}",
        proxy.log_tail()
    );
    let stale = openssl_exchange(addr, &old.ca, None, &options(), wait);
    assert_eq!(
        stale.status_line(),
        None,
        "old certificate still served: {stale:?}"
    );
    proxy.wait_logged("certificate files changed", Duration::from_secs(1));

    open.send(&options());
    open.wait_responses(2, wait);
    assert_eq!(
        open.received().matches("SIP/2.0 200").count(),
        2,
        "the connection opened before the rotation: {}",
        open.received()
    );
}
