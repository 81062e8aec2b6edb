//! The transaction core driven with byte strings: no socket, no clock, no task. A [`Harness`]
//! holds the core, a fake clock and the armed timers; every test sends messages in and
//! asserts on the messages that come out (status lines, where they went, how many).

mod border;
mod cancel;
mod failover;
mod flows;
mod invite;
mod non_invite;
mod probe;
mod routing;
mod stateless;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubesbc_crds::config::{
    Algorithm, DestinationConfig, DispatcherConfig, DispatcherSetConfig, SbcConfig, Transport,
};

use super::{Action, Core, Env, Timer};
use crate::dispatch::Dispatcher;
use crate::dispatch::probe::PingOutcome;
use crate::pipeline::{Admission, BoxFuture, Pipeline, RequestContext, Stage, Verdict};
use crate::relay::Local;
use crate::sip::Message;
use crate::telemetry::Metrics;
use crate::transport::Peer;

/// The caller, over UDP.
pub const CALLER: &str = "10.0.0.9:5090";
/// The first, second and third destination of set 1 (priority order).
pub const A: &str = "127.0.0.1:5071";
pub const B: &str = "127.0.0.1:5072";
pub const C: &str = "127.0.0.1:5073";

/// An INVITE from the caller with branch `b1`.
pub const INVITE: &str = "INVITE sip:bob@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKb1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.9>;tag=f1\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.9:5090>\r\nContent-Length: 0\r\n\r\n";

/// A REGISTER (non-INVITE) from the caller.
pub const REGISTER: &str = "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKr1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=f2\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: reg-1\r\nCSeq: 7 REGISTER\r\nContent-Length: 0\r\n\r\n";

/// What came out: a message and where it went.
#[derive(Debug, Clone)]
pub struct Sent {
    pub to: Peer,
    pub data: String,
}

impl Sent {
    /// The first line.
    pub fn line(&self) -> &str {
        self.data.split("\r\n").next().unwrap_or("")
    }

    pub fn to(&self) -> String {
        self.to.addr.to_string()
    }

    /// The value of the first header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.data
            .split("\r\n")
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
    }
}

/// What one event produced.
#[derive(Debug, Default)]
pub struct Out {
    pub sent: Vec<Sent>,
    /// Codes reported to the stages' on_final.
    pub finals: Vec<u16>,
    pub dialog_ends: usize,
    pub armed: Vec<Timer>,
    /// Probes that ended: id and outcome.
    pub probed: Vec<(u64, PingOutcome)>,
    /// Destinations whose call was answered (call load counted until BYE).
    pub answered: Vec<String>,
}

impl Out {
    /// The first lines of what was sent, in order.
    pub fn lines(&self) -> Vec<&str> {
        self.sent.iter().map(Sent::line).collect()
    }

    /// The one message sent to `to`; panics unless exactly one was.
    pub fn only_to(&self, to: &str) -> &Sent {
        let v: Vec<_> = self.sent.iter().filter(|s| s.to() == to).collect();
        assert_eq!(v.len(), 1, "one message to {to}, got {:#?}", self.sent);
        v[0]
    }

    pub fn to(&self, to: &str) -> Vec<&Sent> {
        self.sent.iter().filter(|s| s.to() == to).collect()
    }
}

pub struct Harness {
    pub core: Core,
    pub cfg: SbcConfig,
    /// The compiled routing rules of `cfg` (none unless a test sets some).
    pub rules: crate::routing::rules::Rules,
    pub local: Local,
    pub now: Instant,
    pub pipeline: Arc<Pipeline>,
    pub draining: bool,
    /// Which stream connections are open (all, unless a test closes some).
    pub open: Box<dyn Fn(&Peer) -> bool>,
    timers: Vec<(Instant, Timer)>,
}

pub fn peer(addr: &str, transport: Transport) -> Peer {
    Peer {
        transport,
        addr: addr.parse().expect("address"),
        flow: None,
    }
}

pub fn udp(addr: &str) -> Peer {
    peer(addr, Transport::Udp)
}

impl Harness {
    /// Set 1 of three UDP destinations A, B, C tried in that order.
    pub fn new() -> Harness {
        Harness::with_dests(&[
            "sip:127.0.0.1:5071",
            "sip:127.0.0.1:5072",
            "sip:127.0.0.1:5073",
        ])
    }

    pub fn with_dests(uris: &[&str]) -> Harness {
        let mut cfg = crate::config::from_listeners(vec![
            crate::config::parse_listen("udp:127.0.0.1:5060").expect("listen"),
            crate::config::parse_listen("tcp:127.0.0.1:5060").expect("listen"),
        ])
        .expect("config");
        let n = uris.len() as i32;
        let destinations = uris
            .iter()
            .enumerate()
            .map(|(i, u)| DestinationConfig {
                uri: (*u).into(),
                priority: n - i as i32,
                ..Default::default()
            })
            .collect();
        cfg.dispatcher = DispatcherConfig {
            dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
            default_set: 1,
            sets: vec![DispatcherSetConfig {
                id: 1,
                algorithm: Algorithm::Priority,
                destinations,
                probing: Default::default(),
                failover: Default::default(),
                service: None,
            }],
        };
        let dispatcher = Arc::new(Dispatcher::new(&cfg.dispatcher).expect("dispatcher"));
        let bound = [
            (Transport::Udp, "127.0.0.1:5060".parse().expect("addr")),
            (Transport::Tcp, "127.0.0.1:5060".parse().expect("addr")),
        ];
        let local = Local::new(&cfg, &bound, None);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let now = Instant::now();
        Harness {
            core: Core::new(dispatcher, metrics, 7, now),
            cfg,
            rules: Default::default(),
            local,
            now,
            pipeline: Arc::new(Pipeline::default()),
            draining: false,
            open: Box::new(|_| true),
            timers: Vec::new(),
        }
    }

    fn collect(&mut self, actions: Vec<Action>) -> Out {
        let mut out = Out::default();
        for a in actions {
            match a {
                Action::Send { to, data, .. } => out.sent.push(Sent {
                    to,
                    data: String::from_utf8_lossy(&data).into_owned(),
                }),
                Action::Arm { after, timer } => {
                    out.armed.push(timer.clone());
                    self.timers.push((self.now + after, timer));
                }
                Action::Final {
                    pipeline,
                    req,
                    cx,
                    code,
                } => {
                    pipeline.final_response(&req, &cx, code);
                    out.finals.push(code);
                }
                Action::DialogEnd { pipeline, req, cx } => {
                    pipeline.dialog_end(&req, &cx);
                    out.dialog_ends += 1;
                }
                Action::Probed { id, outcome } => out.probed.push((id, outcome)),
                Action::Answered { dest, .. } => out.answered.push(dest.uri.clone()),
            }
        }
        out
    }

    fn env(&self) -> Env<'_> {
        Env {
            cfg: &self.cfg,
            rules: &self.rules,
            local: &self.local,
            now: self.now,
            draining: self.draining,
            open: &self.open,
        }
    }

    /// A request from `from`, through an empty pipeline (or the harness's).
    pub fn request_from(&mut self, s: &str, from: Peer) -> Out {
        let msg = Message::parse(Bytes::copy_from_slice(s.as_bytes()), 65535).expect("parses");
        let mut actions = Vec::new();
        let env = self.env();
        if let Some(inc) = self.core.on_request(&env, msg, from, &mut actions) {
            let p = self.pipeline.clone();
            let v = Verdict::Continue;
            self.core
                .admit(&env, inc, v, Admission::default(), &p, &mut actions);
        }
        self.collect(actions)
    }

    /// A request from the caller over UDP.
    pub fn request(&mut self, s: &str) -> Out {
        self.request_from(s, udp(CALLER))
    }

    /// A response from a destination.
    pub fn response(&mut self, s: &str) -> Out {
        let msg = Message::parse(Bytes::copy_from_slice(s.as_bytes()), 65535).expect("parses");
        let mut actions = Vec::new();
        let env = self.env();
        self.core.on_response(&env, msg, &mut actions);
        self.collect(actions)
    }

    /// `code reason` from downstream to the request `sent`, To-tagged `tag` when given.
    pub fn answer(&mut self, sent: &Sent, code: u16, reason: &str, tag: Option<&str>) -> Out {
        let r = respond(&sent.data, code, reason, tag);
        self.response(&r)
    }

    /// A stream transport could not deliver what was sent with `token` (the branch).
    pub fn send_failed(&mut self, sent: &Sent) -> Out {
        let token = top_branch(&sent.data);
        let mut actions = Vec::new();
        let env = self.env();
        self.core
            .on_send_failed(&env, token.as_bytes(), &mut actions);
        self.collect(actions)
    }

    /// Moves the clock on by `d`, firing every timer due on the way, in order.
    pub fn advance(&mut self, d: Duration) -> Out {
        let end = self.now + d;
        let mut all = Out::default();
        loop {
            self.timers.sort_by_key(|(due, _)| *due);
            let Some(pos) = self.timers.iter().position(|(due, _)| *due <= end) else {
                break;
            };
            let (due, t) = self.timers.remove(pos);
            self.now = self.now.max(due);
            let mut actions = Vec::new();
            let env = self.env();
            self.core.on_timer(&env, t, &mut actions);
            let o = self.collect(actions);
            all.sent.extend(o.sent);
            all.finals.extend(o.finals);
            all.dialog_ends += o.dialog_ends;
            all.armed.extend(o.armed);
            all.probed.extend(o.probed);
        }
        self.now = end;
        all
    }

    pub fn ms(&mut self, ms: u64) -> Out {
        self.advance(Duration::from_millis(ms))
    }

    /// An OPTIONS probe of the sbc's own to the first destination, with `id`.
    pub fn probe(&mut self, id: u64, timeout: Duration) -> Out {
        let table = self.core.dispatcher().table();
        let dest = table.sets()[0].destinations()[0].clone();
        let mut actions = Vec::new();
        let env = self.env();
        self.core.probe(
            &env,
            &dest,
            "sip:probe@127.0.0.1",
            timeout,
            id,
            &mut actions,
        );
        self.collect(actions)
    }

    /// (server, client) transactions open.
    pub fn open(&self) -> (usize, usize) {
        self.core.transaction_counts()
    }
}

/// A stage that lets everything through and counts the ends it hears of.
#[derive(Default)]
pub struct Counting {
    pub finals: AtomicUsize,
    pub dialog_ends: AtomicUsize,
}

impl Stage for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    fn check<'a>(
        &'a self,
        _req: &'a Message,
        _cx: &'a RequestContext,
        _admission: &'a mut Admission,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async { Verdict::Continue })
    }

    fn on_final(&self, _req: &Message, _cx: &RequestContext, _code: u16) {
        self.finals.fetch_add(1, Ordering::Relaxed);
    }

    fn on_dialog_end(&self, _req: &Message, _cx: &RequestContext) {
        self.dialog_ends.fetch_add(1, Ordering::Relaxed);
    }
}

/// A pipeline of one counting stage, and the stage.
pub fn counting() -> (Arc<Pipeline>, Arc<Counting>) {
    let c = Arc::new(Counting::default());
    let stage: Arc<dyn Stage> = c.clone();
    (Arc::new(Pipeline::new(vec![stage])), c)
}

/// The branch of the top Via of `msg`.
pub fn top_branch(msg: &str) -> String {
    let via = msg
        .split("\r\n")
        .find_map(|l| l.strip_prefix("Via: "))
        .expect("a Via");
    via.split(';')
        .find_map(|p| p.strip_prefix("branch="))
        .expect("a branch")
        .to_owned()
}

/// A response to the request `req`: its Vias, From, To (tagged), Call-ID and CSeq.
pub fn respond(req: &str, code: u16, reason: &str, tag: Option<&str>) -> String {
    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
    for l in req.split("\r\n").skip(1) {
        if l.is_empty() {
            break;
        }
        let name = l.split(':').next().unwrap_or("");
        match name {
            "Via" | "From" | "Call-ID" | "CSeq" => r.push_str(l),
            "To" => {
                r.push_str(l);
                if let Some(t) = tag
                    && !l.contains(";tag=")
                {
                    r.push_str(";tag=");
                    r.push_str(t);
                }
            }
            _ => continue,
        }
        r.push_str("\r\n");
    }
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

/// The ACK a caller sends for a non-2xx final to `invite` (same branch, RFC 3261 17.1.1.3).
pub fn ack_for(invite: &str, response: &Sent) -> String {
    let to = response.header("To").expect("To");
    invite
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace("To: <sip:bob@127.0.0.1>", &format!("To: {to}"))
}

/// The caller's CANCEL for `invite`.
pub fn cancel_of(invite: &str) -> String {
    invite
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
}
