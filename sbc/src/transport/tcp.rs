//! SIP over TCP and TLS: Content-Length framing (RFC 3261 section 18.3), CRLF keep-alive
//! (RFC 5626 section 4.4.1), idle timeouts, size and per-source caps, and connection reuse in
//! both directions. One [`TcpSide`] per transport; TLS wraps the same connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kubesbc_crds::config::{Limits, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::tls::{TlsClient, TlsServer};
use super::{ConnCounts, Flow, FlowId, FlowTable, Inbound, Peer, next_flow};
use crate::sip::parse::{find_headers_end, parse_u32};

/// Messages queued towards one connection before new ones are dropped.
const QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A TLS handshake (either side) must finish within this, or the connection is closed.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct TcpSide {
    transport: Transport,
    limits: Limits,
    flows: FlowTable,
    by_addr: Mutex<HashMap<SocketAddr, FlowId>>,
    counts: Arc<Mutex<ConnCounts>>,
    local: Mutex<Vec<SocketAddr>>,
    /// TLS only: the listeners' certificate, and the client side towards backends.
    tls_server: Option<Arc<TlsServer>>,
    tls_client: Option<Arc<TlsClient>>,
}

impl TcpSide {
    /// A side for plain TCP.
    pub(super) fn new(limits: Limits, counts: Arc<Mutex<ConnCounts>>) -> TcpSide {
        TcpSide {
            transport: Transport::Tcp,
            limits,
            flows: Mutex::new(HashMap::new()),
            by_addr: Mutex::new(HashMap::new()),
            counts,
            local: Mutex::new(Vec::new()),
            tls_server: None,
            tls_client: None,
        }
    }

    /// A side for TLS: `server` for the listeners (absent without a `tls` section), `client`
    /// for connections it opens.
    pub(super) fn new_tls(
        limits: Limits,
        counts: Arc<Mutex<ConnCounts>>,
        server: Option<Arc<TlsServer>>,
        client: Arc<TlsClient>,
    ) -> TcpSide {
        TcpSide {
            transport: Transport::Tls,
            tls_server: server,
            tls_client: Some(client),
            ..TcpSide::new(limits, counts)
        }
    }

    pub(super) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub(super) fn add_local(&self, a: SocketAddr) {
        if let Ok(mut v) = self.local.lock() {
            v.push(a);
        }
    }

    pub(super) fn open(&self) -> usize {
        self.flows.lock().map(|f| f.len()).unwrap_or(0)
    }

    fn sender(&self, flow: Option<FlowId>, addr: SocketAddr) -> Option<mpsc::Sender<Bytes>> {
        let flows = self.flows.lock().ok()?;
        if let Some(f) = flow.and_then(|id| flows.get(&id)) {
            return Some(f.tx.clone());
        }
        let id = *self.by_addr.lock().ok()?.get(&addr)?;
        flows.get(&id).map(|f| f.tx.clone())
    }

    /// Whether connection `id` is open.
    pub(super) fn is_open(&self, id: FlowId) -> bool {
        self.flows.lock().is_ok_and(|f| f.contains_key(&id))
    }

    pub(super) fn send(
        self: &Arc<Self>,
        to: &Peer,
        data: Bytes,
        token: Option<Vec<u8>>,
        inbound: &Arc<dyn Inbound>,
    ) {
        if let Some(tx) = self.sender(to.flow, to.addr) {
            if tx.try_send(data).is_err() {
                inbound.on_dropped("tcp_queue_full");
                if let Some(t) = token {
                    inbound.on_send_error(t);
                }
            }
            return;
        }
        // No connection: open one (towards a backend, or back to a client whose connection
        // closed). The flow is registered at once, so messages sent while it connects queue
        // behind the first one and share the connection.
        let addr = to.addr;
        let (id, tx, rx) = self.add_flow(addr);
        let _ = tx.try_send(data);
        let inbound = inbound.clone();
        let side = self.clone();
        tokio::spawn(async move {
            let ok = match side.connect(addr).await {
                Ok(Conn::Plain(s)) => {
                    let (rd, wr) = s.into_split();
                    side.start(id, addr, rd, wr, rx, inbound.clone(), false);
                    true
                }
                Ok(Conn::Tls(s)) => {
                    let (rd, wr) = tokio::io::split(s);
                    side.start(id, addr, rd, wr, rx, inbound.clone(), false);
                    true
                }
                Err(e) => {
                    tracing::debug!(%addr, transport = %side.transport, error = %e, "connect failed");
                    false
                }
            };
            if !ok {
                side.forget(id, addr);
                if let Some(t) = token {
                    inbound.on_send_error(t);
                }
            }
        });
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Conn> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let _ = tcp.set_nodelay(true);
        match &self.tls_client {
            None => Ok(Conn::Plain(tcp)),
            Some(c) => {
                let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, c.connect(addr, tcp))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                Ok(Conn::Tls(Box::new(s)))
            }
        }
    }

    fn add_flow(&self, remote: SocketAddr) -> (FlowId, mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>) {
        let id = next_flow();
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Ok(mut f) = self.flows.lock() {
            f.insert(id, Flow { tx: tx.clone() });
        }
        if let Ok(mut b) = self.by_addr.lock() {
            b.insert(remote, id);
        }
        (id, tx, rx)
    }

    /// Registers an accepted connection and starts its reader and writer.
    fn register<R, W>(
        self: &Arc<Self>,
        remote: SocketAddr,
        rd: R,
        wr: W,
        inbound: Arc<dyn Inbound>,
    ) -> FlowId
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (id, _tx, rx) = self.add_flow(remote);
        self.start(id, remote, rd, wr, rx, inbound, true);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn start<R, W>(
        self: &Arc<Self>,
        id: FlowId,
        remote: SocketAddr,
        rd: R,
        wr: W,
        rx: mpsc::Receiver<Bytes>,
        inbound: Arc<dyn Inbound>,
        inbound_counted: bool,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(writer(wr, rx));
        let side = self.clone();
        tokio::spawn(async move {
            side.reader(id, remote, rd, inbound).await;
            side.forget(id, remote);
            if inbound_counted {
                release(&side.counts, remote);
            }
        });
    }

    fn forget(&self, id: FlowId, remote: SocketAddr) {
        if let Ok(mut f) = self.flows.lock() {
            f.remove(&id);
        }
        if let Ok(mut b) = self.by_addr.lock()
            && b.get(&remote) == Some(&id)
        {
            b.remove(&remote);
        }
    }

    async fn reader<R: AsyncRead + Unpin>(
        &self,
        id: FlowId,
        remote: SocketAddr,
        mut rd: R,
        inbound: Arc<dyn Inbound>,
    ) {
        let idle = Duration::from_secs(self.limits.tcp_idle_timeout_secs);
        let max = self.limits.max_message_bytes;
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            loop {
                match next_frame(&mut buf, max) {
                    Frame::Message(m) => inbound.on_message(
                        m,
                        Peer {
                            transport: self.transport,
                            addr: remote,
                            flow: Some(id),
                        },
                    ),
                    Frame::Ping => {
                        if let Some(tx) = self.sender(Some(id), remote) {
                            let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                        }
                    }
                    Frame::NeedMore => break,
                    Frame::Invalid(reason) => {
                        tracing::info!(%remote, transport = %self.transport, reason, "closing connection: framing lost");
                        // Answered before the close: the writer sends what is queued, then
                        // the connection goes when this reader returns.
                        let peer = Peer {
                            transport: self.transport,
                            addr: remote,
                            flow: Some(id),
                        };
                        inbound.on_framing_lost(buf.split().freeze(), reason, peer);
                        return;
                    }
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8192);
            }
            match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    tracing::debug!(%remote, "connection idle, closing");
                    return;
                }
            }
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn writer<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if wr.write_all(&data).await.is_err() {
            return;
        }
        // TLS buffers records: push each message out.
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

pub(super) async fn accept_loop(side: Arc<TcpSide>, l: TcpListener, inbound: Arc<dyn Inbound>) {
    loop {
        let (stream, remote) = accept_admitted(&l, &side.counts, &side.limits, &*inbound).await;
        match &side.tls_server {
            None => {
                let (rd, wr) = stream.into_split();
                let id = side.register(remote, rd, wr, inbound.clone());
                tracing::trace!(%remote, flow = id, "tcp connection accepted");
            }
            Some(server) => {
                let acceptor = server.acceptor();
                let (side, inbound) = (side.clone(), inbound.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let (rd, wr) = tokio::io::split(s);
                            let id = side.register(remote, rd, wr, inbound);
                            tracing::trace!(%remote, flow = id, "tls connection accepted");
                        }
                        Ok(Err(e)) => {
                            release(&side.counts, remote);
                            inbound.on_dropped("tls_handshake");
                            tracing::info!(%remote, error = %e, "tls handshake failed");
                        }
                        Err(_) => {
                            release(&side.counts, remote);
                            inbound.on_dropped("tls_handshake");
                            tracing::info!(%remote, "tls handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// The next connection on `l` that [`admit`] lets in, with Nagle off (shared by every stream
/// transport). Refused ones are counted as dropped; accept errors back off.
pub(super) async fn accept_admitted(
    l: &TcpListener,
    counts: &Mutex<ConnCounts>,
    limits: &Limits,
    inbound: &dyn Inbound,
) -> (TcpStream, SocketAddr) {
    loop {
        let (stream, remote) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !admit(counts, limits, remote) {
            inbound.on_dropped("connection_limit");
            continue;
        }
        let _ = stream.set_nodelay(true);
        return (stream, remote);
    }
}

/// Counts an accepted connection against the per-source and total caps (shared by every
/// stream transport).
pub(super) fn admit(counts: &Mutex<ConnCounts>, limits: &Limits, remote: SocketAddr) -> bool {
    let Ok(mut c) = counts.lock() else {
        return false;
    };
    let per = c.by_ip.get(&remote.ip()).copied().unwrap_or(0);
    if per >= limits.max_connections_per_source || c.total >= limits.max_connections {
        return false;
    }
    c.by_ip.insert(remote.ip(), per + 1);
    c.total += 1;
    true
}

/// Gives back what [`admit`] counted.
pub(super) fn release(counts: &Mutex<ConnCounts>, remote: SocketAddr) {
    if let Ok(mut c) = counts.lock() {
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&remote.ip()) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&remote.ip());
            }
        }
    }
}

/// What the framer found at the front of a stream buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message (headers and body).
    Message(Bytes),
    /// A CRLF CRLF keep-alive ping, to be answered with CRLF.
    Ping,
    /// Not enough bytes yet.
    NeedMore,
    /// Framing is lost (the reason, for the metrics): the connection must be closed.
    Invalid(&'static str),
}

/// Cuts the next message or keep-alive off the front of a TCP/TLS stream buffer: messages are
/// delimited by their Content-Length, which RFC 3261 section 18.3 makes mandatory on streams,
/// so a message without one (or larger than `max`) loses the framing.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Frame {
    // RFC 5626: a double CRLF is a ping (answer with CRLF); a single CRLF is a pong.
    if buf.starts_with(b"\r\n\r\n") {
        let _ = buf.split_to(4);
        return Frame::Ping;
    }
    if buf.starts_with(b"\r\n") {
        if buf.len() < 4 && b"\r\n\r\n".starts_with(&buf[..]) {
            return Frame::NeedMore;
        }
        let _ = buf.split_to(2);
        return next_frame(buf, max);
    }
    let Some((hend, body_start)) = find_headers_end(buf) else {
        if buf.len() > max {
            return Frame::Invalid("too_large");
        }
        return Frame::NeedMore;
    };
    let mut cl = None;
    for line in buf[..hend].split(|c| *c == b'\n') {
        let Some(colon) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            match parse_u32(line[colon + 1..].trim_ascii()) {
                Some(n) if cl.is_none_or(|c| c == n as usize) => cl = Some(n as usize),
                _ => return Frame::Invalid("bad_content_length"),
            }
        }
    }
    let Some(cl) = cl else {
        return Frame::Invalid("missing_content_length");
    };
    let total = body_start.saturating_add(cl);
    if total > max {
        return Frame::Invalid("too_large");
    }
    if buf.len() < total {
        return Frame::NeedMore;
    }
    Frame::Message(buf.split_to(total).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_messages_and_keepalives() {
        let mut b = BytesMut::from(
            &b"\r\n\r\nOPTIONS sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabcINVITE sip:b SIP/2.0\r\nl: 2\r\n\r\nx"[..],
        );
        assert_eq!(next_frame(&mut b, 65535), Frame::Ping);
        match next_frame(&mut b, 65535) {
            Frame::Message(m) => assert!(m.ends_with(b"\r\n\r\nabc")),
            other => panic!("{other:?}"),
        }
        assert_eq!(next_frame(&mut b, 65535), Frame::NeedMore);
        b.extend_from_slice(b"y");
        assert!(matches!(next_frame(&mut b, 65535), Frame::Message(_)));
        assert!(b.is_empty());
    }

    #[test]
    fn refuses_oversize_and_bad_length() {
        let mut b = BytesMut::from(&b"INVITE sip:b SIP/2.0\r\nContent-Length: 99999\r\n\r\n"[..]);
        assert_eq!(next_frame(&mut b, 65535), Frame::Invalid("too_large"));
        let mut b = BytesMut::from(&b"INVITE sip:b SIP/2.0\r\nContent-Length: ab\r\n\r\n"[..]);
        assert_eq!(
            next_frame(&mut b, 65535),
            Frame::Invalid("bad_content_length")
        );
        let mut b = BytesMut::from(vec![b'a'; 70000].as_slice());
        assert_eq!(next_frame(&mut b, 65535), Frame::Invalid("too_large"));
    }

    #[test]
    fn content_length_is_required_on_streams() {
        let mut b = BytesMut::from(&b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n\r\n"[..]);
        assert_eq!(
            next_frame(&mut b, 65535),
            Frame::Invalid("missing_content_length")
        );
        // Two different lengths: which one frames the body is unknowable.
        let mut b =
            BytesMut::from(&b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 0\r\nl: 4\r\n\r\nabcd"[..]);
        assert_eq!(
            next_frame(&mut b, 65535),
            Frame::Invalid("bad_content_length")
        );
    }
}
