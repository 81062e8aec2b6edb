//! SIP over TCP: Content-Length framing, CRLF keep-alive (RFC 5626 section 4.4.1), idle
//! timeouts, size and per-source caps, and connection reuse in both directions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kubesbc_crds::config::{Limits, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{ConnCounts, Flow, FlowId, FlowTable, Inbound, Peer, next_flow};
use crate::sip::parse::{find_headers_end, parse_u32};

/// Messages queued towards one connection before new ones are dropped.
const QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) struct TcpSide {
    limits: Limits,
    flows: FlowTable,
    by_addr: Mutex<HashMap<SocketAddr, FlowId>>,
    counts: Mutex<ConnCounts>,
    local: Mutex<Vec<SocketAddr>>,
}

impl TcpSide {
    pub(super) fn new(limits: Limits) -> TcpSide {
        TcpSide {
            limits,
            flows: Mutex::new(HashMap::new()),
            by_addr: Mutex::new(HashMap::new()),
            counts: Mutex::new(ConnCounts::default()),
            local: Mutex::new(Vec::new()),
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
        // closed) in the background; the first message goes once it is up.
        let addr = to.addr;
        let inbound = inbound.clone();
        let side = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let (id, tx) = side.register(addr, stream, inbound.clone(), false);
                    if tx.send(data).await.is_err() {
                        side.forget(id, addr);
                        if let Some(t) = token {
                            inbound.on_send_error(t);
                        }
                    }
                }
                _ => {
                    tracing::debug!(%addr, "tcp connect failed");
                    if let Some(t) = token {
                        inbound.on_send_error(t);
                    }
                }
            }
        });
    }

    /// Registers a connection and starts its reader and writer.
    fn register(
        self: &Arc<Self>,
        remote: SocketAddr,
        stream: TcpStream,
        inbound: Arc<dyn Inbound>,
        inbound_counted: bool,
    ) -> (FlowId, mpsc::Sender<Bytes>) {
        let id = next_flow();
        let (tx, rx) = mpsc::channel(QUEUE);
        if let Ok(mut f) = self.flows.lock() {
            f.insert(id, Flow { tx: tx.clone() });
        }
        if let Ok(mut b) = self.by_addr.lock() {
            b.insert(remote, id);
        }
        let (rd, wr) = stream.into_split();
        tokio::spawn(writer(wr, rx));
        let side = self.clone();
        tokio::spawn(async move {
            side.reader(id, remote, rd, inbound).await;
            side.forget(id, remote);
            if inbound_counted {
                side.release(remote);
            }
        });
        (id, tx)
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

    async fn reader(
        &self,
        id: FlowId,
        remote: SocketAddr,
        mut rd: tokio::net::tcp::OwnedReadHalf,
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
                            transport: Transport::Tcp,
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
                        inbound.on_dropped(reason);
                        tracing::info!(%remote, reason, "closing tcp connection");
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
                    tracing::debug!(%remote, "tcp connection idle, closing");
                    return;
                }
            }
        }
    }
}

async fn writer(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(data) = rx.recv().await {
        if wr.write_all(&data).await.is_err() {
            return;
        }
    }
}

pub(super) async fn accept_loop(side: Arc<TcpSide>, l: TcpListener, inbound: Arc<dyn Inbound>) {
    loop {
        let (stream, remote) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !side.admit(remote) {
            inbound.on_dropped("connection_limit");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (id, _) = side.register(remote, stream, inbound.clone(), true);
        tracing::trace!(%remote, flow = id, "tcp connection accepted");
    }
}

impl TcpSide {
    /// Counts an accepted connection against the per-source and total caps.
    fn admit(&self, remote: SocketAddr) -> bool {
        let Ok(mut c) = self.counts.lock() else {
            return false;
        };
        let per = c.by_ip.get(&remote.ip()).copied().unwrap_or(0);
        if per >= self.limits.max_connections_per_source || c.total >= self.limits.max_connections {
            return false;
        }
        c.by_ip.insert(remote.ip(), per + 1);
        c.total += 1;
        true
    }

    fn release(&self, remote: SocketAddr) {
        if let Ok(mut c) = self.counts.lock() {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_ip.get_mut(&remote.ip()) {
                *n -= 1;
                if *n == 0 {
                    c.by_ip.remove(&remote.ip());
                }
            }
        }
    }
}

/// What the framer found at the front of a stream buffer.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Message(Bytes),
    Ping,
    NeedMore,
    Invalid(&'static str),
}

/// Cuts the next message (by Content-Length) or keep-alive off the front of `buf`.
fn next_frame(buf: &mut BytesMut, max: usize) -> Frame {
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
    let mut cl = 0usize;
    for line in buf[..hend].split(|c| *c == b'\n') {
        let Some(colon) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            match parse_u32(line[colon + 1..].trim_ascii()) {
                Some(n) => cl = n as usize,
                None => return Frame::Invalid("bad_content_length"),
            }
        }
    }
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
}
