//! CANCEL (RFC 3261 sections 9 and 16.10): before and after a provisional, crossing a 200,
//! and the 487 with its hop-by-hop ACK.

use super::*;

#[test]
fn a_cancel_before_any_provisional_waits_for_one() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.request(&cancel_of(INVITE));
    assert_eq!(
        o.lines(),
        vec!["SIP/2.0 200 OK"],
        "answered, nothing sent downstream"
    );
    assert_eq!(o.only_to(CALLER).header("CSeq"), Some("1 CANCEL"));
    let o = h.answer(&fwd, 100, "Trying", None);
    let cancel = o.only_to(A);
    assert_eq!(cancel.line(), "CANCEL sip:bob@127.0.0.1:5060 SIP/2.0");
    assert_eq!(top_branch(&cancel.data), top_branch(&fwd.data));
    assert_eq!(cancel.header("CSeq"), Some("1 CANCEL"));
}

#[test]
fn a_cancel_after_a_provisional_goes_downstream_at_once() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    let o = h.request(&cancel_of(INVITE));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 200 OK");
    let cancel = o.only_to(A).clone();
    assert_eq!(cancel.line(), "CANCEL sip:bob@127.0.0.1:5060 SIP/2.0");
    assert_eq!(top_branch(&cancel.data), top_branch(&fwd.data));
    assert_eq!(
        cancel.header("Max-Forwards"),
        Some("69"),
        "as the INVITE we sent"
    );
    assert_eq!(
        cancel.header("To"),
        Some("<sip:bob@127.0.0.1>"),
        "the INVITE's To"
    );
    // The 200 to our CANCEL is absorbed.
    assert!(h.answer(&cancel, 200, "OK", Some("t1")).sent.is_empty());
}

#[test]
fn the_487_is_acked_downstream_and_relayed_without_failover() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    h.request(&cancel_of(INVITE));
    let o = h.answer(&fwd, 487, "Request Terminated", Some("t1"));
    assert_eq!(o.only_to(A).line(), "ACK sip:bob@127.0.0.1:5060 SIP/2.0");
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 487 Request Terminated");
    assert!(o.to(B).is_empty(), "a cancelled call never fails over");
}

#[test]
fn a_503_after_cancel_does_not_fail_over() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    h.request(&cancel_of(INVITE));
    let o = h.answer(&fwd, 503, "Service Unavailable", Some("t1"));
    assert!(o.to(B).is_empty());
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 503 Service Unavailable");
}

#[test]
fn a_200_crossing_the_cancel_still_reaches_the_caller() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    let cancel = h.request(&cancel_of(INVITE)).only_to(A).clone();
    let o = h.answer(&fwd, 200, "OK", Some("t1"));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 200 OK");
    assert!(o.to(A).is_empty(), "no ACK for a 2xx from the proxy");
    let late = h.answer(&cancel, 481, "Call/Transaction Does Not Exist", Some("t1"));
    assert!(late.sent.is_empty(), "the CANCEL's own answer stays here");
}

#[test]
fn a_cancel_for_nothing_gets_481() {
    let mut h = Harness::new();
    let o = h.request(&cancel_of(INVITE));
    assert_eq!(
        o.lines(),
        vec!["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
}

#[test]
fn a_cancel_after_the_final_is_answered_but_not_relayed() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 200, "OK", Some("t1"));
    let o = h.request(&cancel_of(INVITE));
    assert_eq!(o.lines(), vec!["SIP/2.0 200 OK"]);
}

#[test]
fn a_cancelled_invite_that_never_rang_gets_487_when_timer_b_fires() {
    let mut h = Harness::new();
    h.request(INVITE);
    h.request(&cancel_of(INVITE));
    let o = h.ms(3_000);
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 487 Request Terminated");
    assert!(o.to(B).is_empty(), "cancelled: no failover on timeout");
}

#[test]
fn our_cancel_is_retransmitted_over_udp() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    let cancel = h.request(&cancel_of(INVITE)).only_to(A).clone();
    assert_eq!(h.ms(500).only_to(A).data, cancel.data);
    h.answer(&cancel, 200, "OK", Some("t1"));
    assert!(h.ms(2_000).to(A).is_empty(), "answered: no more");
}
