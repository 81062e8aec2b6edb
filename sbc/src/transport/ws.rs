//! SIP over WebSocket (RFC 7118), plain (ws) and over TLS (wss), with tokio-tungstenite.
//!
//! The HTTP upgrade is read here and decided by [`super::ws_rules::decide`], before any
//! WebSocket framing: a required path (404 otherwise; any path when none is configured, as
//! Kamailio accepts it), an Origin allow-list (403), `Sec-WebSocket-Protocol: sip` (400
//! without it: the upgrade never happens), and a plain HTTP request gets `426 Upgrade
//! Required` instead of a hang. After the upgrade every
//! WebSocket message (text or binary) is one SIP message; RFC 6455 violations close the
//! connection with their close code (1002 protocol error, 1007 invalid UTF-8, 1009 too big)
//! without touching other connections. The sbc pings every connection and closes one that
//! stays silent (no frame, not even a pong) for the idle timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use kubesbc_crds::config::{Limits, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message};

use super::tcp::{HANDSHAKE_TIMEOUT, accept_admitted, release};
use super::tls::TlsServer;
use super::ws_rules::{Upgrade, UpgradeRules, close_code, decide, is_keepalive, ws_config};
use super::{ConnCounts, Flow, FlowId, FlowTable, Inbound, Peer, next_flow};

/// Messages queued towards one connection before new ones are dropped.
const QUEUE: usize = 1024;
/// The largest HTTP upgrade request read.
const MAX_REQUEST_BYTES: usize = 8192;
/// How often an idle connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);

/// The WebSocket connections of every ws and wss listener.
pub(super) struct WsSide {
    limits: Limits,
    flows: FlowTable,
    by_addr: Mutex<HashMap<(Transport, SocketAddr), FlowId>>,
    counts: Arc<Mutex<ConnCounts>>,
    local: Mutex<Vec<(Transport, SocketAddr)>>,
    tls: Option<Arc<TlsServer>>,
}

impl WsSide {
    pub(super) fn new(
        limits: Limits,
        counts: Arc<Mutex<ConnCounts>>,
        tls: Option<Arc<TlsServer>>,
    ) -> WsSide {
        WsSide {
            limits,
            flows: Mutex::new(HashMap::new()),
            by_addr: Mutex::new(HashMap::new()),
            counts,
            local: Mutex::new(Vec::new()),
            tls,
        }
    }

    pub(super) fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.local.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub(super) fn add_local(&self, t: Transport, a: SocketAddr) {
        if let Ok(mut v) = self.local.lock() {
            v.push((t, a));
        }
    }

    pub(super) fn open(&self) -> usize {
        self.flows.lock().map(|f| f.len()).unwrap_or(0)
    }

    /// Sends over the connection named in `to` (or the one open from its address). A
    /// WebSocket is never opened by the sbc: without a connection the message is lost and
    /// `token` reported.
    /// Whether connection `id` is open.
    pub(super) fn is_open(&self, id: FlowId) -> bool {
        self.flows.lock().is_ok_and(|f| f.contains_key(&id))
    }

    pub(super) fn send(
        &self,
        to: &Peer,
        data: Bytes,
        token: Option<Vec<u8>>,
        inbound: &Arc<dyn Inbound>,
    ) {
        let tx = self.flows.lock().ok().and_then(|flows| {
            let id = to.flow.filter(|id| flows.contains_key(id)).or_else(|| {
                self.by_addr
                    .lock()
                    .ok()?
                    .get(&(to.transport, to.addr))
                    .copied()
            })?;
            flows.get(&id).map(|f| f.tx.clone())
        });
        let delivered = match tx {
            Some(tx) => {
                let ok = tx.try_send(data).is_ok();
                if !ok {
                    inbound.on_dropped("ws_queue_full");
                }
                ok
            }
            None => {
                inbound.on_dropped("ws_no_connection");
                false
            }
        };
        if !delivered && let Some(t) = token {
            inbound.on_send_error(t);
        }
    }

    fn add_flow(&self, t: Transport, remote: SocketAddr) -> (FlowId, mpsc::Receiver<Bytes>) {
        let id = next_flow();
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Ok(mut f) = self.flows.lock() {
            f.insert(id, Flow { tx });
        }
        if let Ok(mut b) = self.by_addr.lock() {
            b.insert((t, remote), id);
        }
        (id, rx)
    }

    fn forget(&self, t: Transport, id: FlowId, remote: SocketAddr) {
        if let Ok(mut f) = self.flows.lock() {
            f.remove(&id);
        }
        if let Ok(mut b) = self.by_addr.lock()
            && b.get(&(t, remote)) == Some(&id)
        {
            b.remove(&(t, remote));
        }
    }

    /// Serves one upgraded connection until it closes.
    async fn serve<S>(
        self: Arc<Self>,
        t: Transport,
        remote: SocketAddr,
        mut ws: WebSocketStream<S>,
        inbound: Arc<dyn Inbound>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (id, mut rx) = self.add_flow(t, remote);
        tracing::trace!(%remote, flow = id, transport = %t, "websocket connection open");
        let idle = Duration::from_secs(self.limits.tcp_idle_timeout_secs);
        let mut tick = tokio::time::interval(PING_EVERY.min(idle / 2).max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_rx = Instant::now();
        let peer = Peer {
            transport: t,
            addr: remote,
            flow: Some(id),
        };
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    None => break,
                    Some(Ok(msg)) => {
                        last_rx = Instant::now();
                        let data = match msg {
                            Message::Text(s) => Bytes::from(s),
                            Message::Binary(b) => b,
                            // Pongs to pings are queued by tungstenite and sent with the next
                            // read or write; a Close is answered the same way.
                            _ => continue,
                        };
                        if is_keepalive(&data) {
                            // RFC 5626 section 4.4.1 over a WebSocket, as sip.js sends it.
                            if data.len() >= 4 && ws.send(Message::text("\r\n")).await.is_err() {
                                break;
                            }
                            continue;
                        }
                        if data.len() > self.limits.max_message_bytes {
                            inbound.on_dropped("too_large");
                            continue;
                        }
                        inbound.on_message(data, peer);
                    }
                    Some(Err(e)) => {
                        if let Some((code, reason)) = close_code(&e) {
                            inbound.on_dropped("ws_protocol");
                            tracing::info!(%remote, error = %e, code = u16::from(code), "closing websocket: {reason}");
                            let frame = CloseFrame { code, reason: reason.into() };
                            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                        }
                        break;
                    }
                },
                out = rx.recv() => {
                    let Some(data) = out else { break };
                    let msg = match std::str::from_utf8(&data) {
                        Ok(_) => match tungstenite::Utf8Bytes::try_from(data) {
                            Ok(s) => Message::Text(s),
                            Err(_) => continue,
                        },
                        Err(_) => Message::Binary(data),
                    };
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    if last_rx.elapsed() >= idle {
                        tracing::debug!(%remote, "websocket idle, closing");
                        let frame = CloseFrame { code: CloseCode::Away, reason: "idle timeout".into() };
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
                        break;
                    }
                    if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                        break;
                    }
                }
            }
        }
        self.forget(t, id, remote);
    }
}

/// Reads the request head; `Ok(None)` when the peer closed or sent too much.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<(BytesMut, usize)>> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some((buf, end + 4)));
        }
        if buf.len() >= MAX_REQUEST_BYTES {
            return Ok(None);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Runs the HTTP upgrade on `s` and then serves the WebSocket.
async fn handshake_and_serve<S>(
    side: Arc<WsSide>,
    t: Transport,
    remote: SocketAddr,
    mut s: S,
    rules: Arc<UpgradeRules>,
    inbound: Arc<dyn Inbound>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut s)).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => {
            let _ = refuse(
                &mut s,
                "400 Bad Request",
                "request head too large or incomplete",
            )
            .await;
            return;
        }
        _ => return,
    };
    let (mut buf, end) = head;
    match decide(&buf[..end], &rules) {
        Upgrade::Refuse(status, reason) => {
            inbound.on_dropped("ws_upgrade_refused");
            tracing::debug!(%remote, status, reason, "websocket upgrade refused");
            let _ = refuse(&mut s, status, reason).await;
        }
        Upgrade::Accept(accept) => {
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
            );
            if s.write_all(resp.as_bytes()).await.is_err() || s.flush().await.is_err() {
                return;
            }
            let rest = buf.split_off(end).to_vec();
            let cfg = ws_config(&side.limits);
            let ws = WebSocketStream::from_partially_read(s, rest, Role::Server, Some(cfg)).await;
            side.serve(t, remote, ws, inbound).await;
        }
    }
}

async fn refuse<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: &str,
    reason: &str,
) -> std::io::Result<()> {
    let extra = if status.starts_with("426") {
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    );
    s.write_all(resp.as_bytes()).await?;
    s.flush().await?;
    s.shutdown().await
}

/// Accepts ws (`tls` absent) or wss connections on `l`.
pub(super) async fn accept_loop(
    side: Arc<WsSide>,
    t: Transport,
    l: TcpListener,
    rules: UpgradeRules,
    inbound: Arc<dyn Inbound>,
) {
    let rules = Arc::new(rules);
    loop {
        let (stream, remote) = accept_admitted(&l, &side.counts, &side.limits, &*inbound).await;
        let (side, rules, inbound) = (side.clone(), rules.clone(), inbound.clone());
        tokio::spawn(async move {
            let counts = side.counts.clone();
            match (t, side.tls.as_ref().map(|s| s.acceptor())) {
                (Transport::Wss, Some(acceptor)) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => handshake_and_serve(side, t, remote, s, rules, inbound).await,
                        Ok(Err(e)) => {
                            inbound.on_dropped("tls_handshake");
                            tracing::info!(%remote, error = %e, "tls handshake failed");
                        }
                        Err(_) => {
                            inbound.on_dropped("tls_handshake");
                            tracing::info!(%remote, "tls handshake timed out");
                        }
                    }
                }
                _ => handshake_and_serve(side, t, remote, stream, rules, inbound).await,
            }
            release(&counts, remote);
        });
    }
}
