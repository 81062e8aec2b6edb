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
