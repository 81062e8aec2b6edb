//! NAT traversal with a sipp client whose Via and Contact name a private address (as a phone
//! behind NAT writes them) while its packets come from its real loopback port: the sbc marks
//! its Via with `received` and `rport` and rewrites its Contact to the source address, so the
//! callee's BYE, sent to that Contact along the Record-Route, reaches the client.

use std::time::Duration;

use kubesbc_e2e::{
    DispatcherDest, Proxy, ProxyOptions, Sipp, SippTransport, TempDir, UacOptions, e2e_tools,
    free_port, sbc_only, scenario, start_backend, wait_for,
};

/// A NATed UDP client calls a sipp UAS that hangs up: the INVITE reaches the UAS with the
/// client's Contact fixed to `127.0.0.1:<its port>` and its Via carrying the source
/// (`received`, forced `rport`); the UAS's BYE reaches the client, which answers 200.
#[test]
fn a_nated_clients_contact_is_fixed_and_the_callees_bye_reaches_it() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("nat-contact");
    let mut backend = start_backend(&dir, "uas", "ws_uas_bye.xml", SippTransport::Udp);
    let dest = DispatcherDest::local(backend.port(), false);
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![dest.clone()],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&dest.uri, true, Duration::from_secs(10));
    let port = free_port();
    let mut uac = Sipp::uac(
        &dir,
        "nated",
        &scenario("nat_uac.xml"),
        port,
        proxy.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate: 1,
            calls: 1,
            hold_ms: 0,
            timeout_s: 20,
            service: None,
        },
    );
    // The UAS waits 1 s before its BYE: check what it got first, and stop everything if the
    // Contact still names the private address (the BYE would go there).
    let invite = wait_for(Duration::from_secs(5), || {
        backend
            .messages()
            .received_requests("INVITE")
            .next()
            .cloned()
    });
    let Some(invite) = invite else {
        backend.stop();
        panic!("the INVITE did not reach the UAS");
    };
    let contact = invite.header_values("Contact").join(",");
    if contact != format!("<sip:nated@127.0.0.1:{port}>") {
        backend.stop();
        uac.stop();
        panic!("the Contact was not fixed to the source: {contact}");
    }
    let vias = invite.header_values("Via");
    assert!(
        vias.iter()
            .any(|v| v.starts_with("SIP/2.0/UDP 192.168.77.7:5099;")
                && v.ends_with(&format!(";received=127.0.0.1;rport={port}"))),
        "the client's Via lacks its source: {vias:?}"
    );
    assert_eq!(
        uac.wait(Duration::from_secs(20)),
        0,
        "the UAC got the BYE and answered"
    );
    let log = backend.messages();
    assert!(
        log.messages.iter().any(|m| m.received
            && m.start_line.starts_with("SIP/2.0 200")
            && m.header_values("CSeq").iter().any(|c| c.ends_with("BYE"))),
        "the UAS got no 200 for its BYE"
    );
}
