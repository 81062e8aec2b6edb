//! Non-INVITE transactions and the answers the core gives itself: retransmissions (timers
//! E and J), in-dialog routing, OPTIONS to the sbc, sanity, loops, drain, routing refusals.

use super::*;

const BYE: &str = "BYE sip:bob@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKbye\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.9>;tag=f1\r\nTo: <sip:bob@127.0.0.1>;tag=t1\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";

#[test]
fn a_register_is_relayed_without_100_and_its_200_comes_back() {
    let mut h = Harness::new();
    let o = h.request(REGISTER);
    assert!(o.to(CALLER).is_empty(), "no 100 Trying for non-INVITE");
    let fwd = o.only_to(A).clone();
    assert_eq!(fwd.header("Record-Route"), Some("<sip:127.0.0.1:5060;lr>"));
    let o = h.answer(&fwd, 200, "OK", None);
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 200 OK");
    assert_eq!(h.open(), (1, 0));
}

#[test]
fn timer_e_doubles_up_to_t2() {
    let mut h = Harness::with_dests(&["sip:127.0.0.1:5071"]);
    h.cfg.dispatcher.sets[0].failover.reply_timeout_ms = 32_000;
    h.request(REGISTER);
    let mut at = Vec::new();
    let mut t = 0;
    while t < 20_000 {
        t += 100;
        if !h.ms(100).to(A).is_empty() {
            at.push(t);
        }
    }
    assert_eq!(at, vec![500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500]);
}

#[test]
fn timer_j_repeats_the_final_to_retransmissions_then_forgets() {
    let mut h = Harness::new();
    let fwd = h.request(REGISTER).only_to(A).clone();
    h.answer(&fwd, 200, "OK", None);
    let o = h.request(REGISTER);
    assert_eq!(o.lines(), vec!["SIP/2.0 200 OK"]);
    assert!(o.to(A).is_empty());
    h.ms(5_000);
    assert_eq!(h.open(), (0, 0));
}

#[test]
fn over_tcp_a_completed_non_invite_is_forgotten_at_once() {
    let mut h = Harness::new();
    let tcp = peer(CALLER, Transport::Tcp);
    let fwd = h.request_from(REGISTER, tcp).only_to(A).clone();
    h.answer(&fwd, 200, "OK", None);
    h.ms(1);
    assert_eq!(h.open(), (0, 0));
}

#[test]
fn a_bye_follows_its_route_set_and_ends_the_dialog_for_the_stages() {
    let mut h = Harness::new();
    let (p, c) = counting();
    h.pipeline = p;
    let o = h.request(BYE);
    let fwd = o.only_to(A);
    assert_eq!(fwd.line(), "BYE sip:bob@127.0.0.1:5071 SIP/2.0");
    assert_eq!(fwd.header("Route"), None);
    assert_eq!(
        fwd.header("Record-Route"),
        None,
        "in-dialog: no Record-Route"
    );
    assert_eq!(o.dialog_ends, 1);
    assert_eq!(c.dialog_ends.load(Ordering::Relaxed), 1);
}

#[test]
fn options_to_the_sbc_itself_are_answered_here() {
    let mut h = Harness::new();
    let ping = REGISTER
        .replace("REGISTER sip:127.0.0.1:5060", "OPTIONS sip:127.0.0.1:5060")
        .replace("7 REGISTER", "7 OPTIONS");
    let o = h.request(&ping);
    let ok = o.only_to(CALLER);
    assert_eq!(ok.line(), "SIP/2.0 200 OK");
    assert!(ok.header("Allow").is_some_and(|a| a.contains("INVITE")));
    assert_eq!(h.open(), (0, 0));
}

#[test]
fn max_forwards_zero_gets_483() {
    let mut h = Harness::new();
    let o = h.request(&INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0"));
    assert_eq!(o.lines(), vec!["SIP/2.0 483 Too Many Hops"]);
}

#[test]
fn a_request_that_already_passed_us_is_a_loop() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    // The destination sends it straight back.
    let o = h.request_from(&fwd.data, udp(A));
    assert_eq!(o.only_to(A).line(), "SIP/2.0 482 Loop Detected");
}

#[test]
fn a_spiral_is_not_a_loop() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let spiral = fwd
        .data
        .replacen("sip:bob@127.0.0.1:5060", "sip:carol@127.0.0.1:5060", 1);
    let o = h.request_from(&spiral, udp(A));
    assert_eq!(
        o.lines()[0],
        "SIP/2.0 100 Trying",
        "a new transaction, not 482"
    );
}

#[test]
fn draining_refuses_new_calls_but_not_dialogs() {
    let mut h = Harness::new();
    h.draining = true;
    let o = h.request(INVITE);
    let r = o.only_to(CALLER);
    assert_eq!(r.line(), "SIP/2.0 503 Service Unavailable");
    assert!(r.header("Retry-After").is_some());
    assert_eq!(
        h.request(BYE).only_to(A).line(),
        "BYE sip:bob@127.0.0.1:5071 SIP/2.0"
    );
}

#[test]
fn routing_refusals_have_their_status() {
    let mut h = Harness::new();
    let preloaded = INVITE.replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nRoute: <sip:10.9.9.9;lr>\r\n",
    );
    assert_eq!(
        h.request(&preloaded).lines(),
        vec!["SIP/2.0 403 Preload Route Denied"]
    );
    let to_us = BYE.replace("sip:bob@127.0.0.1:5071", "sip:bob@127.0.0.1:5060");
    assert_eq!(
        h.request(&to_us).lines(),
        vec!["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    let by_name = BYE.replace("sip:bob@127.0.0.1:5071", "sip:bob@pbx.example.com");
    assert_eq!(
        h.request(&by_name).lines(),
        vec!["SIP/2.0 478 Unresolvable Destination"]
    );
}

#[test]
fn no_destination_up_gets_503_and_the_stages_hear_it() {
    let mut h = Harness::with_dests(&[]);
    let (p, c) = counting();
    h.pipeline = p;
    let o = h.request(INVITE);
    let r = o.only_to(CALLER);
    assert_eq!(r.line(), "SIP/2.0 503 Service Unavailable");
    assert!(r.header("Retry-After").is_some());
    assert_eq!(o.finals, vec![503]);
    assert_eq!(c.finals.load(Ordering::Relaxed), 1);
}

#[test]
fn a_request_missing_call_id_gets_400_but_an_ack_gets_nothing() {
    let mut h = Harness::new();
    let bad = INVITE.replace("Call-ID: call-1\r\n", "");
    assert_eq!(h.request(&bad).lines(), vec!["SIP/2.0 400 Missing Call-ID"]);
    let bad_ack = bad
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("1 INVITE", "1 ACK");
    assert!(h.request(&bad_ack).sent.is_empty());
}
