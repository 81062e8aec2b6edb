//! INVITE server and client transactions: 100/180/200/ACK, retransmissions, timers G, H, C.

use super::*;

fn tcp_caller() -> Peer {
    peer(CALLER, Transport::Tcp)
}

#[test]
fn an_invite_gets_100_trying_and_goes_to_the_first_destination() {
    let mut h = Harness::new();
    let o = h.request(INVITE);
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 100 Trying");
    let fwd = o.only_to(A);
    assert_eq!(fwd.line(), "INVITE sip:bob@127.0.0.1:5060 SIP/2.0");
    assert!(top_branch(&fwd.data).starts_with("z9hG4bKkS"));
    assert_eq!(fwd.header("Max-Forwards"), Some("69"));
    assert_eq!(fwd.header("Record-Route"), Some("<sip:127.0.0.1:5060;lr>"));
    assert!(
        fwd.data.contains("branch=z9hG4bKb1;rport=5090"),
        "{}",
        fwd.data
    );
    assert_eq!(h.open(), (1, 1));
}

#[test]
fn ringing_and_ok_go_upstream_without_our_via() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 180, "Ringing", Some("t1"));
    let ring = o.only_to(CALLER);
    assert_eq!(ring.line(), "SIP/2.0 180 Ringing");
    assert!(!ring.data.contains("z9hG4bKkS"), "our Via is removed");
    let o = h.answer(&fwd, 200, "OK", Some("t1"));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 200 OK");
    assert_eq!(h.open(), (1, 0), "the client INVITE ends on 2xx");
}

#[test]
fn a_100_from_downstream_is_not_relayed() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    assert!(h.answer(&fwd, 100, "Trying", None).sent.is_empty());
}

#[test]
fn the_stages_that_admitted_a_call_hear_its_final_status() {
    let mut h = Harness::new();
    let (p, c) = counting();
    h.pipeline = p;
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 200, "OK", Some("t1"));
    assert_eq!(o.finals, vec![200]);
    assert_eq!(c.finals.load(Ordering::Relaxed), 1);
}

#[test]
fn a_pipeline_swapped_mid_call_leaves_the_end_to_the_one_that_admitted_it() {
    let mut h = Harness::new();
    let (first, c1) = counting();
    let (second, c2) = counting();
    h.pipeline = first;
    let fwd = h.request(INVITE).only_to(A).clone();
    h.pipeline = second;
    h.answer(&fwd, 486, "Busy Here", Some("t1"));
    assert_eq!(c1.finals.load(Ordering::Relaxed), 1);
    assert_eq!(c2.finals.load(Ordering::Relaxed), 0);
}

#[test]
fn accepted_absorbs_invite_retransmissions() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 200, "OK", Some("t1"));
    let o = h.request(INVITE);
    assert!(o.sent.is_empty(), "RFC 6026: absorbed, got {:?}", o.lines());
    // Accepted lasts while 2xx retransmissions may come, then the transaction goes.
    h.ms(5_100);
    assert_eq!(h.open(), (0, 0));
}

#[test]
fn a_retransmitted_invite_gets_the_last_provisional_again() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    assert_eq!(h.request(INVITE).lines(), vec!["SIP/2.0 100 Trying"]);
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    let o = h.request(INVITE);
    assert_eq!(o.lines(), vec!["SIP/2.0 180 Ringing"]);
    assert!(o.to(A).is_empty(), "not relayed again");
}

#[test]
fn timer_a_retransmits_an_invite_over_udp_until_a_provisional() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    assert_eq!(h.ms(500).only_to(A).data, fwd.data);
    assert!(h.ms(900).sent.is_empty(), "doubled to 1 s");
    assert_eq!(h.ms(100).only_to(A).data, fwd.data);
    h.answer(&fwd, 100, "Trying", None);
    assert!(h.ms(2_500).sent.is_empty(), "a provisional stops timer A");
}

#[test]
fn no_invite_retransmission_over_tcp() {
    let mut h = Harness::with_dests(&["sip:127.0.0.1:5071;transport=tcp"]);
    let o = h.request(INVITE);
    assert_eq!(o.only_to(A).to.transport, Transport::Tcp);
    assert!(
        o.armed
            .iter()
            .all(|t| !matches!(t, Timer::ClientRetransmit(..)))
    );
    assert!(h.ms(2_900).sent.is_empty());
}

#[test]
fn a_non_2xx_final_is_acked_hop_by_hop_and_relayed() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 486, "Busy Here", Some("t1"));
    let ack = o.only_to(A);
    assert_eq!(ack.line(), "ACK sip:bob@127.0.0.1:5060 SIP/2.0");
    assert_eq!(top_branch(&ack.data), top_branch(&fwd.data), "same branch");
    assert_eq!(ack.header("CSeq"), Some("1 ACK"));
    assert!(ack.header("To").is_some_and(|t| t.contains("tag=t1")));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 486 Busy Here");
}

#[test]
fn a_retransmitted_final_from_downstream_gets_our_ack_again() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let first = h.answer(&fwd, 486, "Busy Here", Some("t1"));
    let again = h.answer(&fwd, 486, "Busy Here", Some("t1"));
    assert_eq!(again.lines(), vec!["ACK sip:bob@127.0.0.1:5060 SIP/2.0"]);
    assert_eq!(again.only_to(A).data, first.only_to(A).data);
}

#[test]
fn timer_g_retransmits_our_final_over_udp_until_the_ack() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    let o = h.answer(&fwd, 486, "Busy Here", Some("t1"));
    let busy = o.only_to(CALLER).clone();
    assert_eq!(h.ms(500).only_to(CALLER).data, busy.data);
    assert_eq!(h.ms(1_000).only_to(CALLER).data, busy.data);
    let ack = h.request(&ack_for(INVITE, &busy));
    assert!(ack.sent.is_empty(), "the ACK for our 486 ends here");
    assert!(h.ms(10_000).sent.is_empty(), "no more retransmissions");
    assert_eq!(h.open(), (0, 0), "timers I and D ended both sides");
}

#[test]
fn a_retransmitted_invite_after_the_final_gets_the_final_again() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 486, "Busy Here", Some("t1"));
    assert_eq!(h.request(INVITE).lines(), vec!["SIP/2.0 486 Busy Here"]);
}

#[test]
fn over_tcp_no_final_is_retransmitted_but_the_ack_still_matches() {
    let mut h = Harness::new();
    let o = h.request_from(INVITE, tcp_caller());
    let fwd = o.only_to(A).clone();
    let o = h.answer(&fwd, 486, "Busy Here", Some("t1"));
    let busy = o.only_to(CALLER).clone();
    assert!(h.ms(4_000).to(CALLER).is_empty(), "no timer G on TCP");
    // Timer H still waits for the ACK, so it is not mistaken for a 2xx ACK and relayed.
    let ack = h.request_from(&ack_for(INVITE, &busy), tcp_caller());
    assert!(ack.sent.is_empty(), "got {:?}", ack.lines());
    h.ms(1);
    assert_eq!(h.open().0, 0, "timer I is zero on TCP");
}

#[test]
fn timer_h_ends_a_final_that_is_never_acked() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 486, "Busy Here", Some("t1"));
    h.ms(31_000);
    assert_eq!(h.open().0, 1, "still waiting for the ACK");
    let late = h.ms(2_000);
    assert_eq!(h.open().0, 0, "64*T1 passed");
    assert!(late.sent.len() <= 1, "retransmissions capped at T2");
}

#[test]
fn several_2xx_from_a_forking_backend_all_reach_the_caller() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    let one = h.answer(&fwd, 200, "OK", Some("t1"));
    let two = h.answer(&fwd, 200, "OK", Some("t2"));
    assert_eq!(one.only_to(CALLER).line(), "SIP/2.0 200 OK");
    let second = two.only_to(CALLER);
    assert_eq!(second.line(), "SIP/2.0 200 OK");
    assert!(second.header("To").is_some_and(|t| t.contains("tag=t2")));
    assert!(!second.data.contains("z9hG4bKkS"));
}

#[test]
fn a_2xx_retransmission_after_the_transaction_is_relayed_statelessly() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 200, "OK", Some("t1"));
    h.ms(6_000);
    assert_eq!(h.open(), (0, 0));
    let o = h.answer(&fwd, 200, "OK", Some("t1"));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 200 OK");
}

#[test]
fn the_ack_for_a_2xx_follows_the_route_set() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 200, "OK", Some("t1"));
    let ack = "ACK sip:bob@127.0.0.1:5071 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKa2\r\nRoute: <sip:127.0.0.1:5060;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.9>;tag=f1\r\nTo: <sip:bob@127.0.0.1>;tag=t1\r\nCall-ID: call-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n";
    let o = h.request(ack);
    let sent = o.only_to(A);
    assert_eq!(sent.line(), "ACK sip:bob@127.0.0.1:5071 SIP/2.0");
    assert_eq!(sent.header("Route"), None, "our own Route is consumed");
    // A retransmitted ACK gets the same branch (stateless proxying).
    let again = h.request(ack);
    assert_eq!(top_branch(&again.only_to(A).data), top_branch(&sent.data));
}

#[test]
fn timer_c_cancels_an_invite_that_rings_too_long() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 180, "Ringing", Some("t1"));
    let o = h.ms(120_000);
    assert_eq!(o.only_to(A).line(), "CANCEL sip:bob@127.0.0.1:5060 SIP/2.0");
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 408 Request Timeout");
}

#[test]
fn an_answered_call_to_a_destination_with_maxload_counts_until_its_bye() {
    let mut h = Harness::new();
    h.cfg.dispatcher.sets[0].destinations[0].maxload = Some(5);
    h.core
        .dispatcher()
        .update(&h.cfg.dispatcher)
        .expect("update");
    let fwd = h.request(INVITE).only_to(A).clone();
    assert!(
        h.answer(&fwd, 180, "Ringing", Some("t1"))
            .answered
            .is_empty()
    );
    let o = h.answer(&fwd, 200, "OK", Some("t1"));
    assert_eq!(o.answered, vec!["sip:127.0.0.1:5071".to_owned()]);
    // A retransmitted 2xx is the same call.
    assert!(h.answer(&fwd, 200, "OK", Some("t1")).answered.is_empty());
}

#[test]
fn a_refused_call_or_an_uncounted_destination_reports_no_answered_call() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    assert!(h.answer(&fwd, 200, "OK", Some("t1")).answered.is_empty());
    h.cfg.dispatcher.sets[0].destinations[1].maxload = Some(5);
    h.cfg.dispatcher.sets[0].destinations[0].maxload = Some(5);
    h.core
        .dispatcher()
        .update(&h.cfg.dispatcher)
        .expect("update");
    let second = INVITE
        .replace("Call-ID: ", "Call-ID: other-")
        .replace("z9hG4bKb1", "z9hG4bKb2");
    let fwd = h.request(&second).only_to(A).clone();
    assert!(
        h.answer(&fwd, 486, "Busy Here", Some("t2"))
            .answered
            .is_empty()
    );
}
