//! What the observer reads off a message without parsing it: the start line, the Call-ID,
//! the CSeq method, To and From. HEP needs the first three; the CDR tracker needs no more than
//! all of them; and they tell which few messages of a call the trackers act on (the INVITE,
//! its final answer, the BYE and its 200, REGISTER and its answer). A full parse of those cost
//! more than the call itself (bench/README.md), so only REGISTER and its answer are parsed.
//!
//! One pass over the header lines; a line whose first byte cannot start a name we want is
//! skipped without looking for its colon.

use memchr::memchr;

use crate::telemetry::Direction;

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First<'a> {
    /// A request: its method token and Request-URI.
    Request {
        /// The method token.
        method: &'a [u8],
        /// The Request-URI.
        uri: &'a [u8],
    },
    /// A response: its status code and reason phrase.
    Response {
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: &'a [u8],
    },
}

/// A message's start line and the header values the observer reads, by one scan of its
/// header lines. A value that is absent is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniff<'a> {
    /// Request or response.
    pub first: First<'a>,
    /// The Call-ID's value, trimmed.
    pub call_id: &'a [u8],
    /// The CSeq's method.
    pub cseq_method: &'a [u8],
    /// The To value, trimmed (first To header).
    pub to: &'a [u8],
    /// The From value, trimmed (first From header).
    pub from: &'a [u8],
}

/// Header lines looked at, at most; a message with more is a parser's job, not ours.
const MAX_LINES: usize = 160;

/// Reads a message's start line and its Call-ID, CSeq method, To and From; `None` when the
/// start line is not SIP's.
pub fn sniff(data: &[u8]) -> Option<Sniff<'_>> {
    let (line, rest) = split_line(data);
    let first = first_line(line)?;
    let mut s = Sniff {
        first,
        call_id: b"",
        cseq_method: b"",
        to: b"",
        from: b"",
    };
    let mut cseq = false;
    for (name, value) in HeaderLines::new(rest, |b| matches!(b | 0x20, b'c' | b'i' | b't' | b'f')) {
        match name.len() {
            1 => match name[0] | 0x20 {
                b'i' if s.call_id.is_empty() => s.call_id = value,
                b't' if s.to.is_empty() => s.to = value,
                b'f' if s.from.is_empty() => s.from = value,
                _ => {}
            },
            2 if s.to.is_empty() && name.eq_ignore_ascii_case(b"to") => s.to = value,
            4 if !cseq && name.eq_ignore_ascii_case(b"cseq") => {
                cseq = true;
                s.cseq_method = value
                    .split(|b| b.is_ascii_whitespace())
                    .filter(|t| !t.is_empty())
                    .nth(1)
                    .unwrap_or(b"");
            }
            4 if s.from.is_empty() && name.eq_ignore_ascii_case(b"from") => s.from = value,
            7 if s.call_id.is_empty() && name.eq_ignore_ascii_case(b"call-id") => s.call_id = value,
            _ => {}
        }
        if !s.call_id.is_empty() && cseq && !s.to.is_empty() && !s.from.is_empty() {
            break;
        }
    }
    Some(s)
}

/// The first value of the header `name` (case-insensitive, full names only), trimmed.
pub fn header<'a>(data: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let lead = *name.first()? | 0x20;
    let (_, rest) = split_line(data);
    HeaderLines::new(rest, |b| b | 0x20 == lead)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

impl Sniff<'_> {
    /// The method HEP's filter matches: a request's own, a response's CSeq method.
    pub fn method(&self) -> &[u8] {
        match self.first {
            First::Request { method, .. } => method,
            First::Response { .. } => self.cseq_method,
        }
    }

    /// Whether the dialog or registration trackers act on this message (see
    /// `CdrTracker::on_message` and `RegistrationTracker::on_message`).
    pub fn tracked(&self, dir: Direction) -> bool {
        match (self.first, dir) {
            (First::Request { method: m, .. }, Direction::In) => {
                m == b"INVITE" || m == b"BYE" || m == b"REGISTER"
            }
            (First::Request { method: m, .. }, Direction::Out) => m == b"INVITE",
            (First::Response { code, .. }, dir) => match self.cseq_method {
                b"BYE" => (200..300).contains(&code),
                b"INVITE" => dir == Direction::Out && code >= 180,
                b"REGISTER" => dir == Direction::Out && code >= 200,
                _ => false,
            },
        }
    }
}

/// The header lines of a message (after its start line), as trimmed `(name, value)` pairs,
/// up to the blank line and at most [`MAX_LINES`] of them. Lines whose first byte `wanted`
/// refuses, and lines with no colon, are passed over unread. One `memchr` iterator finds the
/// line ends: a fresh search per line cost more than the lines themselves.
struct HeaderLines<'a, F> {
    data: &'a [u8],
    ends: memchr::Memchr<'a>,
    start: usize,
    left: usize,
    wanted: F,
}

impl<'a, F: Fn(u8) -> bool> HeaderLines<'a, F> {
    fn new(data: &'a [u8], wanted: F) -> Self {
        HeaderLines {
            data,
            ends: memchr::memchr_iter(b'\n', data),
            start: 0,
            left: MAX_LINES,
            wanted,
        }
    }
}

impl<'a, F: Fn(u8) -> bool> Iterator for HeaderLines<'a, F> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 && self.start < self.data.len() {
            self.left -= 1;
            let end = self.ends.next().unwrap_or(self.data.len());
            let line = &self.data[self.start..end];
            self.start = end + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(&lead) = line.first() else {
                // The blank line: the body is not ours to read.
                self.start = self.data.len();
                return None;
            };
            if !(self.wanted)(lead) {
                continue;
            }
            if let Some(colon) = memchr(b':', line) {
                return Some((trim(&line[..colon]), trim(&line[colon + 1..])));
            }
        }
        None
    }
}

/// One line without its CRLF (or LF), and what follows it.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match memchr(b'\n', data) {
        Some(i) => {
            let line = &data[..i];
            (line.strip_suffix(b"\r").unwrap_or(line), &data[i + 1..])
        }
        None => (data, b""),
    }
}

fn first_line(line: &[u8]) -> Option<First<'_>> {
    if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        let code = rest.get(..3)?;
        if !code.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        let reason = trim(rest.get(3..).unwrap_or(b""));
        return Some(First::Response { code, reason });
    }
    let sp = memchr(b' ', line)?;
    let method = &line[..sp];
    let uri = line[sp + 1..].strip_suffix(b" SIP/2.0")?;
    if method.is_empty() || uri.is_empty() {
        return None;
    }
    Some(First::Request { method, uri })
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:100@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
To: <sip:100@example.com>\r\n\
From: <sip:200@example.com>;tag=a\r\n\
call-id:  abc@host \r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn a_request_gives_its_method_call_id_and_cseq_method() {
        let s = sniff(INVITE).expect("sip");
        assert_eq!(
            s.first,
            First::Request {
                method: b"INVITE",
                uri: b"sip:100@example.com"
            }
        );
        assert_eq!(s.to, b"<sip:100@example.com>");
        assert_eq!(s.from, b"<sip:200@example.com>;tag=a");
        assert_eq!(s.call_id, b"abc@host");
        assert_eq!(s.cseq_method, b"INVITE");
        assert_eq!(s.method(), b"INVITE");
        assert!(s.tracked(Direction::In));
        assert!(s.tracked(Direction::Out));
    }

    #[test]
    fn compact_names_and_a_response() {
        let m = b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\ni: x1\r\nCSEQ:  7   INVITE\r\n\r\n";
        let s = sniff(m).expect("sip");
        assert_eq!(
            s.first,
            First::Response {
                code: 180,
                reason: b"Ringing"
            }
        );
        assert_eq!(s.call_id, b"x1");
        assert_eq!(s.method(), b"INVITE");
        assert!(s.tracked(Direction::Out), "the caller saw 180: setup time");
        assert!(
            !s.tracked(Direction::In),
            "the backend's 180 is not what the caller saw"
        );
    }

    #[test]
    fn only_the_messages_the_trackers_use_are_tracked() {
        let resp = |code: &str, method: &str| {
            format!("SIP/2.0 {code} X\r\nCall-ID: c\r\nCSeq: 2 {method}\r\n\r\n").into_bytes()
        };
        let t = |m: &[u8], d| sniff(m).expect("sip").tracked(d);
        assert!(!t(&resp("100", "INVITE"), Direction::Out));
        assert!(t(&resp("200", "INVITE"), Direction::Out));
        assert!(t(&resp("200", "BYE"), Direction::In));
        assert!(!t(&resp("481", "BYE"), Direction::In));
        assert!(t(&resp("401", "REGISTER"), Direction::Out));
        assert!(!t(&resp("200", "OPTIONS"), Direction::Out));
        let ack = b"ACK sip:a@b SIP/2.0\r\nCall-ID: c\r\nCSeq: 1 ACK\r\n\r\n";
        assert!(!t(ack, Direction::In));
        let bye = b"BYE sip:a@b SIP/2.0\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\r\n";
        assert!(t(bye, Direction::In));
        assert!(!t(bye, Direction::Out));
    }

    #[test]
    fn compact_to_and_from_and_a_header_by_name() {
        let m = b"BYE sip:a@b SIP/2.0\r\nf: <sip:x@y>;tag=1\r\n t: folded\r\nt:<sip:a@b>;tag=2\r\nX-Tenant-ID:  acme \r\nx-tenant-id: second\r\ni: c\r\nCSeq: 2 BYE\r\n\r\nX-Tenant-ID: body\r\n";
        let s = sniff(m).expect("sip");
        assert_eq!(s.from, b"<sip:x@y>;tag=1");
        assert_eq!(s.to, b"<sip:a@b>;tag=2", "a folded line is not a header");
        assert_eq!(
            header(m, b"X-Tenant-ID"),
            Some(&b"acme"[..]),
            "the first one"
        );
        assert_eq!(header(m, b"X-Other"), None);
        assert_eq!(
            header(b"SIP/2.0 200 OK\r\n\r\nX-Other: body", b"X-Other"),
            None
        );
    }

    #[test]
    fn a_response_keeps_its_reason_and_a_request_its_uri() {
        let s = sniff(b"SIP/2.0 486 Busy Here\r\n\r\n").expect("sip");
        assert_eq!(
            s.first,
            First::Response {
                code: 486,
                reason: b"Busy Here"
            }
        );
        assert_eq!(sniff(b"INVITE  SIP/2.0\r\n\r\n"), None, "no Request-URI");
    }

    #[test]
    fn not_sip_and_odd_input_are_refused_or_bounded() {
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"\r\n\r\n"), None);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(sniff(b"SIP/2.0 2x0 Bad\r\n"), None);
        let s = sniff(b"OPTIONS sip:a SIP/2.0\r\nno colon here\r\nCall-ID\r\n").expect("sip");
        assert_eq!((s.call_id, s.cseq_method), (&b""[..], &b""[..]));
        // The body is not read: a Call-ID in it is not the message's.
        let s = sniff(b"MESSAGE sip:a SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\nCall-ID: body\r\n")
            .expect("sip");
        assert_eq!(s.call_id, b"");
    }
}
