//! Header names the proxy knows and the checks of their values.

use super::parse::{ParseError, Span};

/// Headers the proxy looks at, recognised by full or compact name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderName {
    /// Via / v
    Via,
    /// From / f
    From,
    /// To / t
    To,
    /// Call-ID / i
    CallId,
    /// CSeq
    CSeq,
    /// Max-Forwards
    MaxForwards,
    /// Route
    Route,
    /// Record-Route
    RecordRoute,
    /// Contact / m
    Contact,
    /// Content-Length / l
    ContentLength,
    /// Content-Type / c
    ContentType,
    /// Authorization
    Authorization,
    /// Proxy-Authorization
    ProxyAuthorization,
    /// User-Agent
    UserAgent,
    /// Any other header.
    Other,
}

impl HeaderName {
    pub(super) fn classify(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                _ => HeaderName::Other,
            };
        }
        // By length first: at most three names to compare, not fourteen.
        let candidates: &[(&[u8], HeaderName)] = match name.len() {
            2 => &[(b"to", HeaderName::To)],
            3 => &[(b"via", HeaderName::Via)],
            4 => &[(b"from", HeaderName::From), (b"cseq", HeaderName::CSeq)],
            5 => &[(b"route", HeaderName::Route)],
            7 => &[
                (b"call-id", HeaderName::CallId),
                (b"contact", HeaderName::Contact),
            ],
            10 => &[(b"user-agent", HeaderName::UserAgent)],
            12 => &[
                (b"max-forwards", HeaderName::MaxForwards),
                (b"record-route", HeaderName::RecordRoute),
                (b"content-type", HeaderName::ContentType),
            ],
            13 => &[(b"authorization", HeaderName::Authorization)],
            14 => &[(b"content-length", HeaderName::ContentLength)],
            19 => &[(b"proxy-authorization", HeaderName::ProxyAuthorization)],
            _ => &[],
        };
        candidates
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(HeaderName::Other, |(_, h)| *h)
    }
}

/// One header line (continuation lines included).
#[derive(Debug, Clone, Copy)]
pub struct Header {
    /// Which header it is.
    pub name: HeaderName,
    /// The name as written.
    pub name_span: Span,
    /// The value, trimmed of surrounding white space.
    pub value: Span,
    /// The whole line including its line terminator.
    pub line: Span,
}

impl HeaderName {
    /// Headers a message carries at most once (RFC 3261 section 7.3.1 and 20: single-valued).
    pub(super) fn single_value_reason(self) -> Option<&'static str> {
        Some(match self {
            HeaderName::From => "Multiple From Headers",
            HeaderName::To => "Multiple To Headers",
            HeaderName::CallId => "Multiple Call-ID Headers",
            HeaderName::CSeq => "Multiple CSeq Headers",
            HeaderName::MaxForwards => "Multiple Max-Forwards Headers",
            HeaderName::ContentLength => "Multiple Content-Length Headers",
            HeaderName::ContentType => "Multiple Content-Type Headers",
            _ => return None,
        })
    }

    /// Headers whose values are name-addrs or parameter lists: quotes and angle brackets
    /// must balance, and (Via, Contact) no parameter or list element may be empty.
    pub(super) fn structure(self) -> Option<Structure> {
        Some(match self {
            HeaderName::From => Structure::addr("Unterminated Quoted String in From"),
            HeaderName::To => Structure::addr("Unterminated Quoted String in To"),
            HeaderName::Contact => Structure {
                empty: Some("Empty Parameter in Contact"),
                ..Structure::addr("Unterminated Quoted String in Contact")
            },
            HeaderName::Route => Structure::addr("Unterminated Quoted String in Route"),
            HeaderName::RecordRoute => {
                Structure::addr("Unterminated Quoted String in Record-Route")
            }
            HeaderName::Via => Structure {
                unbalanced: "Unterminated Quoted String in Via",
                empty: Some("Empty Parameter in Via"),
            },
            HeaderName::Authorization | HeaderName::ProxyAuthorization => Structure {
                unbalanced: "Unterminated Quoted String in Credentials",
                empty: None,
            },
            _ => return None,
        })
    }
}

/// What [`check_value`] enforces for one header.
#[derive(Debug, Clone, Copy)]
pub(super) struct Structure {
    /// Reason when a quote or `<` is left open.
    unbalanced: &'static str,
    /// Reason for an empty parameter or list element, when checked.
    empty: Option<&'static str>,
}

impl Structure {
    const fn addr(unbalanced: &'static str) -> Structure {
        Structure {
            unbalanced,
            empty: None,
        }
    }
}

/// Checks one header value (continuation lines included): no control character outside a
/// quoted-pair (RFC 3261 section 25.1: HTAB and the CRLF of a folded line are the only ones
/// allowed; NUL, BEL, DEL... are not), and for structured headers balanced quotes and angle
/// brackets and no empty parameters.
pub(super) fn check_value(v: &[u8], structure: Option<Structure>) -> Result<(), ParseError> {
    // Most values have no control character at all: for unstructured headers that is the
    // whole check, and a loop this simple runs many bytes per instruction.
    if structure.is_none() && v.iter().all(|&c| (c >= 0x20 && c != 0x7f) || c == b'\t') {
        return Ok(());
    }
    let mut quoted = false;
    let mut angle = false;
    // The last significant byte outside quotes and brackets: `;` or `,` then another one (or
    // the end) is an empty parameter or list element.
    let mut last_sep: Option<u8> = Some(b',');
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        if PLAIN[usize::from(c)] {
            // A run of bytes that change no state: skipped at once. Outside quotes and
            // brackets it is something, so no element is empty.
            i = v[i..]
                .iter()
                .position(|&c| !PLAIN[usize::from(c)])
                .map_or(v.len(), |n| i + n);
            if !quoted && !angle {
                last_sep = None;
            }
            continue;
        }
        match c {
            b'\\' if quoted => {
                // quoted-pair: any byte but CR and LF.
                match v.get(i + 1) {
                    Some(b'\r' | b'\n') | None => {
                        return Err(ParseError::Invalid("Bad Quoted Pair in Header"));
                    }
                    Some(_) => i += 1,
                }
            }
            b'\r' | b'\n' => {
                // Only a folded line: CRLF (or LF) followed by SP or HTAB.
                if c == b'\r' {
                    if v.get(i + 1) != Some(&b'\n') {
                        return Err(ParseError::Invalid("Control Character in Header"));
                    }
                    i += 1;
                }
                if !matches!(v.get(i + 1), Some(b' ' | b'\t')) {
                    return Err(ParseError::Invalid("Control Character in Header"));
                }
            }
            b'\t' => {}
            0..=0x1f | 0x7f => return Err(ParseError::Invalid("Control Character in Header")),
            b'"' if !angle => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            _ => {}
        }
        if let Some(st) = structure
            && let Some(reason) = st.empty
            && !quoted
            && !angle
            && !matches!(c, b' ' | b'\t' | b'\r' | b'\n')
        {
            let sep = matches!(c, b';' | b',');
            if sep && last_sep.is_some() {
                // `;;`, `;,`, `,,`, `,;` and a leading separator: an empty element.
                return Err(ParseError::Invalid(reason));
            }
            last_sep = sep.then_some(c);
        }
        i += 1;
    }
    if let Some(st) = structure {
        if quoted || angle {
            return Err(ParseError::Invalid(st.unbalanced));
        }
        if let Some(reason) = st.empty
            && last_sep.is_some()
            && !v.is_empty()
        {
            return Err(ParseError::Invalid(reason));
        }
    }
    Ok(())
}

/// Bytes [`check_value`] decides nothing on: not a control character, not white space, not
/// one of `"\<>;,`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0x21;
    while c < 256 {
        t[c] = c != 0x7f && !matches!(c as u8, b'"' | b'\\' | b'<' | b'>' | b';' | b',');
        c += 1;
    }
    t
};

/// Token characters (RFC 3261 section 25.1).
const TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
};

/// A header name is a token (RFC 3261 section 25.1).
pub(super) fn is_token(name: &[u8]) -> bool {
    name.iter().all(|&c| TOKEN[usize::from(c)])
}
