//! The routing rules in the core: a matching rule's set is where the call goes, failover
//! stays in that set with that set's failover settings, no match goes to the default set, a
//! fixed target is one hop.

use super::*;
use crate::routing::rules::Rules;

/// Set 2 (carriers): D then E, priority order, two attempts at most.
const D: &str = "127.0.0.2:5081";
const E: &str = "127.0.0.2:5082";
/// The PBX: a destination of set 1 on another address than the others.
const PBX: &str = "127.0.0.3:5060";

/// Set 1 of A, B, C (default) and the PBX; set 2 of D, E; rules from `yaml`.
fn harness(yaml: &str) -> Harness {
    let mut h = Harness::with_dests(&[
        "sip:127.0.0.1:5071",
        "sip:127.0.0.1:5072",
        "sip:127.0.0.1:5073",
        "sip:127.0.0.3:5060",
    ]);
    let dest = |uri: &str, priority| DestinationConfig {
        uri: uri.into(),
        priority,
        ..Default::default()
    };
    let mut set2 = h.cfg.dispatcher.sets[0].clone();
    set2.id = 2;
    set2.destinations = vec![dest("sip:127.0.0.2:5081", 2), dest("sip:127.0.0.2:5082", 1)];
    set2.failover.max_attempts = 2;
    h.cfg.dispatcher.sets.push(set2);
    h.core
        .dispatcher()
        .update(&h.cfg.dispatcher)
        .expect("two sets");
    h.cfg.routing = serde_saphyr::from_str(yaml).expect("routing yaml");
    h.cfg.validate().expect("valid");
    h.rules = Rules::compile(&h.cfg.routing).expect("compiles");
    h
}

const RULES: &str = r#"
rules:
  - {fromSet: 1, uriUserPrefixes: ["00"], set: 2}
  - {uriUserPrefixes: ["44"], set: 2}
  - {uriUserPrefixes: ["99"], target: "sip:127.0.0.4:5099"}
"#;

fn invite_to(user: &str) -> String {
    INVITE.replace("INVITE sip:bob@", &format!("INVITE sip:{user}@"))
}

#[test]
fn the_pbx_calling_out_reaches_the_carriers_and_others_the_default_set() {
    let mut h = harness(RULES);
    let o = h.request_from(&invite_to("0049301234"), udp(PBX));
    assert_eq!(
        o.lines(),
        [
            "SIP/2.0 100 Trying",
            "INVITE sip:0049301234@127.0.0.1:5060 SIP/2.0"
        ]
    );
    o.only_to(D);
    // The same number from a caller that is not in set 1: the default set.
    let o = h.request(&invite_to("0049301234").replace("z9hG4bKb1", "z9hG4bKb2"));
    o.only_to(A);
    // The PBX calling an extension: no rule, the default set.
    let o = h.request_from(
        &invite_to("2001").replace("z9hG4bKb1", "z9hG4bKb3"),
        udp(PBX),
    );
    o.only_to(A);
}

#[test]
fn failover_stays_in_the_chosen_set_with_its_settings() {
    let mut h = harness(RULES);
    let d = h.request(&invite_to("4420")).only_to(D).clone();
    let e = h
        .answer(&d, 503, "Service Unavailable", Some("t1"))
        .only_to(E)
        .clone();
    // Set 2 allows two attempts: the second 503 reaches the caller, never set 1.
    let o = h.answer(&e, 503, "Service Unavailable", Some("t2"));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 503 Service Unavailable");
    for a in [A, B, C, PBX] {
        assert!(
            o.to(a).is_empty(),
            "nothing to set 1's {a}: {:?}",
            o.lines()
        );
    }
}

#[test]
fn a_fixed_target_is_one_hop() {
    let mut h = harness(RULES);
    let t = h
        .request(&invite_to("9912"))
        .only_to("127.0.0.4:5099")
        .clone();
    let o = h.answer(&t, 503, "Service Unavailable", Some("t1"));
    assert_eq!(o.only_to(CALLER).line(), "SIP/2.0 503 Service Unavailable");
}
