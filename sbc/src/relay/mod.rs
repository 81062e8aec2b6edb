//! The transaction-stateful proxy core (RFC 3261 sections 16 and 17).
//!
//! Every request passes the pipeline: parse, sanity, loop check, then either a transaction
//! match (retransmission, ACK, CANCEL), an answer from the sbc itself (OPTIONS keep-alive,
//! drain), loose routing of in-dialog requests, or the dispatcher for initial requests.
//! Responses are matched to their client transaction by our Via branch and relayed upstream,
//! with failover to the next destination on 408, 5xx or timeout.
//!
//! Locking: one mutex over the transaction tables, never held across I/O; sends are collected
//! and written after the lock is released.

pub mod timers;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use kubesbc_crds::config::{Failover, SbcConfig, Transport};
use tokio::sync::oneshot;

use crate::dispatch::probe::{PingOutcome, Pinger};
use crate::dispatch::{Destination, Dispatcher, SelectKey};
use crate::pipeline::{Admission, Pipeline, RequestContext, Verdict};
use crate::sanity;
use crate::sip::build::{self, RequestEdits};
use crate::sip::uri::{self, Uri, Via};
use crate::sip::{HeaderName, Message, Method, ParseError};
use crate::telemetry::{
    Direction, DropReason, Metrics, ParseErrorKind, ResponseOrigin, TransactionKind,
};
use crate::transport::{Inbound, Peer, Transports};
use timers::{Timer, Wheel};

/// How long completed transactions absorb retransmissions (Kamailio's `wt_timer`); shorter
/// than 64*T1 so a busy proxy does not hold half a minute of finished transactions.
const WAIT: Duration = Duration::from_secs(5);
/// The magic cookie plus our marker: branches we generate start with this.
const BRANCH_PREFIX: &[u8] = b"z9hG4bKkS";

/// A message to write once the state lock is released.
struct Out {
    to: Peer,
    data: Bytes,
    token: Option<Vec<u8>>,
    /// For responses: who made it and its code, for the metrics (code 0: a request).
    resp: (ResponseOrigin, u16),
}

const REQUEST: (ResponseOrigin, u16) = (ResponseOrigin::Relayed, 0);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SState {
    /// Waiting for a final response from downstream.
    Proceeding,
    /// A final non-2xx went upstream; waiting for the ACK (INVITE) or absorbing retransmits.
    Completed,
    /// A 2xx went upstream (INVITE): absorb retransmitted INVITEs (RFC 6026).
    Accepted,
}

struct ServerTx {
    id: u64,
    peer: Peer,
    /// The request, kept while it may be relayed again (failover, CANCEL).
    req: Option<Arc<Message>>,
    invite: bool,
    state: SState,
    /// The last response sent upstream, re-sent when the request is retransmitted.
    last: Option<Bytes>,
    /// Key of the client transaction currently relaying this request.
    branch: Option<Vec<u8>>,
    cancelled: bool,
    /// Dispatcher set for initial requests (failover allowed); None for in-dialog requests.
    set: Option<u32>,
    tried: Vec<usize>,
    retransmit: Duration,
    loop_hash: u64,
    mf: u32,
    drop_routes: usize,
    /// Call start, for the call log line.
    started: Instant,
    /// Who sent it and what it is, for the stages' end-of-transaction hooks.
    cx: RequestContext,
    /// Headers the stages asked to remove before relaying.
    strip: Vec<HeaderName>,
    /// Whether it passed the policy stages (they hear how it ended).
    checked: bool,
}

/// A request past the transaction checks, on its way through the stages to routing.
struct Incoming {
    msg: Message,
    cx: RequestContext,
    key: Vec<u8>,
    mf: u32,
    loop_hash: u64,
}

struct ClientTx {
    id: u64,
    /// The server transaction this relays; None for the sbc's own requests (probes).
    server: Option<Vec<u8>>,
    local: Option<oneshot::Sender<PingOutcome>>,
    invite: bool,
    cancel: bool,
    to: Peer,
    data: Bytes,
    dest: Option<(Arc<Destination>, usize)>,
    provisional: bool,
    completed: bool,
    /// Send a CANCEL as soon as a provisional response arrives (RFC 3261 section 9.1).
    cancel_pending: bool,
    /// The ACK sent for a non-2xx final response, re-sent on its retransmission.
    ack: Option<Bytes>,
    retransmit: Duration,
}

impl ClientTx {
    /// A fresh non-INVITE transaction of the sbc's own, sending `data` to `to`; callers
    /// set what differs (the server transaction it relays, INVITE, CANCEL, a probe's reply).
    fn new(id: u64, to: Peer, data: Bytes, cfg: &SbcConfig) -> ClientTx {
        ClientTx {
            id,
            server: None,
            local: None,
            invite: false,
            cancel: false,
            to,
            data,
            dest: None,
            provisional: false,
            completed: false,
            cancel_pending: false,
            ack: None,
            retransmit: Duration::from_millis(cfg.relay.t1_ms),
        }
    }
}

/// A transaction table that keeps the `transactions active` gauge in step with its size.
struct Table<T> {
    map: HashMap<Vec<u8>, T>,
    kind: TransactionKind,
    metrics: Arc<Metrics>,
}

impl<T> Table<T> {
    fn new(kind: TransactionKind, metrics: Arc<Metrics>) -> Table<T> {
        Table {
            map: HashMap::new(),
            kind,
            metrics,
        }
    }

    fn insert(&mut self, key: Vec<u8>, tx: T) {
        if self.map.insert(key, tx).is_none() {
            self.metrics.transaction_started(self.kind);
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<T> {
        let tx = self.map.remove(key);
        if tx.is_some() {
            self.metrics.transaction_ended(self.kind);
        }
        tx
    }

    fn get(&self, key: &[u8]) -> Option<&T> {
        self.map.get(key)
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut T> {
        self.map.get_mut(key)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values()
    }
}

struct State {
    server: Table<ServerTx>,
    client: Table<ClientTx>,
    /// Keys of requests still in the policy stages: their retransmissions wait for them.
    staging: std::collections::HashSet<Vec<u8>>,
    next_id: u64,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The addresses that are the sbc itself, and what it writes into Via and Record-Route.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// Per transport: host and port written into Via and Record-Route.
    pub sent_by: Vec<(Transport, String, u16)>,
    /// Every (host, port) that means "this sbc".
    pub aliases: Vec<(String, u16)>,
}

impl Local {
    /// Builds the identity from the bound listeners and the configured advertise addresses.
    /// A listener bound to the unspecified address (`0.0.0.0`, as in a pod) with no advertise
    /// address writes `pod_ip` (the pod's `POD_IP`) into messages: `0.0.0.0` in a Via or
    /// Record-Route would send every reply nowhere.
    pub fn new(
        config: &SbcConfig,
        bound: &[(Transport, SocketAddr)],
        pod_ip: Option<IpAddr>,
    ) -> Local {
        let mut local = Local::default();
        if let Some(ip) = pod_ip {
            for (_, addr) in bound {
                local.aliases.push((ip.to_string(), addr.port()));
            }
        }
        for (t, addr) in bound {
            let adv = config
                .listeners
                .iter()
                .find(|l| l.transport == *t && (l.address == *addr || l.address.port() == 0))
                .and_then(|l| l.advertise.clone());
            let (host, port) = match adv {
                Some(a) => match uri::split_host_port(a.as_bytes()) {
                    Some((h, p)) => (
                        String::from_utf8_lossy(h).into_owned(),
                        p.unwrap_or(addr.port()),
                    ),
                    None => (a, addr.port()),
                },
                None if addr.ip().is_unspecified() => match pod_ip {
                    Some(ip) => (host_string(ip), addr.port()),
                    None => {
                        tracing::warn!(
                            listener = %format!("{t}:{addr}"),
                            "listener bound to all addresses without an advertise address or POD_IP: Via and Record-Route will say 127.0.0.1; set listeners[].advertise"
                        );
                        ("127.0.0.1".to_owned(), addr.port())
                    }
                },
                None => (host_string(addr.ip()), addr.port()),
            };
            if !local.sent_by.iter().any(|(tt, _, _)| tt == t) {
                local.sent_by.push((*t, host.clone(), port));
            }
            local.aliases.push((host, port));
            local.aliases.push((addr.ip().to_string(), addr.port()));
        }
        local
    }

    fn sent_by(&self, t: Transport) -> (&str, u16) {
        self.sent_by
            .iter()
            .find(|(tt, _, _)| *tt == t)
            .or_else(|| self.sent_by.first())
            .map_or(("127.0.0.1", 5060), |(_, h, p)| (h.as_str(), *p))
    }

    /// Whether `host:port` names this sbc.
    pub fn is_us(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        self.aliases
            .iter()
            .any(|(h, p)| *p == port && h.as_bytes().eq_ignore_ascii_case(host))
    }
}

fn host_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Counters the relay keeps for the admin endpoint and logs.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Messages that could not be parsed and were dropped.
    pub dropped: AtomicU64,
    /// Requests answered by the sbc itself with an error.
    pub rejected: AtomicU64,
    /// Requests moved to another destination.
    pub failovers: AtomicU64,
    /// Requests refused because no destination was up.
    pub no_destination: AtomicU64,
}

/// The proxy.
pub struct Relay {
    config: ArcSwap<SbcConfig>,
    dispatcher: Arc<Dispatcher>,
    local: ArcSwap<Local>,
    transports: OnceLock<Arc<Transports>>,
    me: OnceLock<Weak<Relay>>,
    state: Mutex<State>,
    wheel: Wheel,
    draining: AtomicBool,
    seq: AtomicU64,
    salt: u64,
    /// Counters.
    pub stats: RelayStats,
    metrics: Arc<Metrics>,
    pipeline: ArcSwap<Pipeline>,
    started: Instant,
    last_no_dest_log: AtomicU64,
}

impl Relay {
    /// A relay over `dispatcher`, not yet bound to any transport.
    pub fn new(
        config: SbcConfig,
        dispatcher: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
    ) -> Arc<Relay> {
        let r = Arc::new(Relay {
            config: ArcSwap::from_pointee(config),
            dispatcher,
            local: ArcSwap::from_pointee(Local::default()),
            transports: OnceLock::new(),
            me: OnceLock::new(),
            state: Mutex::new(State {
                server: Table::new(TransactionKind::Server, metrics.clone()),
                client: Table::new(TransactionKind::Client, metrics.clone()),
                staging: std::collections::HashSet::new(),
                next_id: 0,
            }),
            wheel: Wheel::new(),
            draining: AtomicBool::new(false),
            seq: AtomicU64::new(1),
            salt: fastrand::u64(..),
            stats: RelayStats::default(),
            metrics,
            pipeline: ArcSwap::from_pointee(Pipeline::default()),
            started: Instant::now(),
            last_no_dest_log: AtomicU64::new(0),
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
        let pod_ip = std::env::var("POD_IP").ok().and_then(|v| v.parse().ok());
        self.local
            .store(Arc::new(Local::new(&cfg, &t.local_addrs(), pod_ip)));
        let _ = self.transports.set(t.clone());
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(timers::TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut fired = Vec::new();
            loop {
                tick.tick().await;
                let Some(relay) = me.upgrade() else { return };
                relay.wheel.advance(Instant::now(), &mut fired);
                for t in fired.drain(..) {
                    relay.on_timer(t);
                }
            }
        });
        Ok(t)
    }

    /// The dispatcher the relay routes initial requests with.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Replaces the configuration (listeners excepted: they are bound once).
    pub fn set_config(&self, config: SbcConfig) {
        self.config.store(Arc::new(config));
    }

    /// Installs the policy stages (guard, auth, throttle) run before routing.
    pub fn set_pipeline(&self, pipeline: Pipeline) {
        self.pipeline.store(Arc::new(pipeline));
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
        self.state
            .lock()
            .map(|s| {
                s.server
                    .values()
                    .filter(|t| t.state == SState::Proceeding)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Open server and client transactions.
    pub fn transaction_counts(&self) -> (usize, usize) {
        self.state
            .lock()
            .map(|s| (s.server.len(), s.client.len()))
            .unwrap_or((0, 0))
    }

    fn inbound(&self) -> Option<Arc<dyn Inbound>> {
        self.me
            .get()
            .and_then(Weak::upgrade)
            .map(|a| a as Arc<dyn Inbound>)
    }

    fn flush(&self, out: Vec<Out>) {
        let (Some(t), Some(inb)) = (self.transports.get(), self.inbound()) else {
            return;
        };
        for o in out {
            self.metrics
                .transport_message(o.to.transport, Direction::Out, o.data.len());
            if o.resp.1 != 0 {
                self.metrics.response_sent(o.resp.0, o.resp.1);
            }
            t.send(&o.to, o.data, o.token, &inb);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving with the data as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_branch(&self, loop_hash: u64) -> Vec<u8> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) ^ self.salt;
        let mut b = Vec::with_capacity(BRANCH_PREFIX.len() + 34);
        b.extend_from_slice(BRANCH_PREFIX);
        push_hex(&mut b, loop_hash);
        b.push(b'.');
        push_hex(&mut b, n);
        b
    }

    fn via_value(&self, t: Transport, branch: &[u8]) -> Vec<u8> {
        let local = self.local.load();
        let (host, port) = local.sent_by(t);
        let mut v = Vec::with_capacity(48 + branch.len());
        v.extend_from_slice(b"SIP/2.0/");
        v.extend_from_slice(t.via_name().as_bytes());
        v.push(b' ');
        v.extend_from_slice(host.as_bytes());
        v.push(b':');
        v.extend_from_slice(&build::itoa(port));
        v.extend_from_slice(b";branch=");
        v.extend_from_slice(branch);
        v
    }

    fn record_route_value(&self, t: Transport) -> Vec<u8> {
        let local = self.local.load();
        let (host, port) = local.sent_by(t);
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(b"<sip:");
        v.extend_from_slice(host.as_bytes());
        v.push(b':');
        v.extend_from_slice(&build::itoa(port));
        if t != Transport::Udp {
            v.extend_from_slice(b";transport=");
            v.extend_from_slice(t.name().as_bytes());
        }
        v.extend_from_slice(b";lr>");
        v
    }

    fn local_tag(&self, msg: &Message) -> Vec<u8> {
        let mut b = Vec::with_capacity(18);
        b.extend_from_slice(b"kS");
        push_hex(&mut b, fnv(self.salt, &[msg.call_id().unwrap_or(b"")]));
        b
    }

    /// Answers `req` from the sbc itself.
    fn reply(
        &self,
        req: &Message,
        peer: Peer,
        code: u16,
        reason: &str,
        extra: &[(&str, &[u8])],
    ) -> Out {
        let tag = self.local_tag(req);
        Out {
            to: peer,
            data: Bytes::from(build::local_response(req, code, reason, &tag, extra)),
            token: None,
            resp: (ResponseOrigin::Local, code),
        }
    }

    // ---- requests -------------------------------------------------------------------------

    fn on_request(&self, msg: Message, peer: Peer) {
        let mut out = Vec::with_capacity(2);
        self.handle_request(msg, peer, &mut out);
        self.flush(out);
    }

    fn handle_request(&self, msg: Message, peer: Peer, out: &mut Vec<Out>) {
        let mf = match sanity::check_request(&msg) {
            Ok(mf) => mf,
            Err(r) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(code = r.code, reason = r.reason, from = %peer.addr, "request refused");
                if msg.method() != Some(Method::Ack) {
                    out.push(self.reply(&msg, peer, r.code, r.reason, &[]));
                }
                return;
            }
        };
        let method = msg.method().unwrap_or(Method::Other);
        let loop_hash = loop_hash(&msg);
        if self.is_loop(&msg, loop_hash) {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            if method != Method::Ack {
                out.push(self.reply(&msg, peer, 482, "Loop Detected", &[]));
            }
            return;
        }
        let in_dialog = msg
            .header_value(HeaderName::To)
            .and_then(uri::tag)
            .is_some();
        match method {
            Method::Ack => return self.on_ack(msg, peer, mf, loop_hash, out),
            Method::Cancel => return self.on_cancel(msg, peer, out),
            _ => {}
        }
        let Some(key) = server_key(&msg, method) else {
            return;
        };
        {
            let st = self.lock();
            if st.staging.contains(&key) {
                return;
            }
            if let Some(tx) = st.server.get(&key) {
                // A retransmission: repeat our last answer, if any.
                if let Some(last) = &tx.last {
                    out.push(Out {
                        to: peer,
                        data: last.clone(),
                        token: None,
                        resp: REQUEST,
                    });
                }
                return;
            }
        }
        if method == Method::Options && !in_dialog && self.is_local_uri(msg.request_uri()) {
            out.push(self.reply(
                &msg,
                peer,
                200,
                "OK",
                &[(
                    "Allow",
                    b"INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE",
                )],
            ));
            return;
        }
        let cx = RequestContext {
            peer,
            method,
            in_dialog,
        };
        let incoming = Incoming {
            msg,
            cx,
            key,
            mf,
            loop_hash,
        };
        let pipeline = self.pipeline.load_full();
        if pipeline.is_empty() {
            return self.route(incoming, Admission::default(), out);
        }
        // Poll the stages once here: with the in-memory store they decide at once and the
        // request is routed without leaving the receive loop. Only a stage that waits (a Redis
        // round trip) sends the rest of the work to a task.
        let key_copy = incoming.key.clone();
        let mut staged = Box::pin(async move {
            let (verdict, admission) = pipeline.run(&incoming.msg, &incoming.cx).await;
            (incoming, verdict, admission)
        });
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready((incoming, verdict, admission)) =
            staged.as_mut().poll(&mut cx)
        {
            return self.after_stages(incoming, verdict, admission, out);
        }
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        self.lock().staging.insert(key_copy);
        tokio::spawn(async move {
            let (incoming, verdict, admission) = staged.await;
            me.lock().staging.remove(&incoming.key);
            let mut out = Vec::with_capacity(2);
            me.after_stages(incoming, verdict, admission, &mut out);
            me.flush(out);
        });
    }

    /// Acts on the stages' verdict.
    fn after_stages(
        &self,
        incoming: Incoming,
        verdict: Verdict,
        admission: Admission,
        out: &mut Vec<Out>,
    ) {
        match verdict {
            Verdict::Continue => self.route(incoming, admission, out),
            Verdict::Reply(r) => {
                let headers: Vec<(&str, &[u8])> =
                    r.headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                out.push(self.reply(&incoming.msg, incoming.cx.peer, r.code, &r.reason, &headers));
            }
            Verdict::Drop => {}
        }
    }

    /// Routes a request that passed the policy stages: in-dialog by its Route set, initial
    /// through the dispatcher, in a new server transaction.
    fn route(&self, incoming: Incoming, admission: Admission, out: &mut Vec<Out>) {
        let Incoming {
            msg,
            cx,
            key,
            mf,
            loop_hash,
        } = incoming;
        let RequestContext {
            peer,
            method,
            in_dialog,
        } = cx;
        let cfg = self.config.load();
        if self.is_draining() && !in_dialog {
            let ra = build::itoa(cfg.drain.retry_after_secs);
            return self.refuse(
                &msg,
                &cx,
                503,
                "Service Unavailable",
                &[("Retry-After", &ra)],
                out,
            );
        }
        let (drop_routes, next_route) = self.inspect_routes(&msg);
        let msg = Arc::new(msg);
        let mut tx = ServerTx {
            id: 0,
            peer,
            req: Some(msg.clone()),
            invite: method == Method::Invite,
            state: SState::Proceeding,
            last: None,
            branch: None,
            cancelled: false,
            set: None,
            tried: Vec::new(),
            retransmit: Duration::from_millis(cfg.relay.t1_ms),
            loop_hash,
            mf,
            drop_routes,
            started: Instant::now(),
            cx,
            strip: admission.strip,
            checked: !self.pipeline.load().is_empty(),
        };
        let mut st = self.lock();
        if st.server.len() >= cfg.limits.max_transactions {
            drop(st);
            return self.refuse(
                &msg,
                &cx,
                503,
                "Server Overloaded",
                &[("Retry-After", b"1")],
                out,
            );
        }
        tx.id = st.id();
        if in_dialog {
            let target = match next_route {
                Some(r) => uri_target(&r),
                None => uri_target(msg.request_uri()),
            };
            let Some(target) = target else {
                drop(st);
                return self.refuse(&msg, &cx, 478, "Unresolvable Destination", &[], out);
            };
            if self.is_target_us(&target) {
                drop(st);
                return self.refuse(&msg, &cx, 481, "Call/Transaction Does Not Exist", &[], out);
            }
            st.server.insert(key.clone(), tx);
            self.forward(&mut st, &key, target, None, out);
            drop(st);
            if method == Method::Bye {
                self.pipeline.load().dialog_end(&msg, &cx);
            }
            return;
        }
        if next_route.is_some() {
            drop(st);
            return self.refuse(&msg, &cx, 403, "Preload Route Denied", &[], out);
        }
        let set_id = cfg.dispatcher.default_set;
        tx.set = Some(set_id);
        let Some(sel) = self.select(&msg, set_id, &[]) else {
            drop(st);
            let ra = build::itoa(retry_after(&cfg, set_id));
            self.warn_no_destination(set_id);
            return self.refuse(
                &msg,
                &cx,
                503,
                "Service Unavailable",
                &[("Retry-After", &ra)],
                out,
            );
        };
        if tx.invite {
            let trying = self.reply(&msg, peer, 100, "Trying", &[]);
            tx.last = Some(trying.data.clone());
            out.push(trying);
        }
        tx.tried.push(sel.index);
        st.server.insert(key.clone(), tx);
        let target = Peer {
            transport: sel.dest.target.transport,
            addr: sel.dest.target.addr,
            flow: None,
        };
        self.forward(&mut st, &key, target, Some((sel.dest, sel.index)), out);
    }

    /// Logs "no destination up" at most once a second, with how many requests it refused:
    /// under overload it would otherwise be one line per call.
    fn warn_no_destination(&self, set: u32) {
        let refused = self.stats.no_destination.fetch_add(1, Ordering::Relaxed) + 1;
        let now = self.wheel_secs();
        let last = self.last_no_dest_log.load(Ordering::Relaxed);
        if now > last
            && self
                .last_no_dest_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                set,
                refused_so_far = refused,
                "no destination up: new requests get 503"
            );
        }
    }

    fn wheel_secs(&self) -> u64 {
        self.started.elapsed().as_secs() + 1
    }

    /// Answers a request the relay will not route, and tells the stages it passed that its
    /// transaction is over (so a throttle gives its capacity back).
    fn refuse(
        &self,
        msg: &Message,
        cx: &RequestContext,
        code: u16,
        reason: &str,
        extra: &[(&str, &[u8])],
        out: &mut Vec<Out>,
    ) {
        let pipeline = self.pipeline.load();
        if !pipeline.is_empty() {
            pipeline.final_response(msg, cx, code);
        }
        out.push(self.reply(msg, cx.peer, code, reason, extra));
    }

    fn select(
        &self,
        msg: &Message,
        set: u32,
        tried: &[usize],
    ) -> Option<crate::dispatch::Selected> {
        let from = msg
            .header_value(HeaderName::From)
            .map(uri::name_addr_uri)
            .unwrap_or(b"");
        let to = msg
            .header_value(HeaderName::To)
            .map(uri::name_addr_uri)
            .unwrap_or(b"");
        let auth = msg
            .header_value(HeaderName::ProxyAuthorization)
            .or_else(|| msg.header_value(HeaderName::Authorization))
            .and_then(digest_username);
        let key = SelectKey {
            call_id: msg.call_id().unwrap_or(b""),
            from_uri: from,
            to_uri: to,
            request_uri: msg.request_uri(),
            auth_username: auth,
        };
        self.dispatcher.select(set, &key, tried)
    }

    /// Relays the server transaction's request to `target` in a new client transaction.
    fn forward(
        &self,
        st: &mut State,
        server_key: &[u8],
        target: Peer,
        dest: Option<(Arc<Destination>, usize)>,
        out: &mut Vec<Out>,
    ) {
        let cfg = self.config.load();
        let id = st.id();
        let Some(stx) = st.server.get_mut(server_key) else {
            return;
        };
        let Some(req) = stx.req.clone() else { return };
        let branch = self.new_branch(stx.loop_hash);
        let via = self.via_value(target.transport, &branch);
        let initial = stx.set.is_some();
        let rr = (initial && cfg.relay.record_route)
            .then(|| self.record_route_value(stx.peer.transport));
        let (params, fill_rport) = received_params(&req, stx.peer.addr);
        let data = Bytes::from(build::relay_request(
            &req,
            &RequestEdits {
                via: &via,
                record_route: rr.as_deref(),
                top_via_params: params.as_deref(),
                fill_rport,
                drop_routes: stx.drop_routes,
                max_forwards: stx.mf.saturating_sub(1),
                strip: &stx.strip,
            },
        ));
        stx.branch = Some(branch.clone());
        let invite = stx.invite;
        if invite && let Some((d, _)) = &dest {
            d.call_started();
        }
        let failover = self.failover_of(&cfg, stx.set);
        st.client.insert(
            branch.clone(),
            ClientTx {
                server: Some(server_key.to_vec()),
                invite,
                dest,
                ..ClientTx::new(id, target, data.clone(), &cfg)
            },
        );
        self.wheel.schedule(
            Duration::from_millis(failover.reply_timeout_ms),
            Timer::ClientNoReply(branch.clone(), id),
        );
        if target.transport == Transport::Udp {
            self.wheel.schedule(
                Duration::from_millis(cfg.relay.t1_ms),
                Timer::ClientRetransmit(branch.clone(), id),
            );
        }
        out.push(Out {
            to: target,
            data,
            token: Some(branch),
            resp: REQUEST,
        });
    }

    /// The failover settings of a set, borrowed from the loaded config (no copy per message).
    fn failover_of<'a>(&self, cfg: &'a SbcConfig, set: Option<u32>) -> &'a Failover {
        static DEFAULT: std::sync::LazyLock<Failover> = std::sync::LazyLock::new(Failover::default);
        let id = set.unwrap_or(cfg.dispatcher.default_set);
        cfg.dispatcher
            .sets
            .iter()
            .find(|s| s.id == id)
            .map_or(&*DEFAULT, |s| &s.failover)
    }

    fn on_ack(&self, msg: Message, peer: Peer, mf: u32, loop_hash: u64, out: &mut Vec<Out>) {
        if let Some(key) = server_key(&msg, Method::Ack) {
            let mut st = self.lock();
            if let Some(tx) = st.server.get_mut(&key) {
                // The ACK for a non-2xx final we sent: the transaction is confirmed.
                if tx.state == SState::Completed {
                    tx.state = SState::Accepted;
                    tx.last = None;
                    let id = tx.id;
                    self.wheel.schedule(WAIT, Timer::ServerExpire(key, id));
                }
                return;
            }
        }
        // An ACK for a 2xx belongs to the dialog: route it statelessly.
        let (drop_routes, next_route) = self.inspect_routes(&msg);
        let target = match next_route {
            Some(r) => uri_target(&r),
            None => uri_target(msg.request_uri()),
        };
        let Some(target) = target.filter(|t| !self.is_target_us(t)) else {
            return;
        };
        let incoming = msg
            .top_via()
            .and_then(|v| {
                Via::parse(msg.slice(v))
                    .and_then(|v| v.branch())
                    .map(|b| fnv(0, &[b]))
            })
            .unwrap_or(0);
        let mut branch = Vec::with_capacity(48);
        branch.extend_from_slice(BRANCH_PREFIX);
        push_hex(&mut branch, loop_hash);
        branch.push(b'.');
        push_hex(&mut branch, incoming);
        let via = self.via_value(target.transport, &branch);
        let (params, fill_rport) = received_params(&msg, peer.addr);
        let data = build::relay_request(
            &msg,
            &RequestEdits {
                via: &via,
                record_route: None,
                top_via_params: params.as_deref(),
                fill_rport,
                drop_routes,
                max_forwards: mf.saturating_sub(1),
                strip: &[],
            },
        );
        out.push(Out {
            to: target,
            data: Bytes::from(data),
            token: None,
            resp: REQUEST,
        });
    }

    fn on_cancel(&self, msg: Message, peer: Peer, out: &mut Vec<Out>) {
        let Some(ikey) = server_key(&msg, Method::Invite) else {
            return;
        };
        let mut st = self.lock();
        let Some(tx) = st.server.get_mut(&ikey) else {
            drop(st);
            out.push(self.reply(&msg, peer, 481, "Call/Transaction Does Not Exist", &[]));
            return;
        };
        out.push(self.reply(&msg, peer, 200, "OK", &[]));
        if tx.state != SState::Proceeding || tx.cancelled {
            return;
        }
        tx.cancelled = true;
        let Some(branch) = tx.branch.clone() else {
            return;
        };
        let cfg = self.config.load();
        let cancel_id = st.id();
        let Some(ctx) = st.client.get_mut(&branch) else {
            return;
        };
        if ctx.completed {
            return;
        }
        if !ctx.provisional {
            ctx.cancel_pending = true;
            return;
        }
        if let Some(o) = self.start_cancel(&mut st, &branch, cancel_id, &cfg) {
            out.push(o);
        }
    }

    /// Sends a CANCEL for the client INVITE transaction `branch` (RFC 3261 section 9.1).
    fn start_cancel(&self, st: &mut State, branch: &[u8], id: u64, cfg: &SbcConfig) -> Option<Out> {
        let ctx = st.client.get(branch)?;
        let sent = Message::parse(ctx.data.clone(), usize::MAX).ok()?;
        let data = Bytes::from(build::cancel_for(&sent));
        let to = ctx.to;
        let mut key = branch.to_vec();
        key.extend_from_slice(b"\0C");
        st.client.insert(
            key.clone(),
            ClientTx {
                cancel: true,
                ..ClientTx::new(id, to, data.clone(), cfg)
            },
        );
        self.wheel.schedule(
            Duration::from_millis(cfg.relay.t1_ms * 64),
            Timer::ClientExpire(key.clone(), id),
        );
        if to.transport == Transport::Udp {
            self.wheel.schedule(
                Duration::from_millis(cfg.relay.t1_ms),
                Timer::ClientRetransmit(key.clone(), id),
            );
        }
        Some(Out {
            to,
            data,
            token: None,
            resp: REQUEST,
        })
    }

    // ---- responses ------------------------------------------------------------------------

    fn on_response(&self, msg: Message, _peer: Peer) {
        let mut out = Vec::with_capacity(2);
        self.handle_response(msg, &mut out);
        self.flush(out);
    }

    fn handle_response(&self, msg: Message, out: &mut Vec<Out>) {
        let Some(code) = msg.code() else { return };
        let Some(top) = msg.top_via() else { return };
        let Some(via) = Via::parse(msg.slice(top)) else {
            return;
        };
        if !self.local.load().is_us(via.host, via.port) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.dropped(DropReason::Stray);
            return;
        }
        let Some(branch) = via.branch() else { return };
        let is_cancel = msg.cseq().is_some_and(|(_, m)| m == b"CANCEL");
        let mut key = branch.to_vec();
        if is_cancel {
            key.extend_from_slice(b"\0C");
        }
        let cfg = self.config.load();
        let mut st = self.lock();
        let Some(ctx) = st.client.get_mut(&key) else {
            drop(st);
            // No transaction (a retransmitted 2xx, or a late reply): forward statelessly
            // along the Via path (RFC 3261 section 16.7).
            if let Some(to) = second_via_target(&msg) {
                out.push(Out {
                    to,
                    data: Bytes::from(build::relay_response(&msg)),
                    token: None,
                    resp: (ResponseOrigin::Relayed, code),
                });
            }
            return;
        };
        if let Some(local) = ctx.local.take() {
            if code >= 200 {
                let _ = local.send(PingOutcome::Reply(code));
                st.client.remove(&key);
            } else {
                ctx.local = Some(local);
            }
            return;
        }
        if ctx.cancel {
            if code >= 200 {
                ctx.completed = true;
            }
            return;
        }
        if code < 200 {
            if !ctx.provisional {
                ctx.provisional = true;
                if ctx.invite {
                    self.wheel.schedule(
                        Duration::from_millis(cfg.relay.invite_timeout_ms),
                        Timer::ClientRing(key.clone(), ctx.id),
                    );
                }
            }
            if ctx.cancel_pending {
                ctx.cancel_pending = false;
                let id = st.id();
                if let Some(o) = self.start_cancel(&mut st, &key, id, &cfg) {
                    out.push(o);
                }
                return;
            }
            if code == 100 {
                return;
            }
            let server = ctx.server.clone();
            if let Some(stx) = server.as_ref().and_then(|k| st.server.get_mut(k))
                && stx.state == SState::Proceeding
            {
                let data = Bytes::from(build::relay_response(&msg));
                stx.last = Some(data.clone());
                out.push(Out {
                    to: stx.peer,
                    data,
                    token: None,
                    resp: (ResponseOrigin::Relayed, code),
                });
            }
            return;
        }
        // A final response.
        if ctx.completed {
            // A retransmission of a final we already handled: repeat our ACK.
            if let Some(ack) = &ctx.ack {
                out.push(Out {
                    to: ctx.to,
                    data: ack.clone(),
                    token: None,
                    resp: REQUEST,
                });
            }
            return;
        }
        ctx.completed = true;
        let ctx_id = ctx.id;
        let dest = ctx.dest.clone();
        let server = ctx.server.clone();
        if ctx.invite {
            if let Some((d, _)) = &dest {
                // Call-load counts ringing calls; a connected call ends its count here too
                // (dialog-long tracking needs the dialog module: see docs/dispatcher.md).
                d.call_ended();
            }
            if code >= 300 {
                if let Ok(sent) = Message::parse(ctx.data.clone(), usize::MAX) {
                    let ack = Bytes::from(build::ack_for(&sent, &msg));
                    ctx.ack = Some(ack.clone());
                    out.push(Out {
                        to: ctx.to,
                        data: ack,
                        token: None,
                        resp: REQUEST,
                    });
                }
                let wait = if ctx.to.transport == Transport::Udp {
                    WAIT
                } else {
                    Duration::ZERO
                };
                self.wheel
                    .schedule(wait, Timer::ClientExpire(key.clone(), ctx_id));
            } else {
                st.client.remove(&key);
            }
        } else {
            st.client.remove(&key);
        }
        let Some(skey) = server else { return };
        let Some(stx) = st.server.get_mut(&skey) else {
            return;
        };
        if stx.state != SState::Proceeding {
            // Already answered (timeout, CANCEL): only a 2xx to an INVITE still goes up.
            if stx.invite && (200..300).contains(&code) {
                out.push(Out {
                    to: stx.peer,
                    data: Bytes::from(build::relay_response(&msg)),
                    token: None,
                    resp: (ResponseOrigin::Relayed, code),
                });
            }
            return;
        }
        if code >= 300 && !stx.cancelled && stx.set.is_some() {
            let failover = self.failover_of(&cfg, stx.set);
            if failover.fails_over_on(code) && (stx.tried.len() as u32) < failover.max_attempts {
                if let Some(dest) = &dest {
                    dest.0.request_failed();
                    tracing::info!(dest = %dest.0.uri, code, "failover after reply");
                }
                if self.try_next(&mut st, &skey, out) {
                    return;
                }
            }
        }
        let Some(stx) = st.server.get_mut(&skey) else {
            return;
        };
        let data = Bytes::from(build::relay_response(&msg));
        self.finish_server(
            stx,
            &skey,
            code,
            (ResponseOrigin::Relayed, data),
            &cfg,
            dest.as_ref().map(|d| d.0.uri.as_str()),
            out,
        );
    }

    /// Sends a final response upstream and moves the server transaction on.
    #[allow(clippy::too_many_arguments)]
    fn finish_server(
        &self,
        stx: &mut ServerTx,
        skey: &[u8],
        code: u16,
        (origin, data): (ResponseOrigin, Bytes),
        cfg: &SbcConfig,
        dest: Option<&str>,
        out: &mut Vec<Out>,
    ) {
        if stx.invite
            && let Some(req) = &stx.req
        {
            tracing::info!(
                call_id = %String::from_utf8_lossy(req.call_id().unwrap_or(b"")),
                from = %stx.peer.addr,
                dest = dest.unwrap_or("-"),
                code,
                attempts = stx.tried.len(),
                setup_ms = stx.started.elapsed().as_millis() as u64,
                "call"
            );
        }
        let udp = stx.peer.transport == Transport::Udp;
        if stx.checked
            && let Some(req) = &stx.req
        {
            self.pipeline.load().final_response(req, &stx.cx, code);
        }
        stx.req = None;
        if stx.invite && (200..300).contains(&code) {
            if origin == ResponseOrigin::Relayed {
                self.metrics.call_relayed();
            }
            stx.state = SState::Accepted;
            stx.last = None;
            let wait = if udp { WAIT } else { Duration::ZERO };
            self.wheel
                .schedule(wait, Timer::ServerExpire(skey.to_vec(), stx.id));
        } else {
            stx.state = SState::Completed;
            stx.last = Some(data.clone());
            if stx.invite && udp {
                self.wheel.schedule(
                    stx.retransmit,
                    Timer::ServerRetransmit(skey.to_vec(), stx.id),
                );
                self.wheel.schedule(
                    Duration::from_millis(cfg.relay.t1_ms * 64),
                    Timer::ServerExpire(skey.to_vec(), stx.id),
                );
            } else {
                let wait = if udp { WAIT } else { Duration::ZERO };
                self.wheel
                    .schedule(wait, Timer::ServerExpire(skey.to_vec(), stx.id));
            }
        }
        out.push(Out {
            to: stx.peer,
            data,
            token: None,
            resp: (origin, code),
        });
    }

    /// Moves the request to the next destination of its set. False when none is left.
    fn try_next(&self, st: &mut State, skey: &[u8], out: &mut Vec<Out>) -> bool {
        let Some(stx) = st.server.get(skey) else {
            return false;
        };
        let (Some(set), Some(req)) = (stx.set, stx.req.clone()) else {
            return false;
        };
        let tried = stx.tried.clone();
        let Some(sel) = self.select(&req, set, &tried) else {
            return false;
        };
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        self.metrics.failover();
        if let Some(stx) = st.server.get_mut(skey) {
            stx.tried.push(sel.index);
        }
        let target = Peer {
            transport: sel.dest.target.transport,
            addr: sel.dest.target.addr,
            flow: None,
        };
        self.forward(st, skey, target, Some((sel.dest, sel.index)), out);
        true
    }

    /// A client transaction got no usable reply: its request timed out or could not be sent.
    fn client_failed(&self, key: &[u8], id: Option<u64>, out: &mut Vec<Out>) {
        let cfg = self.config.load();
        let mut st = self.lock();
        let Some(ctx) = st.client.get(key) else {
            return;
        };
        if id.is_some_and(|i| i != ctx.id) || ctx.completed || (ctx.invite && ctx.provisional) {
            return;
        }
        let Some(mut ctx) = st.client.remove(key) else {
            return;
        };
        if let Some(local) = ctx.local.take() {
            let outcome = if id.is_none() {
                PingOutcome::Unreachable
            } else {
                PingOutcome::Timeout
            };
            let _ = local.send(outcome);
            return;
        }
        let Some(skey) = ctx.server.clone() else {
            return;
        };
        let failover = {
            let Some(stx) = st.server.get(&skey) else {
                return;
            };
            self.failover_of(&cfg, stx.set)
        };
        if let Some((d, _)) = &ctx.dest {
            if ctx.invite {
                d.call_ended();
            }
            if failover.mark_down_on_timeout {
                if d.is_up() {
                    tracing::warn!(dest = %d.uri, "destination did not answer, marked down");
                }
                d.mark_down();
            }
        }
        let Some(stx) = st.server.get(&skey) else {
            return;
        };
        if stx.state != SState::Proceeding {
            return;
        }
        let cancelled = stx.cancelled;
        if !cancelled
            && stx.set.is_some()
            && (stx.tried.len() as u32) < failover.max_attempts
            && self.try_next(&mut st, &skey, out)
        {
            return;
        }
        let Some(stx) = st.server.get_mut(&skey) else {
            return;
        };
        let Some(req) = stx.req.clone() else { return };
        let (code, reason) = if cancelled {
            (487, "Request Terminated")
        } else {
            (408, "Request Timeout")
        };
        let reply = self.reply(&req, stx.peer, code, reason, &[]);
        let dest = ctx.dest.as_ref().map(|d| d.0.uri.clone());
        self.finish_server(
            stx,
            &skey,
            code,
            (ResponseOrigin::Local, reply.data),
            &cfg,
            dest.as_deref(),
            out,
        );
    }

    // ---- timers ---------------------------------------------------------------------------

    fn on_timer(&self, t: Timer) {
        let mut out = Vec::new();
        match t {
            Timer::ClientRetransmit(key, id) => {
                let cfg = self.config.load();
                let mut st = self.lock();
                if let Some(ctx) = st.client.get_mut(&key)
                    && ctx.id == id
                    && !ctx.completed
                    && !(ctx.invite && ctx.provisional)
                {
                    out.push(Out {
                        to: ctx.to,
                        data: ctx.data.clone(),
                        token: None,
                        resp: REQUEST,
                    });
                    ctx.retransmit *= 2;
                    if !ctx.invite {
                        ctx.retransmit = ctx.retransmit.min(Duration::from_millis(cfg.relay.t2_ms));
                    }
                    self.wheel
                        .schedule(ctx.retransmit, Timer::ClientRetransmit(key, id));
                }
            }
            Timer::ClientNoReply(key, id) => self.client_failed(&key, Some(id), &mut out),
            Timer::ClientRing(key, id) => {
                let cfg = self.config.load();
                let mut st = self.lock();
                let Some(ctx) = st.client.get_mut(&key) else {
                    return;
                };
                if ctx.id != id || ctx.completed {
                    return;
                }
                let server = ctx.server.clone();
                let cid = st.id();
                if let Some(o) = self.start_cancel(&mut st, &key, cid, &cfg) {
                    out.push(o);
                }
                if let Some(skey) = server
                    && let Some(stx) = st.server.get_mut(&skey)
                    && stx.state == SState::Proceeding
                    && let Some(req) = stx.req.clone()
                {
                    let reply = self.reply(&req, stx.peer, 408, "Request Timeout", &[]);
                    self.finish_server(
                        stx,
                        &skey,
                        408,
                        (ResponseOrigin::Local, reply.data),
                        &cfg,
                        None,
                        &mut out,
                    );
                }
            }
            Timer::ClientExpire(key, id) => {
                let mut st = self.lock();
                if st.client.get(&key).is_some_and(|c| c.id == id) {
                    st.client.remove(&key);
                }
            }
            Timer::ServerRetransmit(key, id) => {
                let cfg = self.config.load();
                let mut st = self.lock();
                if let Some(stx) = st.server.get_mut(&key)
                    && stx.id == id
                    && stx.state == SState::Completed
                    && let Some(last) = &stx.last
                {
                    out.push(Out {
                        to: stx.peer,
                        data: last.clone(),
                        token: None,
                        resp: REQUEST,
                    });
                    stx.retransmit =
                        (stx.retransmit * 2).min(Duration::from_millis(cfg.relay.t2_ms));
                    self.wheel
                        .schedule(stx.retransmit, Timer::ServerRetransmit(key, id));
                }
            }
            Timer::ServerExpire(key, id) => {
                let mut st = self.lock();
                if st.server.get(&key).is_some_and(|s| s.id == id) {
                    st.server.remove(&key);
                }
            }
        }
        self.flush(out);
    }

    // ---- routing helpers ------------------------------------------------------------------

    fn is_local_uri(&self, u: &[u8]) -> bool {
        Uri::parse(u).is_some_and(|u| u.user.is_none() && self.local.load().is_us(u.host, u.port))
    }

    fn is_target_us(&self, p: &Peer) -> bool {
        let local = self.local.load();
        local.aliases.iter().any(|(h, port)| {
            *port == p.addr.port()
                && h.trim_matches(['[', ']']).parse::<IpAddr>().ok() == Some(p.addr.ip())
        })
    }

    /// Counts the leading Route values that name us, and returns the first one that does not.
    fn inspect_routes(&self, msg: &Message) -> (usize, Option<Vec<u8>>) {
        let local = self.local.load();
        let mut ours = 0;
        for v in msg.values(HeaderName::Route) {
            let u = uri::name_addr_uri(msg.slice(v));
            match Uri::parse(u) {
                Some(p) if local.is_us(p.host, p.port) => ours += 1,
                _ => return (ours, Some(u.to_vec())),
            }
        }
        (ours, None)
    }

    fn is_loop(&self, msg: &Message, hash: u64) -> bool {
        let local = self.local.load();
        let mut want = Vec::with_capacity(16);
        push_hex(&mut want, hash);
        msg.values(HeaderName::Via).any(|v| {
            Via::parse(msg.slice(v)).is_some_and(|via| {
                local.is_us(via.host, via.port)
                    && via.branch().is_some_and(|b| {
                        b.strip_prefix(BRANCH_PREFIX)
                            .is_some_and(|rest| rest.starts_with(&want))
                    })
            })
        })
    }

    /// Sends an OPTIONS probe from the sbc itself and waits for the reply.
    fn ping_dest(
        &self,
        dest: &Destination,
        from: &str,
        timeout: Duration,
    ) -> oneshot::Receiver<PingOutcome> {
        let (tx, rx) = oneshot::channel();
        let cfg = self.config.load();
        let to = Peer {
            transport: dest.target.transport,
            addr: dest.target.addr,
            flow: None,
        };
        let branch = self.new_branch(0);
        let via = self.via_value(to.transport, &branch);
        let ruri = dest.uri.as_str();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let data = format!(
            "OPTIONS {ruri} SIP/2.0\r\nVia: {via}\r\nFrom: <{from}>;tag=kSp{n:x}\r\nTo: <{ruri}>\r\nCall-ID: kSprobe.{salt:x}.{n:x}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nUser-Agent: kubesbc\r\nContent-Length: 0\r\n\r\n",
            via = String::from_utf8_lossy(&via),
            salt = self.salt,
        );
        let data = Bytes::from(data);
        let mut st = self.lock();
        let id = st.id();
        st.client.insert(
            branch.clone(),
            ClientTx {
                local: Some(tx),
                ..ClientTx::new(id, to, data.clone(), &cfg)
            },
        );
        drop(st);
        self.wheel
            .schedule(timeout, Timer::ClientNoReply(branch.clone(), id));
        if to.transport == Transport::Udp {
            self.wheel.schedule(
                Duration::from_millis(cfg.relay.t1_ms),
                Timer::ClientRetransmit(branch.clone(), id),
            );
        }
        self.flush(vec![Out {
            to,
            data,
            token: Some(branch),
            resp: REQUEST,
        }]);
        rx
    }
}

impl Inbound for Relay {
    fn on_message(&self, data: Bytes, peer: Peer) {
        self.metrics
            .transport_message(peer.transport, Direction::In, data.len());
        let max = self.config.load().limits.max_message_bytes;
        match Message::parse(data.clone(), max) {
            Ok(msg) if msg.is_request() => {
                self.metrics
                    .request_received(msg.method().unwrap_or(Method::Other));
                self.on_request(msg, peer)
            }
            Ok(msg) => self.on_response(msg, peer),
            Err(e) => self.on_parse_error(&data, e, peer),
        }
    }

    fn on_send_error(&self, token: Vec<u8>) {
        let mut out = Vec::new();
        self.client_failed(&token, None, &mut out);
        self.flush(out);
    }

    fn on_dropped(&self, reason: &'static str) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped(match reason {
            "too_large" => DropReason::TooLarge,
            "tcp_queue_full" => DropReason::QueueFull,
            "connection_limit" => DropReason::Limit,
            _ => DropReason::Unparsable,
        });
        tracing::debug!(reason, "message dropped");
    }
}

impl Relay {
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
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.dropped(DropReason::Unparsable);
            tracing::debug!(from = %peer.addr, error = %e, "unparseable message dropped");
            return;
        };
        if data.starts_with(b"SIP/") || data.starts_with(b"ACK ") {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let reply = build::raw_response(data, code, reason);
        self.flush(vec![Out {
            to: peer,
            data: Bytes::from(reply),
            token: None,
            resp: (ResponseOrigin::Local, code),
        }]);
    }
}

impl Pinger for Relay {
    fn ping<'a>(
        &'a self,
        dest: &'a Destination,
        from: &'a str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = PingOutcome> + Send + 'a>> {
        let rx = self.ping_dest(dest, from, timeout);
        Box::pin(async move { rx.await.unwrap_or(PingOutcome::Timeout) })
    }
}

fn retry_after(cfg: &SbcConfig, set: u32) -> u64 {
    cfg.dispatcher
        .sets
        .iter()
        .find(|s| s.id == set)
        .map_or(5, |s| s.probing.interval_ms.div_ceil(1000).max(1))
}

/// The server transaction key (RFC 3261 section 17.2.3): branch, sent-by and method class
/// (ACK and CANCEL match the INVITE's branch; CANCEL has its own class).
fn server_key(msg: &Message, method: Method) -> Option<Vec<u8>> {
    let top = msg.top_via()?;
    let via = Via::parse(msg.slice(top))?;
    let class = match method {
        Method::Invite | Method::Ack => b'I',
        Method::Cancel => b'C',
        _ => b'N',
    };
    let mut k = Vec::with_capacity(64);
    k.push(class);
    match via.branch().filter(|b| b.starts_with(b"z9hG4bK")) {
        Some(b) => k.extend_from_slice(b),
        None => {
            // RFC 2543 peers: fall back to the dialog identifiers.
            k.extend_from_slice(msg.call_id().unwrap_or(b""));
            if let Some((n, _)) = msg.cseq() {
                k.extend_from_slice(&build::itoa(n));
            }
            k.extend_from_slice(
                msg.header_value(HeaderName::From)
                    .and_then(uri::tag)
                    .unwrap_or(b""),
            );
        }
    }
    k.push(b'|');
    k.extend_from_slice(via.host);
    k.extend_from_slice(&build::itoa(via.port.unwrap_or(5060)));
    Some(k)
}

/// Hash over what identifies a request for loop detection (RFC 3261 section 16.3 item 4).
fn loop_hash(msg: &Message) -> u64 {
    let from_tag = msg
        .header_value(HeaderName::From)
        .and_then(uri::tag)
        .unwrap_or(b"");
    let to_tag = msg
        .header_value(HeaderName::To)
        .and_then(uri::tag)
        .unwrap_or(b"");
    let cseq = msg.cseq().map(|(n, _)| n.to_le_bytes()).unwrap_or_default();
    fnv(
        0,
        &[
            msg.request_uri(),
            msg.call_id().unwrap_or(b""),
            &cseq,
            from_tag,
            to_tag,
        ],
    )
}

fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for p in parts {
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((n >> (i * 4)) & 0xf) as usize]);
    }
}

/// `;received=` and `;rport=` for the topmost Via (RFC 3261 18.2.1, RFC 3581).
fn received_params(msg: &Message, src: SocketAddr) -> (Option<Vec<u8>>, bool) {
    let Some(top) = msg.top_via() else {
        return (None, false);
    };
    let Some(via) = Via::parse(msg.slice(top)) else {
        return (None, false);
    };
    let host = std::str::from_utf8(via.host)
        .ok()
        .and_then(|h| h.parse::<IpAddr>().ok());
    let mut p = Vec::new();
    if host != Some(src.ip()) && via.param("received").is_none() {
        p.extend_from_slice(b";received=");
        p.extend_from_slice(src.ip().to_string().as_bytes());
    }
    let fill = via.param("rport") == Some(None);
    if fill {
        p.extend_from_slice(b";rport=");
        p.extend_from_slice(&build::itoa(src.port()));
    }
    ((!p.is_empty()).then_some(p), fill)
}

/// Where a stateless response goes: the Via below ours (received/rport honoured).
fn second_via_target(msg: &Message) -> Option<Peer> {
    let v = msg.values(HeaderName::Via).nth(1)?;
    let via = Via::parse(msg.slice(v))?;
    let host = via.param("received").flatten().unwrap_or(via.host);
    let ip: IpAddr = std::str::from_utf8(host)
        .ok()?
        .trim_matches(['[', ']'])
        .parse()
        .ok()?;
    let port = via
        .param("rport")
        .flatten()
        .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
        .or(via.port)
        .unwrap_or(5060);
    let transport = Transport::from_name(std::str::from_utf8(via.transport).ok()?)?;
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, port),
        flow: None,
    })
}

/// The next hop for a URI: its IP, port and transport. No DNS on the hot path: a host name
/// here is answered with 478.
fn uri_target(u: &[u8]) -> Option<Peer> {
    let uri = Uri::parse(u)?;
    if !uri.is_sip() {
        return None;
    }
    let sips = uri.scheme.eq_ignore_ascii_case(b"sips");
    let ip: IpAddr = std::str::from_utf8(uri.host).ok()?.parse().ok()?;
    let transport = match uri.param("transport").flatten() {
        Some(t) => Transport::from_name(std::str::from_utf8(t).ok()?)?,
        None if sips => Transport::Tls,
        None => Transport::Udp,
    };
    let port = uri.port.unwrap_or(if sips { 5061 } else { 5060 });
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, port),
        flow: None,
    })
}

/// The `username` of a Digest credentials header.
fn digest_username(v: &[u8]) -> Option<&[u8]> {
    let rest = v
        .strip_prefix(b"Digest ")
        .or_else(|| v.strip_prefix(b"digest "))?;
    for part in rest.split(|c| *c == b',') {
        let part = part.trim_ascii();
        if let Some(val) = part.strip_prefix(b"username=") {
            return Some(val.trim_ascii().trim_matches(|c| c == b'"'));
        }
    }
    None
}

trait TrimMatches {
    fn trim_matches(&self, f: impl Fn(u8) -> bool) -> &Self;
}

impl TrimMatches for [u8] {
    fn trim_matches(&self, f: impl Fn(u8) -> bool) -> &[u8] {
        let s = self.iter().position(|c| !f(*c)).unwrap_or(self.len());
        let e = self.iter().rposition(|c| !f(*c)).map_or(s, |i| i + 1);
        &self[s..e.max(s)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes()), 65535).expect("valid")
    }

    const INVITE: &str = "INVITE sip:bob@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKabc;rport\r\nFrom: <sip:a@x>;tag=f1\r\nTo: <sip:bob@10.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n";

    #[test]
    fn ack_and_cancel_find_the_invite_transaction() {
        let invite = msg(INVITE);
        let ack = msg(&INVITE
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK"));
        let cancel = msg(&INVITE
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL"));
        let ik = server_key(&invite, Method::Invite).unwrap();
        assert_eq!(server_key(&ack, Method::Ack).unwrap(), ik);
        // A CANCEL is its own transaction, but looks the INVITE up with the INVITE's class.
        assert_ne!(server_key(&cancel, Method::Cancel).unwrap(), ik);
        assert_eq!(server_key(&cancel, Method::Invite).unwrap(), ik);
        // Another sent-by is another transaction even with the same branch.
        let other = msg(&INVITE.replace("10.0.0.9:5090", "10.0.0.8:5090"));
        assert_ne!(server_key(&other, Method::Invite).unwrap(), ik);
    }

    #[test]
    fn received_and_rport_are_added_when_the_source_differs() {
        let m = msg(INVITE);
        let (p, fill) = received_params(&m, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(p.as_deref(), Some(&b";received=192.0.2.7;rport=40000"[..]));
        assert!(fill);
        let (p, fill) = received_params(&m, "10.0.0.9:5090".parse().unwrap());
        assert_eq!(p.as_deref(), Some(&b";rport=5090"[..]));
        assert!(fill);
        let plain = msg(&INVITE.replace(";rport", ""));
        assert_eq!(
            received_params(&plain, "10.0.0.9:5090".parse().unwrap()),
            (None, false)
        );
    }

    #[test]
    fn stateless_responses_follow_received_and_rport() {
        let r = msg(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkSx\r\nVia: SIP/2.0/TCP 10.0.0.9:5090;branch=z9hG4bKa;received=192.0.2.7;rport=40000\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
        );
        let to = second_via_target(&r).unwrap();
        assert_eq!(to.addr, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(to.transport, Transport::Tcp);
    }

    #[test]
    fn next_hops_need_an_ip_and_honour_transport() {
        let p = uri_target(b"sip:bob@10.0.0.1:5080;transport=tcp").unwrap();
        assert_eq!(
            (p.addr, p.transport),
            ("10.0.0.1:5080".parse().unwrap(), Transport::Tcp)
        );
        let p = uri_target(b"sips:[::1]").unwrap();
        assert_eq!((p.addr.port(), p.transport), (5061, Transport::Tls));
        assert!(
            uri_target(b"sip:bob@pbx.example.com").is_none(),
            "no DNS on the hot path"
        );
        assert!(uri_target(b"tel:+1234").is_none());
    }

    #[test]
    fn loop_hash_covers_the_request_identity() {
        let a = loop_hash(&msg(INVITE));
        assert_eq!(a, loop_hash(&msg(INVITE)));
        assert_ne!(
            a,
            loop_hash(&msg(
                &INVITE.replace("sip:bob@10.0.0.1 SIP", "sip:carol@10.0.0.1 SIP")
            ))
        );
        assert_ne!(a, loop_hash(&msg(&INVITE.replace("CSeq: 1", "CSeq: 2"))));
    }

    #[test]
    fn a_pod_bound_to_all_addresses_writes_its_pod_ip() {
        let cfg = crate::config::from_listeners(vec![
            crate::config::parse_listen("udp:0.0.0.0:5060").unwrap(),
        ])
        .unwrap();
        let bound = [(Transport::Udp, "0.0.0.0:5060".parse().unwrap())];
        let l = Local::new(&cfg, &bound, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(l.sent_by(Transport::Udp), ("10.1.2.3", 5060));
        assert!(l.is_us(b"10.1.2.3", None));
        let mut adv = cfg.clone();
        adv.listeners[0].advertise = Some("203.0.113.9:5080".into());
        let l = Local::new(&adv, &bound, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(l.sent_by(Transport::Udp), ("203.0.113.9", 5080));
        assert!(l.is_us(b"203.0.113.9", Some(5080)) && l.is_us(b"10.1.2.3", Some(5060)));
    }

    #[test]
    fn digest_username_is_read_from_credentials() {
        assert_eq!(
            digest_username(b"Digest username=\"alice\", realm=\"x\", nonce=\"n\""),
            Some(&b"alice"[..])
        );
        assert_eq!(digest_username(b"Basic YWxpY2U6"), None);
    }
}
