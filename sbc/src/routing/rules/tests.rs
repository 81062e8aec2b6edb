//! The routing rules over byte-string requests: each condition, their combination, order,
//! and the default when nothing matches.

use std::net::IpAddr;

use bytes::Bytes;
use kubesbc_crds::config::Transport;
use kubesbc_crds::routing::RoutingConfig;

use super::*;

/// Set 1 has the PBX at 10.1.0.5 (any port); no other set has members.
struct Pbx;

impl Members for Pbx {
    fn has_member(&self, set: u32, ip: IpAddr) -> bool {
        set == 1 && ip == "10.1.0.5".parse::<IpAddr>().expect("ip")
    }
}

fn rules(yaml: &str) -> Rules {
    let cfg: RoutingConfig = serde_saphyr::from_str(yaml).expect("routing yaml");
    Rules::compile(&cfg).expect("compiles")
}

fn msg(method: &str, ruri: &str, extra: &str) -> Message {
    let text = format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKx\r\nMax-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text), 65535).expect("parses")
}

fn route(r: &Rules, m: &Message, from: &str) -> Option<(usize, Route)> {
    let facts = Facts {
        source: from.parse().expect("ip"),
        method: m.method().expect("request"),
    };
    r.decide(m, &facts, &Pbx)
}

const RULES: &str = r#"
rules:
  - {name: pbx-out, fromSet: 1, uriUserPrefixes: ["00", "+"], set: 2}
  - {uriUserPrefixes: ["44"], set: 3}
  - {uriDomains: [Lab.Example.com], target: "sip:10.7.0.1:5080;transport=tcp"}
  - {header: {name: X-Tenant-ID, value: acme}, methods: [INVITE], set: 4}
  - {header: {name: X-Tenant-ID, prefix: eu-}, set: 5}
  - {sources: [192.0.2.0/24], methods: [MESSAGE, PUBLISH, FOO], set: 6}
"#;

#[test]
fn the_pbx_calling_a_number_goes_to_the_carriers() {
    let r = rules(RULES);
    let m = msg("INVITE", "sip:004420@sbc.example.com", "");
    assert_eq!(route(&r, &m, "10.1.0.5"), Some((0, Route::Set(2))));
    // The same number from anyone else: not rule 0 (no prefix rule for 00 either).
    assert_eq!(route(&r, &m, "10.1.0.6"), None);
    // The PBX calling an extension: no rule, the default set.
    let ext = msg("INVITE", "sip:2001@sbc.example.com", "");
    assert_eq!(route(&r, &ext, "10.1.0.5"), None);
}

#[test]
fn a_prefix_goes_to_its_set_and_tel_uris_count() {
    let r = rules(RULES);
    let m = msg("INVITE", "sip:442071234567@sbc.example.com;user=phone", "");
    assert_eq!(route(&r, &m, "203.0.113.1"), Some((1, Route::Set(3))));
    let tel = msg("INVITE", "tel:442071234567;phone-context=+44", "");
    assert_eq!(route(&r, &tel, "203.0.113.1"), Some((1, Route::Set(3))));
    let plus = msg("INVITE", "tel:+442071234567", "");
    assert_eq!(route(&r, &plus, "10.1.0.5"), Some((0, Route::Set(2))));
}

#[test]
fn a_domain_picks_a_fixed_target() {
    let r = rules(RULES);
    let m = msg("OPTIONS", "sip:bob@lab.example.COM:5060", "");
    let Some((2, Route::Target(p))) = route(&r, &m, "203.0.113.1") else {
        panic!("rule 2 with its target");
    };
    assert_eq!(
        (p.addr, p.transport),
        ("10.7.0.1:5080".parse().expect("addr"), Transport::Tcp)
    );
    let other = msg("OPTIONS", "sip:bob@example.com", "");
    assert_eq!(route(&r, &other, "203.0.113.1"), None);
}

#[test]
fn a_header_matches_exactly_or_by_prefix_and_with_the_method() {
    let r = rules(RULES);
    let acme = msg("INVITE", "sip:x@y", "X-Tenant-ID: acme\r\n");
    assert_eq!(route(&r, &acme, "203.0.113.1"), Some((3, Route::Set(4))));
    // Rule 3 wants INVITE; a MESSAGE of acme matches nothing.
    let acme_msg = msg("MESSAGE", "sip:x@y", "x-tenant-id: acme\r\n");
    assert_eq!(route(&r, &acme_msg, "203.0.113.1"), None);
    // Exact means exact; case-sensitive value.
    let acme2 = msg("INVITE", "sip:x@y", "X-Tenant-ID: acme2\r\n");
    assert_eq!(route(&r, &acme2, "203.0.113.1"), None);
    let acme_up = msg("INVITE", "sip:x@y", "X-Tenant-ID: ACME\r\n");
    assert_eq!(route(&r, &acme_up, "203.0.113.1"), None);
    let eu = msg("REGISTER", "sip:y", "X-Tenant-ID: eu-west\r\n");
    assert_eq!(route(&r, &eu, "203.0.113.1"), Some((4, Route::Set(5))));
    let none = msg("INVITE", "sip:x@y", "");
    assert_eq!(route(&r, &none, "203.0.113.1"), None);
}

#[test]
fn sources_and_methods_combine_extension_methods_by_name() {
    let r = rules(RULES);
    let m = msg("MESSAGE", "sip:x@y", "");
    assert_eq!(route(&r, &m, "192.0.2.77"), Some((5, Route::Set(6))));
    assert_eq!(route(&r, &m, "192.0.3.77"), None);
    let foo = msg("FOO", "sip:x@y", "");
    assert_eq!(route(&r, &foo, "192.0.2.1"), Some((5, Route::Set(6))));
    let bar = msg("BAR", "sip:x@y", "");
    assert_eq!(route(&r, &bar, "192.0.2.1"), None);
    let invite = msg("INVITE", "sip:x@y", "");
    assert_eq!(route(&r, &invite, "192.0.2.1"), None);
}

#[test]
fn the_first_match_wins() {
    let r = rules(
        r#"
rules:
  - {methods: [INVITE], set: 7}
  - {uriUserPrefixes: ["44"], set: 3}
"#,
    );
    let m = msg("INVITE", "sip:4420@y", "");
    assert_eq!(route(&r, &m, "10.0.0.1"), Some((0, Route::Set(7))));
    let reg = msg("MESSAGE", "sip:4420@y", "");
    assert_eq!(route(&r, &reg, "10.0.0.1"), Some((1, Route::Set(3))));
}

#[test]
fn no_rules_no_route() {
    let r = Rules::default();
    assert!(r.is_empty());
    assert_eq!(route(&r, &msg("INVITE", "sip:1@y", ""), "10.1.0.5"), None);
}

#[test]
fn a_target_the_sbc_cannot_reach_does_not_compile() {
    let cfg: RoutingConfig = serde_saphyr::from_str(
        "rules: [{methods: [INVITE], target: \"sip:10.0.0.1;transport=sctp\"}]",
    )
    .expect("yaml");
    let e = Rules::compile(&cfg).unwrap_err();
    assert_eq!(
        e.to_string(),
        "routing.rules[0].target: \"sip:10.0.0.1;transport=sctp\" is not an IP-literal SIP URI"
    );
}
