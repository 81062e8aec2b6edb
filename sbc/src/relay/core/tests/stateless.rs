//! Responses without a transaction (RFC 3261 section 16.7) and the nat stage's Via edits.

use super::*;

#[test]
fn a_response_whose_top_via_is_not_ours_is_dropped() {
    let mut h = Harness::new();
    let r = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.50:5060;branch=z9hG4bKzz\r\nVia: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKb1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert!(h.response(r).sent.is_empty());
}

#[test]
fn a_response_for_no_transaction_follows_the_via_below_ours() {
    let mut h = Harness::new();
    let r = "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkSgone\r\nVia: SIP/2.0/TCP 10.0.0.9:5090;branch=z9hG4bKb1;received=192.0.2.7;rport=40000\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let o = h.response(r);
    let s = o.only_to("192.0.2.7:40000");
    assert_eq!(s.to.transport, Transport::Tcp);
    assert_eq!(s.line(), "SIP/2.0 180 Ringing");
    assert!(!s.data.contains("z9hG4bKkSgone"));
}

#[test]
fn a_response_for_no_transaction_with_no_via_below_is_dropped() {
    let mut h = Harness::new();
    let r = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkSgone\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    assert!(h.response(r).sent.is_empty());
}

#[test]
fn a_caller_behind_nat_gets_received_and_rport() {
    let mut h = Harness::new();
    let o = h.request_from(INVITE, udp("192.0.2.7:40000"));
    let fwd = o.only_to(A).clone();
    assert!(
        fwd.data
            .contains("branch=z9hG4bKb1;received=192.0.2.7;rport=40000"),
        "{}",
        fwd.data
    );
    // The 100 goes where the packet came from.
    assert_eq!(o.only_to("192.0.2.7:40000").line(), "SIP/2.0 100 Trying");
    let r = h.answer(&fwd, 180, "Ringing", Some("t1"));
    assert_eq!(r.only_to("192.0.2.7:40000").line(), "SIP/2.0 180 Ringing");
}

#[test]
fn the_failover_copy_keeps_the_nat_parameters() {
    let mut h = Harness::new();
    let fwd = h
        .request_from(INVITE, udp("192.0.2.7:40000"))
        .only_to(A)
        .clone();
    let o = h.answer(&fwd, 503, "Service Unavailable", Some("t1"));
    assert!(
        o.only_to(B)
            .data
            .contains(";received=192.0.2.7;rport=40000")
    );
}

#[test]
fn rport_is_forced_for_a_caller_that_did_not_ask() {
    // REGISTER's Via has no rport: the backend still sees the port it came from, and the
    // 200, both through the transaction and statelessly, goes back to that port.
    let mut h = Harness::new();
    let from = "192.0.2.7:40000";
    let fwd = h.request_from(REGISTER, udp(from)).only_to(A).clone();
    let caller_via = fwd
        .data
        .split("\r\n")
        .filter(|l| l.starts_with("Via: "))
        .nth(1);
    assert_eq!(
        caller_via,
        Some("Via: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKr1;received=192.0.2.7;rport=40000")
    );
    let ok = respond(&fwd.data, 200, "OK", Some("t9"));
    assert_eq!(h.response(&ok).only_to(from).line(), "SIP/2.0 200 OK");
    h.ms(6_000);
    assert_eq!(h.response(&ok).only_to(from).line(), "SIP/2.0 200 OK");
}

/// An INVITE from a phone behind NAT: its Via and Contact name its private address.
const NATED: &str = "INVITE sip:bob@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bKn1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@a>;tag=f9\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: nat-1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.168.1.20:5062;transport=udp>;expires=60\r\nContent-Length: 0\r\n\r\n";

#[test]
fn a_nated_clients_contact_is_rewritten_to_its_source() {
    let mut h = Harness::new();
    let fwd = h
        .request_from(NATED, udp("192.0.2.7:40000"))
        .only_to(A)
        .clone();
    assert_eq!(
        fwd.header("Contact"),
        Some("<sip:alice@192.0.2.7:40000;transport=udp>;expires=60")
    );
    let reg = NATED
        .replace("INVITE sip:bob@127.0.0.1:5060", "REGISTER sip:127.0.0.1")
        .replace("1 INVITE", "1 REGISTER")
        .replace("nat-1", "nat-2")
        .replace("bKn1", "bKn2");
    let fwd = h
        .request_from(&reg, udp("192.0.2.7:40000"))
        .only_to(A)
        .clone();
    assert_eq!(
        fwd.header("Contact"),
        Some("<sip:alice@192.0.2.7:40000;transport=udp>;expires=60"),
        "fix_nated_register"
    );
    // Other methods keep theirs.
    let msg = NATED
        .replace("INVITE sip:", "MESSAGE sip:")
        .replace("1 INVITE", "1 MESSAGE")
        .replace("nat-1", "nat-3")
        .replace("bKn1", "bKn3");
    let fwd = h
        .request_from(&msg, udp("192.0.2.7:40000"))
        .only_to(A)
        .clone();
    assert_eq!(
        fwd.header("Contact"),
        Some("<sip:alice@192.168.1.20:5062;transport=udp>;expires=60")
    );
}

#[test]
fn contact_fixing_follows_the_chosen_tests_and_can_be_off() {
    // Seen from its own address and port, only the private-address tests (1, 4) say NAT.
    let own = "192.168.1.20:5062";
    let contact = |h: &mut Harness, n: &str| {
        let inv = NATED.replace("nat-1", n).replace("bKn1", n);
        h.request_from(&inv, udp(own))
            .only_to(A)
            .header("Contact")
            .map(str::to_owned)
    };
    let mut h = Harness::new();
    h.cfg.relay.nat.detect = 2 | 16;
    let kept = Some("<sip:alice@192.168.1.20:5062;transport=udp>;expires=60".to_owned());
    assert_eq!(contact(&mut h, "n1"), kept, "received and port tests pass");
    h.cfg.relay.nat.detect = 4;
    let fwd = h
        .request_from(
            &NATED.replace("nat-1", "n2").replace("bKn1", "bKn2"),
            udp("192.0.2.7:40000"),
        )
        .only_to(A)
        .clone();
    assert!(fwd.data.contains("@192.0.2.7:40000;transport=udp>"));
    h.cfg.relay.nat.fix_contact = false;
    let fwd = h
        .request_from(
            &NATED.replace("nat-1", "n3").replace("bKn1", "bKn3"),
            udp("192.0.2.7:40000"),
        )
        .only_to(A)
        .clone();
    assert_eq!(
        fwd.header("Contact").map(str::to_owned),
        kept,
        "fixContact: false"
    );
}

#[test]
fn a_ws_clients_contact_is_always_fixed() {
    let mut h = Harness::new();
    h.cfg.relay.nat.detect = 0;
    let ws = "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKw1\r\nMax-Forwards: 70\r\nFrom: <sip:carol@a>;tag=w1\r\nTo: <sip:carol@a>\r\nCall-ID: ws-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:r4nd0m@df7jal23ls0d.invalid;transport=ws>;expires=600\r\nContent-Length: 0\r\n\r\n";
    let from = Peer {
        flow: Some(9),
        ..peer("127.0.0.1:41000", Transport::Ws)
    };
    let fwd = h.request_from(ws, from).only_to(A).clone();
    assert_eq!(
        fwd.header("Contact"),
        Some("<sip:r4nd0m@127.0.0.1:41000;transport=ws>;expires=600")
    );
}
