use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kubesbc_crds::config::Transport;

use super::*;
use crate::observe::registrations::RegistrationTracker;

const CALLER: &str = "192.0.2.10:5090";
const B1: &str = "127.0.0.1:5071";
const B2: &str = "127.0.0.1:5072";

fn peer(a: &str) -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: a.parse().unwrap(),
        flow: None,
    }
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn invite(to_tag: &str) -> String {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5090;branch=z9hG4bK1\r\nFrom: \"Alice\" <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>{to_tag}\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\nX-Tenant-ID: acme\r\nContent-Length: 0\r\n\r\n"
    )
}

fn response(code: u16, reason: &str, method: &str) -> String {
    format!(
        "SIP/2.0 {code} {reason}\r\nVia: SIP/2.0/UDP 192.0.2.10:5090;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b7\r\nCall-ID: call-1\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn bye() -> String {
    "BYE sip:bob@127.0.0.1:5072 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5090;branch=z9hG4bK2\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b7\r\nCall-ID: call-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n".to_owned()
}

/// Hands `f` the message `text` as the worker would: its bytes and what sniff read.
fn observed<R>(
    dir: Direction,
    p: &str,
    at: SystemTime,
    text: &str,
    f: impl FnOnce(&Seen<'_>) -> R,
) -> R {
    let data = Bytes::from(text.to_owned());
    let sniffed = crate::observe::sniff::sniff(&data).expect("a SIP start line");
    f(&Seen {
        direction: dir,
        peer: peer(p),
        at,
        data: &data,
        sniff: &sniffed,
    })
}

struct Feed {
    t: CdrTracker,
    now: SystemTime,
}

impl Feed {
    fn new() -> Feed {
        let dest: DestinationOf = Arc::new(|a: SocketAddr| {
            (a.port() == 5072).then(|| (1, "sip:127.0.0.1:5072".to_owned()))
        });
        Feed {
            t: CdrTracker::new(
                10,
                Duration::from_secs(3600),
                vec!["X-Tenant-ID".into()],
                "sbc-0".into(),
                dest,
            ),
            now: t0(),
        }
    }

    fn at(&mut self, ms: u64) -> &mut Self {
        self.now = t0() + Duration::from_millis(ms);
        self
    }

    fn msg(&mut self, dir: Direction, p: &str, text: &str) -> Effects {
        observed(dir, p, self.now, text, |s| self.t.on_message(s))
    }
}

#[test]
fn answered_call_with_failover_gives_one_call_record_at_the_bye() {
    let mut f = Feed::new();
    assert!(f.msg(Direction::In, CALLER, &invite("")).cdr.is_none());
    // Retransmission: ignored.
    f.msg(Direction::In, CALLER, &invite(""));
    f.msg(Direction::Out, B1, &invite(""));
    f.msg(Direction::Out, B1, &invite(""));
    f.msg(
        Direction::In,
        B1,
        &response(503, "Service Unavailable", "INVITE"),
    );
    f.msg(Direction::Out, B2, &invite(""));
    let fx = f
        .at(120)
        .msg(Direction::Out, CALLER, &response(180, "Ringing", "INVITE"));
    assert_eq!(fx.setup, Some(Duration::from_millis(120)));
    assert!(
        f.at(2000)
            .msg(Direction::Out, CALLER, &response(200, "OK", "INVITE"))
            .cdr
            .is_none()
    );
    assert_eq!(f.t.confirmed(), 1);
    assert_eq!(f.t.dialogs(f.now)[0].state, "confirmed");
    f.at(62_000).msg(Direction::In, CALLER, &bye());
    let cdr = f
        .at(62_010)
        .msg(Direction::Out, CALLER, &response(200, "OK", "BYE"))
        .cdr
        .expect("record at the 200 to the BYE");
    assert_eq!(cdr.record_type, "call");
    assert_eq!(cdr.disposition, "answered");
    assert_eq!(cdr.code, 200);
    assert_eq!(cdr.failover_attempts, 1);
    assert_eq!(cdr.backend.as_deref(), Some("sip:127.0.0.1:5072"));
    assert_eq!(cdr.set, Some(1));
    assert_eq!(cdr.tenant.as_deref(), Some("acme"));
    assert_eq!(cdr.caller, "sip:alice@example.com");
    assert_eq!(cdr.callee, "sip:bob@example.com");
    assert_eq!(cdr.from_tag.as_deref(), Some("a1"));
    assert_eq!(cdr.to_tag.as_deref(), Some("b7"));
    assert_eq!(cdr.source, CALLER);
    assert_eq!(cdr.ended_by, Some("caller"));
    assert_eq!(cdr.duration_secs, 60.01, "answer to the 200 of the BYE");
    assert_eq!(cdr.setup_ms, Some(120));
    assert_eq!(cdr.replica, "sbc-0");
    assert_eq!(f.t.confirmed(), 0);
}

#[test]
fn busy_is_an_attempt_record_at_the_final_response() {
    let mut f = Feed::new();
    f.msg(Direction::In, CALLER, &invite(""));
    f.msg(Direction::Out, B1, &invite(""));
    // What the backend sent is not what the caller saw: only responses sent count.
    assert!(
        f.msg(Direction::In, B1, &response(486, "Busy Here", "INVITE"))
            .cdr
            .is_none()
    );
    let cdr = f
        .msg(
            Direction::Out,
            CALLER,
            &response(486, "Busy Here", "INVITE"),
        )
        .cdr
        .unwrap();
    assert_eq!((cdr.record_type, cdr.disposition), ("attempt", "busy"));
    assert_eq!(cdr.reason, "Busy Here");
    assert_eq!(
        cdr.backend.as_deref(),
        Some(B1),
        "unknown destinations by address"
    );
    assert_eq!(
        (cdr.set, cdr.failover_attempts, cdr.duration_secs),
        (None, 0, 0.0)
    );
    assert!(f.t.dialogs(f.now).is_empty());
}

#[test]
fn in_dialog_requests_and_strays_open_nothing_and_the_table_is_bounded() {
    let mut f = Feed::new();
    f.msg(Direction::In, CALLER, &invite(";tag=x"));
    f.msg(Direction::Out, CALLER, &response(200, "OK", "INVITE"));
    assert!(f.t.dialogs(f.now).is_empty());
    for i in 0..15 {
        let text = invite("").replace("call-1", &format!("c{i}"));
        f.msg(Direction::In, CALLER, &text);
    }
    assert_eq!(f.t.dialogs(f.now).len(), 10);
    assert_eq!(f.t.overflow, 5);
}

#[test]
fn sweep_closes_unanswered_and_expired_calls() {
    let mut f = Feed::new();
    f.msg(Direction::In, CALLER, &invite(""));
    let out = f.t.sweep(t0() + Duration::from_secs(301));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].disposition, "no_final");
    f.msg(Direction::In, CALLER, &invite(""));
    f.msg(Direction::Out, CALLER, &response(200, "OK", "INVITE"));
    assert!(f.t.sweep(t0() + Duration::from_secs(3000)).is_empty());
    let out = f.t.sweep(t0() + Duration::from_secs(3601));
    assert_eq!(
        (out[0].disposition, out[0].ended_by),
        ("expired", Some("timeout"))
    );
}

fn register(expires: u32, cseq: u32) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5090;branch=z9hG4bKr{cseq}\r\nFrom: <sip:alice@example.com>;tag=r1\r\nTo: <sip:alice@example.com>\r\nCall-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:alice@192.0.2.10:5090>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn reg_response(code: u16, cseq: u32, granted: u32) -> String {
    format!(
        "SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 192.0.2.10:5090;branch=z9hG4bKr{cseq}\r\nFrom: <sip:alice@example.com>;tag=r1\r\nTo: <sip:alice@example.com>;tag=s\r\nCall-ID: reg-1\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:other@192.0.2.99>;expires=99, <sip:alice@192.0.2.10:5090>;expires={granted}\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn register_outcomes_and_bindings() {
    let mut r = RegistrationTracker::new(10, "sbc-0".into());
    let mut feed =
        |dir, text: &str, at: SystemTime| observed(dir, CALLER, at, text, |s| r.on_message(s));
    assert!(feed(Direction::In, &register(3600, 1), t0()).is_none());
    let e = feed(Direction::Out, &reg_response(401, 1, 0), t0()).unwrap();
    assert_eq!((e.result, e.code), ("challenged", 401));
    feed(Direction::In, &register(3600, 2), t0());
    let e = feed(Direction::Out, &reg_response(200, 2, 600), t0()).unwrap();
    assert_eq!(e.result, "ok");
    assert_eq!(
        e.expires,
        Some(600),
        "the registrar's grant for our contact"
    );
    assert_eq!(e.contact.as_deref(), Some("sip:alice@192.0.2.10:5090"));
    assert_eq!(e.user, "sip:alice@example.com");
    let b = r.bindings(t0());
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].expires_in, b[0].source.as_str()), (600, CALLER));
    // Unregister.
    let mut feed = |dir, text: &str| observed(dir, CALLER, t0(), text, |s| r.on_message(s));
    feed(Direction::In, &register(0, 3));
    feed(Direction::Out, &reg_response(200, 3, 0));
    assert!(r.bindings(t0()).is_empty());
}

#[test]
fn across_topology_hidings_border_the_backends_call_id_is_the_same_call() {
    let mut f = Feed::new();
    // The relay's mapping, as it is with callIdPrefix "CF-" and the backends inside.
    let map: CallIdMap = Arc::new(|wire: &[u8], p: &Peer| {
        (!p.addr.ip().is_loopback()).then(|| [&b"CF-"[..], wire].concat())
    });
    f.t = std::mem::replace(&mut f.t, Feed::new().t).with_call_ids(Some(map));
    let inside = |s: String| s.replace("Call-ID: call-1", "Call-ID: CF-call-1");
    f.msg(Direction::In, CALLER, &invite(""));
    f.msg(Direction::Out, B2, &inside(invite("")));
    f.msg(Direction::In, B2, &inside(response(200, "OK", "INVITE")));
    f.at(1000)
        .msg(Direction::Out, CALLER, &response(200, "OK", "INVITE"));
    assert_eq!(f.t.dialogs(f.now)[0].call_id, "call-1");
    // The backend hangs up: its BYE (inside view) and the caller's 200 are the same call.
    let bye = inside(bye()).replace(
        "192.0.2.10:5090;branch=z9hG4bK2",
        "127.0.0.1:5072;branch=z9hG4bK9",
    );
    f.at(5000).msg(Direction::In, B2, &bye);
    let cdr = f
        .at(5010)
        .msg(Direction::In, CALLER, &response(200, "OK", "BYE"))
        .cdr
        .expect("record at the 200 to the BYE");
    assert_eq!(cdr.call_id, "call-1", "the Call-ID the caller used");
    assert_eq!(cdr.backend.as_deref(), Some("sip:127.0.0.1:5072"));
    assert_eq!(cdr.ended_by, Some("callee"));
    assert_eq!(cdr.duration_secs, 4.01);
}
