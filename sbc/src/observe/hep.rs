//! HEPv3 (the Homer Encapsulation Protocol, as Kamailio's siptrace sends it): the encoder and
//! the senders to the collectors. A UDP collector gets one datagram per message, sent without
//! waiting (a full socket buffer drops it); a TCP collector has a bounded queue and a writer
//! task that reconnects with backoff (a full queue drops).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kubesbc_crds::config::Transport;
use kubesbc_crds::observe::Collector;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Chunk types of HEPv3 (vendor 0, the generic chunks).
mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTO: u16 = 0x0002;
    pub const IPV4_SRC: u16 = 0x0003;
    pub const IPV4_DST: u16 = 0x0004;
    pub const IPV6_SRC: u16 = 0x0005;
    pub const IPV6_DST: u16 = 0x0006;
    pub const SRC_PORT: u16 = 0x0007;
    pub const DST_PORT: u16 = 0x0008;
    pub const TS_SEC: u16 = 0x0009;
    pub const TS_USEC: u16 = 0x000a;
    pub const PROTO_TYPE: u16 = 0x000b;
    pub const CAPTURE_ID: u16 = 0x000c;
    pub const AUTH_KEY: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION_ID: u16 = 0x0011;
    pub const NODE_NAME: u16 = 0x0013;
}

/// HEP's protocol type for SIP.
const PROTO_SIP: u8 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What one HEP packet says besides the payload.
#[derive(Debug, Clone, Copy)]
pub struct HepMeta<'a> {
    /// Sender of the SIP message.
    pub src: SocketAddr,
    /// Receiver of the SIP message.
    pub dst: SocketAddr,
    /// The SIP message's transport (tls, ws and wss are carried over TCP).
    pub transport: Transport,
    /// When it was received or sent.
    pub at: SystemTime,
    /// Capture agent id.
    pub capture_id: u32,
    /// Authentication key, if any.
    pub auth_key: Option<&'a str>,
    /// Correlation id (the Call-ID); empty: none.
    pub correlation: &'a [u8],
    /// Node name; empty: none.
    pub node: &'a str,
}

fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    // Callers keep every value far below 64 KiB (checked once for the whole packet).
    let len = u16::try_from(6 + value.len()).unwrap_or(u16::MAX);
    let [k0, k1] = kind.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    out.extend_from_slice(&[0, 0, k0, k1, l0, l1]);
    out.extend_from_slice(value);
}

/// The fixed-size chunks of a packet, written on the stack and appended at once: a `Vec`
/// push per field cost more than the rest of the encoding.
struct Fixed {
    buf: [u8; 160],
    len: usize,
}

impl Fixed {
    fn put<const N: usize>(&mut self, kind: u16, value: [u8; N]) {
        let [k0, k1] = kind.to_be_bytes();
        // N is at most 16 (an IPv6 address): the length fits a byte.
        let head = [0, 0, k0, k1, 0, 6 + N as u8];
        self.buf[self.len..self.len + 6].copy_from_slice(&head);
        self.buf[self.len + 6..self.len + 6 + N].copy_from_slice(&value);
        self.len += 6 + N;
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Encodes one HEPv3 packet into `out` (cleared first). Returns false when the packet would
/// exceed HEP's 16-bit length (nothing usable is left in `out` then).
pub fn encode(meta: &HepMeta<'_>, payload: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    let correlation = meta
        .correlation
        .get(..meta.correlation.len().min(255))
        .unwrap_or(&[]);
    let node = &meta.node.as_bytes()[..meta.node.len().min(255)];
    let key = meta
        .auth_key
        .map_or(&[][..], |k| &k.as_bytes()[..k.len().min(255)]);
    let mut f = Fixed {
        buf: [0; 160],
        len: 6,
    };
    f.buf[..6].copy_from_slice(b"HEP3\0\0");
    let (src_ip, dst_ip) = (meta.src.ip().to_canonical(), meta.dst.ip().to_canonical());
    match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.put(chunk::IP_FAMILY, [AF_INET]);
            f.put(chunk::IP_PROTO, [proto(meta.transport)]);
            f.put(chunk::IPV4_SRC, s.octets());
            f.put(chunk::IPV4_DST, d.octets());
        }
        (s, d) => {
            f.put(chunk::IP_FAMILY, [AF_INET6]);
            f.put(chunk::IP_PROTO, [proto(meta.transport)]);
            f.put(chunk::IPV6_SRC, v6(s).octets());
            f.put(chunk::IPV6_DST, v6(d).octets());
        }
    }
    f.put(chunk::SRC_PORT, meta.src.port().to_be_bytes());
    f.put(chunk::DST_PORT, meta.dst.port().to_be_bytes());
    let since = meta.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(since.as_secs()).unwrap_or(u32::MAX);
    f.put(chunk::TS_SEC, secs.to_be_bytes());
    f.put(chunk::TS_USEC, since.subsec_micros().to_be_bytes());
    f.put(chunk::PROTO_TYPE, [PROTO_SIP]);
    f.put(chunk::CAPTURE_ID, meta.capture_id.to_be_bytes());
    out.reserve(f.len + 3 * (6 + 255) + 6 + payload.len());
    out.extend_from_slice(&f.buf[..f.len]);
    if !key.is_empty() {
        put(out, chunk::AUTH_KEY, key);
    }
    if !correlation.is_empty() {
        put(out, chunk::CORRELATION_ID, correlation);
    }
    if !node.is_empty() {
        put(out, chunk::NODE_NAME, node);
    }
    if out.len() + 6 + payload.len() > usize::from(u16::MAX) {
        return false;
    }
    put(out, chunk::PAYLOAD, payload);
    let total = u16::try_from(out.len()).unwrap_or(u16::MAX).to_be_bytes();
    out[4..6].copy_from_slice(&total);
    true
}

fn proto(t: Transport) -> u8 {
    match t {
        Transport::Udp => 17,
        _ => 6,
    }
}

/// Why a packet was not handed to a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Handed to the socket or the TCP writer's queue.
    Queued,
    /// Dropped: socket buffer or queue full, or the socket failed.
    Dropped,
}

/// The way to one collector.
pub enum HepSender {
    /// A non-blocking UDP socket connected to the collector.
    Udp {
        /// The socket.
        sock: std::net::UdpSocket,
    },
    /// The queue of a TCP writer task.
    Tcp(mpsc::Sender<Bytes>),
}

/// Packets queued per TCP collector.
const TCP_QUEUE: usize = 8192;
/// Packets written to a TCP collector at once, at most.
const TCP_BATCH: usize = 256;

impl HepSender {
    /// Opens the way to `c` (spawning the TCP writer task on the current runtime).
    pub fn open(c: Collector) -> std::io::Result<HepSender> {
        match c.transport {
            Transport::Tcp => {
                let (tx, rx) = mpsc::channel(TCP_QUEUE);
                tokio::spawn(tcp_writer(c.address, rx));
                Ok(HepSender::Tcp(tx))
            }
            _ => {
                let any: SocketAddr = if c.address.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let sock = std::net::UdpSocket::bind(any)?;
                sock.set_nonblocking(true)?;
                // Connected: the kernel resolves the route once, not per packet.
                sock.connect(c.address)?;
                Ok(HepSender::Udp { sock })
            }
        }
    }

    /// Sends one packet without waiting.
    pub fn send(&self, packet: &[u8]) -> SendOutcome {
        match self {
            HepSender::Udp { sock } => match sock.send(packet) {
                Ok(_) => SendOutcome::Queued,
                Err(_) => SendOutcome::Dropped,
            },
            HepSender::Tcp(tx) => match tx.try_send(Bytes::copy_from_slice(packet)) {
                Ok(()) => SendOutcome::Queued,
                Err(_) => SendOutcome::Dropped,
            },
        }
    }
}

/// Writes queued packets to a TCP collector, reconnecting with backoff (1 s doubling to 30 s).
/// Packets queued while disconnected wait in the bounded queue; overflow is the sender's drop.
async fn tcp_writer(to: SocketAddr, mut rx: mpsc::Receiver<Bytes>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let conn =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(to)).await;
        let mut stream = match conn {
            Ok(Ok(s)) => {
                backoff = Duration::from_secs(1);
                s
            }
            _ => {
                tracing::debug!(%to, "hep collector unreachable");
                if rx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // What is queued goes out in one write: one syscall per batch, not per packet.
        let (mut batch, mut buf) = (Vec::with_capacity(TCP_BATCH), Vec::new());
        while rx.recv_many(&mut batch, TCP_BATCH).await > 0 {
            buf.clear();
            for p in batch.drain(..) {
                buf.extend_from_slice(&p);
            }
            let write = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&buf)).await;
            if !matches!(write, Ok(Ok(()))) {
                tracing::debug!(%to, "hep collector connection lost");
                break;
            }
        }
        if rx.is_closed() && rx.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(p: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        let mut v = Vec::new();
        let mut i = 6;
        while i < p.len() {
            let vendor = u16::from_be_bytes([p[i], p[i + 1]]);
            let kind = u16::from_be_bytes([p[i + 2], p[i + 3]]);
            let len = usize::from(u16::from_be_bytes([p[i + 4], p[i + 5]]));
            assert!(len >= 6 && i + len <= p.len(), "chunk at {i} overruns");
            v.push((vendor, kind, p[i + 6..i + len].to_vec()));
            i += len;
        }
        v
    }

    #[test]
    fn ipv4_packet_layout() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000);
        let meta = HepMeta {
            src: "192.0.2.1:5060".parse().unwrap(),
            dst: "127.0.0.1:5070".parse().unwrap(),
            transport: Transport::Udp,
            at,
            capture_id: 2001,
            auth_key: Some("k"),
            correlation: b"abc@x",
            node: "sbc-0",
        };
        let mut out = Vec::new();
        assert!(encode(&meta, b"OPTIONS sip:x SIP/2.0\r\n\r\n", &mut out));
        assert_eq!(&out[..4], b"HEP3");
        assert_eq!(usize::from(u16::from_be_bytes([out[4], out[5]])), out.len());
        let c = chunks(&out);
        let get = |k: u16| c.iter().find(|x| x.1 == k).map(|x| x.2.clone()).unwrap();
        assert!(c.iter().all(|x| x.0 == 0), "vendor 0 everywhere");
        assert_eq!(get(1), vec![2]);
        assert_eq!(get(2), vec![17]);
        assert_eq!(get(3), vec![192, 0, 2, 1]);
        assert_eq!(get(4), vec![127, 0, 0, 1]);
        assert_eq!(get(7), 5060u16.to_be_bytes());
        assert_eq!(get(8), 5070u16.to_be_bytes());
        assert_eq!(get(9), 1_700_000_000u32.to_be_bytes());
        assert_eq!(get(0x0a), 123_456u32.to_be_bytes());
        assert_eq!(get(0x0b), vec![1]);
        assert_eq!(get(0x0c), 2001u32.to_be_bytes());
        assert_eq!(get(0x0e), b"k");
        assert_eq!(get(0x11), b"abc@x");
        assert_eq!(get(0x13), b"sbc-0");
        assert_eq!(c.last().unwrap().1, 0x0f, "payload last");
        assert_eq!(get(0x0f), b"OPTIONS sip:x SIP/2.0\r\n\r\n");
    }

    #[test]
    fn mixed_families_become_ipv6_and_tcp_is_proto_6() {
        let meta = HepMeta {
            src: "[2001:db8::1]:5061".parse().unwrap(),
            dst: "127.0.0.1:5060".parse().unwrap(),
            transport: Transport::Tls,
            at: UNIX_EPOCH,
            capture_id: 1,
            auth_key: None,
            correlation: b"",
            node: "",
        };
        let mut out = Vec::new();
        assert!(encode(&meta, b"x", &mut out));
        let c = chunks(&out);
        let kinds: Vec<u16> = c.iter().map(|x| x.1).collect();
        assert_eq!(kinds, vec![1, 2, 5, 6, 7, 8, 9, 0x0a, 0x0b, 0x0c, 0x0f]);
        assert_eq!(c[0].2, vec![10]);
        assert_eq!(c[1].2, vec![6]);
        assert_eq!(c[3].2.len(), 16);
    }

    #[test]
    fn oversized_payload_is_refused() {
        let meta = HepMeta {
            src: "127.0.0.1:1".parse().unwrap(),
            dst: "127.0.0.1:2".parse().unwrap(),
            transport: Transport::Udp,
            at: UNIX_EPOCH,
            capture_id: 1,
            auth_key: None,
            correlation: b"",
            node: "",
        };
        let mut out = Vec::new();
        assert!(!encode(&meta, &vec![b'a'; 65_535], &mut out));
    }
}
