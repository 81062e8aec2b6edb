//! The transaction core (RFC 3261 sections 16 and 17, RFC 6026) without I/O: it takes
//! events (a parsed message from a peer, a timer that fired, a send that failed) and returns
//! [`Action`]s (send these bytes there, arm this timer, tell these stages how it ended). No
//! socket, no task, no clock: the caller passes `now` in [`Env`]. The runtime in
//! [`crate::relay`] owns the sockets and the timer wheel and runs the policy stages between
//! [`Core::on_request`] and [`Core::admit`]. See docs/architecture.md.
//!
//! Locking: one mutex over the transaction tables, never held across I/O (there is none
//! here); actions are collected and carried out by the caller after it is released.

mod branch;
mod client;
mod fault;
mod media;
mod server;
#[cfg(test)]
mod tests;
mod timer;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubesbc_crds::config::SbcConfig;

use crate::dispatch::probe::PingOutcome;
use crate::dispatch::{Destination, Dispatcher};
use crate::pipeline::{Pipeline, RequestContext};
use crate::relay::Local;
use crate::sip::build;
use crate::sip::{HeaderName, Message};
use crate::telemetry::{InternalError, Metrics, ResponseOrigin, TransactionKind};
use crate::transport::Peer;

pub use branch::{BRANCH_PREFIX, fnv, loop_hash, push_hex};
pub use fault::Fault;
pub use server::Incoming;
pub use timer::Timer;

/// How long completed transactions absorb retransmissions over UDP (Kamailio's `wt_timer`;
/// timers D, I, J and the RFC 6026 Accepted state): shorter than 64*T1 so a busy proxy does
/// not hold half a minute of finished transactions.
pub const WAIT: Duration = Duration::from_secs(5);

/// What the core asks its runtime to do, in order.
pub enum Action {
    /// Send `data` to `to`. `token` names the client transaction to fail when a stream
    /// transport cannot deliver it ([`Core::on_send_failed`]).
    Send {
        /// The peer.
        to: Peer,
        /// The bytes of one message.
        data: Bytes,
        /// The client transaction key, for delivery failures.
        token: Option<Vec<u8>>,
        /// For responses: who made it and its code, for the metrics (code 0: a request or a
        /// retransmission).
        resp: (ResponseOrigin, u16),
    },
    /// Fire `timer` after `after` ([`Core::on_timer`]).
    Arm {
        /// The delay.
        after: Duration,
        /// The timer.
        timer: Timer,
    },
    /// The transaction of a request that passed the stages of `pipeline` ended with `code`:
    /// [`Pipeline::final_response`] on the pipeline that admitted it.
    Final {
        /// The stages that admitted the request.
        pipeline: Arc<Pipeline>,
        /// The request.
        req: Arc<Message>,
        /// Its context.
        cx: RequestContext,
        /// The final status.
        code: u16,
    },
    /// A BYE was relayed: [`Pipeline::dialog_end`] on the pipeline that admitted it.
    DialogEnd {
        /// The stages that admitted the BYE.
        pipeline: Arc<Pipeline>,
        /// The BYE.
        req: Arc<Message>,
        /// Its context.
        cx: RequestContext,
    },
    /// An initial INVITE sent to `dest` was answered (a 2xx): it counts against the
    /// destination until its BYE ([`crate::dispatch::load`]). Only for destinations that
    /// count their load.
    Answered {
        /// The destination that answered.
        dest: Arc<crate::dispatch::Destination>,
        /// The call's Call-ID (as the backends see it).
        call_id: Bytes,
    },
    /// A probe of the sbc's own ([`Core::probe`]) ended.
    Probed {
        /// The id the probe was started with.
        id: u64,
        /// How it ended.
        outcome: PingOutcome,
    },
}

/// What the core reads besides its own state, passed with every event.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// The configuration in force.
    pub cfg: &'a SbcConfig,
    /// Its routing rules, compiled.
    pub rules: &'a crate::routing::rules::Rules,
    /// The sbc's own addresses.
    pub local: &'a Local,
    /// The time of the event.
    pub now: Instant,
    /// Whether new calls are refused (drain).
    pub draining: bool,
    /// Whether the stream connection a flow token names is still open (always true for UDP).
    pub open: &'a dyn Fn(&Peer) -> bool,
}

/// A local answer: the status, reason and extra headers the sbc itself answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    /// Status code.
    pub code: u16,
    /// Reason phrase.
    pub reason: &'a str,
    /// Extra headers (`Retry-After`, `Allow`...).
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl<'a> Answer<'a> {
    /// An answer with no extra header.
    pub const fn new(code: u16, reason: &'a str) -> Answer<'a> {
        Answer {
            code,
            reason,
            headers: &[],
        }
    }

    /// The same answer with `headers`.
    pub const fn with(self, headers: &'a [(&'a str, &'a [u8])]) -> Answer<'a> {
        Answer { headers, ..self }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SState {
    /// Waiting for a final response from downstream.
    Proceeding,
    /// A final non-2xx went upstream; waiting for the ACK (INVITE) or absorbing retransmits.
    Completed,
    /// The ACK for our non-2xx arrived (INVITE): absorb ACK retransmissions (timer I).
    Confirmed,
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
    /// `;received=`/`;rport=` for the caller's Via (the nat stage), and whether rport is filled.
    nat: crate::nat::ViaParams,
    /// Where the Contact's host:port is, when it is rewritten to the source (NAT).
    contact_fix: Option<(u32, u32)>,
    /// Call start, for the call log line.
    started: Instant,
    /// Who sent it and what it is, for the stages' end-of-transaction hooks.
    cx: RequestContext,
    /// Headers the stages asked to remove before relaying.
    strip: Vec<HeaderName>,
    /// The stages that admitted it (they hear how it ended); None when there were none.
    pipeline: Option<Arc<Pipeline>>,
}

struct ClientTx {
    id: u64,
    /// The server transaction this relays; None for the sbc's own requests.
    server: Option<Vec<u8>>,
    /// A probe of the sbc's own: its id.
    probe: Option<u64>,
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
    /// set what differs (the server transaction it relays, INVITE, CANCEL, a probe).
    fn new(id: u64, to: Peer, data: Bytes, cfg: &SbcConfig) -> ClientTx {
        ClientTx {
            id,
            server: None,
            probe: None,
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

/// Transactions a table holds before it first grows: 3,000 calls/s keep about 30,000 of each
/// kind alive (finished ones linger 5 s over UDP).
const TABLE_CAPACITY: usize = 1 << 16;

/// A transaction table that keeps the `transactions active` gauge in step with its size.
///
/// Transactions are boxed and the table is sized up front: growing a table of large entries
/// moved every one of them while the core's lock was held, which stalled every message for
/// tens of milliseconds while the load ramped up (issue 15, tail latency). With boxes a
/// growth moves pointers only, and up to [`TABLE_CAPACITY`] there is none.
struct Table<T> {
    map: HashMap<Vec<u8>, Box<T>>,
    kind: TransactionKind,
    metrics: Arc<Metrics>,
}

impl<T> Table<T> {
    fn new(kind: TransactionKind, metrics: Arc<Metrics>) -> Table<T> {
        Table {
            map: HashMap::with_capacity(TABLE_CAPACITY),
            kind,
            metrics,
        }
    }

    fn insert(&mut self, key: Vec<u8>, tx: T) {
        if self.map.insert(key, Box::new(tx)).is_none() {
            self.metrics.transaction_started(self.kind);
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<T> {
        let tx = self.map.remove(key);
        if tx.is_some() {
            self.metrics.transaction_ended(self.kind);
        }
        tx.map(|b| *b)
    }

    fn get(&self, key: &[u8]) -> Option<&T> {
        self.map.get(key).map(|b| &**b)
    }

    fn get_mut(&mut self, key: &[u8]) -> Option<&mut T> {
        self.map.get_mut(key).map(|b| &mut **b)
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values().map(|b| &**b)
    }
}

struct State {
    server: Table<ServerTx>,
    client: Table<ClientTx>,
    /// Keys of requests still in the policy stages: their retransmissions wait for them.
    staging: HashSet<Vec<u8>>,
    next_id: u64,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The transaction core.
pub struct Core {
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
    seq: AtomicU64,
    salt: u64,
    started: Instant,
    /// Requests refused for want of a destination, for the rate-limited log line.
    no_destination: AtomicU64,
    last_no_dest_log: AtomicU64,
}

impl Core {
    /// A core routing initial requests with `dispatcher`; `salt` makes its branches and tags
    /// unique to this process, `now` is its start.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        metrics: Arc<Metrics>,
        salt: u64,
        now: Instant,
    ) -> Core {
        Core {
            dispatcher,
            state: Mutex::new(State {
                server: Table::new(TransactionKind::Server, metrics.clone()),
                client: Table::new(TransactionKind::Client, metrics.clone()),
                staging: HashSet::new(),
                next_id: 0,
            }),
            metrics,
            seq: AtomicU64::new(1),
            salt,
            started: now,
            no_destination: AtomicU64::new(0),
            last_no_dest_log: AtomicU64::new(0),
        }
    }

    /// The dispatcher initial requests are routed with.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// Server transactions still waiting for a final response.
    pub fn pending_transactions(&self) -> usize {
        self.lock()
            .server
            .values()
            .filter(|t| t.state == SState::Proceeding)
            .count()
    }

    /// Open server and client transactions.
    pub fn transaction_counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.server.len(), st.client.len())
    }

    /// Forgets that a request is in the policy stages (they were abandoned).
    pub fn unstage(&self, key: &[u8]) {
        self.lock().staging.remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving with the data as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_branch(&self, loop_hash: u64) -> Vec<u8> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) ^ self.salt;
        branch::new_branch(loop_hash, n)
    }

    fn local_tag(&self, msg: &Message) -> Vec<u8> {
        let mut b = Vec::with_capacity(18);
        b.extend_from_slice(b"kS");
        push_hex(&mut b, fnv(self.salt, &[msg.call_id().unwrap_or(b"")]));
        b
    }

    /// A failure of our own: counted by name (`sbc_internal_errors_total`) and logged.
    fn internal(&self, e: InternalError) {
        tracing::warn!(fault = %Fault::Internal(e), "internal error");
        self.metrics.internal_error(e);
    }

    /// The bytes of a local answer to `req`.
    fn answer_bytes(&self, req: &Message, a: Answer<'_>) -> Bytes {
        let tag = self.local_tag(req);
        Bytes::from(build::local_response(
            req, a.code, a.reason, &tag, a.headers,
        ))
    }

    /// Answers `req` from the sbc itself.
    fn reply(&self, req: &Message, peer: Peer, a: Answer<'_>, out: &mut Vec<Action>) {
        out.push(Action::Send {
            to: peer,
            data: self.answer_bytes(req, a),
            token: None,
            resp: (ResponseOrigin::Local, a.code),
        });
    }
}

fn send(to: Peer, data: Bytes, out: &mut Vec<Action>) {
    out.push(Action::Send {
        to,
        data,
        token: None,
        resp: (ResponseOrigin::Relayed, 0),
    });
}

fn arm(after: Duration, timer: Timer, out: &mut Vec<Action>) {
    out.push(Action::Arm { after, timer });
}
