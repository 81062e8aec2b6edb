//! Server transactions (RFC 3261 sections 17.2 and 16.2 to 16.6, RFC 6026): requests from
//! callers, their retransmissions, ACK and CANCEL, local answers, and routing a new request
//! into a client transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kubesbc_crds::config::Transport;

use super::branch::{self, loop_hash, server_key};
use super::{Action, Answer, Core, Env, Fault, SState, ServerTx, State, Timer, WAIT, arm, send};
use crate::pipeline::{Admission, Pipeline, RequestContext, Verdict};
use crate::routing::rules::{Facts, Route};
use crate::sanity::{Reject, View};
use crate::sip::build::{self, RequestEdits};
use crate::sip::{Message, Method};
use crate::telemetry::ResponseOrigin;
use crate::transport::Peer;
use crate::{nat, routing, sanity};

const ALLOW: &[u8] =
    b"INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE";

/// A new request past sanity and the transaction checks, on its way through the policy
/// stages to [`Core::admit`]. It carries what was read of it once (key, Max-Forwards, loop
/// hash, the nat stage's Via parameters) so nothing is parsed again.
pub struct Incoming {
    /// The request.
    pub msg: Message,
    /// What the stages see of it.
    pub cx: RequestContext,
    key: Vec<u8>,
    mf: u32,
    loop_hash: u64,
    nat: crate::nat::ViaParams,
    contact_fix: Option<(u32, u32)>,
}

impl Incoming {
    /// Its server transaction key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl Core {
    /// A request arrived from `peer`. Retransmissions, ACK, CANCEL and what the sbc answers
    /// itself are handled here; a new request comes back to be run through the policy
    /// stages and handed to [`Core::admit`].
    pub fn on_request(
        &self,
        env: &Env<'_>,
        msg: Message,
        peer: Peer,
        out: &mut Vec<Action>,
    ) -> Option<Incoming> {
        let view = match sanity::view(&msg) {
            Ok(v) => v,
            Err(r) => {
                self.caller_fault(&msg, peer, r, out);
                return None;
            }
        };
        let method = view.method;
        let loop_hash = loop_hash(&msg, &view);
        if sanity::is_loop(&msg, loop_hash, env.local) {
            self.caller_fault(&msg, peer, Reject::new(482, "Loop Detected"), out);
            return None;
        }
        match method {
            Method::Ack => {
                self.on_ack(env, &msg, &view, peer, loop_hash, out);
                return None;
            }
            Method::Cancel => {
                self.on_cancel(&msg, &view, peer, env, out);
                return None;
            }
            _ => {}
        }
        let key = server_key(&msg, &view, method);
        {
            let st = self.lock();
            if st.staging.contains(&key) {
                return None;
            }
            if let Some(tx) = st.server.get(&key) {
                // A retransmission: repeat our last answer, if any (in Accepted: none).
                if let Some(last) = &tx.last {
                    send(peer, last.clone(), out);
                }
                return None;
            }
        }
        let in_dialog = view.to_tag.is_some();
        if method == Method::Options
            && !in_dialog
            && routing::is_local_uri(env.local, msg.request_uri())
        {
            let ok = Answer::new(200, "OK").with(&[("Allow", ALLOW)]);
            self.reply(&msg, peer, ok, out);
            return None;
        }
        let nat = nat::received_params(&view.via, peer.addr);
        let nat_cfg = &env.cfg.relay.nat;
        // fix_nated_contact / fix_nated_register: only INVITE and REGISTER, and only the
        // tests chosen; nothing is allocated unless the client is behind NAT.
        let contact_fix = (nat_cfg.fix_contact
            && matches!(method, Method::Invite | Method::Register)
            && nat::is_nated(nat_cfg.detect, &msg, &view.via, &peer))
        .then(|| nat::contact_hostport(&msg))
        .flatten();
        let mf = view.max_forwards;
        Some(Incoming {
            cx: RequestContext {
                peer,
                method,
                in_dialog,
            },
            msg,
            key,
            mf,
            loop_hash,
            nat,
            contact_fix,
        })
    }

    /// The caller's fault: it gets the 4xx (never for an ACK, which has no answer).
    fn caller_fault(&self, msg: &Message, peer: Peer, r: Reject, out: &mut Vec<Action>) {
        tracing::debug!(fault = %Fault::Caller(r), from = %peer.addr, "request refused");
        if msg.method() != Some(Method::Ack) {
            self.reply(msg, peer, Answer::new(r.code, r.reason), out);
        }
    }

    /// Marks a request as being in the policy stages: its retransmissions are absorbed
    /// until [`Core::admit`] or [`Core::unstage`].
    pub fn stage(&self, key: &[u8]) {
        self.lock().staging.insert(key.to_vec());
    }

    /// Acts on the verdict of `pipeline` (the stages that saw the request) over `incoming`.
    pub fn admit(
        &self,
        env: &Env<'_>,
        incoming: Incoming,
        verdict: Verdict,
        admission: Admission,
        pipeline: &Arc<Pipeline>,
        out: &mut Vec<Action>,
    ) {
        match verdict {
            Verdict::Continue => {
                let pipeline = (!pipeline.is_empty()).then(|| pipeline.clone());
                self.route(env, incoming, admission, pipeline, out);
            }
            Verdict::Reply(r) => {
                let headers: Vec<(&str, &[u8])> =
                    r.headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                let a = Answer::new(r.code, &r.reason).with(&headers);
                self.reply(&incoming.msg, incoming.cx.peer, a, out);
            }
            Verdict::Drop => {}
        }
    }

    /// Routes a request that passed the policy stages: in-dialog by its Route set, initial
    /// through the dispatcher, in a new server transaction.
    fn route(
        &self,
        env: &Env<'_>,
        incoming: Incoming,
        admission: Admission,
        pipeline: Option<Arc<Pipeline>>,
        out: &mut Vec<Action>,
    ) {
        let Incoming {
            msg,
            cx,
            key,
            mf,
            loop_hash,
            nat,
            contact_fix,
        } = incoming;
        let cfg = env.cfg;
        let msg = Arc::new(msg);
        let refuse = |a: Answer<'_>, out: &mut Vec<Action>| {
            self.refuse(&msg, &cx, pipeline.as_ref(), a, out);
        };
        if env.draining && !cx.in_dialog {
            let ra = build::itoa(cfg.drain.retry_after_secs);
            let retry = [("Retry-After", ra.as_slice())];
            return refuse(Answer::new(503, "Service Unavailable").with(&retry), out);
        }
        let routes = routing::inspect_routes(&msg, env.local, &cx.peer);
        let mut st = self.lock();
        if st.server.len() >= cfg.limits.max_transactions {
            drop(st);
            let retry: [(&str, &[u8]); 1] = [("Retry-After", b"1")];
            return refuse(Answer::new(503, "Server Overloaded").with(&retry), out);
        }
        let mut tx = ServerTx {
            id: st.id(),
            peer: cx.peer,
            req: Some(msg.clone()),
            invite: cx.method == Method::Invite,
            state: SState::Proceeding,
            last: None,
            branch: None,
            cancelled: false,
            set: None,
            tried: Vec::new(),
            retransmit: Duration::from_millis(cfg.relay.t1_ms),
            loop_hash,
            mf,
            drop_routes: routes.ours,
            nat,
            contact_fix,
            started: env.now,
            cx,
            strip: admission.strip,
            pipeline: pipeline.clone(),
        };
        // A flow token in our Route (Path, Record-Route) sends the request over the client's
        // connection, dialog or not; a closed one is 430 Flow Failed (RFC 5626 section 5.3).
        // A token naming a connection another replica holds (keys every replica shares):
        // the request goes to that replica with the Route set intact, which sends it over
        // the connection (or answers 430); its Via names this pod, so the answer comes back.
        if routes.flow.is_some() || cx.in_dialog {
            let target = match (routes.flow, routes.flow_owner) {
                (Some(_), Some(owner)) => {
                    tx.drop_routes = 0;
                    Peer {
                        transport: Transport::Udp,
                        addr: owner,
                        flow: None,
                    }
                }
                (Some(f), None) if !(env.open)(&f) => {
                    drop(st);
                    return refuse(Answer::new(430, "Flow Failed"), out);
                }
                (Some(f), None) => f,
                (None, _) => {
                    let Some(target) = routing::next_hop(&msg, routes.next.as_deref()) else {
                        drop(st);
                        return refuse(Answer::new(478, "Unresolvable Destination"), out);
                    };
                    if env.local.is_addr_us(target.addr) {
                        drop(st);
                        return refuse(Answer::new(481, "Call/Transaction Does Not Exist"), out);
                    }
                    target
                }
            };
            if tx.invite && !cx.in_dialog {
                self.send_trying(&msg, &mut tx, out);
            }
            st.server.insert(key.clone(), tx);
            self.forward(&mut st, env, &key, target, None, out);
            drop(st);
            if cx.method == Method::Bye
                && let Some(pipeline) = pipeline.clone()
            {
                out.push(Action::DialogEnd {
                    pipeline,
                    req: msg.clone(),
                    cx,
                });
            }
            return;
        }
        if routes.next.is_some() {
            drop(st);
            return refuse(Answer::new(403, "Preload Route Denied"), out);
        }
        // The routing rules choose the set (or a fixed next hop); no match: the default set.
        let facts = Facts {
            source: cx.peer.addr.ip(),
            method: cx.method,
        };
        let set_id = match env.rules.decide(&msg, &facts, &*self.dispatcher) {
            None => cfg.dispatcher.default_set,
            Some((_, Route::Set(id))) => id,
            Some((rule, Route::Target(target))) => {
                tracing::debug!(rule, to = %target.addr, "routing rule: fixed target");
                // One hop, no set: failover has nowhere to go.
                if tx.invite {
                    self.send_trying(&msg, &mut tx, out);
                }
                st.server.insert(key.clone(), tx);
                self.forward(&mut st, env, &key, target, None, out);
                return;
            }
        };
        tx.set = Some(set_id);
        let Some(sel) = routing::select(&self.dispatcher, &msg, set_id, &[]) else {
            drop(st);
            self.warn_no_destination(env, set_id);
            let ra = build::itoa(routing::retry_after(cfg, set_id));
            let retry = [("Retry-After", ra.as_slice())];
            return refuse(Answer::new(503, "Service Unavailable").with(&retry), out);
        };
        if tx.invite {
            self.send_trying(&msg, &mut tx, out);
        }
        tx.tried.push(sel.index);
        st.server.insert(key.clone(), tx);
        let target = routing::dest_peer(&sel);
        self.forward(&mut st, env, &key, target, Some((sel.dest, sel.index)), out);
    }

    /// 100 Trying to the caller of a new INVITE, kept to repeat on its retransmissions.
    fn send_trying(&self, msg: &Message, tx: &mut ServerTx, out: &mut Vec<Action>) {
        let trying = self.answer_bytes(msg, Answer::new(100, "Trying"));
        tx.last = Some(trying.clone());
        out.push(Action::Send {
            to: tx.peer,
            data: trying,
            token: None,
            resp: (ResponseOrigin::Local, 100),
        });
    }

    /// Answers a request the relay will not route, and tells the stages it passed that its
    /// transaction is over (so a throttle gives its capacity back).
    fn refuse(
        &self,
        msg: &Arc<Message>,
        cx: &RequestContext,
        pipeline: Option<&Arc<Pipeline>>,
        a: Answer<'_>,
        out: &mut Vec<Action>,
    ) {
        if let Some(pipeline) = pipeline {
            out.push(Action::Final {
                pipeline: pipeline.clone(),
                req: msg.clone(),
                cx: *cx,
                code: a.code,
            });
        }
        self.reply(msg, cx.peer, a, out);
    }

    /// Logs "no destination up" at most once a second, with how many requests it refused:
    /// under overload it would otherwise be one line per call.
    fn warn_no_destination(&self, env: &Env<'_>, set: u32) {
        let refused = self.no_destination.fetch_add(1, Ordering::Relaxed) + 1;
        let now = env.now.saturating_duration_since(self.started).as_secs() + 1;
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

    fn on_ack(
        &self,
        env: &Env<'_>,
        msg: &Message,
        view: &View<'_>,
        peer: Peer,
        loop_hash: u64,
        out: &mut Vec<Action>,
    ) {
        let (via, mf) = (&view.via, view.max_forwards);
        let key = server_key(msg, view, Method::Ack);
        {
            let mut st = self.lock();
            if let Some(tx) = st.server.get_mut(&key) {
                // The ACK for a non-2xx final we sent: the transaction is confirmed and
                // absorbs ACK retransmissions for timer I (none on reliable transports).
                if tx.state == SState::Completed {
                    tx.state = SState::Confirmed;
                    tx.last = None;
                    let wait = linger(tx.peer.transport);
                    arm(wait, Timer::ServerExpire(key, tx.id), out);
                }
                return;
            }
        }
        // An ACK for a 2xx belongs to the dialog: route it statelessly.
        let routes = routing::inspect_routes(msg, env.local, &peer);
        let target = match routes.flow {
            Some(f) => Some(f).filter(|f| (env.open)(f)),
            None => routing::next_hop(msg, routes.next.as_deref())
                .filter(|t| !env.local.is_addr_us(t.addr)),
        };
        let Some(target) = target else {
            return;
        };
        let drop_routes = routes.ours;
        // The same ACK always gets the same branch (stateless, RFC 3261 section 16.11).
        let incoming = via.branch().map(|b| branch::fnv(0, &[b])).unwrap_or(0);
        let branch = branch::new_branch(loop_hash, incoming);
        let our_via = env.local.via_value(&target, &branch);
        let params = nat::received_params(via, peer.addr);
        let data = build::relay_request(
            msg,
            &RequestEdits {
                via: &our_via,
                record_route: None,
                extra: b"",
                replace: None,
                top_via_params: params.bytes(),
                fill_rport: params.fill_rport(),
                drop_routes,
                max_forwards: mf.saturating_sub(1),
                strip: &[],
            },
        );
        send(target, Bytes::from(data), out);
    }

    fn on_cancel(
        &self,
        msg: &Message,
        view: &View<'_>,
        peer: Peer,
        env: &Env<'_>,
        out: &mut Vec<Action>,
    ) {
        let ikey = server_key(msg, view, Method::Invite);
        let mut st = self.lock();
        let Some(tx) = st.server.get_mut(&ikey) else {
            drop(st);
            self.reply(
                msg,
                peer,
                Answer::new(481, "Call/Transaction Does Not Exist"),
                out,
            );
            return;
        };
        self.reply(msg, peer, Answer::new(200, "OK"), out);
        if tx.state != SState::Proceeding || tx.cancelled {
            return;
        }
        tx.cancelled = true;
        let Some(branch) = tx.branch.clone() else {
            return;
        };
        let Some(ctx) = st.client.get_mut(&branch) else {
            return;
        };
        if ctx.completed {
            return;
        }
        if !ctx.provisional {
            // RFC 3261 section 9.1: no CANCEL before a provisional response.
            ctx.cancel_pending = true;
            return;
        }
        self.start_cancel(&mut st, env, &branch, out);
    }

    /// Sends a final response upstream and moves the server transaction on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_server(
        &self,
        env: &Env<'_>,
        stx: &mut ServerTx,
        skey: &[u8],
        code: u16,
        (origin, data): (ResponseOrigin, Bytes),
        dest: Option<&str>,
        out: &mut Vec<Action>,
    ) {
        if let Some(req) = &stx.req {
            if stx.invite {
                tracing::info!(
                    call_id = %String::from_utf8_lossy(req.call_id().unwrap_or(b"")),
                    from = %stx.peer.addr,
                    dest = dest.unwrap_or("-"),
                    code,
                    attempts = stx.tried.len(),
                    setup_ms = env.now.saturating_duration_since(stx.started).as_millis() as u64,
                    "call"
                );
            }
            if let Some(pipeline) = &stx.pipeline {
                out.push(Action::Final {
                    pipeline: pipeline.clone(),
                    req: req.clone(),
                    cx: stx.cx,
                    code,
                });
            }
        }
        stx.req = None;
        let t = stx.peer.transport;
        if stx.invite && (200..300).contains(&code) {
            if origin == ResponseOrigin::Relayed {
                self.metrics.call_relayed();
            }
            // RFC 6026 Accepted: retransmitted INVITEs are absorbed, 2xx retransmissions
            // from downstream pass statelessly.
            stx.state = SState::Accepted;
            stx.last = None;
            arm(linger(t), Timer::ServerExpire(skey.to_vec(), stx.id), out);
        } else {
            stx.state = SState::Completed;
            stx.last = Some(data.clone());
            if stx.invite {
                if t == Transport::Udp {
                    // Timer G until the ACK.
                    let g = Timer::ServerRetransmit(skey.to_vec(), stx.id);
                    arm(stx.retransmit, g, out);
                }
                // Timer H: wait for the ACK on every transport.
                let h = Duration::from_millis(env.cfg.relay.t1_ms * 64);
                arm(h, Timer::ServerExpire(skey.to_vec(), stx.id), out);
            } else {
                // Timer J.
                arm(linger(t), Timer::ServerExpire(skey.to_vec(), stx.id), out);
            }
        }
        out.push(Action::Send {
            to: stx.peer,
            data,
            token: None,
            resp: (origin, code),
        });
    }

    /// Timer G: the final non-2xx again until the ACK.
    pub(super) fn server_retransmit(
        &self,
        env: &Env<'_>,
        key: Vec<u8>,
        id: u64,
        out: &mut Vec<Action>,
    ) {
        let mut st = self.lock();
        if let Some(stx) = st.server.get_mut(&key)
            && stx.id == id
            && stx.state == SState::Completed
            && let Some(last) = &stx.last
        {
            send(stx.peer, last.clone(), out);
            stx.retransmit = (stx.retransmit * 2).min(Duration::from_millis(env.cfg.relay.t2_ms));
            arm(stx.retransmit, Timer::ServerRetransmit(key, id), out);
        }
    }

    /// Timers H, I, J and the end of Accepted: forget the server transaction.
    pub(super) fn server_expire(&self, st: &mut State, key: &[u8], id: u64) {
        if st.server.get(key).is_some_and(|s| s.id == id) {
            st.server.remove(key);
        }
    }
}

/// How long a finished transaction absorbs retransmissions: only UDP retransmits.
pub(super) fn linger(t: Transport) -> Duration {
    if t == Transport::Udp {
        WAIT
    } else {
        Duration::ZERO
    }
}
