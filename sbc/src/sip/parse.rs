//! A zero-copy SIP parser: the message keeps its received bytes and records where the start
//! line, each header and the body are. A proxy touches a handful of headers (Via, Route,
//! Record-Route, Max-Forwards, Call-ID, CSeq, Content-Length), so nothing else is decoded.

use bytes::Bytes;
use memchr::{memchr, memchr2, memchr3};

use super::Method;
pub use super::header::{Header, HeaderName};
use super::header::{check_value, is_token};

/// Most headers a message may carry; more is refused as a denial-of-service attempt.
pub const MAX_HEADERS: usize = 128;

/// A byte range inside a message's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Messages are capped far below 4 GiB (64 KiB), so the casts cannot truncate.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The range as `usize` bounds.
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Whether the span is empty.
    pub fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD Request-URI SIP/2.0`
    Request {
        /// The method.
        method: Method,
        /// The method token as written (extension methods keep their name).
        method_span: Span,
        /// The Request-URI.
        uri: Span,
    },
    /// `SIP/2.0 CODE Reason`
    Response {
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: Span,
    },
}

/// Why a message could not be parsed. [`ParseError::response`] says how to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not a SIP start line at all: dropped, never answered.
    #[error("not a SIP message")]
    Garbage,
    /// The header block never ends.
    #[error("truncated header")]
    Truncated,
    /// A header line without a colon, or an empty name.
    #[error("malformed header line")]
    BadHeader,
    /// More than [`MAX_HEADERS`] headers.
    #[error("too many headers")]
    TooManyHeaders,
    /// A SIP version other than 2.0.
    #[error("unsupported SIP version")]
    BadVersion,
    /// Content-Length not a number, or larger than the datagram.
    #[error("bad Content-Length")]
    BadContentLength,
    /// A status line whose code is not three digits 100..699.
    #[error("bad status code")]
    BadStatus,
    /// The message exceeds the size limit.
    #[error("message too large")]
    TooLarge,
    /// A request whose syntax is broken in a way RFC 3261 and RFC 4475 say to refuse: the
    /// reason names it (`Whitespace in Request-URI`, `Multiple To Headers`,
    /// `Unterminated Quoted String in From`, `Control Character in Header`, ...).
    #[error("{0}")]
    Invalid(&'static str),
}

impl ParseError {
    /// The status and reason a request with this defect gets, or None when it is dropped.
    pub fn response(self) -> Option<(u16, &'static str)> {
        match self {
            ParseError::Garbage | ParseError::Truncated | ParseError::BadStatus => None,
            ParseError::BadHeader => Some((400, "Malformed Header")),
            ParseError::TooManyHeaders => Some((400, "Too Many Headers")),
            ParseError::BadVersion => Some((505, "Version Not Supported")),
            ParseError::BadContentLength => Some((400, "Bad Content-Length")),
            ParseError::TooLarge => Some((513, "Message Too Large")),
            ParseError::Invalid(reason) => Some((400, reason)),
        }
    }
}

/// A parsed SIP message over its received bytes.
#[derive(Debug, Clone)]
pub struct Message {
    buf: Bytes,
    /// The start line.
    pub start: StartLine,
    /// The start line's span including its terminator.
    pub start_line: Span,
    /// Every header in order.
    pub headers: Vec<Header>,
    /// Where the header block ends (the empty line's first byte).
    pub headers_end: usize,
    /// The body (Content-Length bytes, or the rest of a datagram without one).
    pub body: Span,
    /// Whether a Content-Length header was present.
    pub has_content_length: bool,
}

/// Finds the end of the header block: returns (index of the empty line, index after it).
pub fn find_headers_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        let nl = i + memchr(b'\n', &buf[i..])?;
        // The line that follows this `\n` is empty?
        let next = nl + 1;
        if buf.get(next) == Some(&b'\n') {
            return Some((next, next + 1));
        }
        if buf.get(next) == Some(&b'\r') && buf.get(next + 1) == Some(&b'\n') {
            return Some((next, next + 2));
        }
        i = next;
    }
    None
}

fn trim(buf: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && matches!(buf[s], b' ' | b'\t' | b'\r' | b'\n') {
        s += 1;
    }
    while e > s && matches!(buf[e - 1], b' ' | b'\t' | b'\r' | b'\n') {
        e -= 1;
    }
    (s, e)
}

/// Parses an unsigned decimal number of at most 9 digits.
pub fn parse_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

impl Message {
    /// Parses a whole message (a datagram, or a frame cut by the stream framer).
    /// Bytes after Content-Length are discarded (RFC 3261 section 18.3).
    pub fn parse(buf: Bytes, max_size: usize) -> Result<Message, ParseError> {
        Message::parse_with(buf, max_size, true)
    }

    /// Parses a message the sbc has already checked with [`Message::parse`] or built itself
    /// (the observer's copy of what crossed the border): the same structure, without the
    /// per-value RFC 4475 checks, which would only repeat the relay's work.
    pub fn parse_checked(buf: Bytes, max_size: usize) -> Result<Message, ParseError> {
        Message::parse_with(buf, max_size, false)
    }

    fn parse_with(buf: Bytes, max_size: usize, strict: bool) -> Result<Message, ParseError> {
        if buf.len() > max_size {
            return Err(ParseError::TooLarge);
        }
        let b = &buf[..];
        // Leading CRLFs before a message are allowed (section 7.5).
        let mut pos = 0;
        while pos < b.len() && (b[pos] == b'\r' || b[pos] == b'\n') {
            pos += 1;
        }
        let line_end = pos + memchr(b'\n', &b[pos..]).ok_or(ParseError::Garbage)?;
        let (ls, le) = trim(b, pos, line_end);
        let start = parse_start_line(b, ls, le)?;
        if let StartLine::Request { uri, .. } = start
            && strict
        {
            check_request_line(b, pos, line_end, uri)?;
        }
        let start_line = Span::new(pos, line_end + 1);

        let (hend, body_start) = find_headers_end(&b[pos..])
            .map(|(a, c)| (a + pos, c + pos))
            .ok_or(ParseError::Truncated)?;

        let mut headers: Vec<Header> = Vec::with_capacity(16);
        let mut content_length: Option<usize> = None;
        // Single-valued headers seen so far, one bit per kind.
        let mut seen = 0u16;
        let mut i = line_end + 1;
        while i < hend {
            let nl = i + memchr(b'\n', &b[i..hend]).map_or(hend - i - 1, |n| n);
            let mut line_end = nl + 1;
            // Folded continuation lines belong to the header above.
            while line_end < hend && matches!(b[line_end], b' ' | b'\t') {
                line_end += memchr(b'\n', &b[line_end..hend]).map_or(hend - line_end, |n| n + 1);
            }
            let line_end = line_end.min(hend);
            let colon = memchr(b':', &b[i..line_end]).ok_or(ParseError::BadHeader)? + i;
            let (ns, ne) = trim(b, i, colon);
            if ns == ne || !is_token(&b[ns..ne]) {
                return Err(ParseError::BadHeader);
            }
            let (vs, ve) = trim(b, colon + 1, line_end);
            let name = HeaderName::classify(&b[ns..ne]);
            if let Some(reason) = name.single_value_reason() {
                // One bit per kind (the enum has fewer than 16 variants).
                let bit = 1u16 << (name as u16);
                if seen & bit != 0 {
                    return Err(ParseError::Invalid(reason));
                }
                seen |= bit;
            }
            if strict {
                check_value(&b[vs..ve], name.structure())?;
            }
            match name {
                HeaderName::ContentLength => {
                    let n = parse_u32(&b[vs..ve]).ok_or(ParseError::BadContentLength)?;
                    content_length = Some(n as usize);
                }
                _ if !strict => {}
                HeaderName::From | HeaderName::To
                    if split_values(b, Span::new(vs, ve)).nth(1).is_some() =>
                {
                    return Err(ParseError::Invalid(if name == HeaderName::From {
                        "Multiple From Values"
                    } else {
                        "Multiple To Values"
                    }));
                }
                HeaderName::CallId
                    if b[vs..ve]
                        .iter()
                        .any(|c| matches!(c, b',' | b' ' | b'\t' | b'\r' | b'\n')) =>
                {
                    return Err(ParseError::Invalid("Bad Call-ID"));
                }
                _ => {}
            }
            if headers.len() == MAX_HEADERS {
                return Err(ParseError::TooManyHeaders);
            }
            headers.push(Header {
                name,
                name_span: Span::new(ns, ne),
                value: Span::new(vs, ve),
                line: Span::new(i, line_end),
            });
            i = line_end;
        }
        let body = match content_length {
            Some(n) => {
                let end = body_start
                    .checked_add(n)
                    .ok_or(ParseError::BadContentLength)?;
                if end > b.len() {
                    return Err(ParseError::BadContentLength);
                }
                Span::new(body_start, end)
            }
            None => Span::new(body_start, b.len()),
        };
        Ok(Message {
            buf,
            start,
            start_line,
            headers,
            headers_end: hend,
            body,
            has_content_length: content_length.is_some(),
        })
    }

    /// The message's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.buf
    }

    /// The bytes of a span.
    pub fn slice(&self, s: Span) -> &[u8] {
        self.buf.get(s.range()).unwrap_or(&[])
    }

    /// The method, for a request.
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The status code, for a response.
    pub fn code(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The Request-URI, for a request.
    pub fn request_uri(&self) -> &[u8] {
        match self.start {
            StartLine::Request { uri, .. } => self.slice(uri),
            StartLine::Response { .. } => &[],
        }
    }

    /// The method token as written.
    pub fn method_token(&self) -> &[u8] {
        match self.start {
            StartLine::Request { method_span, .. } => self.slice(method_span),
            StartLine::Response { .. } => &[],
        }
    }

    /// The first header of a kind.
    pub fn header(&self, name: HeaderName) -> Option<&Header> {
        self.headers.iter().find(|h| h.name == name)
    }

    /// The value of the first header of a kind.
    pub fn header_value(&self, name: HeaderName) -> Option<&[u8]> {
        self.header(name).map(|h| self.slice(h.value))
    }

    /// The value of the first header with this (case-insensitive) name.
    pub fn header_value_named(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| {
                self.slice(h.name_span)
                    .eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|h| self.slice(h.value))
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&[u8]> {
        self.header_value(HeaderName::CallId)
    }

    /// CSeq number and method (folded over lines or not).
    pub fn cseq(&self) -> Option<(u32, &[u8])> {
        let v = self.header_value(HeaderName::CSeq)?;
        let mut it = v
            .split(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
            .filter(|p| !p.is_empty());
        let n = parse_u32(it.next()?)?;
        let m = it.next()?;
        if it.next().is_some() {
            return None;
        }
        Some((n, m))
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        self.slice(self.body)
    }

    /// Header values of a kind, each comma-separated value on its own (topmost first).
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = Span> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .flat_map(move |h| split_values(&self.buf, h.value))
    }

    /// The topmost Via value.
    pub fn top_via(&self) -> Option<Span> {
        self.values(HeaderName::Via).next()
    }
}

fn parse_start_line(b: &[u8], s: usize, e: usize) -> Result<StartLine, ParseError> {
    let line = &b[s..e];
    if line.starts_with(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = memchr(b' ', line).ok_or(ParseError::BadStatus)?;
        if &line[..sp] != b"SIP/2.0" {
            return Err(ParseError::Garbage);
        }
        let rest = &line[sp + 1..];
        let code_end = memchr(b' ', rest).unwrap_or(rest.len());
        let code = parse_u32(&rest[..code_end])
            .filter(|c| (100..700).contains(c) && code_end == 3)
            .ok_or(ParseError::BadStatus)?;
        let rs = (s + sp + 1 + code_end + 1).min(e);
        return Ok(StartLine::Response {
            code: code as u16,
            reason: Span::new(rs, e),
        });
    }
    // Request-Line = Method SP Request-URI SP SIP-Version
    let sp1 = memchr(b' ', line).ok_or(ParseError::Garbage)?;
    let method = &line[..sp1];
    if method.is_empty()
        || !method
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(c))
    {
        return Err(ParseError::Garbage);
    }
    let rest = &line[sp1 + 1..];
    let sp2 = rest
        .iter()
        .rposition(|c| *c == b' ')
        .ok_or(ParseError::Garbage)?;
    let version = &rest[sp2 + 1..];
    if !version.starts_with(b"SIP/") {
        return Err(ParseError::Garbage);
    }
    if version != b"SIP/2.0" {
        return Err(ParseError::BadVersion);
    }
    let (us, ue) = trim(b, s + sp1 + 1, s + sp1 + 1 + sp2);
    Ok(StartLine::Request {
        method: Method::from_bytes(method),
        method_span: Span::new(s, s + sp1),
        uri: Span::new(us, ue),
    })
}

/// The Request-Line's rules RFC 4475 tests (sections 3.1.2.7 to 3.1.2.11): single SPs
/// between the three elements and none at the end, no white space or control character in
/// the Request-URI, and no headers (`?...`) in a SIP Request-URI (RFC 3261 section 19.1.5).
fn check_request_line(b: &[u8], pos: usize, line_end: usize, uri: Span) -> Result<(), ParseError> {
    let mut raw = &b[pos..line_end];
    if let Some(r) = raw.strip_suffix(b"\r") {
        raw = r;
    }
    if raw
        .iter()
        .any(|c| (*c < 0x20 && *c != b'\t' && *c != b' ') || *c == 0x7f)
    {
        return Err(ParseError::Invalid("Control Character in Request-Line"));
    }
    if raw.last().is_some_and(|c| matches!(c, b' ' | b'\t')) {
        return Err(ParseError::Invalid("Trailing Whitespace in Request-Line"));
    }
    let u = &b[uri.range()];
    if u.iter().any(|c| matches!(c, b' ' | b'\t')) {
        return Err(ParseError::Invalid("Whitespace in Request-URI"));
    }
    // The URI must sit between exactly one SP on each side.
    let (us, ue) = (uri.start as usize, uri.end as usize);
    if us < pos + 2 || b[us - 1] != b' ' || matches!(b[us - 2], b' ' | b'\t') {
        return Err(ParseError::Invalid("Multiple Spaces in Request-Line"));
    }
    if !matches!(b.get(ue), Some(b' ')) || matches!(b.get(ue + 1), Some(b' ' | b'\t')) {
        return Err(ParseError::Invalid("Multiple Spaces in Request-Line"));
    }
    let scheme_end = u.iter().position(|c| *c == b':').unwrap_or(0);
    let scheme = &u[..scheme_end];
    if scheme.eq_ignore_ascii_case(b"sip") || scheme.eq_ignore_ascii_case(b"sips") {
        let rest = &u[scheme_end + 1..];
        // '@' only ever separates the userinfo (it is escaped anywhere else), and the user
        // part may contain '?': headers are a '?' after the host.
        let host = rest
            .iter()
            .position(|c| *c == b'@')
            .map_or(rest, |at| &rest[at + 1..]);
        if host.contains(&b'?') {
            return Err(ParseError::Invalid("Headers in Request-URI"));
        }
    }
    Ok(())
}

/// Splits a header value at top-level commas (not inside quotes or `<...>`), trimming each.
pub fn split_values(buf: &[u8], value: Span) -> impl Iterator<Item = Span> + '_ {
    let mut pos = value.start as usize;
    let end = (value.end as usize).min(buf.len());
    std::iter::from_fn(move || {
        while pos < end {
            let start = pos;
            let mut quoted = false;
            let mut angle = false;
            while pos < end {
                // Jump to the next byte that can change the state: inside brackets only `>`,
                // inside quotes `"` and `\\`, elsewhere `"`, `<` and `,`.
                let rest = &buf[pos..end];
                let next = if angle {
                    memchr(b'>', rest)
                } else if quoted {
                    memchr2(b'"', b'\\', rest)
                } else {
                    memchr3(b'"', b'<', b',', rest)
                };
                let Some(n) = next else {
                    pos = end;
                    break;
                };
                pos += n;
                match buf[pos] {
                    b'"' if !angle => quoted = !quoted,
                    b'\\' if quoted => pos += 1,
                    b'<' if !quoted => angle = true,
                    b'>' if !quoted => angle = false,
                    b',' if !quoted && !angle => break,
                    _ => {}
                }
                pos += 1;
            }
            let stop = pos.min(end);
            pos = stop + 1;
            let (s, e) = trim(buf, start, stop);
            if s < e {
                return Some(Span::new(s, e));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests;
