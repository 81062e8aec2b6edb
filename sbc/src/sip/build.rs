//! Writing messages: local responses, and the edits a proxy makes to what it relays, done as
//! splices over the received bytes so everything the proxy does not touch is copied verbatim.

use std::io::Write;

use super::parse::{HeaderName, Message, split_values};

/// One replacement of a byte range (an insertion when the range is empty).
struct Splice {
    at: std::ops::Range<usize>,
    with: Piece,
}

enum Piece {
    Owned(Vec<u8>),
    Empty,
}

fn apply(buf: &[u8], end: usize, splices: &mut [Splice], extra: usize) -> Vec<u8> {
    splices.sort_by_key(|s| (s.at.start, s.at.end));
    let mut out = Vec::with_capacity(end + extra + 64);
    let mut pos = 0;
    for s in splices.iter() {
        let start = s.at.start.max(pos).min(end);
        out.extend_from_slice(&buf[pos..start]);
        match &s.with {
            Piece::Owned(v) => out.extend_from_slice(v),
            Piece::Empty => {}
        }
        pos = s.at.end.max(start).min(end);
    }
    out.extend_from_slice(&buf[pos..end]);
    out
}

/// The byte ranges that remove the first `n` values of a header (which may be spread over
/// several lines, several values a line): whole lines where every value goes, else the
/// values and their trailing commas.
fn remove_values(msg: &Message, name: HeaderName, n: usize) -> Vec<std::ops::Range<usize>> {
    let mut left = n;
    let mut ranges = Vec::new();
    for h in msg.headers.iter().filter(|h| h.name == name) {
        if left == 0 {
            break;
        }
        let mut vals = split_values(msg.bytes(), h.value);
        let first = vals.next();
        let count = 1 + vals.by_ref().take(left).count();
        if count <= left {
            ranges.push(h.line.range());
            left -= count;
        } else if let (Some(first), Some(next)) =
            (first, split_values(msg.bytes(), h.value).nth(left))
        {
            ranges.push(first.start as usize..next.start as usize);
            left = 0;
        }
    }
    ranges
}

/// What to change in a request being relayed.
#[derive(Debug, Default)]
pub struct RequestEdits<'a> {
    /// Our Via value, prepended: `SIP/2.0/UDP host:port;branch=z9hG4bK...`.
    pub via: &'a [u8],
    /// Our Record-Route value, added on top: `<sip:host:port;lr>`.
    pub record_route: Option<&'a [u8]>,
    /// Whole header lines (each ending in CRLF) added after ours: a second Record-Route,
    /// Path, Supported.
    pub extra: &'a [u8],
    /// A byte range of the request to write over (the Contact's host:port of a NATed
    /// client), and what to write instead.
    pub replace: Option<(std::ops::Range<usize>, &'a [u8])>,
    /// Parameters to append to the received topmost Via (`;received=1.2.3.4;rport=5060`),
    /// with an existing bare `rport` removed first when `fill_rport` is set.
    pub top_via_params: Option<&'a [u8]>,
    /// Remove an empty `rport` from the topmost Via (it is re-added with its value).
    pub fill_rport: bool,
    /// How many leading Route values to remove (they pointed at us).
    pub drop_routes: usize,
    /// The Max-Forwards value to write.
    pub max_forwards: u32,
    /// Headers to leave out (credentials meant for us).
    pub strip: &'a [HeaderName],
}

/// Writes a relayed request with the edits applied. Bytes beyond the body are not copied.
pub fn relay_request(msg: &Message, e: &RequestEdits<'_>) -> Vec<u8> {
    let buf = &msg.bytes()[..];
    let first_header = msg.start_line.end as usize;
    let mut splices: Vec<Splice> = Vec::with_capacity(8);
    let mut head = Vec::with_capacity(e.via.len() + e.extra.len() + 96);
    head.extend_from_slice(b"Via: ");
    head.extend_from_slice(e.via);
    head.extend_from_slice(b"\r\n");
    if let Some(rr) = e.record_route {
        head.extend_from_slice(b"Record-Route: ");
        head.extend_from_slice(rr);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(e.extra);
    splices.push(Splice {
        at: first_header..first_header,
        with: Piece::Owned(head),
    });

    if let Some(top) = msg.top_via() {
        let v = msg.slice(top);
        let mut new_top: Option<Vec<u8>> = None;
        if e.fill_rport {
            // Drop a bare ";rport" so the valued one we append is the only one.
            let mut t = Vec::with_capacity(v.len() + 40);
            for (i, part) in v.split(|c| *c == b';').enumerate() {
                if i > 0 && part.trim_ascii().eq_ignore_ascii_case(b"rport") {
                    continue;
                }
                if i > 0 {
                    t.push(b';');
                }
                t.extend_from_slice(part);
            }
            new_top = Some(t);
        }
        if let Some(p) = e.top_via_params {
            let t = new_top.get_or_insert_with(|| v.to_vec());
            t.extend_from_slice(p);
        }
        if let Some(t) = new_top {
            splices.push(Splice {
                at: top.range(),
                with: Piece::Owned(t),
            });
        }
    }

    let mut mf = itoa(e.max_forwards);
    match msg.header(HeaderName::MaxForwards) {
        Some(h) => splices.push(Splice {
            at: h.value.range(),
            with: Piece::Owned(std::mem::take(&mut mf)),
        }),
        None => {
            let mut line = b"Max-Forwards: ".to_vec();
            line.extend_from_slice(&mf);
            line.extend_from_slice(b"\r\n");
            splices.push(Splice {
                at: msg.headers_end..msg.headers_end,
                with: Piece::Owned(line),
            });
        }
    }

    if let Some((at, with)) = &e.replace {
        splices.push(Splice {
            at: at.clone(),
            with: Piece::Owned(with.to_vec()),
        });
    }
    for r in remove_values(msg, HeaderName::Route, e.drop_routes) {
        splices.push(Splice {
            at: r,
            with: Piece::Empty,
        });
    }
    for h in &msg.headers {
        if e.strip.contains(&h.name) {
            splices.push(Splice {
                at: h.line.range(),
                with: Piece::Empty,
            });
        }
    }
    if !msg.has_content_length {
        let mut line = b"Content-Length: ".to_vec();
        line.extend_from_slice(&itoa(msg.body.end - msg.body.start));
        line.extend_from_slice(b"\r\n");
        splices.push(Splice {
            at: msg.headers_end..msg.headers_end,
            with: Piece::Owned(line),
        });
    }
    apply(buf, msg.body.end as usize, &mut splices, 0)
}

/// The message with its body replaced by `body` and Content-Length written for it (the
/// header's value replaced, or the header added when there was none); the rest is copied.
pub fn replace_body(msg: &Message, body: &[u8]) -> Vec<u8> {
    let buf = &msg.bytes()[..];
    let len = itoa(body.len() as u32);
    let mut splices: Vec<Splice> = Vec::with_capacity(1);
    match msg
        .headers
        .iter()
        .find(|h| h.name == HeaderName::ContentLength)
    {
        Some(h) => splices.push(Splice {
            at: h.value.range(),
            with: Piece::Owned(len.to_vec()),
        }),
        None => splices.push(Splice {
            at: msg.headers_end..msg.headers_end,
            with: Piece::Owned([b"Content-Length: ".as_slice(), len.as_slice(), b"\r\n"].concat()),
        }),
    }
    let mut out = apply(buf, msg.body.start as usize, &mut splices, body.len());
    out.extend_from_slice(body);
    out
}

/// Writes a relayed response: our topmost Via removed.
pub fn relay_response(msg: &Message) -> Vec<u8> {
    let mut splices: Vec<Splice> = Vec::with_capacity(2);
    for r in remove_values(msg, HeaderName::Via, 1) {
        splices.push(Splice {
            at: r,
            with: Piece::Empty,
        });
    }
    if !msg.has_content_length {
        splices.push(Splice {
            at: msg.headers_end..msg.headers_end,
            with: Piece::Owned(
                [
                    b"Content-Length: ".as_slice(),
                    &itoa(msg.body.end - msg.body.start),
                    b"\r\n",
                ]
                .concat(),
            ),
        });
    }
    apply(&msg.bytes()[..], msg.body.end as usize, &mut splices, 0)
}

/// Writes a response to `req` from the sbc itself (RFC 3261 section 8.2.6): Via, From, To,
/// Call-ID and CSeq copied, a To tag added for non-100 responses that have none.
pub fn local_response(
    req: &Message,
    code: u16,
    reason: &str,
    to_tag: &[u8],
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + req.headers.len() * 8);
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    for h in &req.headers {
        let copy = matches!(
            h.name,
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq
        ) || (h.name == HeaderName::RecordRoute && (101..300).contains(&code));
        if copy {
            out.extend_from_slice(req.slice(h.line));
            if !req.slice(h.line).ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        } else if h.name == HeaderName::To {
            let v = req.slice(h.value);
            out.extend_from_slice(b"To: ");
            out.extend_from_slice(v);
            if code > 100 && super::uri::tag(v).is_none() && !to_tag.is_empty() {
                out.extend_from_slice(b";tag=");
                out.extend_from_slice(to_tag);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Server: kubesbc\r\nContent-Length: 0\r\n\r\n");
    out
}

/// The start of a request we derive from an INVITE we relayed (its ACK or CANCEL): the
/// INVITE's Request-URI and its topmost Via (our branch).
fn request_line_and_via(method: &[u8], invite: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(invite.request_uri());
    out.extend_from_slice(b" SIP/2.0\r\n");
    if let Some(top) = invite.top_via() {
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(invite.slice(top));
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Writes the hop-by-hop ACK for a non-2xx final response to an INVITE we relayed
/// (RFC 3261 section 17.1.1.3): same Request-URI, our Via (branch), From, Call-ID, Route
/// as the INVITE; To from the response; CSeq number with ACK.
pub fn ack_for(invite: &Message, response: &Message) -> Vec<u8> {
    let mut out = request_line_and_via(b"ACK", invite);
    for h in &invite.headers {
        if matches!(
            h.name,
            HeaderName::From | HeaderName::CallId | HeaderName::Route | HeaderName::MaxForwards
        ) {
            out.extend_from_slice(invite.slice(h.line));
        }
    }
    if let Some(to) = response.header(HeaderName::To) {
        out.extend_from_slice(response.slice(to.line));
    }
    if let Some((n, _)) = invite.cseq() {
        let _ = write!(out, "CSeq: {n} ACK\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// Writes the CANCEL for an INVITE we relayed (RFC 3261 section 9.1): same Request-URI,
/// topmost Via (our branch), From, To, Call-ID, Route and CSeq number.
pub fn cancel_for(invite: &Message) -> Vec<u8> {
    let mut out = request_line_and_via(b"CANCEL", invite);
    for h in &invite.headers {
        if matches!(
            h.name,
            HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::Route
                | HeaderName::MaxForwards
        ) {
            out.extend_from_slice(invite.slice(h.line));
        }
    }
    if let Some((n, _)) = invite.cseq() {
        let _ = write!(out, "CSeq: {n} CANCEL\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// A request as we relayed it, told by what it was made from: the received request and the
/// edits. Enough to write its CANCEL and the ACK for a non-2xx without parsing what we sent.
#[derive(Debug, Clone, Copy)]
pub struct Relayed<'a> {
    /// The request as received.
    pub original: &'a Message,
    /// Our Via value on it.
    pub via: &'a [u8],
    /// The leading Route values we removed.
    pub drop_routes: usize,
    /// The Max-Forwards we wrote.
    pub max_forwards: u32,
}

impl Relayed<'_> {
    /// `METHOD Request-URI`, our Via, then the original's lines of `keep`, its Route values
    /// left after ours, and Max-Forwards.
    fn head(&self, method: &str, keep: &[HeaderName]) -> Vec<u8> {
        let m = self.original;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(m.request_uri());
        out.extend_from_slice(b" SIP/2.0\r\nVia: ");
        out.extend_from_slice(self.via);
        out.extend_from_slice(b"\r\n");
        for h in m.headers.iter().filter(|h| keep.contains(&h.name)) {
            out.extend_from_slice(m.slice(h.line));
        }
        let mut routes = m
            .headers
            .iter()
            .filter(|h| h.name == HeaderName::Route)
            .flat_map(|h| split_values(m.bytes(), h.value))
            .skip(self.drop_routes)
            .peekable();
        if routes.peek().is_some() {
            out.extend_from_slice(b"Route: ");
            for (i, r) in routes.enumerate() {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(m.slice(r));
            }
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "Max-Forwards: {}\r\n", self.max_forwards);
        out
    }

    /// The CANCEL for it (RFC 3261 section 9.1), as [`cancel_for`] writes from the bytes.
    pub fn cancel(&self) -> Vec<u8> {
        let keep = [HeaderName::From, HeaderName::To, HeaderName::CallId];
        let mut out = self.head("CANCEL", &keep);
        let n = self.original.cseq().map_or(0, |(n, _)| n);
        let _ = write!(out, "CSeq: {n} CANCEL\r\nContent-Length: 0\r\n\r\n");
        out
    }

    /// The hop-by-hop ACK for a non-2xx `response` to it (RFC 3261 section 17.1.1.3), as
    /// [`ack_for`] writes from the bytes.
    pub fn ack(&self, response: &Message) -> Vec<u8> {
        let keep = [HeaderName::From, HeaderName::CallId];
        let mut out = self.head("ACK", &keep);
        if let Some(to) = response.header(HeaderName::To) {
            out.extend_from_slice(response.slice(to.line));
        }
        let n = self.original.cseq().map_or(0, |(n, _)| n);
        let _ = write!(out, "CSeq: {n} ACK\r\nContent-Length: 0\r\n\r\n");
        out
    }
}

/// A response to a request that could not be parsed: the Via, From, To, Call-ID and CSeq
/// lines found by a plain line scan are copied, so the caller can still match it.
pub fn raw_response(buf: &[u8], code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    let head_end = super::parse::find_headers_end(buf).map_or(buf.len(), |(e, _)| e);
    let mut lines = buf[..head_end.min(buf.len())].split(|c| *c == b'\n');
    lines.next();
    for line in lines.take(super::parse::MAX_HEADERS) {
        let Some(colon) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let keep = [
            &b"via"[..],
            b"v",
            b"from",
            b"f",
            b"to",
            b"t",
            b"call-id",
            b"i",
            b"cseq",
        ]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name));
        if keep {
            out.extend_from_slice(line.trim_ascii_end());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Server: kubesbc\r\nContent-Length: 0\r\n\r\n");
    out
}

/// Decimal digits of `n` without going through `fmt`.
pub fn itoa(n: impl Into<u64>) -> Vec<u8> {
    let mut n: u64 = n.into();
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    tmp[i..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes()), 65535).unwrap()
    }

    const REQ: &str = "INVITE sip:bob@b SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKa;rport\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:10.1.1.1;lr>\r\n\
Max-Forwards: 70\r\n\
From: <sip:a@a>;tag=1\r\n\
To: <sip:bob@b>\r\n\
Call-ID: c1\r\n\
CSeq: 7 INVITE\r\n\
Proxy-Authorization: Digest x\r\n\
Content-Length: 3\r\n\r\nabcTRAILING";

    #[test]
    fn relayed_request_has_our_via_rr_and_edits() {
        let m = parse(REQ);
        let out = relay_request(
            &m,
            &RequestEdits {
                via: b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKours",
                record_route: Some(b"<sip:127.0.0.1:5060;lr>"),
                extra: b"",
                replace: None,
                top_via_params: Some(b";received=10.0.0.8;rport=5091"),
                fill_rport: true,
                drop_routes: 1,
                max_forwards: 69,
                strip: &[HeaderName::ProxyAuthorization],
            },
        );
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "INVITE sip:bob@b SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKours\r\n\
Record-Route: <sip:127.0.0.1:5060;lr>\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKa;received=10.0.0.8;rport=5091\r\n\
Route: <sip:10.1.1.1;lr>\r\n\
Max-Forwards: 69\r\n\
From: <sip:a@a>;tag=1\r\n\
To: <sip:bob@b>\r\n\
Call-ID: c1\r\n\
CSeq: 7 INVITE\r\n\
Content-Length: 3\r\n\r\nabc"
        );
        let again = parse(&out);
        assert_eq!(again.values(HeaderName::Via).count(), 2);
    }

    #[test]
    fn relayed_response_loses_top_via() {
        let m = parse(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP c;branch=z9hG4bK3\r\nCall-ID: x\r\n\r\n",
        );
        let out = String::from_utf8(relay_response(&m)).unwrap();
        assert!(
            out.contains("Via: SIP/2.0/UDP b;branch=z9hG4bK2\r\nVia: SIP/2.0/UDP c"),
            "{out}"
        );
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
    }

    #[test]
    fn local_response_adds_to_tag() {
        let m = parse(REQ);
        let out = String::from_utf8(local_response(
            &m,
            503,
            "Service Unavailable",
            b"t1",
            &[("Retry-After", b"5")],
        ))
        .unwrap();
        assert!(out.starts_with("SIP/2.0 503 Service Unavailable\r\nVia: SIP/2.0/UDP 10.0.0.9"));
        assert!(out.contains("To: <sip:bob@b>;tag=t1\r\n"));
        assert!(out.contains("Retry-After: 5\r\n"));
        assert!(out.contains("CSeq: 7 INVITE\r\n"));
        let trying = String::from_utf8(local_response(&m, 100, "Trying", b"t1", &[])).unwrap();
        assert!(trying.contains("To: <sip:bob@b>\r\n"));
    }

    #[test]
    fn cancel_and_ack_from_the_original_match_those_read_back_from_what_was_sent() {
        let req = parse(REQ);
        let via = b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkSx";
        let edits = RequestEdits {
            via,
            drop_routes: 1,
            max_forwards: 69,
            ..Default::default()
        };
        let sent = parse(std::str::from_utf8(&relay_request(&req, &edits)).unwrap());
        let r = Relayed {
            original: &req,
            via,
            drop_routes: 1,
            max_forwards: 69,
        };
        let resp = parse(
            "SIP/2.0 486 Busy\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkSx\r\nTo: <sip:bob@b>;tag=t9\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
        );
        for (ours, theirs) in [
            (r.cancel(), cancel_for(&sent)),
            (r.ack(&resp), ack_for(&sent, &resp)),
        ] {
            let (a, b) = (
                parse(std::str::from_utf8(&ours).unwrap()),
                parse(std::str::from_utf8(&theirs).unwrap()),
            );
            assert_eq!(a.method_token(), b.method_token());
            assert_eq!(a.request_uri(), b.request_uri());
            for name in [
                HeaderName::Via,
                HeaderName::From,
                HeaderName::To,
                HeaderName::CallId,
                HeaderName::CSeq,
                HeaderName::MaxForwards,
            ] {
                assert_eq!(a.header_value(name), b.header_value(name), "{name:?}");
            }
            let routes = |m: &Message| -> Vec<Vec<u8>> {
                m.values(HeaderName::Route)
                    .map(|v| m.slice(v).to_vec())
                    .collect()
            };
            assert_eq!(routes(&a), routes(&b));
            assert_eq!(routes(&a), vec![b"<sip:10.1.1.1;lr>".to_vec()]);
        }
    }
}
