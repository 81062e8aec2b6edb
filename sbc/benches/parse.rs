//! Parsing and relaying one INVITE: our zero-copy parser against rsip, the field's SIP crate
//! (`cargo bench -p kubesbc-sbc --bench parse`). A plain timing loop: nanoseconds per message.
//! The figures and the decision they led to are in docs/parser.md.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use sbc::sip::Message;
use sbc::sip::build::{self, RequestEdits};

const INVITE: &str = "INVITE sip:service@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-5263-1-0\r\n\
From: sipp <sip:sipp@127.0.0.1:5090>;tag=5263SIPpTag001\r\n\
To: service <sip:service@127.0.0.1:5060>\r\n\
Call-ID: 1-5263@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:sipp@127.0.0.1:5090;transport=UDP>\r\n\
Max-Forwards: 70\r\n\
Subject: kubesbc bench\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\r\n\
v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

fn time(name: &str, n: u32, mut f: impl FnMut()) {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{name:<48} {ns:>8.0} ns/message");
}

fn main() {
    const N: u32 = 300_000;
    let bytes = Bytes::from_static(INVITE.as_bytes());
    time("kubesbc: parse", N, || {
        black_box(Message::parse(black_box(bytes.clone()), 65535).ok());
    });
    time("kubesbc: parse + relay edits (Via, RR, MF)", N, || {
        let m = Message::parse(black_box(bytes.clone()), 65535).unwrap_or_else(|_| unreachable!());
        let out = build::relay_request(
            &m,
            &RequestEdits {
                via: b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkS0123456789abcdef.1",
                record_route: Some(b"<sip:127.0.0.1:5060;lr>"),
                max_forwards: 69,
                ..Default::default()
            },
        );
        black_box(out);
    });
    time("rsip 0.4: parse (SipMessage::try_from)", N, || {
        black_box(rsip::SipMessage::try_from(black_box(INVITE.as_bytes())).ok());
    });
    time("rsip 0.4: parse + typed Via + to bytes", N, || {
        let m = rsip::SipMessage::try_from(black_box(INVITE.as_bytes())).ok();
        if let Some(rsip::SipMessage::Request(r)) = m {
            use rsip::prelude::*;
            black_box(r.via_header().ok().and_then(|v| v.typed().ok()));
            black_box(Vec::<u8>::from(rsip::SipMessage::Request(r)));
        }
    });
}
