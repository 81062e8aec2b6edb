//! What the observer reads off a message without parsing it: the start line, the Call-ID and
//! the CSeq method. HEP needs no more than that, and it tells which few messages of a call the
//! trackers must parse in full (the INVITE, its final answer, the BYE and its 200, REGISTER and
//! its answer): parsing all of them cost more than the call itself (bench/README.md).

use memchr::memchr;

use crate::telemetry::Direction;

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First<'a> {
    /// A request and its method token.
    Request(&'a [u8]),
    /// A response and its status code.
    Response(u16),
}

/// A message's start line, Call-ID and CSeq method, read by one scan of its header lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniff<'a> {
    /// Request or response.
    pub first: First<'a>,
    /// The Call-ID's value, trimmed; empty when there is none.
    pub call_id: &'a [u8],
    /// The CSeq's method; empty when there is none.
    pub cseq_method: &'a [u8],
}

/// Header lines looked at, at most; a message with more is a parser's job, not ours.
const MAX_LINES: usize = 160;

/// Reads a message's start line, Call-ID and CSeq method; `None` when the start line is not
/// SIP's.
pub fn sniff(data: &[u8]) -> Option<Sniff<'_>> {
    let (line, mut rest) = split_line(data);
    let first = first_line(line)?;
    let mut s = Sniff {
        first,
        call_id: b"",
        cseq_method: b"",
    };
    for _ in 0..MAX_LINES {
        if rest.is_empty() {
            break;
        }
        let (line, next) = split_line(rest);
        rest = next;
        if line.is_empty() {
            break;
        }
        let Some(colon) = memchr(b':', line) else {
            continue;
        };
        let name = trim(&line[..colon]);
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
            s.call_id = value;
        } else if name.eq_ignore_ascii_case(b"cseq") {
            s.cseq_method = value
                .split(|b| b.is_ascii_whitespace())
                .filter(|t| !t.is_empty())
                .nth(1)
                .unwrap_or(b"");
        }
        if !s.call_id.is_empty() && !s.cseq_method.is_empty() {
            break;
        }
    }
    Some(s)
}

impl Sniff<'_> {
    /// The method HEP's filter matches: a request's own, a response's CSeq method.
    pub fn method(&self) -> &[u8] {
        match self.first {
            First::Request(m) => m,
            First::Response(_) => self.cseq_method,
        }
    }

    /// Whether the dialog or registration trackers act on this message (see
    /// `CdrTracker::on_message` and `RegistrationTracker::on_message`): only those are parsed.
    pub fn tracked(&self, dir: Direction) -> bool {
        match (self.first, dir) {
            (First::Request(m), Direction::In) => m == b"INVITE" || m == b"BYE" || m == b"REGISTER",
            (First::Request(m), Direction::Out) => m == b"INVITE",
            (First::Response(code), dir) => match self.cseq_method {
                b"BYE" => (200..300).contains(&code),
                b"INVITE" => dir == Direction::Out && code >= 180,
                b"REGISTER" => dir == Direction::Out && code >= 200,
                _ => false,
            },
        }
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
        return Some(First::Response(code));
    }
    let sp = memchr(b' ', line)?;
    let method = &line[..sp];
    if method.is_empty() || !line.ends_with(b" SIP/2.0") {
        return None;
    }
    Some(First::Request(method))
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
        assert_eq!(s.first, First::Request(b"INVITE"));
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
        assert_eq!(s.first, First::Response(180));
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
