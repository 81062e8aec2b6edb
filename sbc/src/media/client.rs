//! The ng client: one UDP socket for every rtpengine, a task that hands each reply to the
//! caller waiting for its cookie, and retransmission until a deadline.
//!
//! A request is sent, then sent again (same cookie, same bytes) after `retransmit`, doubling
//! each time, until a reply arrives or `timeout` has passed since the first send. rtpengine
//! answers a retransmission from its cookie cache, so an offer is never executed twice. A
//! reply is accepted only from the address the request went to and only for a cookie still
//! waiting; anything else is dropped (and counted in [`NgClient::stray_replies`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::ng::{Reply, ReplyError, Request, split_cookie};

/// When to retransmit and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Time from the first send to giving up.
    pub timeout: Duration,
    /// Time before the first retransmission; doubled after each.
    pub retransmit: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            timeout: Duration::from_millis(2000),
            retransmit: Duration::from_millis(500),
        }
    }
}

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum NgError {
    /// Nothing came back before the deadline.
    #[error("rtpengine {addr}: no reply to {command} within {ms} ms")]
    Timeout {
        /// Where the request went.
        addr: SocketAddr,
        /// The command.
        command: &'static str,
        /// The deadline.
        ms: u128,
    },
    /// The socket failed (sending, usually: unreachable network).
    #[error("rtpengine {addr}: {source}")]
    Io {
        /// Where the request went.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A reply came but cannot be understood.
    #[error("rtpengine {addr}: {source}")]
    BadReply {
        /// Who sent it.
        addr: SocketAddr,
        /// What is wrong with it.
        source: ReplyError,
    },
    /// The client's receive task is gone (the socket failed for good).
    #[error("rtpengine client closed")]
    Closed,
}

struct Waiting {
    from: SocketAddr,
    tx: oneshot::Sender<Bytes>,
}

type Pending = Arc<Mutex<HashMap<Bytes, Waiting>>>;

/// An ng client. Cheap to clone (one socket and one receive task shared by every clone); the
/// task ends when the last clone is dropped.
#[derive(Clone)]
pub struct NgClient {
    inner: Arc<Inner>,
}

struct Inner {
    socket: Arc<UdpSocket>,
    pending: Pending,
    timing: Timing,
    stray: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for NgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NgClient")
            .field("local", &self.inner.socket.local_addr().ok())
            .field("timing", &self.inner.timing)
            .finish()
    }
}

/// Largest datagram read (an ng reply with a big SDP still fits a UDP datagram).
const MAX_DATAGRAM: usize = 65_535;

impl NgClient {
    /// Binds a UDP socket on `local` (port 0 for any) and starts the receive task. Must be
    /// called inside a tokio runtime.
    pub async fn bind(local: SocketAddr, timing: Timing) -> std::io::Result<NgClient> {
        let socket = Arc::new(UdpSocket::bind(local).await?);
        let pending: Pending = Arc::default();
        let stray = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(receive(socket.clone(), pending.clone(), stray.clone()));
        Ok(NgClient {
            inner: Arc::new(Inner {
                socket,
                pending,
                timing,
                stray,
                task,
            }),
        })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.socket.local_addr()
    }

    /// The retransmission timing.
    pub fn timing(&self) -> Timing {
        self.inner.timing
    }

    /// Replies dropped because no request was waiting for their cookie from their sender
    /// (late replies after a timeout, duplicates, spoofing attempts).
    pub fn stray_replies(&self) -> u64 {
        self.inner.stray.load(Ordering::Relaxed)
    }

    /// Sends `req` to `addr` and waits for its reply, retransmitting as [`Timing`] says.
    pub async fn request(&self, addr: SocketAddr, req: &Request) -> Result<Reply, NgError> {
        let payload = self.send_and_wait(addr, req).await?;
        Reply::decode(&payload).map_err(|source| NgError::BadReply { addr, source })
    }

    async fn send_and_wait(&self, addr: SocketAddr, req: &Request) -> Result<Bytes, NgError> {
        let command = req.command.name();
        let (cookie, mut rx) = self.register(addr);
        // Removes the entry whichever way this function ends (reply, timeout, cancellation).
        let _cleanup = Unregister {
            pending: &self.inner.pending,
            cookie: cookie.clone(),
        };
        let body = req.encode();
        let mut datagram = Vec::with_capacity(cookie.len() + 1 + body.len());
        datagram.extend_from_slice(&cookie);
        datagram.push(b' ');
        datagram.extend_from_slice(&body);

        let timing = self.inner.timing;
        let deadline = tokio::time::Instant::now() + timing.timeout;
        let mut wait = timing.retransmit.max(Duration::from_millis(1));
        loop {
            self.inner
                .socket
                .send_to(&datagram, addr)
                .await
                .map_err(|source| NgError::Io { addr, source })?;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let until = (now + wait).min(deadline);
            match tokio::time::timeout_at(until, &mut rx).await {
                Ok(Ok(payload)) => return Ok(payload),
                Ok(Err(_)) => return Err(NgError::Closed),
                Err(_) if until >= deadline => break,
                Err(_) => wait = wait.saturating_mul(2),
            }
        }
        Err(NgError::Timeout {
            addr,
            command,
            ms: timing.timeout.as_millis(),
        })
    }

    /// A fresh cookie, registered as waiting for a reply from `addr`.
    fn register(&self, addr: SocketAddr) -> (Bytes, oneshot::Receiver<Bytes>) {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // 64 random bits: unique among waiting requests (checked) and not guessable by
            // an off-path sender who would have to match a waiting cookie and our peer's
            // address.
            let cookie = Bytes::from(format!("{:016x}", fastrand::u64(..)));
            if let std::collections::hash_map::Entry::Vacant(v) = pending.entry(cookie.clone()) {
                v.insert(Waiting { from: addr, tx });
                return (cookie, rx);
            }
        }
    }
}

struct Unregister<'a> {
    pending: &'a Pending,
    cookie: Bytes,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.cookie);
    }
}

/// The receive task: every datagram is matched to the request waiting for its cookie.
async fn receive(socket: Arc<UdpSocket>, pending: Pending, stray: Arc<AtomicU64>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP port unreachable surfaces here on Linux: the request's own timeout
                // handles it, the socket stays usable.
                tracing::trace!(error = %e, "rtpengine client: receive error");
                continue;
            }
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        let Some((cookie, payload)) = split_cookie(&datagram) else {
            stray.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let waiter = {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            match p.get(&cookie) {
                Some(w) if w.from == from => p.remove(&cookie),
                _ => None,
            }
        };
        match waiter {
            Some(w) => {
                let _ = w.tx.send(payload);
            }
            None => {
                stray.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::ng::Outcome;

    /// A fake rtpengine: answers each request with `reply` after dropping the first `drop`
    /// copies; returns its address and a counter of datagrams received.
    async fn fake(drop: usize, reply: &'static [u8]) -> (SocketAddr, Arc<AtomicU64>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, from)) = s.recv_from(&mut buf).await else {
                    return;
                };
                let k = counter.fetch_add(1, Ordering::Relaxed) as usize;
                if k < drop {
                    continue;
                }
                let d = Bytes::copy_from_slice(&buf[..n]);
                let (cookie, _) = split_cookie(&d).unwrap();
                // A stray reply first (wrong cookie), then the real one.
                let _ = s.send_to(b"nope d6:result2:oke", from).await;
                let mut out = cookie.to_vec();
                out.push(b' ');
                out.extend_from_slice(reply);
                let _ = s.send_to(&out, from).await;
            }
        });
        (addr, seen)
    }

    fn timing(timeout: u64, retransmit: u64) -> Timing {
        Timing {
            timeout: Duration::from_millis(timeout),
            retransmit: Duration::from_millis(retransmit),
        }
    }

    #[tokio::test]
    async fn reply_is_matched_by_cookie_after_retransmissions() {
        let (addr, seen) = fake(2, b"d6:result4:ponge").await;
        let c = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing(2000, 20))
            .await
            .unwrap();
        let r = c.request(addr, &Request::ping()).await.unwrap();
        assert_eq!(r.outcome, Outcome::Ok);
        assert_eq!(
            seen.load(Ordering::Relaxed),
            3,
            "two lost, the third answered"
        );
        // The stray reply is dropped, not delivered.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(c.stray_replies() >= 1);
        assert!(c.inner.pending.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_their_own_reply() {
        let (addr, _) = fake(0, b"d6:result2:oke").await;
        let c = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing(2000, 500))
            .await
            .unwrap();
        let ping = Request::ping();
        let all = futures::future::join_all((0..50).map(|_| c.request(addr, &ping)));
        for r in all.await {
            assert_eq!(r.unwrap().outcome, Outcome::Ok);
        }
    }

    #[tokio::test]
    async fn silence_is_a_timeout_naming_the_address_and_command() {
        let (addr, seen) = fake(usize::MAX, b"").await;
        let c = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing(300, 50))
            .await
            .unwrap();
        let t0 = std::time::Instant::now();
        let e = c.request(addr, &Request::ping()).await.unwrap_err();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("rtpengine {addr}: no reply to ping within 300 ms")
        );
        // 50, 100, 200 (cut at 300): the first send and three retransmissions at most.
        let n = seen.load(Ordering::Relaxed);
        assert!((3..=4).contains(&n), "{n} datagrams");
        assert!(c.inner.pending.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reply_from_another_address_is_not_accepted() {
        // The request goes to a silent socket; a third party replays the cookie.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let c = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing(300, 300))
            .await
            .unwrap();
        let local = c.local_addr().unwrap();
        let task = tokio::spawn({
            let c = c.clone();
            async move { c.request(addr, &Request::ping()).await }
        });
        let mut buf = [0u8; 100];
        let (n, _) = silent.recv_from(&mut buf).await.unwrap();
        let d = Bytes::copy_from_slice(&buf[..n]);
        let (cookie, _) = split_cookie(&d).unwrap();
        let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut out = cookie.to_vec();
        out.extend_from_slice(b" d6:result4:ponge");
        spoofer.send_to(&out, local).await.unwrap();
        assert!(matches!(task.await.unwrap(), Err(NgError::Timeout { .. })));
        assert!(c.stray_replies() >= 1);
    }

    #[tokio::test]
    async fn a_garbage_reply_is_a_bad_reply() {
        let (addr, _) = fake(0, b"d6:resulti1ee").await;
        let c = NgClient::bind("127.0.0.1:0".parse().unwrap(), timing(500, 500))
            .await
            .unwrap();
        let e = c.request(addr, &Request::ping()).await.unwrap_err();
        assert!(matches!(e, NgError::BadReply { .. }), "{e}");
    }
}
