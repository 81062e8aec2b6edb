//! The OPTIONS probes the dispatcher sends through the core: their reply, their timeout,
//! their failed send.

use super::*;

#[test]
fn a_probe_ends_with_the_final_reply_and_ignores_provisionals() {
    let mut h = Harness::new();
    let o = h.probe(7, Duration::from_secs(2));
    let ping = o.only_to(A).clone();
    assert_eq!(ping.line(), "OPTIONS sip:127.0.0.1:5071 SIP/2.0");
    assert!(h.answer(&ping, 100, "Trying", None).probed.is_empty());
    let r = h.answer(&ping, 200, "OK", Some("p"));
    assert_eq!(r.probed, vec![(7, PingOutcome::Reply(200))]);
    assert!(r.sent.is_empty(), "a probe's reply goes nowhere else");
    assert_eq!(h.open(), (0, 0));
}

#[test]
fn an_unanswered_probe_is_retransmitted_then_times_out() {
    let mut h = Harness::new();
    h.probe(8, Duration::from_secs(2));
    let o = h.ms(2_000);
    assert_eq!(o.to(A).len(), 2, "retransmitted at 500 ms and 1.5 s");
    assert_eq!(o.probed, vec![(8, PingOutcome::Timeout)]);
}

#[test]
fn a_probe_that_cannot_be_sent_is_unreachable() {
    let mut h = Harness::with_dests(&["sip:127.0.0.1:5071;transport=tcp"]);
    let ping = h.probe(9, Duration::from_secs(2)).only_to(A).clone();
    let o = h.send_failed(&ping);
    assert_eq!(o.probed, vec![(9, PingOutcome::Unreachable)]);
}
