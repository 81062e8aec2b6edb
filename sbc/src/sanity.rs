//! The sanity stage: what a request must carry before the proxy spends anything on it
//! (Kamailio's `sanity` and `maxfwd`), and loop detection. Each failure names the status and
//! reason the caller gets.

use crate::relay::Local;
use crate::relay::core::{BRANCH_PREFIX, push_hex};
use crate::sip::uri::{self, Uri, Via};
use crate::sip::{HeaderName, Message, Method};

/// A request refused with a status and a reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}")]
pub struct Reject {
    /// The status code.
    pub code: u16,
    /// The reason phrase naming the defect.
    pub reason: &'static str,
}

impl Reject {
    /// A refusal with this status and reason.
    pub const fn new(code: u16, reason: &'static str) -> Reject {
        Reject { code, reason }
    }
}

const fn reject(code: u16, reason: &'static str) -> Reject {
    Reject::new(code, reason)
}

/// What the later stages read of a request, taken from the parsed message once here so
/// that nothing parses the top Via, CSeq or tags again.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The method.
    pub method: Method,
    /// Max-Forwards as received (70 when absent).
    pub max_forwards: u32,
    /// The topmost Via.
    pub via: Via<'a>,
    /// The CSeq number.
    pub cseq: u32,
    /// The From tag (empty when missing: RFC 2543 peers).
    pub from_tag: &'a [u8],
    /// The To tag: a request with one belongs to a dialog.
    pub to_tag: Option<&'a [u8]>,
}

/// Checks a parsed request and returns the Max-Forwards it carries (70 when absent).
pub fn check_request(msg: &Message) -> Result<u32, Reject> {
    view(msg).map(|v| v.max_forwards)
}

/// Checks a parsed request and returns the view of it the stages read.
pub fn view(msg: &Message) -> Result<View<'_>, Reject> {
    let method = msg.method().unwrap_or(Method::Other);
    let top_via = msg.top_via().ok_or(reject(400, "Missing Via"))?;
    let via = Via::parse(msg.slice(top_via)).ok_or(reject(400, "Bad Via"))?;
    let from = msg
        .header_value(HeaderName::From)
        .ok_or(reject(400, "Missing From"))?;
    let to = msg
        .header_value(HeaderName::To)
        .ok_or(reject(400, "Missing To"))?;
    match msg.call_id() {
        None => return Err(reject(400, "Missing Call-ID")),
        Some([]) => return Err(reject(400, "Bad Call-ID")),
        Some(_) => {}
    }
    if msg.header(HeaderName::CSeq).is_none() {
        return Err(reject(400, "Missing CSeq"));
    }
    let (cseq, cseq_method) = msg.cseq().ok_or(reject(400, "Bad CSeq"))?;
    if cseq_method != msg.method_token() {
        return Err(reject(400, "CSeq Method Mismatch"));
    }
    let uri = msg.request_uri();
    let parsed = Uri::parse(uri).ok_or(reject(400, "Bad Request-URI"))?;
    let scheme = parsed.scheme;
    if !(scheme.eq_ignore_ascii_case(b"sip")
        || scheme.eq_ignore_ascii_case(b"sips")
        || scheme.eq_ignore_ascii_case(b"tel"))
    {
        return Err(reject(416, "Unsupported URI Scheme"));
    }
    let max_forwards = match msg.header_value(HeaderName::MaxForwards) {
        None => 70,
        Some(v) => crate::sip::parse::parse_u32(v)
            .filter(|n| *n <= 255)
            .ok_or(reject(400, "Bad Max-Forwards"))?,
    };
    if max_forwards == 0 && method != Method::Ack {
        return Err(reject(483, "Too Many Hops"));
    }
    Ok(View {
        method,
        max_forwards,
        via,
        cseq,
        from_tag: uri::tag(from).unwrap_or(b""),
        to_tag: uri::tag(to),
    })
}

/// Whether the request already passed this sbc (RFC 3261 section 16.3 item 4): a Via of
/// ours whose branch carries the same loop hash (see [`crate::relay::core::loop_hash`]).
/// A spiral (the same request changed on the way, another hash) is no loop.
pub fn is_loop(msg: &Message, hash: u64, local: &Local) -> bool {
    let mut want = Vec::with_capacity(16);
    push_hex(&mut want, hash);
    msg.values(HeaderName::Via).any(|v| {
        Via::parse(msg.slice(v)).is_some_and(|via| {
            local.is_us(via.host, via.port)
                && via.branch().is_some_and(|b| {
                    b.strip_prefix(BRANCH_PREFIX)
                        .is_some_and(|rest| rest.starts_with(&want))
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn check(s: &str) -> Result<u32, Reject> {
        check_request(&Message::parse(Bytes::copy_from_slice(s.as_bytes()), 65535).unwrap())
    }

    const OK: &str = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 5\r\n\r\n";

    #[test]
    fn each_defect_has_its_status() {
        assert_eq!(check(OK), Ok(5));
        let cases = [
            ("Call-ID: c\r\n", "", "400 Missing Call-ID"),
            ("From: <sip:x@y>;tag=1\r\n", "", "400 Missing From"),
            ("To: <sip:a@b>\r\n", "", "400 Missing To"),
            ("CSeq: 1 OPTIONS\r\n", "", "400 Missing CSeq"),
            ("CSeq: 1 OPTIONS", "CSeq: one OPTIONS", "400 Bad CSeq"),
            (
                "CSeq: 1 OPTIONS",
                "CSeq: 1 INVITE",
                "400 CSeq Method Mismatch",
            ),
            (
                "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n",
                "",
                "400 Missing Via",
            ),
            ("Via: SIP/2.0/UDP h", "Via: nonsense", "400 Bad Via"),
            ("Max-Forwards: 5", "Max-Forwards: 0", "483 Too Many Hops"),
            (
                "Max-Forwards: 5",
                "Max-Forwards: -1",
                "400 Bad Max-Forwards",
            ),
            ("sip:a@b SIP", "http://a SIP", "416 Unsupported URI Scheme"),
            ("sip:a@b SIP", "sip: SIP", "400 Bad Request-URI"),
        ];
        for (from, to, want) in cases {
            let text = OK.replacen(from, to, 1);
            assert_eq!(check(&text).unwrap_err().to_string(), want, "{text}");
        }
    }
}
