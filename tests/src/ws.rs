//! A raw WebSocket client over a blocking TCP stream, so a test can write exactly the bytes it
//! wants (well-formed frames, or the RFC 6455 violations a listener must close on) and read the
//! server's frames as they are.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::sip::SipResponse;

/// Frame opcodes (RFC 6455 section 5.2).
pub mod op {
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Binary frame.
    pub const BINARY: u8 = 0x2;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// One frame read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN, RSV1-3 and opcode, the first byte as sent.
    pub head: u8,
    /// The payload (unmasked).
    pub payload: Vec<u8>,
}

impl Frame {
    /// The opcode.
    pub fn opcode(&self) -> u8 {
        self.head & 0x0f
    }

    /// The status code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode() == op::CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// The head of the server's answer to an upgrade request.
#[derive(Debug, Clone)]
pub struct HttpHead {
    /// Status code (`101`, `426`, ...).
    pub status: u16,
    /// The whole head and whatever body arrived with it, as text.
    pub text: String,
}

/// One WebSocket connection from the test.
#[derive(Debug)]
pub struct WsClient {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// A valid upgrade request for `addr` asking for `protocol` (none: no
/// `Sec-WebSocket-Protocol` header).
pub fn upgrade_request(addr: SocketAddr, path: &str, protocol: Option<&str>) -> String {
    let proto = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{proto}\r\n"
    )
}

/// Sends `request` on a new connection to `addr` and reads the HTTP answer's head (and the
/// body that came with it, until the server closes or 2 s pass); `None` when nothing came.
pub fn http_exchange(addr: SocketAddr, request: &str) -> Option<HttpHead> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 65536 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_head(&buf)
}

fn parse_head(buf: &[u8]) -> Option<HttpHead> {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse::<u16>()
        .ok()?;
    Some(HttpHead { status, text })
}

impl WsClient {
    /// Connects to `addr` and upgrades with `Sec-WebSocket-Protocol: sip`; panics unless the
    /// answer is `101` naming `sip`.
    pub fn connect(addr: SocketAddr) -> WsClient {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect ws {addr}: {e}"));
        stream
            .write_all(upgrade_request(addr, "/", Some("sip")).as_bytes())
            .expect("send upgrade");
        let mut c = WsClient {
            stream,
            pending: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let end = loop {
            if let Some(i) = c.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                Instant::now() < deadline && c.fill(deadline),
                "no upgrade answer from {addr}: {:?}",
                String::from_utf8_lossy(&c.pending)
            );
        };
        let head = parse_head(&c.pending[..end]).expect("an HTTP answer");
        assert_eq!(head.status, 101, "upgrade refused: {}", head.text);
        assert!(
            head.text
                .to_ascii_lowercase()
                .contains("sec-websocket-protocol: sip"),
            "101 without the sip subprotocol: {}",
            head.text
        );
        c.pending.drain(..end);
        c
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed: a later read tells the test what happened.
        let _ = self.stream.write_all(bytes);
    }

    /// Writes one frame: `head` is the first byte (FIN, RSV, opcode), masked with a fixed key
    /// when `masked` (clients must mask).
    pub fn send_frame(&mut self, head: u8, payload: &[u8], masked: bool) {
        self.send_raw(&encode_frame(head, payload, masked));
    }

    /// Sends `text` as one masked text frame.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(0x80 | op::TEXT, text.as_bytes(), true);
    }

    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = self.stream.set_read_timeout(Some(left));
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next frame from the server within `timeout`; `None` on timeout or a closed
    /// connection.
    pub fn read_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = decode_frame(&self.pending) {
                self.pending.drain(..used);
                return Some(frame);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Reads frames until a close frame and returns its code (`None`: the connection ended,
    /// or `timeout` passed, without one).
    pub fn read_close_code(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.read_frame(left)?;
            if f.opcode() == op::CLOSE {
                return f.close_code();
            }
        }
    }

    /// Whether the server ended the TCP connection (read returns 0) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let _ = self.stream.set_read_timeout(Some(timeout));
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends a SIP request as a text frame and returns the first final response to it
    /// within `timeout` (pings are answered; other frames skipped).
    pub fn sip_request(&mut self, request: &[u8], timeout: Duration) -> Option<SipResponse> {
        self.send_frame(0x80 | op::TEXT, request, true);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.read_frame(left)?;
            match f.opcode() {
                op::PING => self.send_frame(0x80 | op::PONG, &f.payload, true),
                op::TEXT | op::BINARY => {
                    if let Some(r) = SipResponse::parse(&f.payload)
                        && r.code >= 200
                    {
                        return Some(r);
                    }
                }
                op::CLOSE => return None,
                _ => {}
            }
        }
    }
}

/// Encodes one frame (lengths up to 64 bits as RFC 6455 section 5.2 writes them).
pub fn encode_frame(head: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![head];
    let mask_bit = if masked { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        out.push(mask_bit | n as u8);
    } else if n <= 0xffff {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Decodes one server frame (unmasked, as servers send) from the front of `buf`.
fn decode_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    let head = *buf.first()?;
    let b1 = *buf.get(1)?;
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let len = usize::try_from(len).ok()?;
    let mut payload = buf.get(at..at.checked_add(len)?)?.to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((Frame { head, payload }, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        for n in [0usize, 5, 125, 126, 70_000] {
            let payload = vec![b'x'; n];
            let bytes = encode_frame(0x81, &payload, false);
            let (f, used) = decode_frame(&bytes).expect("decodes");
            assert_eq!((f.payload.len(), used), (n, bytes.len()));
            let masked = encode_frame(0x81, &payload, true);
            assert_eq!(decode_frame(&masked).expect("decodes").0.payload, payload);
        }
        let close = Frame {
            head: 0x88,
            payload: vec![0x03, 0xea, b'x'],
        };
        assert_eq!(close.close_code(), Some(1002));
        assert_eq!(decode_frame(&[0x81]), None);
    }
}
