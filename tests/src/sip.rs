//! A raw SIP client over UDP and TCP: send exact bytes, read responses. For the tests that
//! send malformed requests and check status lines, and for hand-made INVITE/CANCEL exchanges.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::LOOPBACK;

/// A parsed SIP response.
#[derive(Debug, Clone)]
pub struct SipResponse {
    /// The whole status line, `SIP/2.0 400 Missing Call-ID`.
    pub status_line: String,
    /// The status code.
    pub code: u16,
    /// The reason phrase (`Missing Call-ID`).
    pub reason: String,
    /// Headers in order, names as received.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl SipResponse {
    /// Parses one message; `None` if it is not a response.
    pub fn parse(bytes: &[u8]) -> Option<SipResponse> {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = match text.split_once("\r\n\r\n") {
            Some((h, b)) => (h, b),
            None => (text.as_ref(), ""),
        };
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?.trim_end().to_owned();
        let rest = status_line.strip_prefix("SIP/2.0 ")?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code = code.parse().ok()?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Some(SipResponse {
            code,
            reason: reason.to_owned(),
            status_line,
            headers,
            body: body.to_owned(),
        })
    }

    /// The first value of header `name` (case-insensitive; compact forms not expanded).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A fresh token for Call-IDs, tags and branches.
pub fn token() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastish_nanos()
    )
}

fn fastish_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A client over UDP (one socket) or TCP (one connection).
#[derive(Debug)]
pub enum SipClient {
    /// Datagrams from one bound socket.
    Udp {
        /// The socket, bound to 127.0.0.1:0.
        socket: UdpSocket,
        /// Where requests go.
        target: SocketAddr,
    },
    /// One connection; responses framed by Content-Length.
    Tcp {
        /// The connection.
        stream: TcpStream,
        /// Bytes read but not yet returned.
        pending: Vec<u8>,
    },
}

impl SipClient {
    /// A UDP client sending to `target`, from 127.0.0.1 or from ::1 for an IPv6 target.
    pub fn udp(target: SocketAddr) -> SipClient {
        let local: std::net::IpAddr = if target.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            LOOPBACK.into()
        };
        let socket = UdpSocket::bind((local, 0)).expect("bind udp client");
        SipClient::Udp { socket, target }
    }

    /// A UDP client sending to `target` from `local_ip` (another loopback address, such as
    /// 127.0.0.2, so that the proxy sees a different source).
    pub fn udp_from(local_ip: std::net::Ipv4Addr, target: SocketAddr) -> SipClient {
        assert!(local_ip.is_loopback(), "only loopback sources");
        let socket = UdpSocket::bind((local_ip, 0)).expect("bind udp client");
        SipClient::Udp { socket, target }
    }

    /// A TCP client connected to `target`.
    pub fn tcp(target: SocketAddr) -> SipClient {
        let stream = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect tcp {target}: {e}"));
        SipClient::Tcp {
            stream,
            pending: Vec::new(),
        }
    }

    /// A TCP client connected to `target` from `local_ip` (another loopback address: another
    /// source for the proxy's per-source limits).
    pub fn tcp_from(local_ip: std::net::Ipv4Addr, target: SocketAddr) -> SipClient {
        assert!(local_ip.is_loopback(), "only loopback sources");
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("tcp socket");
        sock.bind(&SocketAddr::from((local_ip, 0)).into())
            .expect("bind tcp client");
        sock.connect_timeout(&target.into(), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect tcp {target} from {local_ip}: {e}"));
        SipClient::Tcp {
            stream: sock.into(),
            pending: Vec::new(),
        }
    }

    /// Our local address (`127.0.0.1:PORT`), to put in Via and Contact.
    pub fn local_addr(&self) -> SocketAddr {
        match self {
            SipClient::Udp { socket, .. } => socket.local_addr(),
            SipClient::Tcp { stream, .. } => stream.local_addr(),
        }
        .expect("local addr")
    }

    /// `UDP` or `TCP`, for Via.
    pub fn via_transport(&self) -> &'static str {
        match self {
            SipClient::Udp { .. } => "UDP",
            SipClient::Tcp { .. } => "TCP",
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        match self {
            SipClient::Udp { socket, target } => {
                socket.send_to(bytes, *target).expect("udp send");
            }
            SipClient::Tcp { stream, .. } => stream.write_all(bytes).expect("tcp send"),
        }
    }

    /// Reads the next response within `timeout`; `None` on timeout or closed connection.
    /// Requests that arrive (none are expected) are skipped.
    pub fn recv(&mut self, timeout: Duration) -> Option<SipResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let msg = self.recv_message(left.max(Duration::from_millis(1)))?;
            if let Some(r) = SipResponse::parse(&msg) {
                return Some(r);
            }
        }
    }

    /// Reads responses until a final one (>= 200) arrives within `timeout`.
    pub fn recv_final(&mut self, timeout: Duration) -> Option<SipResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let r = self.recv(left)?;
            if r.code >= 200 {
                return Some(r);
            }
        }
    }

    /// Reads the next request within `timeout` (responses that arrive are skipped), as text.
    pub fn recv_request(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let msg = self.recv_message(left.max(Duration::from_millis(1)))?;
            if !msg.starts_with(b"SIP/2.0 ") {
                return Some(String::from_utf8_lossy(&msg).into_owned());
            }
        }
    }

    /// Reads responses until the final one of the transaction `call_id` + `cseq` (such as
    /// `2 BYE`) arrives within `timeout`; other responses are skipped.
    pub fn recv_final_of(
        &mut self,
        call_id: &str,
        cseq: &str,
        timeout: Duration,
    ) -> Option<SipResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let r = self.recv(left)?;
            if r.code >= 200
                && r.header("Call-ID") == Some(call_id)
                && r.header("CSeq") == Some(cseq)
            {
                return Some(r);
            }
        }
    }

    /// Sends raw bytes to `to` rather than the target (UDP only: a response to a request
    /// goes to its top Via).
    pub fn send_to(&mut self, bytes: &[u8], to: SocketAddr) {
        match self {
            SipClient::Udp { socket, .. } => {
                socket.send_to(bytes, to).expect("udp send");
            }
            SipClient::Tcp { .. } => panic!("send_to is for UDP clients"),
        }
    }

    /// Sends `bytes` and waits for the final response.
    pub fn request(&mut self, bytes: &[u8], timeout: Duration) -> Option<SipResponse> {
        self.send(bytes);
        self.recv_final(timeout)
    }

    fn recv_message(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        match self {
            SipClient::Udp { socket, .. } => {
                socket.set_read_timeout(Some(timeout)).ok()?;
                let mut buf = vec![0u8; 65_536];
                let n = socket.recv(&mut buf).ok()?;
                buf.truncate(n);
                Some(buf)
            }
            SipClient::Tcp { stream, pending } => {
                let deadline = Instant::now() + timeout;
                loop {
                    // Drop keep-alive CRLFs between messages.
                    while pending.first().is_some_and(|b| *b == b'\r' || *b == b'\n') {
                        pending.remove(0);
                    }
                    if let Some(len) = framed_len(pending) {
                        return Some(pending.drain(..len).collect());
                    }
                    if pending.len() > 1 << 20 {
                        return None;
                    }
                    let left = deadline.checked_duration_since(Instant::now())?;
                    stream
                        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                        .ok()?;
                    let mut buf = [0u8; 8192];
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => pending.extend_from_slice(buf.get(..n)?),
                    }
                }
            }
        }
    }
}

/// Length of the first complete message in a stream buffer, framed by Content-Length.
fn framed_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(buf.get(..end)?);
    let body_len = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| {
            let n = n.trim();
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("l")
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= end + body_len).then_some(end + body_len)
}

/// A well-formed request to start from; tests break one thing in it.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    /// Method.
    pub method: String,
    /// Request-URI.
    pub uri: String,
    /// SIP version token.
    pub version: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl RequestBuilder {
    /// A complete request from `client` addressed to `uri`, with fresh Call-ID, tag and branch.
    pub fn new(method: &str, uri: &str, client: &SipClient) -> RequestBuilder {
        let local = client.local_addr();
        let t = token();
        let headers = vec![
            (
                "Via".to_owned(),
                format!(
                    "SIP/2.0/{} {local};branch=z9hG4bK{t};rport",
                    client.via_transport()
                ),
            ),
            ("Max-Forwards".to_owned(), "70".to_owned()),
            ("From".to_owned(), format!("<sip:e2e@{local}>;tag=f{t}")),
            ("To".to_owned(), format!("<{uri}>")),
            ("Call-ID".to_owned(), format!("c{t}@e2e")),
            ("CSeq".to_owned(), format!("1 {method}")),
            ("Contact".to_owned(), format!("<sip:e2e@{local}>")),
        ];
        RequestBuilder {
            method: method.to_owned(),
            uri: uri.to_owned(),
            version: "SIP/2.0".to_owned(),
            headers,
            body: String::new(),
        }
    }

    /// An INVITE with an SDP offer.
    pub fn invite(uri: &str, client: &SipClient) -> RequestBuilder {
        let mut r =
            RequestBuilder::new("INVITE", uri, client).set("Content-Type", "application/sdp");
        r.body = SDP.to_owned();
        r
    }

    /// The CANCEL of this request (same Request-URI, Call-ID, From, To, Via branch; RFC 3261 9.1).
    pub fn cancel(&self) -> RequestBuilder {
        let cseq = self.cseq_number();
        let mut r = self
            .clone()
            .remove("Content-Type")
            .remove("Contact")
            .set("CSeq", &format!("{cseq} CANCEL"));
        r.method = "CANCEL".to_owned();
        r.body.clear();
        r
    }

    /// The hop-by-hop ACK of this INVITE for a non-2xx final `response` (RFC 3261 17.1.1.3).
    pub fn ack(&self, response: &SipResponse) -> RequestBuilder {
        let cseq = self.cseq_number();
        let to = response.header("To").unwrap_or_default().to_owned();
        let mut r = self
            .clone()
            .remove("Content-Type")
            .remove("Contact")
            .set("To", &to)
            .set("CSeq", &format!("{cseq} ACK"));
        r.method = "ACK".to_owned();
        r.body.clear();
        r
    }

    fn cseq_number(&self) -> String {
        self.get("CSeq")
            .and_then(|c| c.split_whitespace().next())
            .unwrap_or("1")
            .to_owned()
    }

    /// Replaces header `name` (or appends it).
    pub fn set(mut self, name: &str, value: &str) -> Self {
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(h) => h.1 = value.to_owned(),
            None => self.headers.push((name.to_owned(), value.to_owned())),
        }
        self
    }

    /// Removes header `name`.
    pub fn remove(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    /// Value of header `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Serializes with a correct Content-Length unless one was set explicitly.
    pub fn build(&self) -> Vec<u8> {
        let mut s = format!("{} {} {}\r\n", self.method, self.uri, self.version);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if self.get("Content-Length").is_none() {
            s.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        s.push_str("\r\n");
        s.push_str(&self.body);
        s.into_bytes()
    }
}

/// The values of header `name` in the message text `msg`, in order (one per header line;
/// full names only).
pub fn header_values<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// The first value of header `name` in `msg`.
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    header_values(msg, name).into_iter().next()
}

/// Where a response to `req` goes: the sent-by of its top Via (RFC 3261 section 18.2.2,
/// IP literals only), its `rport` value when it has one.
pub fn top_via_addr(req: &str) -> Option<SocketAddr> {
    let via = header(req, "Via")?;
    let via = via.split(',').next()?;
    let (_, rest) = via.trim().split_once(' ')?;
    let mut parts = rest.split(';');
    let mut addr: SocketAddr = parts.next()?.trim().parse().ok()?;
    for p in parts {
        if let Some(port) = p.trim().strip_prefix("rport=").and_then(|v| v.parse().ok()) {
            addr.set_port(port);
        }
    }
    Some(addr)
}

/// A response to the request `req`: its Vias, Record-Routes, From, Call-ID and CSeq copied,
/// To with `to_tag` added unless it has a tag, and `contact` when given.
pub fn response_to(
    req: &str,
    code: u16,
    reason: &str,
    to_tag: &str,
    contact: Option<&str>,
) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for name in ["Via", "Record-Route"] {
        for v in header_values(req, name) {
            s.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    for name in ["From", "Call-ID", "CSeq"] {
        if let Some(v) = header(req, name) {
            s.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    let to = header(req, "To").unwrap_or_default();
    if to.contains(";tag=") {
        s.push_str(&format!("To: {to}\r\n"));
    } else {
        s.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    if let Some(c) = contact {
        s.push_str(&format!("Contact: {c}\r\n"));
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

/// A minimal SDP offer for INVITEs.
pub const SDP: &str = "v=0\r\no=e2e 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// Sends `OPTIONS sip:127.0.0.1:PORT` (addressed to the proxy itself) and returns the final
/// response, if any within `timeout`.
pub fn options_ping(target: SocketAddr, timeout: Duration) -> Option<SipResponse> {
    let mut c = SipClient::udp(target);
    let req = RequestBuilder::new("OPTIONS", &format!("sip:{target}"), &c).build();
    c.request(&req, timeout)
}

/// Sends one INVITE to `sip:service@TARGET` from a fresh UDP client and returns its final
/// response within `timeout`, ACKed when it is not a 2xx (as a UA does).
pub fn invite_once(target: SocketAddr, timeout: Duration) -> Option<SipResponse> {
    let mut client = SipClient::udp(target);
    let invite = RequestBuilder::invite(&format!("sip:service@{target}"), &client);
    let resp = client.request(&invite.build(), timeout)?;
    if resp.code >= 300 {
        client.send(&invite.ack(&resp).build());
    }
    Some(resp)
}

/// Sends `n` OPTIONS (each its own transaction) from `client` at once and counts the answers
/// that arrive, each within `wait` of the one before: how many a flood limit let through.
pub fn options_burst(client: &mut SipClient, n: usize, wait: Duration) -> usize {
    for _ in 0..n {
        let req = RequestBuilder::new("OPTIONS", "sip:burst@example.com", client);
        client.send(&req.build());
    }
    let mut answered = 0;
    while client.recv(wait).is_some() {
        answered += 1;
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_line_and_headers() {
        let r = SipResponse::parse(
            b"SIP/2.0 400 Missing Call-ID\r\nVia: x\r\nRetry-After: 5\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.code, 400);
        assert_eq!(r.reason, "Missing Call-ID");
        assert_eq!(r.header("retry-after"), Some("5"));
        assert!(SipResponse::parse(b"INVITE sip:a SIP/2.0\r\n\r\n").is_none());
    }

    #[test]
    fn frames_stream_by_content_length() {
        let b = b"SIP/2.0 200 OK\r\nContent-Length: 3\r\n\r\nabcSIP/2.0";
        assert_eq!(framed_len(b), Some(b.len() - 7));
        assert_eq!(
            framed_len(b"SIP/2.0 200 OK\r\nContent-Length: 9\r\n\r\nab"),
            None
        );
    }
}
