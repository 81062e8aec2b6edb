//! Failover within the set: on 503 and 408, on timers B and F, on a failed send; none on
//! 6xx, on codes not configured, or for in-dialog requests.

use super::*;

#[test]
fn a_503_moves_the_call_to_the_next_destination() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 503, "Service Unavailable", Some("t1"));
    assert_eq!(o.only_to(A).line(), "ACK sip:bob@127.0.0.1:5060 SIP/2.0");
    let next = o.only_to(B);
    assert_eq!(next.line(), "INVITE sip:bob@127.0.0.1:5060 SIP/2.0");
    assert_ne!(
        top_branch(&next.data),
        top_branch(&fwd.data),
        "a new branch"
    );
    assert!(o.to(CALLER).is_empty(), "the caller never sees the 503");
    let next = next.clone();
    let o = h.answer(&next, 200, "OK", Some("t2"));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 200 OK");
}

#[test]
fn a_408_moves_the_call_on_too() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 408, "Request Timeout", Some("t1"));
    assert_eq!(o.only_to(B).line(), "INVITE sip:bob@127.0.0.1:5060 SIP/2.0");
}

#[test]
fn after_max_attempts_the_caller_gets_the_last_failure() {
    let mut h = Harness::new();
    let a = h.request(INVITE).only_to(A).clone();
    let b = h
        .answer(&a, 503, "Service Unavailable", Some("t1"))
        .only_to(B)
        .clone();
    let c = h
        .answer(&b, 503, "Service Unavailable", Some("t2"))
        .only_to(C)
        .clone();
    let o = h.answer(&c, 500, "Server Internal Error", Some("t3"));
    assert_eq!(
        o.only_to(CALLER).line(),
        "SIP/2.0 500 Server Internal Error"
    );
}

#[test]
fn timer_b_moves_an_unanswered_invite_on() {
    let mut h = Harness::new();
    h.request(INVITE);
    let o = h.ms(3_000);
    assert_eq!(o.only_to(B).line(), "INVITE sip:bob@127.0.0.1:5060 SIP/2.0");
    assert!(o.to(CALLER).is_empty());
}

#[test]
fn timer_b_on_the_last_destination_answers_408() {
    let mut h = Harness::with_dests(&["sip:127.0.0.1:5071"]);
    h.request(INVITE);
    let o = h.ms(3_000);
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 408 Request Timeout");
}

#[test]
fn a_ringing_invite_does_not_time_out_with_timer_b() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    let o = h.ms(10_000);
    assert!(o.sent.is_empty(), "got {:?}", o.lines());
}

#[test]
fn a_6xx_is_final_for_the_set() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 603, "Decline", Some("t1"));
    assert!(o.to(B).is_empty());
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 603 Decline");
}

#[test]
fn a_code_not_configured_for_failover_is_relayed() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 404, "Not Found", Some("t1"));
    assert!(o.to(B).is_empty());
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 404 Not Found");
}

#[test]
fn a_failed_send_over_tcp_moves_the_call_on_at_once() {
    let mut h = Harness::with_dests(&[
        "sip:127.0.0.1:5071;transport=tcp",
        "sip:127.0.0.1:5072;transport=tcp",
    ]);
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.send_failed(&fwd);
    assert_eq!(o.only_to(B).line(), "INVITE sip:bob@127.0.0.1:5060 SIP/2.0");
}

#[test]
fn timer_f_moves_a_non_invite_on_and_the_last_one_answers_408() {
    let mut h = Harness::with_dests(&["sip:127.0.0.1:5071", "sip:127.0.0.1:5072"]);
    h.request(REGISTER);
    let o = h.ms(3_000);
    assert_eq!(o.only_to(B).line(), "REGISTER sip:127.0.0.1:5060 SIP/2.0");
    let o = h.ms(3_000);
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 408 Request Timeout");
}

#[test]
fn an_in_dialog_request_is_not_failed_over() {
    let mut h = Harness::new();
    let bye = "BYE sip:bob@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKbye\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.9>;tag=f1\r\nTo: <sip:bob@127.0.0.1>;tag=t1\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let fwd = h.request(bye).only_to(A).clone();
    let o = h.answer(&fwd, 503, "Service Unavailable", None);
    assert!(o.to(B).is_empty());
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 503 Service Unavailable");
}
