//! SIP over WebSocket (RFC 7118), plain (ws) and over TLS (wss), with tokio-tungstenite.
//!
//! The HTTP upgrade is checked here, before any WebSocket framing: a required path (404
//! otherwise; any path when none is configured, as Kamailio accepts it), an Origin allow-list
//! (403), `Sec-WebSocket-Protocol: sip` (400 without it: the upgrade never happens), and a
//! plain HTTP request gets `426 Upgrade Required` instead of a hang. After the upgrade every
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
use kubesbc_crds::config::{Limits, Listener, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use super::tcp::{HANDSHAKE_TIMEOUT, admit, release};
use super::tls::TlsServer;
use super::{ConnCounts, Flow, FlowId, FlowTable, Inbound, Peer, next_flow};

/// Messages queued towards one connection before new ones are dropped.
const QUEUE: usize = 1024;
/// The largest HTTP upgrade request read.
const MAX_REQUEST_BYTES: usize = 8192;
/// How often an idle connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(30);

/// What one ws/wss listener accepts.
#[derive(Debug, Clone, Default)]
pub(super) struct UpgradeRules {
    /// The path the upgrade must ask for; any path when absent.
    pub path: Option<String>,
    /// Allowed `Origin` values; any (or none) when empty.
    pub origins: Vec<String>,
}

impl UpgradeRules {
    pub(super) fn of(l: &Listener) -> UpgradeRules {
        UpgradeRules {
            path: l.path.clone(),
            origins: l.allowed_origins.clone(),
        }
    }
}

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

    fn ws_config(&self) -> WebSocketConfig {
        let max = self.limits.max_message_bytes;
        WebSocketConfig::default()
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            .accept_unmasked_frames(false)
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

/// CRLF keep-alives (a ping `\r\n\r\n`, a pong `\r\n`) carried in a WebSocket message.
fn is_keepalive(data: &[u8]) -> bool {
    !data.is_empty() && data.len() <= 4 && data.iter().all(|b| matches!(b, b'\r' | b'\n'))
}

/// The close code for a read error, or `None` when the connection is simply gone.
fn close_code(e: &tungstenite::Error) -> Option<(CloseCode, &'static str)> {
    use tungstenite::error::{CapacityError, Error, ProtocolError};
    Some(match e {
        Error::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        // RFC 6455 section 5.2: the most significant bit of a 64-bit length MUST be 0.
        Error::Capacity(CapacityError::MessageTooLong { size, .. })
            if (*size as u64) >> 63 == 1 =>
        {
            (
                CloseCode::Protocol,
                "frame length with the most significant bit set",
            )
        }
        Error::Capacity(_) => (CloseCode::Size, "message too big"),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        Error::Protocol(ProtocolError::UnmaskedFrameFromClient) => {
            (CloseCode::Protocol, "unmasked frame from a client")
        }
        Error::Protocol(ProtocolError::NonZeroReservedBits) => (
            CloseCode::Protocol,
            "reserved bits set without an extension",
        ),
        Error::Protocol(ProtocolError::InvalidOpcode(_))
        | Error::Protocol(ProtocolError::UnknownControlFrameType(_))
        | Error::Protocol(ProtocolError::UnknownDataFrameType(_)) => {
            (CloseCode::Protocol, "reserved opcode")
        }
        Error::Protocol(ProtocolError::ControlFrameTooBig)
        | Error::Protocol(ProtocolError::FragmentedControlFrame) => {
            (CloseCode::Protocol, "control frame too big or fragmented")
        }
        Error::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        _ => return None,
    })
}

/// The decision on an HTTP upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Upgrade {
    /// Upgrade: the `Sec-WebSocket-Accept` value.
    Accept(String),
    /// Refuse with this status line and reason (sent as the body).
    Refuse(&'static str, &'static str),
}

/// Decides on the request head `head` (complete, up to the blank line).
pub(super) fn decide(head: &[u8], rules: &UpgradeRules) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Upgrade::Refuse("400 Bad Request", "not an HTTP request"),
    }
    let get = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let tokens = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| {
                String::from_utf8_lossy(h.value)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    if let Some(want) = &rules.path
        && path != want
    {
        return Upgrade::Refuse("404 Not Found", "no WebSocket endpoint at this path");
    }
    let upgrade = tokens("upgrade").iter().any(|t| t == "websocket");
    let connection = tokens("connection").iter().any(|t| t == "upgrade");
    if !upgrade || !connection {
        return Upgrade::Refuse(
            "426 Upgrade Required",
            "this port speaks SIP over WebSocket (RFC 7118) only",
        );
    }
    if req.method != Some("GET") {
        return Upgrade::Refuse("400 Bad Request", "a WebSocket upgrade is a GET");
    }
    if get("sec-websocket-version").as_deref() != Some("13") {
        return Upgrade::Refuse("426 Upgrade Required", "WebSocket version 13 required");
    }
    let Some(key) = get("sec-websocket-key").filter(|k| k.len() == 24) else {
        return Upgrade::Refuse("400 Bad Request", "missing or invalid Sec-WebSocket-Key");
    };
    if !rules.origins.is_empty() {
        let allowed =
            get("origin").is_some_and(|o| rules.origins.iter().any(|a| a.eq_ignore_ascii_case(&o)));
        if !allowed {
            return Upgrade::Refuse("403 Forbidden", "origin not allowed");
        }
    }
    if !tokens("sec-websocket-protocol").iter().any(|p| p == "sip") {
        return Upgrade::Refuse(
            "400 Bad Request",
            "Sec-WebSocket-Protocol: sip is required (RFC 7118)",
        );
    }
    Upgrade::Accept(tungstenite::handshake::derive_accept_key(key.as_bytes()))
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
            let cfg = side.ws_config();
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
        let (stream, remote) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !admit(&side.counts, &side.limits, remote) {
            inbound.on_dropped("connection_limit");
            continue;
        }
        let _ = stream.set_nodelay(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: sbc\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\nOrigin: https://app.example.com\r\n\r\n";

    #[test]
    fn upgrade_accepts_sip_on_any_path_by_default() {
        assert_eq!(
            decide(UPGRADE.as_bytes(), &UpgradeRules::default()),
            Upgrade::Accept("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())
        );
    }

    #[test]
    fn upgrade_refusals() {
        let any = UpgradeRules::default();
        let cases = [
            (
                UPGRADE.replace("Sec-WebSocket-Protocol: sip\r\n", ""),
                "400 Bad Request",
            ),
            (
                UPGRADE.replace("Protocol: sip", "Protocol: chat"),
                "400 Bad Request",
            ),
            (
                "GET / HTTP/1.1\r\nHost: sbc\r\n\r\n".to_owned(),
                "426 Upgrade Required",
            ),
            (
                UPGRADE.replace("Version: 13", "Version: 8"),
                "426 Upgrade Required",
            ),
            ("\x16\x03\x01garbage\r\n\r\n".to_owned(), "400 Bad Request"),
        ];
        for (req, want) in cases {
            match decide(req.as_bytes(), &any) {
                Upgrade::Refuse(status, _) => assert_eq!(status, want, "{req}"),
                other => panic!("{req}: {other:?}"),
            }
        }
        let rules = UpgradeRules {
            path: Some("/sip".into()),
            origins: vec!["https://other.example.com".into()],
        };
        assert!(matches!(
            decide(UPGRADE.as_bytes(), &rules),
            Upgrade::Refuse("404 Not Found", _)
        ));
        let rules = UpgradeRules {
            path: Some("/ws".into()),
            origins: vec!["https://other.example.com".into()],
        };
        assert!(matches!(
            decide(UPGRADE.as_bytes(), &rules),
            Upgrade::Refuse("403 Forbidden", _)
        ));
        let rules = UpgradeRules {
            path: Some("/ws".into()),
            origins: vec!["https://app.example.com".into()],
        };
        assert!(matches!(
            decide(UPGRADE.as_bytes(), &rules),
            Upgrade::Accept(_)
        ));
    }

    #[test]
    fn close_codes() {
        use tungstenite::error::{CapacityError, Error, ProtocolError};
        let code = |e: Error| close_code(&e).map(|(c, _)| u16::from(c));
        assert_eq!(
            code(Error::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::NonZeroReservedBits)),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::InvalidOpcode(3))),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::ControlFrameTooBig)),
            Some(1002)
        );
        assert_eq!(
            code(Error::Capacity(CapacityError::MessageTooLong {
                size: 70_000,
                max_size: 65_535
            })),
            Some(1009)
        );
        assert_eq!(
            code(Error::Capacity(CapacityError::MessageTooLong {
                size: 1 << 63,
                max_size: 65_535
            })),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
            None
        );
    }
}
