//! Tests of `dispatch/destination`.

use super::*;

fn dest(uri: &str, cfg_flags: u32) -> Destination {
    let cfg = DestinationConfig {
        uri: uri.into(),
        flags: cfg_flags,
        ..Default::default()
    };
    let health = Arc::new(Health::new(cfg_flags, Arc::default()));
    Destination::new(1, true, cfg, health).expect("valid destination")
}

#[test]
fn targets_follow_scheme_transport_and_default_ports() {
    let cases = [
        ("sip:127.0.0.1", "127.0.0.1:5060", Transport::Udp),
        (
            "sip:127.0.0.1:5071;transport=tcp",
            "127.0.0.1:5071",
            Transport::Tcp,
        ),
        (
            "sip:alice@127.0.0.1;transport=TLS",
            "127.0.0.1:5061",
            Transport::Tls,
        ),
        ("sips:127.0.0.1", "127.0.0.1:5061", Transport::Tls),
        (
            "sips:127.0.0.1:5070;transport=tcp",
            "127.0.0.1:5070",
            Transport::Tls,
        ),
        ("sip:[::1]:5080;transport=ws", "[::1]:5080", Transport::Ws),
        ("SIP:127.0.0.2:5090;lr", "127.0.0.2:5090", Transport::Udp),
        ("sip:localhost:5072", "127.0.0.1:5072", Transport::Udp),
    ];
    for (uri, addr, transport) in cases {
        let t = resolve(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        let want: SocketAddr = addr.parse().unwrap();
        // localhost may resolve to ::1 first on some machines.
        if uri.contains("localhost") {
            assert!(t.addr.ip().is_loopback() && t.addr.port() == 5072, "{uri}");
        } else {
            assert_eq!(t.addr, want, "{uri}");
        }
        assert_eq!(t.transport, transport, "{uri}");
    }
}

#[test]
fn bad_uris_are_refused_with_a_reason() {
    let cases = [
        ("http://x", "is not a sip: or sips: URI"),
        ("sip:", "has no host"),
        ("sip:h:99999", "invalid port"),
        ("sip:h:0", "invalid port"),
        ("sip:[::1", "unterminated IPv6"),
        ("sip:h;transport=sctp", "unsupported transport \"sctp\""),
        ("sip:a b", "invalid host"),
    ];
    for (uri, why) in cases {
        let err = parse_uri(uri).unwrap_err();
        assert!(err.contains(why), "{uri}: {err}");
    }
}

#[test]
fn probe_thresholds_take_out_and_bring_back() {
    let d = dest("sip:127.0.0.1:5071", 0);
    let p = Probing {
        failure_threshold: 2,
        success_threshold: 2,
        ..Default::default()
    };
    let change = d.record_probe(false, &p).expect("trying");
    assert_eq!(
        (change.from, change.to),
        (DestState::Active, DestState::Trying)
    );
    assert!(
        d.is_up(),
        "trying destinations are still used, as in Kamailio"
    );
    let change = d.record_probe(false, &p).expect("inactive");
    assert!(change.went_down());
    assert!(!d.is_up());
    assert_eq!(d.record_probe(false, &p), None);
    assert_eq!(
        d.record_probe(true, &p),
        None,
        "one success is below threshold"
    );
    assert!(!d.is_up());
    let change = d.record_probe(true, &p).expect("back");
    assert!(change.came_up());
    assert!(d.is_up());
    // A single failure followed by a success clears "trying".
    d.record_probe(false, &p);
    assert_eq!(d.state(), DestState::Trying);
    d.record_probe(true, &p);
    assert_eq!(d.state(), DestState::Active);
}

fn dest_with_threshold(uri: &str, threshold: u32) -> Destination {
    let cfg = DestinationConfig {
        uri: uri.into(),
        ..Default::default()
    };
    let health = Arc::new(Health::new(0, Arc::default()));
    Destination::build(1, true, threshold, cfg, health, &system_resolver()).unwrap()
}

#[test]
fn failed_requests_ask_for_a_probe_at_the_threshold_and_never_take_it_out() {
    let d = dest_with_threshold("sip:127.0.0.1:5071", 3);
    assert!(!d.mark_down(), "one failure: below the threshold");
    d.request_failed();
    assert!(d.is_up());
    assert!(d.mark_down(), "the third asks for a probe");
    assert!(d.is_up(), "failed requests alone never take it out");
    assert!(!d.mark_down(), "one probe asked for at a time");
    assert!(d.take_probe_request());
    assert_eq!(d.failures(), 4);
    // The probe answers: the count starts again.
    d.record_probe(true, &Probing::default());
    assert_eq!(d.request_failures(), 0);
    assert!(!d.mark_down());
    // An administrator (or a failed urgent probe) takes it out.
    assert!(d.set_inactive().expect("change").went_down());
    assert_eq!(d.set_inactive(), None);
    let unprobed = dest("sip:127.0.0.1:5073", flags::NOPING);
    for _ in 0..5 {
        assert!(!unprobed.mark_down(), "nothing would bring it back");
    }
    assert!(unprobed.is_up());
    assert_eq!(unprobed.failures(), 5);
    let off = dest("sip:127.0.0.1:5072", flags::DISABLED);
    assert!(!off.is_up());
    assert_eq!(off.record_probe(true, &Probing::default()), None);
    assert_eq!(off.state(), DestState::Disabled);
    assert!(!off.is_probed());
}

#[test]
fn call_counter_saturates_at_zero() {
    let d = dest("sip:127.0.0.1:5071", 0);
    d.call_ended();
    assert_eq!(d.active_calls(), 0);
    d.call_started();
    d.call_started();
    d.call_ended();
    assert_eq!(d.active_calls(), 1);
}

#[test]
fn state_letters_follow_kamcmd_precedence() {
    assert_eq!(
        DestState::from_flags(flags::INACTIVE | flags::DISABLED),
        DestState::Inactive
    );
    assert_eq!(
        DestState::from_flags(flags::DISABLED | flags::TRYING),
        DestState::Disabled
    );
    assert_eq!(
        DestState::from_flags(flags::TRYING | flags::PROBING),
        DestState::Trying
    );
    assert_eq!(DestState::from_flags(flags::PROBING).letter(), 'A');
}
