//! RFC 4475 (SIP torture tests) and RFC 5118 (IPv6 torture tests) against the parser and the
//! per-request checks that follow it (sanity, the guard's Proxy-Require check): every message
//! of the RFCs, with the outcome a caller sees. `tests/tests/rfc4475.rs` sends the same table
//! through a running sbc.

use bytes::Bytes;

use super::torture::{CASES, Case, Expect, RFC5118};
use super::uri::{Uri, Via};
use super::{HeaderName, Message, Method};

/// What the sbc does with `bytes` received in one datagram, up to relaying.
fn outcome(bytes: &'static [u8]) -> Expect {
    match Message::parse(Bytes::from_static(bytes), 65535) {
        Err(e) => match e.response() {
            Some((code, reason)) if !bytes.starts_with(b"SIP/") => Expect::Refused(code, reason),
            _ => Expect::Dropped,
        },
        Ok(m) if !m.is_request() => Expect::Response,
        Ok(m) => match crate::sanity::check_request(&m) {
            Err(r) => Expect::Refused(r.code, r.reason),
            Ok(_) if crate::guard::extensions::unsupported(&m).is_some() => {
                Expect::Refused(420, "Bad Extension")
            }
            Ok(_) => Expect::Relayed,
        },
    }
}

fn parse(bytes: &'static [u8]) -> Message {
    Message::parse(Bytes::from_static(bytes), 65535).expect("parses")
}

/// The bytes of the case `name` of `table`.
fn case_in(table: &[Case], name: &str) -> &'static [u8] {
    table
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.bytes)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// An RFC 4475 case.
fn case(name: &str) -> &'static [u8] {
    case_in(CASES, name)
}

#[test]
fn rfc4475_every_message_has_the_outcome_in_the_table() {
    let mut wrong = Vec::new();
    for c in CASES {
        let got = outcome(c.bytes);
        if got != c.expect {
            wrong.push(format!(
                "{} {} ({}): expected {:?}, got {:?}",
                c.section, c.name, c.title, c.expect, got
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(CASES.len(), 49, "every message of RFC 4475 section 3");
}

#[test]
fn rfc4475_valid_messages_keep_their_meaning() {
    // 3.1.1.1: folding, compact forms, odd white space, leading zeros.
    let m = parse(case("wsinv"));
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.call_id(), Some(&b"wsinv.ndaksdj@192.0.2.1"[..]));
    assert_eq!(m.cseq(), Some((9, &b"INVITE"[..])));
    assert_eq!(m.header_value(HeaderName::MaxForwards), Some(&b"0068"[..]));
    let vias: Vec<_> = m.values(HeaderName::Via).collect();
    assert_eq!(vias.len(), 3);
    let top = Via::parse(m.slice(vias[0])).expect("top Via");
    assert_eq!((top.transport, top.host), (&b"UDP"[..], &b"192.0.2.2"[..]));
    assert_eq!(top.branch(), Some(&b"390skdjuw"[..]));
    let second = Via::parse(m.slice(vias[1])).expect("second Via");
    assert_eq!(second.branch(), Some(&b"z9hG4bK9ikj8"[..]));
    assert_eq!(m.body().len(), 150);
    let to = Uri::parse(super::uri::name_addr_uri(
        m.header_value(HeaderName::To).unwrap(),
    ));
    assert_eq!(to.unwrap().host, b"chair-dnrc.example.com");
    assert_eq!(
        super::uri::tag(m.header_value(HeaderName::From).unwrap()),
        Some(&b"98asjd8"[..])
    );

    // 3.1.1.2: an extension method is kept as written; escaped controls in a quoted string.
    let m = parse(case("intmeth"));
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(
        m.method_token(),
        b"!interesting-Method0123456789_*+`.%indeed'~"
    );
    assert_eq!(Uri::parse(m.request_uri()).unwrap().host, b"example.com");

    // 3.1.1.5: RE%47IST%45R is not REGISTER; C%6Fntact is not Contact.
    let m = parse(case("esc02"));
    assert_eq!(m.method(), Some(Method::Other));
    assert_eq!(m.values(HeaderName::Contact).count(), 2);

    // 3.1.1.8: the octets after Content-Length are not part of the message.
    let m = parse(case("dblreq"));
    assert_eq!(m.method(), Some(Method::Register));
    assert!(m.body().is_empty());

    // 3.1.1.10: unknown transports in lower Vias are relayed as they are.
    assert_eq!(parse(case("transports")).values(HeaderName::Via).count(), 5);

    // 3.1.1.11: a binary multipart body, bare CR and LF included.
    let m = parse(case("mpart01"));
    assert_eq!(
        m.body().len(),
        crate::sip::parse::parse_u32(m.header_value(HeaderName::ContentLength).unwrap()).unwrap()
            as usize
    );

    // 3.1.1.13: an empty reason phrase.
    assert_eq!(parse(case("noreason")).code(), Some(100));
}

/// An RFC 5118 case.
fn v6(name: &str) -> &'static [u8] {
    case_in(RFC5118, name)
}

#[test]
fn rfc5118_ipv6_references() {
    for c in RFC5118 {
        assert_eq!(
            outcome(c.bytes),
            c.expect,
            "{} (RFC 5118 {})",
            c.name,
            c.section
        );
    }
    // 4.1: IPv6 references in the Request-URI, Via and Contact.
    let m = parse(v6("ipv6-good"));
    assert_eq!(Uri::parse(m.request_uri()).unwrap().host, b"2001:db8::10");
    let top = Via::parse(m.slice(m.top_via().unwrap())).unwrap();
    assert_eq!((top.host, top.port), (&b"2001:db8::9:1"[..], None));
    // 4.3: the port inside the brackets is part of the address (no port).
    let m = parse(v6("port-ambiguous"));
    let u = Uri::parse(m.request_uri()).unwrap();
    assert_eq!((u.host, u.port), (&b"2001:db8::10:5070"[..], None));
    // 4.4: the port after the brackets.
    let m = parse(v6("port-unambiguous"));
    let u = Uri::parse(m.request_uri()).unwrap();
    assert_eq!((u.host, u.port), (&b"2001:db8::10"[..], Some(5070)));
    // 4.5: received with and without brackets: the top Via still parses.
    for (name, received) in [
        ("via-received-param-with-delim", "[2001:db8::9:255]"),
        ("via-received-param-no-delim", "2001:db8::9:255"),
    ] {
        let m = parse(v6(name));
        let top = Via::parse(m.slice(m.top_via().unwrap())).unwrap();
        assert_eq!(top.param("received"), Some(Some(received.as_bytes())));
    }
    // 4.6 and 4.8: IPv6 addresses in the SDP body (no brackets there) are the body's.
    for name in ["ipv6-in-sdp", "mult-ip-in-sdp"] {
        let m = parse(v6(name));
        let len = m.header_value(HeaderName::ContentLength).unwrap();
        assert_eq!(
            m.body().len(),
            crate::sip::parse::parse_u32(len).unwrap() as usize
        );
        assert!(m.body().ends_with(b"H263-1998/90000\r\n"), "{name}");
    }
    // 4.7: IPv4 and IPv6 in one Via list.
    let p = parse(v6("mult-ip-in-header"));
    let hosts: Vec<_> = p
        .values(HeaderName::Via)
        .map(|v| Via::parse(p.slice(v)).unwrap().host.to_vec())
        .collect();
    assert_eq!(
        hosts,
        [&b"2001:db8::9:1"[..], b"192.0.2.1", b"2001:db8::9:255"]
    );
}

#[test]
fn malformed_headers_get_400_with_the_defect_named() {
    const BASE: &str = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n";
    let cases: &[(&str, &str)] = &[
        ("From: <sip:z@y>;tag=2\r\n", "Multiple From Headers"),
        ("t: <sip:z@y>\r\n", "Multiple To Headers"),
        ("i: d\r\n", "Multiple Call-ID Headers"),
        ("CSeq: 2 OPTIONS\r\n", "Multiple CSeq Headers"),
        ("Max-Forwards: 5\r\n", "Multiple Max-Forwards Headers"),
        (
            "Content-Type: a/b\r\nc: a/b\r\n",
            "Multiple Content-Type Headers",
        ),
        ("X-A: 1\0 2\r\n", "Control Character in Header"),
        ("X-A: bell\x07\r\n", "Control Character in Header"),
        ("X-A: del\x7f\r\n", "Control Character in Header"),
        ("X-A: a\rb\r\n", "Control Character in Header"),
        (
            "Contact: \"Bob <sip:b@c>\r\n",
            "Unterminated Quoted String in Contact",
        ),
        (
            "Route: <sip:p@q;lr\r\n",
            "Unterminated Quoted String in Route",
        ),
        (
            "Contact: <sip:b@c>;;expires=3\r\n",
            "Empty Parameter in Contact",
        ),
        ("Contact: <sip:b@c>,\r\n", "Empty Parameter in Contact"),
    ];
    for (extra, reason) in cases {
        let text = format!("{BASE}{extra}Content-Length: 0\r\n\r\n");
        let err = Message::parse(Bytes::from(text.clone()), 65535).unwrap_err();
        assert_eq!(err.response(), Some((400, *reason)), "{text:?}");
    }
    // A quoted-pair may escape a control character (RFC 4475 3.1.1.2), and quotes do not
    // have to balance in a header that has no quoted strings.
    for ok in [
        "Contact: \"a \\\x00 b\" <sip:b@c>\r\n",
        "Subject: he said \"hi\r\n",
        "X-List: ;;,,;\r\n",
    ] {
        let text = format!("{BASE}{ok}Content-Length: 0\r\n\r\n");
        assert!(
            Message::parse(Bytes::from(text.clone()), 65535).is_ok(),
            "{text:?}"
        );
    }
    // A From or To with two values, a Call-ID with a comma.
    for (from, to, reason) in [
        (
            "From: <sip:x@y>;tag=1",
            "From: <sip:x@y>;tag=1, <sip:w@y>",
            "Multiple From Values",
        ),
        (
            "To: <sip:a@b>",
            "To: sip:a@b, sip:c@d",
            "Multiple To Values",
        ),
        ("Call-ID: c", "Call-ID: c, d", "Bad Call-ID"),
    ] {
        let text = format!("{}Content-Length: 0\r\n\r\n", BASE.replace(from, to));
        let err = Message::parse(Bytes::from(text.clone()), 65535).unwrap_err();
        assert_eq!(err.response(), Some((400, reason)), "{text:?}");
    }
}
