//! The relay runtime: sockets, the timer wheel and the policy stages around the transaction
//! core ([`core`], which has no I/O). A message is parsed once here; requests go through
//! [`Core::on_request`], the stages of the [`Pipeline`] in force, then [`Core::admit`];
//! responses, timers and delivery failures go straight to the core. The core's [`Action`]s
//! are carried out after its lock is released. See docs/architecture.md.

pub mod core;
mod local;
pub mod timers;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use kubesbc_crds::config::SbcConfig;
use tokio::sync::oneshot;

use crate::dispatch::load::CallLoad;
use crate::dispatch::probe::{PingOutcome, Pinger};
use crate::dispatch::{Destination, Dispatcher};
use crate::media::stage::{Job, MediaStage, Outcome};
use crate::pipeline::{Admission, Pipeline, Verdict};
use crate::routing::rules::Rules;
use crate::sip::build;
use crate::sip::{Message, Method, ParseError};
use crate::telemetry::{
    Direction, DropReason, InternalError, Metrics, ParseErrorKind, ResponseOrigin,
};
use crate::topology::{self, Topology};
use crate::transport::{Inbound, Peer, Transports};
pub use core::{Action, Core, Env, Incoming};
pub use local::Local;
use timers::Wheel;

/// The proxy.
pub struct Relay {
    config: ArcSwap<SbcConfig>,
    /// The routing rules of `config`, compiled once per version.
    rules: ArcSwap<Rules>,
    local: ArcSwap<Local>,
    transports: OnceLock<Arc<Transports>>,
    me: OnceLock<Weak<Relay>>,
    core: Core,
    wheel: Wheel,
    draining: AtomicBool,
    metrics: Arc<Metrics>,
    pipeline: ArcSwap<Pipeline>,
    /// The media stage, when a `media` section is configured: every message sent passes it.
    media: ArcSwapOption<MediaStage>,
    /// Topology hiding (`relay.topology`), when it does something: run on every message
    /// from an outside peer before the core, and on every one to an outside peer last.
    topology: ArcSwapOption<Topology>,
    /// The key hidden values are signed with when `relay.topology` has no `keyFile`: one
    /// per process, kept across reloads so dialogs set up before one still verify.
    own_key: Vec<u8>,
    /// The key flow tokens are signed with without shared keys: one per process, kept across
    /// reloads (the connections it names live as long as the process).
    own_flow_key: crate::flow::FlowKey,
    /// The call load shared with the other replicas, once [`Relay::set_call_load`] gave it.
    call_load: OnceLock<Arc<CallLoad>>,
    /// Probes of the sbc's own waiting for their outcome, by id.
    probes: Mutex<HashMap<u64, oneshot::Sender<PingOutcome>>>,
    next_probe: AtomicU64,
}

impl Relay {
    /// A relay over `dispatcher`, not yet bound to any transport.
    pub fn new(
        config: SbcConfig,
        dispatcher: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
    ) -> Arc<Relay> {
        let rules = compile_rules(&config).unwrap_or_default();
        let own_key = topology::random_key().to_vec();
        let top = Topology::from_config(&config, &own_key).map(Arc::new);
        let r = Arc::new(Relay {
            config: ArcSwap::from_pointee(config),
            rules: ArcSwap::from_pointee(rules),
            local: ArcSwap::from_pointee(Local::default()),
            transports: OnceLock::new(),
            me: OnceLock::new(),
            core: Core::new(
                dispatcher,
                metrics.clone(),
                fastrand::u64(..),
                Instant::now(),
            ),
            wheel: Wheel::new(),
            draining: AtomicBool::new(false),
            metrics,
            pipeline: ArcSwap::from_pointee(Pipeline::default()),
            media: ArcSwapOption::empty(),
            topology: ArcSwapOption::new(top),
            own_key,
            own_flow_key: crate::flow::FlowKey::random(),
            call_load: OnceLock::new(),
            probes: Mutex::new(HashMap::new()),
            next_probe: AtomicU64::new(0),
        });
        let _ = r.me.set(Arc::downgrade(&r));
        r
    }

    /// Binds the listeners of the configuration and starts the timer task.
    pub async fn start(
        self: &Arc<Self>,
        workers: usize,
    ) -> Result<Arc<Transports>, crate::transport::TransportError> {
        let cfg = self.config.load_full();
        let inbound: Arc<dyn Inbound> = self.clone();
        let (tls, btls) = (cfg.tls.as_ref(), cfg.backend_tls.as_ref());
        let t = Transports::bind_with_tls(&cfg.listeners, &cfg.limits, workers, inbound, tls, btls)
            .await?;
        self.local.store(Arc::new(self.build_local(&cfg, &t)));
        let _ = self.transports.set(t.clone());
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(timers::TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut fired = Vec::new();
            let mut out = Vec::new();
            loop {
                tick.tick().await;
                let Some(relay) = me.upgrade() else { return };
                let now = Instant::now();
                relay.wheel.advance(now, &mut fired);
                for t in fired.drain(..) {
                    relay.with_env(now, |core, env| core.on_timer(env, t, &mut out));
                    relay.apply(&mut out);
                }
            }
        });
        Ok(t)
    }

    /// Counts answered calls through `load` from now on (once; later calls are ignored).
    pub fn set_call_load(&self, load: Arc<CallLoad>) {
        let _ = self.call_load.set(load);
    }

    /// The dispatcher the relay routes initial requests with.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        self.core.dispatcher()
    }

    /// Replaces the configuration (listeners excepted: they are bound once).
    pub fn set_config(&self, config: SbcConfig) {
        // Validated before it gets here (`config::check_routing`): a failure keeps the rules
        // in force rather than routing everything to the default set.
        if let Some(rules) = compile_rules(&config) {
            self.rules.store(Arc::new(rules));
        }
        self.topology
            .store(Topology::from_config(&config, &self.own_key).map(Arc::new));
        // Advertise and inside addresses and the flow keys follow the configuration; the
        // listeners stay bound as they are.
        if let Some(t) = self.transports.get() {
            self.local.store(Arc::new(self.build_local(&config, t)));
        }
        self.config.store(Arc::new(config));
    }

    /// The sbc's identity under `cfg` over the bound transports `t`.
    fn build_local(&self, cfg: &SbcConfig, t: &Transports) -> Local {
        let pod_ip = std::env::var("POD_IP").ok().and_then(|v| v.parse().ok());
        let mut local = Local::new(cfg, &t.local_addrs(), pod_ip);
        local.flow_key = crate::flow::FlowKey::for_config(cfg, &self.own_flow_key);
        local
    }

    /// Installs the policy stages (guard, auth, throttle) run before routing. Transactions
    /// they admitted keep reporting their end to them.
    pub fn set_pipeline(&self, pipeline: Pipeline) {
        self.pipeline.store(Arc::new(pipeline));
    }

    /// Topology hiding's Call-ID mapping for observers (the CDR tracker): the inside view of
    /// a Call-ID seen on the wire with `peer`, under the configuration in force.
    pub fn call_id_map(self: &Arc<Self>) -> crate::observe::cdr::CallIdMap {
        let me = Arc::downgrade(self);
        Arc::new(move |wire: &[u8], peer: &Peer| {
            let r = me.upgrade()?;
            let top = r.topology.load();
            let top = top.as_deref()?;
            if r.local.load().is_inside(peer.addr.ip()) {
                return None;
            }
            match top.inside_call_id(wire) {
                std::borrow::Cow::Owned(v) => Some(v),
                std::borrow::Cow::Borrowed(_) => None,
            }
        })
    }

    /// Installs the media stage (rtpengine anchoring): every message the relay sends from
    /// now on passes it.
    pub fn set_media(&self, media: Option<Arc<MediaStage>>) {
        self.media.store(media);
    }

    /// The media stage in force.
    pub fn media(&self) -> Option<Arc<MediaStage>> {
        self.media.load_full()
    }

    /// Starts refusing new calls (503 + Retry-After); transactions in progress go on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the relay is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Server transactions still waiting for a final response.
    pub fn pending_transactions(&self) -> usize {
        self.core.pending_transactions()
    }

    /// Open server and client transactions.
    pub fn transaction_counts(&self) -> (usize, usize) {
        self.core.transaction_counts()
    }

    /// Runs `f` on the core with the configuration and identity in force.
    fn with_env<R>(&self, now: Instant, f: impl FnOnce(&Core, &Env<'_>) -> R) -> R {
        let cfg = self.config.load();
        let rules = self.rules.load();
        let local = self.local.load();
        let t = self.transports.get();
        let open = |p: &Peer| t.is_some_and(|t| t.is_open(p));
        let env = Env {
            cfg: &cfg,
            rules: &rules,
            local: &local,
            now,
            draining: self.is_draining(),
            open: &open,
        };
        f(&self.core, &env)
    }

    fn inbound(&self) -> Option<Arc<dyn Inbound>> {
        self.me
            .get()
            .and_then(Weak::upgrade)
            .map(|a| a as Arc<dyn Inbound>)
    }

    /// Carries out the core's actions, in order, and empties `out`.
    fn apply(&self, out: &mut Vec<Action>) {
        self.apply_with(out, true)
    }

    /// [`Relay::apply`]; with `media` false the messages skip the media stage (the answers
    /// the stage itself asked for).
    fn apply_with(&self, out: &mut Vec<Action>, media: bool) {
        let t = self.transports.get();
        let inb = self.inbound();
        // One load per batch; without a media section the messages pay nothing more.
        let stage = if media { self.media.load_full() } else { None };
        for a in out.drain(..) {
            match a {
                Action::Send {
                    to,
                    data,
                    token,
                    resp,
                } => {
                    let (Some(t), Some(inb)) = (t, inb.as_ref()) else {
                        continue;
                    };
                    if let Some(m) = &stage
                        && let Some(job) = m.inspect(&data, &to)
                    {
                        self.anchor(
                            m.clone(),
                            job,
                            Outgoing {
                                to,
                                data,
                                token,
                                resp,
                            },
                        );
                        continue;
                    }
                    self.send_out(
                        t,
                        inb,
                        Outgoing {
                            to,
                            data,
                            token,
                            resp,
                        },
                    );
                }
                Action::Arm { after, timer } => self.wheel.schedule(after, timer),
                Action::Final {
                    pipeline,
                    req,
                    cx,
                    code,
                } => pipeline.final_response(&req, &cx, code),
                Action::DialogEnd { pipeline, req, cx } => {
                    pipeline.dialog_end(&req, &cx);
                    if let (Some(load), Some(call_id)) = (self.call_load.get(), req.call_id()) {
                        load.ended(call_id);
                    }
                }
                Action::Answered { dest, call_id } => {
                    if let Some(load) = self.call_load.get() {
                        load.answered(&dest, &call_id);
                    }
                }
                Action::Probed { id, outcome } => {
                    let waiter = self
                        .probes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(w) = waiter {
                        let _ = w.send(outcome);
                    }
                }
            }
        }
    }

    /// Sends a message the core (or the media stage) wrote: towards an outside peer, with
    /// the inside hidden.
    fn send_out(&self, t: &Transports, inb: &Arc<dyn Inbound>, mut s: Outgoing) {
        if let Some(top) = self.topology.load().as_deref()
            && let Some(data) = self.hide(top, &s)
        {
            s.data = data;
        }
        self.send_now(t, inb, s)
    }

    /// The outside view of an outgoing message; None: unchanged (an inside peer, or
    /// nothing to hide).
    fn hide(&self, top: &Topology, s: &Outgoing) -> Option<Bytes> {
        let local = self.local.load();
        if local.is_inside(s.to.addr.ip()) {
            return None;
        }
        // The core wrote it (from values checked on the way in): read back without the
        // per-value checks. One it cannot read is sent as it is (and counted).
        match Message::parse_checked(s.data.clone(), usize::MAX) {
            Ok(msg) => top.outbound(&msg, &s.to, &local).map(Bytes::from),
            Err(e) => {
                self.metrics.internal_error(InternalError::Topology);
                tracing::warn!(error = %e, "topology: an outgoing message does not parse; sent as is");
                None
            }
        }
    }

    /// Sends `s` as it is.
    fn send_now(&self, t: &Transports, inb: &Arc<dyn Inbound>, s: Outgoing) {
        self.metrics
            .transport_message(s.to.transport, Direction::Out, s.data.len());
        if s.resp.1 != 0 {
            self.metrics.response_sent(s.resp.0, s.resp.1);
        }
        t.send(&s.to, s.data, s.token, inb);
    }

    /// Runs the media stage's job for a message, then sends what it says: a delete goes
    /// beside the message (sent at once), an offer or answer before it. A refused request is
    /// answered by the core ([`Core::on_media_refused`]).
    fn anchor(&self, m: Arc<MediaStage>, job: Job, s: Outgoing) {
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        if job.is_delete() {
            if let (Some(t), Some(inb)) = (self.transports.get(), self.inbound()) {
                self.send_out(t, &inb, s);
            }
            tokio::spawn(async move { m.delete(&job).await });
            return;
        }
        tokio::spawn(async move {
            let (Some(t), Some(inb)) = (me.transports.get(), me.inbound()) else {
                return;
            };
            match m.run(job).await {
                Outcome::Send(data) => me.send_out(t, &inb, Outgoing { data, ..s }),
                Outcome::Refuse {
                    status,
                    reason,
                    retry_after,
                } => {
                    let Some(token) = s.token else { return };
                    let mut out = Vec::with_capacity(4);
                    let a = (status, reason.as_str(), retry_after);
                    me.with_env(Instant::now(), |core, env| {
                        core.on_media_refused(env, &token, a, &mut out)
                    });
                    me.apply_with(&mut out, false);
                }
            }
        });
    }

    fn on_request(&self, msg: Message, peer: Peer) {
        let mut out = Vec::with_capacity(4);
        let now = Instant::now();
        // With no stage configured, the request is admitted in the same pass (one load of the
        // configuration, one of the identity).
        let Some(incoming) = self.with_env(now, |core, env| {
            let incoming = core.on_request(env, msg, peer, &mut out)?;
            let pipeline = self.pipeline.load();
            if !pipeline.is_empty() {
                return Some(incoming);
            }
            let (v, a) = (Verdict::Continue, Admission::default());
            core.admit(env, incoming, v, a, &pipeline, &mut out);
            None
        }) else {
            return self.apply(&mut out);
        };
        let pipeline = self.pipeline.load_full();
        // Poll the stages once here: with the in-memory store they decide at once and the
        // request is routed without leaving the receive loop. Only a stage that waits (a Redis
        // round trip) sends the rest of the work to a task.
        let key = incoming.key().to_vec();
        let stages = pipeline.clone();
        let mut staged = Box::pin(async move {
            let (verdict, admission) = stages.run(&incoming.msg, &incoming.cx).await;
            (incoming, verdict, admission)
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready((incoming, verdict, admission)) =
            staged.as_mut().poll(&mut cx)
        {
            self.with_env(now, |core, env| {
                core.admit(env, incoming, verdict, admission, &pipeline, &mut out);
            });
            return self.apply(&mut out);
        }
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        self.core.stage(&key);
        tokio::spawn(async move {
            let (incoming, verdict, admission) = staged.await;
            me.core.unstage(&key);
            let mut out = Vec::with_capacity(4);
            me.with_env(Instant::now(), |core, env| {
                core.admit(env, incoming, verdict, admission, &pipeline, &mut out);
            });
            me.apply(&mut out);
        });
    }

    fn on_response(&self, msg: Message) {
        let mut out = Vec::with_capacity(4);
        self.with_env(Instant::now(), |core, env| {
            core.on_response(env, msg, &mut out)
        });
        self.apply(&mut out);
    }

    fn on_parse_error(&self, data: &[u8], e: ParseError, peer: Peer) {
        self.metrics.parse_error(match e {
            ParseError::Garbage | ParseError::BadStatus => ParseErrorKind::NotSip,
            ParseError::Truncated | ParseError::BadHeader | ParseError::TooManyHeaders => {
                ParseErrorKind::Header
            }
            ParseError::BadVersion => ParseErrorKind::Version,
            ParseError::BadContentLength => ParseErrorKind::ContentLength,
            ParseError::TooLarge => ParseErrorKind::TooLarge,
            ParseError::Invalid(_) => ParseErrorKind::Header,
        });
        let Some((code, reason)) = e.response() else {
            self.metrics.dropped(DropReason::Unparsable);
            tracing::debug!(from = %peer.addr, error = %e, "unparseable message dropped");
            return;
        };
        // Never answer a response or an ACK.
        if data.starts_with(b"SIP/") || data.starts_with(b"ACK ") {
            return;
        }
        // Answered as it came: it never reached the inside view, so topology has nothing to
        // map back.
        self.reply_raw(data, code, reason, peer);
    }

    /// Answers the request in `data` with `code` as it is, past the stages and topology.
    fn reply_raw(&self, data: &[u8], code: u16, reason: &str, peer: Peer) {
        let (Some(t), Some(inb)) = (self.transports.get(), self.inbound()) else {
            return;
        };
        let s = Outgoing {
            to: peer,
            data: Bytes::from(build::raw_response(data, code, reason)),
            token: None,
            resp: (ResponseOrigin::Local, code),
        };
        self.send_now(t, &inb, s);
    }

    /// The inside view of a message from `peer` (see [`Topology::inbound`]); None: refused
    /// (answered with 403, or dropped if a response or an ACK).
    fn reveal(&self, top: &Topology, msg: Message, peer: &Peer) -> Option<Message> {
        let local = self.local.load();
        match top.inbound(&msg, peer, &local) {
            Ok(None) => Some(msg),
            // The message was checked as it came; what topology put back it sealed itself
            // from values checked on their way out.
            Ok(Some(inside)) => match Message::parse_checked(Bytes::from(inside), usize::MAX) {
                Ok(m) => Some(m),
                Err(e) => {
                    // Our fault, not the caller's: a request gets 500 rather than silence.
                    self.metrics.internal_error(InternalError::Topology);
                    tracing::warn!(from = %peer.addr, error = %e, "topology: the inside view does not parse");
                    if msg.is_request() && msg.method() != Some(Method::Ack) {
                        self.reply_raw(msg.bytes(), 500, "Server Internal Error", *peer);
                    }
                    None
                }
            },
            Err(refused) => {
                tracing::debug!(from = %peer.addr, error = %refused, "topology: hidden value refused");
                if msg.is_request() && msg.method() != Some(Method::Ack) {
                    self.reply_raw(msg.bytes(), refused.code(), refused.reason(), *peer);
                } else {
                    self.metrics.dropped(DropReason::Topology);
                }
                None
            }
        }
    }

    /// Sends an OPTIONS probe from the sbc itself and waits for the reply.
    fn ping_dest(
        &self,
        dest: &Destination,
        from: &str,
        timeout: Duration,
    ) -> oneshot::Receiver<PingOutcome> {
        let (tx, rx) = oneshot::channel();
        let id = self.next_probe.fetch_add(1, Ordering::Relaxed);
        self.probes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut out = Vec::with_capacity(3);
        self.with_env(Instant::now(), |core, env| {
            core.probe(env, dest, from, timeout, id, &mut out)
        });
        self.apply(&mut out);
        rx
    }
}

impl Inbound for Relay {
    fn on_message(&self, data: Bytes, peer: Peer) {
        self.metrics
            .transport_message(peer.transport, Direction::In, data.len());
        let max = self.config.load().limits.max_message_bytes;
        let msg = match Message::parse(data.clone(), max) {
            Ok(msg) => msg,
            Err(e) => return self.on_parse_error(&data, e, peer),
        };
        let msg = match self.topology.load().as_deref() {
            Some(top) => match self.reveal(top, msg, &peer) {
                Some(m) => m,
                None => return,
            },
            None => msg,
        };
        if msg.is_request() {
            self.metrics
                .request_received(msg.method().unwrap_or(Method::Other));
            self.on_request(msg, peer)
        } else {
            self.on_response(msg)
        }
    }

    fn on_send_error(&self, token: Vec<u8>) {
        let mut out = Vec::new();
        self.with_env(Instant::now(), |core, env| {
            core.on_send_failed(env, &token, &mut out)
        });
        self.apply(&mut out);
    }

    fn on_dropped(&self, reason: &'static str) {
        self.metrics.dropped(drop_reason(reason));
        tracing::debug!(reason, "message dropped");
    }

    fn on_framing_lost(&self, head: Bytes, reason: &'static str, peer: Peer) {
        self.on_dropped(reason);
        let (code, phrase) = match reason {
            "missing_content_length" => (400, "Missing Content-Length"),
            "bad_content_length" => (400, "Bad Content-Length"),
            "too_large" => (513, "Message Too Large"),
            _ => return,
        };
        // A request gets its answer; a response or an ACK never does.
        let request = head.first().is_some_and(u8::is_ascii_alphabetic)
            && !head.starts_with(b"SIP/")
            && !head.starts_with(b"ACK ");
        if request {
            self.reply_raw(&head, code, phrase, peer);
        }
    }
}

/// The metric label of a transport's drop reason. A reason the transports add without a
/// label here counts as `unparsable` (and the test below lists every one they use).
fn drop_reason(reason: &str) -> DropReason {
    match reason {
        "too_large" => DropReason::TooLarge,
        "tcp_queue_full" => DropReason::QueueFull,
        "connection_limit" => DropReason::Limit,
        "ws_protocol" => DropReason::WsProtocol,
        "ws_upgrade_refused" => DropReason::WsUpgradeRefused,
        "tls_handshake" => DropReason::TlsHandshake,
        "ws_no_connection" => DropReason::WsNoConnection,
        "ws_queue_full" => DropReason::WsQueueFull,
        _ => DropReason::Unparsable,
    }
}

impl Pinger for Relay {
    fn ping<'a>(
        &'a self,
        dest: &'a Destination,
        from: &'a str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = PingOutcome> + std::marker::Send + 'a>> {
        let rx = self.ping_dest(dest, from, timeout);
        Box::pin(async move { rx.await.unwrap_or(PingOutcome::Timeout) })
    }
}

/// A message to send, as [`Action::Send`] carries it.
struct Outgoing {
    to: Peer,
    data: Bytes,
    token: Option<Vec<u8>>,
    resp: (ResponseOrigin, u16),
}

/// The compiled routing rules of `config`; `None` (logged) when they do not compile.
fn compile_rules(config: &SbcConfig) -> Option<Rules> {
    match Rules::compile(&config.routing) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "routing rules refused");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transport_drop_reason_has_its_own_label() {
        let used = [
            ("too_large", "too_large"),
            ("tcp_queue_full", "queue_full"),
            ("connection_limit", "limit"),
            ("ws_protocol", "ws_protocol"),
            ("ws_upgrade_refused", "ws_upgrade_refused"),
            ("tls_handshake", "tls_handshake"),
            ("ws_no_connection", "ws_no_connection"),
            ("ws_queue_full", "ws_queue_full"),
        ];
        for (reason, label) in used {
            assert_eq!(drop_reason(reason).label(), label, "{reason}");
        }
        // The transports use no other reason (a new one needs a label above).
        for src in [
            include_str!("../transport/mod.rs"),
            include_str!("../transport/tcp.rs"),
            include_str!("../transport/ws.rs"),
            include_str!("../transport/tls.rs"),
        ] {
            for part in src.split("on_dropped(\"").skip(1) {
                let reason = part.split('"').next().unwrap_or("");
                assert!(
                    used.iter().any(|(r, _)| *r == reason),
                    "on_dropped(\"{reason}\") has no label"
                );
            }
        }
    }
}
