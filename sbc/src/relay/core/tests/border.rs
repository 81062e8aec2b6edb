//! The inside and the outside (`relay.inside`, docs/topology.md): towards a backend the Via
//! carries the pod's own address and the Record-Route set has the shared inside address on
//! top of the outside one; in-dialog requests carrying both entries are ours from either side.

use super::*;
use kubesbc_crds::config::InsideConfig;

const POD: &str = "10.1.2.3";
const INSIDE: &str = "sbc.voice.svc.cluster.local:5060";
const OUTSIDE: &str = "203.0.113.9";

/// Backends A, B and C (127.0.0.1) inside; the caller (10.0.0.9) outside; the sbc bound to
/// all addresses in a pod with POD_IP, advertising the outside address.
fn border() -> Harness {
    let mut h = Harness::new();
    for l in &mut h.cfg.listeners {
        l.address = "0.0.0.0:5060".parse().expect("addr");
        l.advertise = Some(OUTSIDE.into());
    }
    h.cfg.relay.inside = Some(InsideConfig {
        address: Some(INSIDE.into()),
        networks: vec!["127.0.0.0/8".into()],
    });
    h.cfg.validate().expect("valid");
    let bound = [
        (Transport::Udp, "0.0.0.0:5060".parse().expect("addr")),
        (Transport::Tcp, "0.0.0.0:5060".parse().expect("addr")),
    ];
    h.local = Local::new(&h.cfg, &bound, Some(POD.parse().expect("ip")));
    h
}

fn headers<'a>(s: &'a Sent, name: &str) -> Vec<&'a str> {
    s.data
        .split("\r\n")
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

fn bye(ruri: &str, via: &str, routes: &str, from_tag: &str, to_tag: &str) -> String {
    format!(
        "BYE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bK{from_tag}\r\nRoute: {routes}\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.com>;tag={from_tag}\r\nTo: <sip:y@example.com>;tag={to_tag}\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn towards_a_backend_via_names_the_pod_and_record_route_both_sides() {
    let mut h = border();
    let fwd = h.request(INVITE).only_to(A).clone();
    let via = fwd.header("Via").expect("a Via");
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP {POD}:5060;branch=")),
        "{via}"
    );
    assert_eq!(
        headers(&fwd, "Record-Route"),
        vec![
            format!("<sip:{INSIDE};lr>"),
            format!("<sip:{OUTSIDE}:5060;lr>")
        ],
        "the inside entry faces the backend, the outside one the caller"
    );
    // The caller's responses carry our outside Via only (ours was removed).
    let o = h.answer(&fwd, 200, "OK", Some("t1"));
    let ok = o.only_to(CALLER);
    assert!(ok.line().starts_with("SIP/2.0 200"), "{}", ok.line());
    assert!(!ok.data.contains(POD), "{}", ok.data);
}

#[test]
fn the_backends_bye_through_both_entries_reaches_the_caller() {
    let mut h = border();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 200, "OK", Some("t1"));
    let rr = headers(&fwd, "Record-Route").join(", ");
    let b = bye("sip:alice@10.0.0.9:5090", A, &rr, "t1", "f1");
    let o = h.request_from(&b, udp(A));
    let out = o.only_to(CALLER);
    assert!(out.line().starts_with("BYE "), "{}", out.line());
    assert_eq!(out.header("Route"), None, "both entries are ours: popped");
    let via = out.header("Via").expect("a Via");
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP {OUTSIDE}:5060;")),
        "{via}"
    );
}

#[test]
fn the_callers_bye_through_the_reversed_entries_reaches_the_backend() {
    let mut h = border();
    let fwd = h.request(INVITE).only_to(A).clone();
    h.answer(&fwd, 200, "OK", Some("t1"));
    let routes = format!("<sip:{OUTSIDE}:5060;lr>, <sip:{INSIDE};lr>");
    let b = bye(
        &format!("sip:bob@{A}"),
        "10.0.0.9:5090",
        &routes,
        "f1",
        "t1",
    );
    let o = h.request(&b);
    let out = o.only_to(A);
    assert!(out.line().starts_with("BYE "), "{}", out.line());
    assert_eq!(out.header("Route"), None);
    assert!(out.header("Via").is_some_and(|v| v.contains(POD)));
}

#[test]
fn a_call_between_two_inside_peers_gets_one_inside_record_route() {
    let mut h = border();
    let invite = INVITE.replace("10.0.0.9:5090", "127.0.0.2:5090");
    let fwd = h
        .request_from(&invite, udp("127.0.0.2:5090"))
        .only_to(A)
        .clone();
    assert_eq!(
        headers(&fwd, "Record-Route"),
        vec![format!("<sip:{INSIDE};lr>")]
    );
}

#[test]
fn without_an_inside_one_address_serves_both_sides() {
    let mut h = Harness::new();
    let fwd = h.request(INVITE).only_to(A).clone();
    assert!(
        fwd.header("Via")
            .is_some_and(|v| v.contains("127.0.0.1:5060"))
    );
    assert_eq!(headers(&fwd, "Record-Route").len(), 1);
}
