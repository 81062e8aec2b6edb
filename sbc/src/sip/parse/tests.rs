//! Tests of `sip/parse`.

use super::*;

fn msg(s: &str) -> Result<Message, ParseError> {
    Message::parse(Bytes::copy_from_slice(s.as_bytes()), 65535)
}

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1, SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK2\r\n\
v: SIP/2.0/UDP 10.0.0.3;branch=z9hG4bK3\r\n\
From: \"A, B\" <sip:alice@example.com>;tag=1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: abc@host\r\n\
CSeq: 1 INVITE\r\n\
Subject: folded\r\n  continued\r\n\
Content-Length: 4\r\n\r\nbodyEXTRA";

#[test]
fn parses_request_headers_and_body() {
    let m = msg(INVITE).unwrap();
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.request_uri(), b"sip:bob@example.com");
    assert_eq!(m.call_id(), Some(&b"abc@host"[..]));
    assert_eq!(m.cseq(), Some((1, &b"INVITE"[..])));
    assert_eq!(m.body(), b"body");
    let vias: Vec<_> = m
        .values(HeaderName::Via)
        .map(|s| m.slice(s).to_vec())
        .collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[1], b"SIP/2.0/TCP 10.0.0.2;branch=z9hG4bK2");
    let subj = m.header_value_named("subject").unwrap();
    assert!(subj.starts_with(b"folded") && subj.ends_with(b"continued"));
    let from: Vec<_> = m.values(HeaderName::From).collect();
    assert_eq!(from.len(), 1, "comma inside quotes does not split");
}

#[test]
fn parses_response() {
    let m = msg("SIP/2.0 180 Ringing\r\nCall-ID: x\r\n\r\n").unwrap();
    assert_eq!(m.code(), Some(180));
    assert!(m.body().is_empty());
}

#[test]
fn defects_are_classified() {
    let cases = [
        ("\x00\x01garbage", ParseError::Garbage),
        ("hello world\r\n\r\n", ParseError::Garbage),
        (
            "INVITE sip:a SIP/3.0\r\nCall-ID: x\r\n\r\n",
            ParseError::BadVersion,
        ),
        (
            "INVITE sip:a SIP/2.0\r\nContent-Length: x\r\n\r\n",
            ParseError::BadContentLength,
        ),
        (
            "INVITE sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nshort",
            ParseError::BadContentLength,
        ),
        (
            "INVITE sip:a SIP/2.0\r\nno colon here\r\n\r\n",
            ParseError::BadHeader,
        ),
        (
            "INVITE sip:a SIP/2.0\r\nCall-ID: x\r\n",
            ParseError::Truncated,
        ),
        ("SIP/2.0 99 Low\r\n\r\n", ParseError::BadStatus),
    ];
    for (text, want) in cases {
        assert_eq!(msg(text).unwrap_err(), want, "{text:?}");
    }
    let many = format!(
        "OPTIONS sip:a SIP/2.0\r\n{}\r\n",
        "X-A: 1\r\n".repeat(MAX_HEADERS + 1)
    );
    assert_eq!(msg(&many).unwrap_err(), ParseError::TooManyHeaders);
}

#[test]
fn never_panics_on_prefixes() {
    // Every prefix of a valid message parses or fails cleanly.
    for n in 0..INVITE.len() {
        let _ = Message::parse(Bytes::copy_from_slice(&INVITE.as_bytes()[..n]), 65535);
    }
}

#[test]
fn parse_checked_gives_the_same_message_without_repeating_value_checks() {
    let strict = msg(INVITE).expect("valid");
    let lax =
        Message::parse_checked(Bytes::copy_from_slice(INVITE.as_bytes()), 65535).expect("valid");
    assert_eq!(lax.start, strict.start);
    assert_eq!(lax.body, strict.body);
    let spans = |m: &Message| {
        m.headers
            .iter()
            .map(|h| (h.name, h.value))
            .collect::<Vec<_>>()
    };
    assert_eq!(spans(&lax), spans(&strict));
    // A value check the relay made (and answered 400 for) is not made again...
    let two_froms = "INVITE sip:a SIP/2.0\r\nFrom: <sip:a>, <sip:b>\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        msg(two_froms).unwrap_err(),
        ParseError::Invalid("Multiple From Values")
    );
    assert!(Message::parse_checked(Bytes::from_static(two_froms.as_bytes()), 65535).is_ok());
    // ...but the framing still is.
    let short = "INVITE sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nshort";
    assert_eq!(
        Message::parse_checked(Bytes::from_static(short.as_bytes()), 65535).unwrap_err(),
        ParseError::BadContentLength
    );
}
