//! Client transactions (RFC 3261 sections 17.1 and 16.7 to 16.9): relaying a request to a
//! destination, its responses, CANCEL and the hop-by-hop ACK, and failover within the set.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kubesbc_crds::config::Transport;

use super::branch::client_cancel_key;
use super::server::linger;
use super::{
    Action, Answer, ClientTx, Core, Env, Fault, SState, ServerTx, State, Timer, arm, send,
};
use crate::dispatch::Destination;
use crate::dispatch::probe::PingOutcome;
use crate::routing;
use crate::sip::Message;
use crate::sip::Method;
use crate::sip::build::{self, RequestEdits};
use crate::sip::uri::Via;
use crate::telemetry::{DropReason, InternalError, ResponseOrigin};
use crate::{flow, nat, transport::Peer};

impl Core {
    /// Relays the server transaction's request to `target` in a new client transaction.
    pub(super) fn forward(
        &self,
        st: &mut State,
        env: &Env<'_>,
        server_key: &[u8],
        target: Peer,
        dest: Option<(Arc<Destination>, usize)>,
        out: &mut Vec<Action>,
    ) {
        let cfg = env.cfg;
        let id = st.id();
        let Some(stx) = st.server.get_mut(server_key) else {
            return;
        };
        let Some(req) = stx.req.clone() else { return };
        let branch = self.new_branch(stx.loop_hash);
        let via = env.local.via_value(&target, &branch);
        let (rr, extra) = flow_headers(env, stx, &target);
        let fixed = stx.contact_fix.map(|(a, b)| {
            let with = nat::source_hostport(stx.peer.addr);
            (a as usize..b as usize, with)
        });
        let data = Bytes::from(build::relay_request(
            &req,
            &RequestEdits {
                via: &via,
                record_route: rr.as_deref(),
                extra: &extra,
                replace: fixed.as_ref().map(|(r, w)| (r.clone(), w.as_slice())),
                top_via_params: stx.nat.bytes(),
                fill_rport: stx.nat.fill_rport(),
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
        let failover = routing::failover_of(cfg, stx.set);
        st.client.insert(
            branch.clone(),
            ClientTx {
                server: Some(server_key.to_vec()),
                invite,
                dest,
                ..ClientTx::new(id, target, data.clone(), cfg)
            },
        );
        // Timers B and F (fr_timer): no reply in time.
        let b = Duration::from_millis(failover.reply_timeout_ms);
        arm(b, Timer::ClientNoReply(branch.clone(), id), out);
        if target.transport == Transport::Udp {
            // Timers A and E.
            let a = Duration::from_millis(cfg.relay.t1_ms);
            arm(a, Timer::ClientRetransmit(branch.clone(), id), out);
        }
        out.push(Action::Send {
            to: target,
            data,
            token: Some(branch),
            resp: (ResponseOrigin::Relayed, 0),
        });
    }

    /// Sends a CANCEL for the client INVITE transaction `branch` (RFC 3261 section 9.1).
    pub(super) fn start_cancel(
        &self,
        st: &mut State,
        env: &Env<'_>,
        branch: &[u8],
        out: &mut Vec<Action>,
    ) {
        let cfg = env.cfg;
        let id = st.id();
        let Some(ctx) = st.client.get(branch) else {
            return;
        };
        let stx = ctx.server.as_ref().and_then(|k| st.server.get(k));
        let data = match stx.and_then(|s| Some((s, s.req.as_ref()?))) {
            Some((stx, req)) => {
                let via = env.local.via_value(&ctx.to, branch);
                relayed(stx, req, &via).cancel()
            }
            None => {
                let Ok(sent) = Message::parse(ctx.data.clone(), usize::MAX) else {
                    self.internal(InternalError::OwnRequestUnreadable);
                    return;
                };
                build::cancel_for(&sent)
            }
        };
        let data = Bytes::from(data);
        let to = ctx.to;
        let key = client_cancel_key(branch);
        let tx = ClientTx {
            cancel: true,
            ..ClientTx::new(id, to, data.clone(), cfg)
        };
        st.client.insert(key.clone(), tx);
        let expire = Duration::from_millis(cfg.relay.t1_ms * 64);
        arm(expire, Timer::ClientExpire(key.clone(), id), out);
        if to.transport == Transport::Udp {
            let e = Duration::from_millis(cfg.relay.t1_ms);
            arm(e, Timer::ClientRetransmit(key, id), out);
        }
        send(to, data, out);
    }

    /// A response arrived. Ours (top Via is us) goes to its client transaction, or, with
    /// none, statelessly to the Via below (RFC 3261 section 16.7); anything else is dropped.
    pub fn on_response(&self, env: &Env<'_>, msg: Message, out: &mut Vec<Action>) {
        let Some(code) = msg.code() else { return };
        let Some(top) = msg.top_via() else { return };
        let Some(via) = Via::parse(msg.slice(top)) else {
            return;
        };
        if !env.local.is_us(via.host, via.port) {
            self.metrics.dropped(DropReason::Stray);
            return;
        }
        let Some(branch) = via.branch() else { return };
        let is_cancel = msg.cseq().is_some_and(|(_, m)| m == b"CANCEL");
        let key = if is_cancel {
            client_cancel_key(branch)
        } else {
            branch.to_vec()
        };
        let cfg = env.cfg;
        let mut guard = self.lock();
        let st = &mut *guard;
        let Some(ctx) = st.client.get_mut(&key) else {
            drop(guard);
            // No transaction (a retransmitted or forked 2xx, or a late reply): forward
            // statelessly along the Via path.
            if let Some(to) = nat::second_via_target(&msg) {
                out.push(Action::Send {
                    to,
                    data: Bytes::from(build::relay_response(&msg)),
                    token: None,
                    resp: (ResponseOrigin::Relayed, code),
                });
            }
            return;
        };
        if let Some(id) = ctx.probe {
            if code >= 200 {
                st.client.remove(&key);
                out.push(Action::Probed {
                    id,
                    outcome: PingOutcome::Reply(code),
                });
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
                    // Timer C (fr_inv_timer): how long it may ring.
                    let c = Duration::from_millis(cfg.relay.invite_timeout_ms);
                    arm(c, Timer::ClientRing(key.clone(), ctx.id), out);
                }
            }
            if ctx.cancel_pending {
                ctx.cancel_pending = false;
                self.start_cancel(st, env, &key, out);
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
                out.push(Action::Send {
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
                send(ctx.to, ack.clone(), out);
            }
            return;
        }
        ctx.completed = true;
        let ctx_id = ctx.id;
        let dest = ctx.dest.clone();
        let server = ctx.server.clone();
        if ctx.invite {
            if let Some((d, _)) = &dest {
                // It no longer rings here; an answered call counts on until its BYE, on
                // every replica, through the shared call load.
                d.call_ended();
                if (200..300).contains(&code)
                    && d.counts_load()
                    && let Some(call_id) = msg.call_id()
                {
                    out.push(Action::Answered {
                        dest: d.clone(),
                        call_id: Bytes::copy_from_slice(call_id),
                    });
                }
            }
            if code >= 300 {
                let stx = ctx.server.as_ref().and_then(|k| st.server.get(k));
                let ack = match stx.and_then(|s| Some((s, s.req.as_ref()?))) {
                    Some((stx, req)) => {
                        let via = env.local.via_value(&ctx.to, &key);
                        Some(relayed(stx, req, &via).ack(&msg))
                    }
                    // The caller already has its answer (timer C): read back what we sent.
                    None => match Message::parse(ctx.data.clone(), usize::MAX) {
                        Ok(sent) => Some(build::ack_for(&sent, &msg)),
                        Err(_) => {
                            self.internal(InternalError::OwnRequestUnreadable);
                            None
                        }
                    },
                };
                if let Some(ack) = ack {
                    let ack = Bytes::from(ack);
                    ctx.ack = Some(ack.clone());
                    send(ctx.to, ack, out);
                }
                // Timer D.
                let d = linger(ctx.to.transport);
                arm(d, Timer::ClientExpire(key.clone(), ctx_id), out);
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
                out.push(Action::Send {
                    to: stx.peer,
                    data: Bytes::from(build::relay_response(&msg)),
                    token: None,
                    resp: (ResponseOrigin::Relayed, code),
                });
            }
            return;
        }
        if code >= 300
            && self.backend_fault(st, env, &skey, dest.as_ref(), Fault::Backend(code), out)
        {
            return;
        }
        let Some(stx) = st.server.get_mut(&skey) else {
            return;
        };
        let data = Bytes::from(build::relay_response(&msg));
        let dest = dest.as_ref().map(|d| d.0.uri.as_str());
        let relayed = (ResponseOrigin::Relayed, data);
        self.finish_server(env, stx, &skey, code, relayed, dest, out);
    }

    /// A destination failed the request (`fault` is [`Fault::Backend`] or [`Fault::Timeout`]):
    /// count it against the destination and move the call to the next destination when the
    /// set allows. True when the request went elsewhere.
    fn backend_fault(
        &self,
        st: &mut State,
        env: &Env<'_>,
        skey: &[u8],
        dest: Option<&(Arc<Destination>, usize)>,
        fault: Fault,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(stx) = st.server.get(skey) else {
            return false;
        };
        let failover = routing::failover_of(env.cfg, stx.set);
        // A cancelled request, an in-dialog one (no set) or one out of attempts stays put.
        let may_move = stx.state == SState::Proceeding
            && !stx.cancelled
            && stx.set.is_some()
            && (stx.tried.len() as u32) < failover.max_attempts;
        match fault {
            Fault::Backend(code) => {
                if !(may_move && failover.fails_over_on(code)) {
                    return false;
                }
                if let Some((d, _)) = dest {
                    d.request_failed();
                    tracing::info!(dest = %d.uri, code, "failover after reply");
                }
            }
            Fault::Timeout => {
                if let Some((d, _)) = dest
                    && failover.mark_down_on_timeout
                {
                    // Counted towards failover.failureThreshold; at the threshold a probe
                    // decides whether it goes out.
                    if d.mark_down() {
                        tracing::warn!(dest = %d.uri, "destination did not answer: failure threshold reached, probing it now");
                    } else {
                        tracing::info!(dest = %d.uri, "destination did not answer");
                    }
                }
                if !may_move {
                    return false;
                }
            }
            Fault::Caller(_) | Fault::Internal(_) => return false,
        }
        self.try_next(st, env, skey, out)
    }

    /// Moves the request to the next destination of its set. False when none is left.
    fn try_next(&self, st: &mut State, env: &Env<'_>, skey: &[u8], out: &mut Vec<Action>) -> bool {
        let Some(stx) = st.server.get(skey) else {
            return false;
        };
        let (Some(set), Some(req)) = (stx.set, stx.req.as_ref()) else {
            return false;
        };
        let Some(sel) = routing::select(&self.dispatcher, req, set, &stx.tried) else {
            return false;
        };
        self.metrics.failover();
        if let Some(stx) = st.server.get_mut(skey) {
            stx.tried.push(sel.index);
        }
        let target = routing::dest_peer(&sel);
        self.forward(st, env, skey, target, Some((sel.dest, sel.index)), out);
        true
    }

    /// A message sent with `token` (a client transaction key) could not be delivered.
    pub fn on_send_failed(&self, env: &Env<'_>, token: &[u8], out: &mut Vec<Action>) {
        self.client_failed(env, token, None, out);
    }

    /// A client transaction got no usable reply: its request timed out (`id` given, timers
    /// B and F) or could not be sent.
    pub(super) fn client_failed(
        &self,
        env: &Env<'_>,
        key: &[u8],
        id: Option<u64>,
        out: &mut Vec<Action>,
    ) {
        let mut st = self.lock();
        let Some(ctx) = st.client.get(key) else {
            return;
        };
        if id.is_some_and(|i| i != ctx.id) || ctx.completed || (ctx.invite && ctx.provisional) {
            return;
        }
        let Some(ctx) = st.client.remove(key) else {
            return;
        };
        if let Some(probe) = ctx.probe {
            let outcome = if id.is_none() {
                PingOutcome::Unreachable
            } else {
                PingOutcome::Timeout
            };
            out.push(Action::Probed { id: probe, outcome });
            return;
        }
        let Some(skey) = ctx.server.clone() else {
            return;
        };
        if !st.server.map.contains_key(&skey) {
            return;
        }
        if ctx.invite
            && let Some((d, _)) = &ctx.dest
        {
            d.call_ended();
        }
        if self.backend_fault(&mut st, env, &skey, ctx.dest.as_ref(), Fault::Timeout, out) {
            return;
        }
        let Some(stx) = st.server.get_mut(&skey) else {
            return;
        };
        if stx.state != SState::Proceeding {
            return;
        }
        let Some(req) = stx.req.clone() else { return };
        let a = if stx.cancelled {
            Answer::new(487, "Request Terminated")
        } else {
            Answer::new(408, "Request Timeout")
        };
        let data = self.answer_bytes(&req, a);
        let dest = ctx.dest.as_ref().map(|d| d.0.uri.as_str());
        self.finish_server(
            env,
            stx,
            &skey,
            a.code,
            (ResponseOrigin::Local, data),
            dest,
            out,
        );
    }

    /// Timers A and E: the request again, doubling the interval (capped at T2 for
    /// non-INVITE), until a (provisional, for INVITE) response.
    pub(super) fn client_retransmit(
        &self,
        env: &Env<'_>,
        key: Vec<u8>,
        id: u64,
        out: &mut Vec<Action>,
    ) {
        let mut st = self.lock();
        if let Some(ctx) = st.client.get_mut(&key)
            && ctx.id == id
            && !ctx.completed
            && !(ctx.invite && ctx.provisional)
        {
            send(ctx.to, ctx.data.clone(), out);
            ctx.retransmit *= 2;
            if !ctx.invite {
                ctx.retransmit = ctx
                    .retransmit
                    .min(Duration::from_millis(env.cfg.relay.t2_ms));
            }
            arm(ctx.retransmit, Timer::ClientRetransmit(key, id), out);
        }
    }

    /// Timer C: an INVITE rang too long. It is cancelled and the caller gets 408.
    pub(super) fn client_ring(&self, env: &Env<'_>, key: Vec<u8>, id: u64, out: &mut Vec<Action>) {
        let mut st = self.lock();
        let Some(ctx) = st.client.get(&key) else {
            return;
        };
        if ctx.id != id || ctx.completed {
            return;
        }
        let server = ctx.server.clone();
        self.start_cancel(&mut st, env, &key, out);
        if let Some(skey) = server
            && let Some(stx) = st.server.get_mut(&skey)
            && stx.state == SState::Proceeding
            && let Some(req) = stx.req.clone()
        {
            let data = self.answer_bytes(&req, Answer::new(408, "Request Timeout"));
            self.finish_server(
                env,
                stx,
                &skey,
                408,
                (ResponseOrigin::Local, data),
                None,
                out,
            );
        }
    }

    /// Sends an OPTIONS probe of the sbc's own to `dest`; its end comes back as
    /// [`Action::Probed`] with `id`.
    pub fn probe(
        &self,
        env: &Env<'_>,
        dest: &Destination,
        from: &str,
        timeout: Duration,
        id: u64,
        out: &mut Vec<Action>,
    ) {
        let cfg = env.cfg;
        let to = Peer {
            transport: dest.target.transport,
            addr: dest.target.addr,
            flow: None,
        };
        let branch = self.new_branch(0);
        let via = env.local.via_value(&to, &branch);
        let ruri = dest.uri.as_str();
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = format!(
            "OPTIONS {ruri} SIP/2.0\r\nVia: {via}\r\nFrom: <{from}>;tag=kSp{n:x}\r\nTo: <{ruri}>\r\nCall-ID: kSprobe.{salt:x}.{n:x}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nUser-Agent: kubesbc\r\nContent-Length: 0\r\n\r\n",
            via = String::from_utf8_lossy(&via),
            salt = self.salt,
        );
        let data = Bytes::from(data);
        let mut st = self.lock();
        let tid = st.id();
        let tx = ClientTx {
            probe: Some(id),
            ..ClientTx::new(tid, to, data.clone(), cfg)
        };
        st.client.insert(branch.clone(), tx);
        drop(st);
        arm(timeout, Timer::ClientNoReply(branch.clone(), tid), out);
        if to.transport == Transport::Udp {
            let e = Duration::from_millis(cfg.relay.t1_ms);
            arm(e, Timer::ClientRetransmit(branch.clone(), tid), out);
        }
        out.push(Action::Send {
            to,
            data,
            token: Some(branch),
            resp: (ResponseOrigin::Relayed, 0),
        });
    }
}

/// How the request of `stx` went out, from the request itself and our edits.
fn relayed<'a>(stx: &'a ServerTx, req: &'a Message, via: &'a [u8]) -> build::Relayed<'a> {
    build::Relayed {
        original: req,
        via,
        drop_routes: stx.drop_routes,
        max_forwards: stx.mf.saturating_sub(1),
    }
}

/// Our Record-Route and the extra header lines for a request of `stx` relayed to `target`
/// (docs/architecture.md, "Flows"; docs/topology.md). A dialog between a stream client and
/// another transport, or between the inside and the outside (`relay.inside`), gets two
/// Record-Route entries, one per side: the one on a client's side carries its flow token so
/// in-dialog requests from the far end come back over that connection, the one on the inside
/// the shared inside address so a backend's requests reach any replica. A REGISTER from a
/// stream client gets `Path` with its token and `Supported: path` (RFC 3327). UDP to UDP on
/// one side allocates nothing here beyond the single Record-Route it always had.
fn flow_headers(env: &Env<'_>, stx: &ServerTx, target: &Peer) -> (Option<Vec<u8>>, Vec<u8>) {
    let mut extra = Vec::new();
    let client = env.local.flow_token(&stx.peer);
    let register = stx.cx.method == Method::Register;
    if register && let Some(tok) = &client {
        let (h, p) = env.local.route_host(target);
        extra.extend_from_slice(b"Path: ");
        extra.extend_from_slice(&flow::sbc_uri(Some(tok), h, p, target.transport, true));
        extra.extend_from_slice(b"\r\nSupported: path\r\n");
    }
    if stx.cx.in_dialog || !env.cfg.relay.record_route {
        return (None, extra);
    }
    let far = env.local.flow_token(target);
    let (near_host, far_host) = (
        env.local.route_host(&stx.peer),
        env.local.route_host(target),
    );
    let two = !register
        && (client.is_some()
            || far.is_some()
            || stx.peer.transport != target.transport
            || near_host != far_host);
    if !two {
        return (Some(env.local.record_route_value(&stx.peer)), extra);
    }
    // The top entry faces the next hop, the second the previous one (RFC 3261 16.6 item 4).
    let (h, p) = far_host;
    let top = flow::sbc_uri(far.as_deref(), h, p, target.transport, false);
    let (h, p) = near_host;
    extra.extend_from_slice(b"Record-Route: ");
    extra.extend_from_slice(&flow::sbc_uri(
        client.as_deref(),
        h,
        p,
        stx.peer.transport,
        false,
    ));
    extra.extend_from_slice(b"\r\n");
    (Some(top), extra)
}
