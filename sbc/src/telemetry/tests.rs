use std::sync::{Arc, Mutex};

use super::labels::CLASS_LABELS;
use super::*;
use crate::config::Transport;
use crate::sip::Method;

fn line_value(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .map(|l| l[series.len() + 1..].to_string())
}

#[test]
fn renders_counts_of_a_call() {
    let m = Metrics::new().unwrap();
    m.request_received(Method::Invite);
    m.request_received(Method::Invite);
    m.request_received(Method::Ack);
    m.request_received(Method::Other);
    m.response_sent(ResponseOrigin::Local, 100);
    m.response_sent(ResponseOrigin::Relayed, 180);
    m.response_sent(ResponseOrigin::Relayed, 200);
    m.response_sent(ResponseOrigin::Relayed, 488);
    m.response_sent(ResponseOrigin::Local, 503);
    m.call_relayed();
    m.failover();
    let text = m.render().unwrap();
    let v = |s: &str| line_value(&text, s);
    assert_eq!(
        v("sbc_requests_received_total{method=\"INVITE\"}"),
        Some("2".into())
    );
    assert_eq!(
        v("sbc_requests_received_total{method=\"ACK\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_requests_received_total{method=\"OTHER\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_requests_received_total{method=\"BYE\"}"),
        Some("0".into())
    );
    assert_eq!(
        v("sbc_responses_by_class_total{class=\"1xx\",origin=\"relayed\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_responses_by_class_total{class=\"4xx\",origin=\"relayed\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_responses_by_class_total{class=\"5xx\",origin=\"local\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_responses_by_code_total{code=\"other\",origin=\"relayed\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_responses_by_code_total{code=\"200\",origin=\"relayed\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_responses_by_code_total{code=\"503\",origin=\"local\"}"),
        Some("1".into())
    );
    assert_eq!(v("sbc_calls_relayed_total"), Some("1".into()));
    assert_eq!(v("sbc_failovers_total"), Some("1".into()));
}

#[test]
fn out_of_range_codes_count_as_other_without_class() {
    let m = Metrics::new().unwrap();
    m.response_sent(ResponseOrigin::Local, 0);
    m.response_sent(ResponseOrigin::Local, 999);
    m.response_sent(ResponseOrigin::Local, 65535);
    let text = m.render().unwrap();
    assert_eq!(
        line_value(
            &text,
            "sbc_responses_by_code_total{code=\"other\",origin=\"local\"}"
        ),
        Some("3".into())
    );
    for class in CLASS_LABELS {
        let series = format!("sbc_responses_by_class_total{{class=\"{class}\",origin=\"local\"}}");
        assert_eq!(line_value(&text, &series), Some("0".into()), "{series}");
    }
}

#[test]
fn gauges_errors_drops_and_transport_counters() {
    let m = Metrics::new().unwrap();
    m.transaction_started(TransactionKind::Server);
    m.transaction_started(TransactionKind::Server);
    m.transaction_started(TransactionKind::Client);
    m.transaction_ended(TransactionKind::Server);
    m.parse_error(ParseErrorKind::ContentLength);
    m.dropped(DropReason::Unparsable);
    m.transport_message(Transport::Udp, Direction::In, 500);
    m.transport_message(Transport::Udp, Direction::In, 300);
    m.transport_message(Transport::Tcp, Direction::Out, 42);
    m.connection_opened(Transport::Tcp);
    let text = m.render().unwrap();
    let v = |s: &str| line_value(&text, s);
    assert_eq!(
        v("sbc_transactions_active{kind=\"server\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_transactions_active{kind=\"client\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_parse_errors_total{kind=\"content_length\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_parse_errors_total{kind=\"not_sip\"}"),
        Some("0".into())
    );
    assert_eq!(
        v("sbc_messages_dropped_total{reason=\"unparsable\"}"),
        Some("1".into())
    );
    assert_eq!(
        v("sbc_transport_bytes_total{direction=\"in\",transport=\"udp\"}"),
        Some("800".into())
    );
    assert_eq!(
        v("sbc_transport_messages_total{direction=\"in\",transport=\"udp\"}"),
        Some("2".into())
    );
    assert_eq!(
        v("sbc_transport_bytes_total{direction=\"out\",transport=\"tcp\"}"),
        Some("42".into())
    );
    assert_eq!(
        v("sbc_connections_open{transport=\"tcp\"}"),
        Some("1".into())
    );
}

#[test]
fn dispatcher_gauges_follow_the_source_at_scrape_time() {
    let m = Metrics::new().unwrap();
    let state = Arc::new(Mutex::new(vec![
        (1u32, "sip:127.0.0.1:5080".to_string(), true, 3u64),
        (1, "sip:127.0.0.1:5082".to_string(), false, 0),
    ]));
    let s = state.clone();
    m.set_destination_source(Arc::new(move || s.lock().unwrap().clone()));
    let text = m.render().unwrap();
    let up_a = "sbc_dispatcher_destination_up{set=\"1\",uri=\"sip:127.0.0.1:5080\"}";
    let up_b = "sbc_dispatcher_destination_up{set=\"1\",uri=\"sip:127.0.0.1:5082\"}";
    let calls_a = "sbc_dispatcher_destination_active_calls{set=\"1\",uri=\"sip:127.0.0.1:5080\"}";
    assert_eq!(line_value(&text, up_a), Some("1".into()));
    assert_eq!(line_value(&text, up_b), Some("0".into()));
    assert_eq!(line_value(&text, calls_a), Some("3".into()));

    // The second destination is removed and the first goes down.
    *state.lock().unwrap() = vec![(1, "sip:127.0.0.1:5080".to_string(), false, 0)];
    let text = m.render().unwrap();
    assert_eq!(line_value(&text, up_a), Some("0".into()));
    assert_eq!(line_value(&text, up_b), None);
}

#[test]
fn two_instances_do_not_clash() {
    // Each Metrics has its own registry, so tests and embedders can build several.
    let a = Metrics::new().unwrap();
    let b = Metrics::new().unwrap();
    a.failover();
    assert!(b.render().unwrap().contains("sbc_failovers_total 0"));
}
