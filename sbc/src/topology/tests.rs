//! The rewrite over whole messages, as the relay runs it: what an outside peer gets, and
//! that what it sends back reaches the inside as the inside wrote it.

use bytes::Bytes;
use kubesbc_crds::config::{InsideConfig, TopologyConfig, Transport};

use super::*;

/// An sbc at 203.0.113.9 outside, 10.1.2.3 (pod) and `sbc.voice.svc` inside 10.0.0.0/8.
fn local() -> Local {
    let mut cfg = crate::config::from_listeners(vec![
        crate::config::parse_listen("udp:0.0.0.0:5060").expect("listener"),
    ])
    .expect("config");
    cfg.listeners[0].advertise = Some("203.0.113.9".into());
    cfg.relay.inside = Some(InsideConfig {
        address: Some("sbc.voice.svc:5060".into()),
        networks: vec!["10.0.0.0/8".into()],
    });
    let bound = [(Transport::Udp, "0.0.0.0:5060".parse().expect("addr"))];
    Local::new(&cfg, &bound, Some("10.1.2.3".parse().expect("ip")))
}

fn stage(keys: &[&str]) -> Topology {
    let keys = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    Topology::new(&TopologyConfig::default(), keys)
}

fn peer(a: &str) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: a.parse().expect("addr"),
        flow: None,
    }
}

const PHONE: &str = "198.51.100.7:5060";
const PBX: &str = "10.9.0.1:5060";
const KEY: &str = "0123456789abcdef-key-one";

fn msg(text: &str) -> Message {
    let text = text.replace('\n', "\r\n");
    Message::parse(Bytes::from(text), usize::MAX).expect("test message parses")
}

fn reparse(out: Vec<u8>) -> Message {
    Message::parse(Bytes::from(out), usize::MAX).expect("rewritten message parses")
}

fn all(m: &Message, h: HeaderName) -> Vec<String> {
    m.values(h)
        .map(|s| String::from_utf8_lossy(m.slice(s)).into_owned())
        .collect()
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.bytes()).into_owned()
}

/// The URI of the first Contact of `m` (where the peer sends its in-dialog requests).
fn contact_target(m: &Message) -> String {
    let contact = all(m, HeaderName::Contact).remove(0);
    contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .expect("a URI")
        .to_owned()
}

/// The trunk, and [`INVITE_TO_TRUNK`] as it gets it through `top`.
fn trunk_sees_invite(top: &Topology, l: &Local) -> (Peer, Message) {
    let trunk = peer("198.51.100.20:5060");
    let inv = reparse(
        top.outbound(&msg(INVITE_TO_TRUNK), &trunk, l)
            .expect("hidden"),
    );
    (trunk, inv)
}

/// [`OK_TO_PHONE`] as the phone gets it through `top`.
fn phone_sees_ok(top: &Topology, l: &Local) -> Message {
    reparse(
        top.outbound(&msg(OK_TO_PHONE), &peer(PHONE), l)
            .expect("hidden"),
    )
}

/// What the core writes towards the phone: the 200 of a call from outside.
const OK_TO_PHONE: &str = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKphone1;rport=5060
Record-Route: <sip:10.0.0.5;lr>, <sip:sbc.voice.svc:5060;lr>
Record-Route: <sip:203.0.113.9:5060;lr>
From: <sip:alice@example.com>;tag=a1
To: <sip:100@example.com>;tag=b1
Call-ID: CF-abc@phone
CSeq: 1 INVITE
Contact: <sip:100@10.9.0.1:5060;transport=udp>;expires=60
Content-Length: 5

v=0
";

#[test]
fn a_response_to_an_outside_caller_names_only_the_sbc() {
    let (top, l) = (stage(&[KEY]), local());
    let out = top
        .outbound(&msg(OK_TO_PHONE), &peer(PHONE), &l)
        .expect("rewritten");
    let m = reparse(out);
    let t = text(&m);
    assert!(
        !t.contains("10.") && !t.contains("sbc.voice"),
        "inside leaked:\n{t}"
    );
    assert_eq!(m.call_id(), Some(&b"abc@phone"[..]));
    let rr = all(&m, HeaderName::RecordRoute);
    assert_eq!(rr.len(), 1, "{rr:?}");
    assert!(rr[0].starts_with("<sip:203.0.113.9:5060;lr;kth="), "{rr:?}");
    let contact = all(&m, HeaderName::Contact);
    assert!(
        contact[0].starts_with("<sip:203.0.113.9:5060;kth="),
        "{contact:?}"
    );
    assert!(contact[0].ends_with(">;expires=60"), "{contact:?}");
    // The caller's Via is its own, and the body is untouched.
    assert_eq!(all(&m, HeaderName::Via).len(), 1);
    assert_eq!(m.body(), b"v=0\r\n");
}

#[test]
fn the_callers_in_dialog_request_reaches_the_inside_as_the_inside_wrote_it() {
    let (top, l) = (stage(&[KEY]), local());
    let ok = phone_sees_ok(&top, &l);
    let target = contact_target(&ok);
    let route = all(&ok, HeaderName::RecordRoute).remove(0);
    let bye = format!(
        "BYE {target} SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKphone2
Route: {route}
From: <sip:alice@example.com>;tag=a1
To: <sip:100@example.com>;tag=b1
Call-ID: abc@phone
CSeq: 2 BYE
Content-Length: 0

"
    );
    let inside = reparse(
        top.inbound(&msg(&bye), &peer(PHONE), &l)
            .expect("verifies")
            .expect("rewritten"),
    );
    assert_eq!(inside.request_uri(), b"sip:100@10.9.0.1:5060;transport=udp");
    assert_eq!(inside.call_id(), Some(&b"CF-abc@phone"[..]));
    // The caller's Route is the Record-Route reversed: the sbc's outside entry first.
    assert_eq!(
        all(&inside, HeaderName::Route),
        [
            "<sip:203.0.113.9:5060;lr>",
            "<sip:sbc.voice.svc:5060;lr>",
            "<sip:10.0.0.5;lr>"
        ]
    );
    assert_eq!(
        all(&inside, HeaderName::Via),
        ["SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKphone2"]
    );
}

/// What the core writes towards a trunk: an INVITE a PBX started.
const INVITE_TO_TRUNK: &str = "INVITE sip:+15551234@198.51.100.20 SIP/2.0
Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKsbc1
Via: SIP/2.0/UDP 10.9.0.1:5060;branch=z9hG4bKpbx1;received=10.9.0.1
Record-Route: <sip:203.0.113.9:5060;lr>, <sip:sbc.voice.svc:5060;lr>
Max-Forwards: 69
From: <sip:100@pbx.voice.svc>;tag=p1
To: <sip:+15551234@198.51.100.20>
Call-ID: 77@10.9.0.1
CSeq: 1 INVITE
Contact: <sip:100@10.9.0.1:5060>
Content-Length: 0

";

#[test]
fn a_request_to_a_trunk_carries_the_inside_sealed() {
    let (top, l) = (stage(&[KEY]), local());
    let trunk = peer("198.51.100.20:5060");
    let m = reparse(
        top.outbound(&msg(INVITE_TO_TRUNK), &trunk, &l)
            .expect("hidden"),
    );
    let t = text(&m);
    assert!(
        !t.contains("10.") && !t.contains("sbc.voice"),
        "inside leaked:\n{t}"
    );
    let via = all(&m, HeaderName::Via);
    assert_eq!(via.len(), 1, "{via:?}");
    assert!(via[0].starts_with("SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKsbc1;kth="));
    let cid = m.call_id().expect("Call-ID");
    assert!(
        cid.starts_with(INSIDE_MARK),
        "{}",
        String::from_utf8_lossy(cid)
    );
    // Sealed, not encoded: the inside address is not in it, even as hex.
    assert!(
        !t.contains(&String::from_utf8_lossy(&hex(b"10.9.0.1")).into_owned()),
        "{t}"
    );
    // One Call-ID, one outside form: every message of the dialog carries the same.
    let again = reparse(
        top.outbound(&msg(INVITE_TO_TRUNK), &trunk, &l)
            .expect("hidden"),
    );
    assert_eq!(again.call_id(), Some(cid));
    assert_ne!(
        again.header_value(HeaderName::Via),
        m.header_value(HeaderName::Via)
    );
    assert_eq!(all(&m, HeaderName::RecordRoute).len(), 1);
    assert_eq!(m.request_uri(), b"sip:+15551234@198.51.100.20");
}

#[test]
fn the_trunks_answer_and_bye_come_back_whole() {
    let (top, l) = (stage(&[KEY]), local());
    let (trunk, inv) = trunk_sees_invite(&top, &l);
    let via = all(&inv, HeaderName::Via).remove(0);
    let rr = all(&inv, HeaderName::RecordRoute).remove(0);
    let cid = String::from_utf8_lossy(inv.call_id().expect("Call-ID")).into_owned();
    let ok = format!(
        "SIP/2.0 200 OK
Via: {via}
Record-Route: <sip:edge.carrier.example;lr>, {rr}
From: <sip:100@pbx.voice.svc>;tag=p1
To: <sip:+15551234@198.51.100.20>;tag=t1
Call-ID: {cid}
CSeq: 1 INVITE
Contact: <sip:gw@198.51.100.20>
Content-Length: 0

"
    );
    let inside = reparse(
        top.inbound(&msg(&ok), &trunk, &l)
            .expect("ok")
            .expect("rewritten"),
    );
    assert_eq!(
        all(&inside, HeaderName::Via),
        [
            "SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKsbc1",
            "SIP/2.0/UDP 10.9.0.1:5060;branch=z9hG4bKpbx1;received=10.9.0.1"
        ]
    );
    assert_eq!(
        all(&inside, HeaderName::RecordRoute),
        [
            "<sip:edge.carrier.example;lr>",
            "<sip:203.0.113.9:5060;lr>",
            "<sip:sbc.voice.svc:5060;lr>"
        ]
    );
    assert_eq!(inside.call_id(), Some(&b"77@10.9.0.1"[..]));

    // The trunk hangs up: its Route is the Record-Route as it got it in the INVITE.
    let target = contact_target(&inv);
    let bye = format!(
        "BYE {target} SIP/2.0
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bKgw9
Route: {rr}
From: <sip:+15551234@198.51.100.20>;tag=t1
To: <sip:100@pbx.voice.svc>;tag=p1
Call-ID: {cid}
CSeq: 9 BYE
Content-Length: 0

"
    );
    let inside = reparse(
        top.inbound(&msg(&bye), &trunk, &l)
            .expect("ok")
            .expect("rewritten"),
    );
    assert_eq!(inside.request_uri(), b"sip:100@10.9.0.1:5060");
    assert_eq!(
        all(&inside, HeaderName::Route),
        ["<sip:203.0.113.9:5060;lr>", "<sip:sbc.voice.svc:5060;lr>"]
    );
    assert_eq!(inside.call_id(), Some(&b"77@10.9.0.1"[..]));
}

fn bye_to(target: &str) -> String {
    format!(
        "BYE {target} SIP/2.0
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKx
From: <sip:a@example.com>;tag=a
To: <sip:b@example.com>;tag=b
Call-ID: abc
CSeq: 3 BYE
Content-Length: 0

"
    )
}

#[test]
fn a_forged_or_tampered_value_is_refused() {
    let (top, l) = (stage(&[KEY]), local());
    let target = contact_target(&phone_sees_ok(&top, &l));
    // One hex digit changed in the sealed target (a phone aiming at another inside host).
    let at = target.find("kth=").expect("kth") + 6;
    let mut bytes = target.into_bytes();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    let bye = bye_to(&tampered);
    assert_eq!(
        top.inbound(&msg(&bye), &peer(PHONE), &l),
        Err(Refused::BadToken)
    );
    // Not hex, and too short to carry a tag.
    for bad in [
        "sip:203.0.113.9:5060;kth=zz",
        "sip:203.0.113.9:5060;kth=00ff",
        "sip:203.0.113.9:5060;kth",
    ] {
        assert_eq!(
            top.inbound(&msg(&bye_to(bad)), &peer(PHONE), &l),
            Err(Refused::BadToken),
            "{bad}"
        );
    }
    // A value signed with another key.
    let other = stage(&["another-key-0123456789"]);
    let target = contact_target(&phone_sees_ok(&other, &l));
    assert_eq!(
        top.inbound(&msg(&bye_to(&target)), &peer(PHONE), &l),
        Err(Refused::BadToken)
    );
}

#[test]
fn a_via_value_cannot_stand_in_for_a_contact() {
    let (top, l) = (stage(&[KEY]), local());
    let (trunk, inv) = trunk_sees_invite(&top, &l);
    let via = all(&inv, HeaderName::Via).remove(0);
    let tok = via.split("kth=").nth(1).expect("kth");
    let target = format!("sip:203.0.113.9:5060;kth={tok}");
    assert_eq!(
        top.inbound(&msg(&bye_to(&target)), &trunk, &l),
        Err(Refused::BadToken)
    );
}

#[test]
fn keys_rotate_the_new_one_signs_and_the_old_one_still_verifies() {
    let l = local();
    let (old, rotated, new_only) = (
        stage(&[KEY]),
        stage(&["the-new-key-0123456789", KEY]),
        stage(&["the-new-key-0123456789"]),
    );
    let target_of = |top: &Topology| contact_target(&phone_sees_ok(top, &l));
    // A dialog set up before the rotation goes on after it.
    let before = target_of(&old);
    assert!(
        rotated
            .inbound(&msg(&bye_to(&before)), &peer(PHONE), &l)
            .is_ok()
    );
    // After it, values are signed with the new key: the old key alone refuses them, the
    // new key alone (the old one dropped) takes them.
    let after = target_of(&rotated);
    assert_eq!(
        old.inbound(&msg(&bye_to(&after)), &peer(PHONE), &l),
        Err(Refused::BadToken)
    );
    assert!(
        new_only
            .inbound(&msg(&bye_to(&after)), &peer(PHONE), &l)
            .is_ok()
    );
}

#[test]
fn messages_to_and_from_inside_peers_are_left_alone() {
    let (top, l) = (stage(&[KEY]), local());
    assert_eq!(top.outbound(&msg(OK_TO_PHONE), &peer(PBX), &l), None);
    assert_eq!(top.inbound(&msg(INVITE_TO_TRUNK), &peer(PBX), &l), Ok(None));
}

#[test]
fn a_register_keeps_its_contact() {
    let (top, l) = (stage(&[KEY]), local());
    let ok = "SIP/2.0 200 OK
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKr1
From: <sip:alice@example.com>;tag=a1
To: <sip:alice@example.com>;tag=r1
Call-ID: CF-reg1
CSeq: 1 REGISTER
Contact: <sip:alice@198.51.100.7:5060>;expires=300
Content-Length: 0

";
    let m = reparse(
        top.outbound(&msg(ok), &peer(PHONE), &l)
            .expect("Call-ID mapped"),
    );
    assert_eq!(
        all(&m, HeaderName::Contact),
        ["<sip:alice@198.51.100.7:5060>;expires=300"]
    );
    assert_eq!(m.call_id(), Some(&b"reg1"[..]));
}

#[test]
fn call_ids_map_both_ways() {
    let top = stage(&[KEY]);
    assert_eq!(&*top.inside_call_id(b"abc"), b"CF-abc");
    assert_eq!(top.outside_call_id(b"CF-abc"), b"abc");
    // A call started inside comes back from its outside form, under any key.
    let outside = top.outside_call_id(b"77@10.9.0.1");
    assert_eq!(&*top.inside_call_id(&outside), b"77@10.9.0.1");
    let rotated = stage(&["the-new-key-0123456789", KEY]);
    assert_eq!(&*rotated.inside_call_id(&outside), b"77@10.9.0.1");
    // The mark with something no key sealed is an outside Call-ID like any other.
    assert_eq!(&*top.inside_call_id(b"kTh-xyz"), b"CF-kTh-xyz");
    let no_prefix = Topology::new(
        &TopologyConfig {
            call_id_prefix: String::new(),
            ..TopologyConfig::default()
        },
        vec![KEY.as_bytes().to_vec()],
    );
    assert_eq!(&*no_prefix.inside_call_id(b"abc"), b"abc");
}

#[test]
fn without_hiding_only_the_call_id_changes() {
    let l = local();
    let cfg = TopologyConfig {
        hide: false,
        ..TopologyConfig::default()
    };
    let top = Topology::new(&cfg, vec![KEY.as_bytes().to_vec()]);
    let m = reparse(
        top.outbound(&msg(OK_TO_PHONE), &peer(PHONE), &l)
            .expect("Call-ID"),
    );
    assert_eq!(m.call_id(), Some(&b"abc@phone"[..]));
    assert_eq!(all(&m, HeaderName::RecordRoute).len(), 3);
    assert_eq!(
        all(&m, HeaderName::Contact),
        ["<sip:100@10.9.0.1:5060;transport=udp>;expires=60"]
    );
}
