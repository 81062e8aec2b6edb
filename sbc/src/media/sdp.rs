//! SDP in SIP bodies, as pure functions: find it (a body of type `application/sdp`, or the
//! `application/sdp` part of a `multipart/mixed`, `multipart/alternative` or
//! `multipart/related` body), put a rewritten SDP back (the rest of the body byte for byte),
//! and check an offer well enough to refuse a malformed one before rtpengine sees it.
//!
//! A body whose type is anything else is never touched. The new body's length is the relay's
//! business (it writes Content-Length from the bytes returned here).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Most parts read from a multipart body.
const MAX_PARTS: usize = 16;
/// Most lines of an SDP checked by [`validate`].
const MAX_LINES: usize = 2048;
/// Largest SDP accepted.
pub const MAX_SDP: usize = 65_535;

/// Where the SDP is in a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpLocation {
    /// Byte range of the SDP inside the body.
    pub range: Range<usize>,
    /// Whether it is a part of a multipart body (else it is the whole body).
    pub in_multipart: bool,
}

/// Why a body or an SDP is refused (the reason of a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// A multipart body without a usable boundary or with broken framing.
    #[error("multipart body: {0}")]
    Multipart(&'static str),
    /// An SDP that does not follow RFC 8866's grammar.
    #[error("malformed SDP: {0}")]
    Malformed(String),
}

/// The media type of a Content-Type value, lower-cased, without parameters.
fn media_type(content_type: &[u8]) -> Vec<u8> {
    let end = content_type
        .iter()
        .position(|&b| b == b';')
        .unwrap_or(content_type.len());
    content_type[..end].trim_ascii().to_ascii_lowercase()
}

/// The value of parameter `name` in a Content-Type value (unquoted).
fn param<'a>(content_type: &'a [u8], name: &str) -> Option<&'a [u8]> {
    for p in content_type.split(|&b| b == b';').skip(1) {
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            continue;
        };
        if p[..eq].trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
            let v = p[eq + 1..].trim_ascii();
            return Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            });
        }
    }
    None
}

/// Whether a Content-Type value is `application/sdp`.
pub fn is_sdp_type(content_type: &[u8]) -> bool {
    media_type(content_type) == b"application/sdp"
}

/// Finds the SDP in `body` given the message's Content-Type. `Ok(None)`: no SDP (no body, or
/// a body of another type, which must then be left alone). An `application/sdp` body that is
/// empty counts as no SDP.
pub fn find(content_type: Option<&[u8]>, body: &[u8]) -> Result<Option<SdpLocation>, SdpError> {
    let Some(ct) = content_type else {
        return Ok(None);
    };
    if body.is_empty() {
        return Ok(None);
    }
    let ty = media_type(ct);
    if ty == b"application/sdp" {
        return Ok(Some(SdpLocation {
            range: 0..body.len(),
            in_multipart: false,
        }));
    }
    if !matches!(
        ty.as_slice(),
        b"multipart/mixed" | b"multipart/alternative" | b"multipart/related"
    ) {
        return Ok(None);
    }
    let boundary = param(ct, "boundary").ok_or(SdpError::Multipart("no boundary parameter"))?;
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(SdpError::Multipart("boundary must be 1 to 70 characters"));
    }
    for part in parts(body, boundary)? {
        let (headers, content) = split_part(body, part)?;
        let ct = part_header(&body[headers], b"content-type");
        if ct.is_some_and(is_sdp_type) && !content.is_empty() {
            return Ok(Some(SdpLocation {
                range: content,
                in_multipart: true,
            }));
        }
    }
    Ok(None)
}

/// The byte ranges of the parts of a multipart body (between delimiter lines, without the
/// CRLF that belongs to the next delimiter).
fn parts(body: &[u8], boundary: &[u8]) -> Result<Vec<Range<usize>>, SdpError> {
    let mut delim = Vec::with_capacity(boundary.len() + 4);
    delim.extend_from_slice(b"\r\n--");
    delim.extend_from_slice(boundary);
    // The first delimiter may open the body (no CRLF before it).
    let mut at = if body.starts_with(&delim[2..]) {
        0
    } else {
        find_from(body, &delim, 0).ok_or(SdpError::Multipart("boundary not found"))? + 2
    };
    let mut out = Vec::new();
    loop {
        // `at` is the start of `--boundary`.
        let after = at + delim.len() - 2;
        if body[after..].starts_with(b"--") {
            return Ok(out);
        }
        // The rest of the delimiter line (transport padding) up to CRLF.
        let eol = find_from(body, b"\r\n", after)
            .ok_or(SdpError::Multipart("delimiter line not terminated"))?;
        if !body[after..eol].iter().all(|&b| b == b' ' || b == b'\t') {
            return Err(SdpError::Multipart("text after a delimiter"));
        }
        let start = eol + 2;
        let next =
            find_from(body, &delim, eol).ok_or(SdpError::Multipart("no closing delimiter"))?;
        if out.len() == MAX_PARTS {
            return Err(SdpError::Multipart("too many parts"));
        }
        out.push(start..next.max(start));
        at = next + 2;
    }
}

fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(hay.get(from..)?, needle).map(|p| p + from)
}

/// Splits a part into its header block and content ranges.
fn split_part(body: &[u8], part: Range<usize>) -> Result<(Range<usize>, Range<usize>), SdpError> {
    let p = &body[part.clone()];
    if p.starts_with(b"\r\n") {
        // No headers: the content type defaults to text/plain.
        return Ok((part.start..part.start, part.start + 2..part.end));
    }
    let end = find_from(p, b"\r\n\r\n", 0).ok_or(SdpError::Multipart("part without headers"))?;
    Ok((
        part.start..part.start + end + 2,
        part.start + end + 4..part.end,
    ))
}

/// The value of header `name` (lower-case) in a part's header block.
fn part_header<'a>(headers: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    headers.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// `body` with the SDP at `loc` replaced by `sdp`; everything else is kept byte for byte.
pub fn replace(body: &[u8], loc: &SdpLocation, sdp: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() - loc.range.len() + sdp.len());
    out.extend_from_slice(&body[..loc.range.start]);
    out.extend_from_slice(sdp);
    out.extend_from_slice(&body[loc.range.end..]);
    out.freeze()
}

/// What [`validate`] learned about an SDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpSummary {
    /// Number of `m=` sections.
    pub media: usize,
    /// Whether any media section's protocol is a WebRTC one (`UDP/TLS/RTP/SAVPF`, `*SAVPF`).
    pub webrtc: bool,
}

fn bad(msg: impl Into<String>) -> SdpError {
    SdpError::Malformed(msg.into())
}

/// Checks an SDP (RFC 8866) enough to refuse one rtpengine could not anchor: text lines
/// `x=value`, `v=0` first, `o=` and `s=` present, at least one `m=` with a numeric port and
/// a protocol and formats, a connection address (`c=`) for every media section (its own or the
/// session's), and well-formed `c=` lines. Reasons name the line.
pub fn validate(sdp: &[u8]) -> Result<SdpSummary, SdpError> {
    if sdp.len() > MAX_SDP {
        return Err(bad(format!("{} bytes is too long", sdp.len())));
    }
    let text = std::str::from_utf8(sdp).map_err(|_| bad("not UTF-8 text"))?;
    let mut has_o = false;
    let mut has_s = false;
    let mut session_c = false;
    // Per media section: whether it has its own c=.
    let mut media: Vec<bool> = Vec::new();
    let mut webrtc = false;
    let mut lines = 0usize;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            // A trailing newline, or blank lines at the end, are tolerated.
            continue;
        }
        lines += 1;
        if lines > MAX_LINES {
            return Err(bad(format!("more than {MAX_LINES} lines")));
        }
        let b = line.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_lowercase() || b[1] != b'=' {
            return Err(bad(format!("line {n} is not type=value")));
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad(format!("line {n} has a control character")));
        }
        let value = &line[2..];
        if lines == 1 {
            if line != "v=0" {
                return Err(bad("the first line must be v=0"));
            }
            continue;
        }
        match b[0] {
            b'v' => return Err(bad(format!("line {n}: a second v= line"))),
            b'o' => {
                if value.split(' ').count() != 6 {
                    return Err(bad(format!("line {n}: o= needs 6 fields")));
                }
                has_o = true;
            }
            b's' => has_s = true,
            b'c' => {
                check_connection(value).map_err(|why| bad(format!("line {n}: c= {why}")))?;
                match media.last_mut() {
                    Some(m) => *m = true,
                    None => session_c = true,
                }
            }
            b'm' => {
                let f: Vec<&str> = value.split(' ').collect();
                if f.len() < 4 || f.iter().any(|x| x.is_empty()) {
                    return Err(bad(format!(
                        "line {n}: m= needs media, port, protocol and formats"
                    )));
                }
                let port = f[1].split('/').next().unwrap_or("");
                if port.parse::<u16>().is_err() {
                    return Err(bad(format!("line {n}: m= port {:?} is not a number", f[1])));
                }
                if f[2].ends_with("SAVPF") {
                    webrtc = true;
                }
                media.push(false);
            }
            _ => {}
        }
    }
    if lines == 0 {
        return Err(bad("empty"));
    }
    if !has_o {
        return Err(bad("no o= line"));
    }
    if !has_s {
        return Err(bad("no s= line"));
    }
    if media.is_empty() {
        return Err(bad("no m= line"));
    }
    if let Some(k) = media.iter().position(|&has| !has && !session_c) {
        return Err(bad(format!(
            "media section {} has no c= line and there is no session-level c=",
            k + 1
        )));
    }
    Ok(SdpSummary {
        media: media.len(),
        webrtc,
    })
}

fn check_connection(v: &str) -> Result<(), &'static str> {
    let f: Vec<&str> = v.split(' ').collect();
    let [net, family, addr] = f.as_slice() else {
        return Err("needs network type, address type and address");
    };
    if *net != "IN" {
        return Err("network type is not IN");
    }
    let host = addr.split('/').next().unwrap_or("");
    match *family {
        "IP4" if host.parse::<std::net::Ipv4Addr>().is_ok() || is_hostname(host) => Ok(()),
        "IP6" if host.parse::<std::net::Ipv6Addr>().is_ok() || is_hostname(host) => Ok(()),
        "IP4" | "IP6" => Err("address is not an address of its type"),
        _ => Err("address type is not IP4 or IP6"),
    }
}

fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && h.bytes().any(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const PLAIN: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn a_plain_body_is_found_whole_and_other_types_are_left_alone() {
        let loc = find(Some(b"application/sdp"), PLAIN.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(loc.range, 0..PLAIN.len());
        assert!(!loc.in_multipart);
        assert!(
            find(Some(b"Application/SDP ; charset=x"), b"v=0")
                .unwrap()
                .is_some()
        );
        assert_eq!(
            find(Some(b"application/isup"), PLAIN.as_bytes()).unwrap(),
            None
        );
        assert_eq!(find(Some(b"text/plain"), PLAIN.as_bytes()).unwrap(), None);
        assert_eq!(find(None, PLAIN.as_bytes()).unwrap(), None);
        assert_eq!(find(Some(b"application/sdp"), b"").unwrap(), None);
    }

    fn multipart(ty: &str) -> (String, String) {
        let ct = format!("multipart/{ty}; boundary=\"unique-boundary-1\"");
        let body = format!(
            "preamble\r\n--unique-boundary-1\r\nContent-Type: application/isup;version=itu-t92+\r\nContent-Disposition: signal\r\n\r\n\x01\x02\x03\r\n--unique-boundary-1\r\ncontent-type: application/sdp\r\n\r\n{PLAIN}\r\n--unique-boundary-1--\r\nepilogue"
        );
        (ct, body)
    }

    #[test]
    fn sdp_inside_multipart_is_found_and_replaced_leaving_the_rest_byte_exact() {
        for ty in ["mixed", "alternative", "related"] {
            let (ct, body) = multipart(ty);
            let loc = find(Some(ct.as_bytes()), body.as_bytes()).unwrap().unwrap();
            assert!(loc.in_multipart);
            assert_eq!(&body[loc.range.clone()], PLAIN);
            let new = replace(body.as_bytes(), &loc, b"v=0\r\nNEW\r\n");
            assert_eq!(
                String::from_utf8(new.to_vec()).unwrap(),
                body.replace(PLAIN, "v=0\r\nNEW\r\n")
            );
        }
    }

    #[test]
    fn multipart_without_sdp_or_with_broken_framing() {
        let ct = b"multipart/mixed;boundary=b1";
        let body = b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1--\r\n";
        assert_eq!(find(Some(ct), body).unwrap(), None);
        assert_eq!(
            find(Some(b"multipart/mixed"), body),
            Err(SdpError::Multipart("no boundary parameter"))
        );
        assert_eq!(
            find(
                Some(ct),
                b"--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"
            ),
            Err(SdpError::Multipart("no closing delimiter"))
        );
        assert_eq!(
            find(Some(ct), b"no delimiter at all"),
            Err(SdpError::Multipart("boundary not found"))
        );
        let many: String = (0..40).map(|_| "--b1\r\n\r\nx\r\n").collect::<String>() + "--b1--";
        assert_eq!(
            find(Some(ct), many.as_bytes()),
            Err(SdpError::Multipart("too many parts"))
        );
        // A part without headers is text/plain, not SDP.
        assert_eq!(find(Some(ct), b"--b1\r\n\r\nv=0\r\n--b1--").unwrap(), None);
        // Every truncation of a good body is an error or no SDP, never a panic.
        let (ct, body) = multipart("mixed");
        for n in 0..body.len() {
            let _ = find(Some(ct.as_bytes()), &body.as_bytes()[..n]);
        }
    }

    #[test]
    fn a_valid_offer_passes() {
        let s = validate(PLAIN.as_bytes()).unwrap();
        assert_eq!(
            s,
            SdpSummary {
                media: 1,
                webrtc: false
            }
        );
        let webrtc = "v=0\no=- 1 2 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\nc=IN IP4 0.0.0.0\na=ice-ufrag:x\n";
        assert_eq!(
            validate(webrtc.as_bytes()).unwrap(),
            SdpSummary {
                media: 1,
                webrtc: true
            }
        );
        let v6 = "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 4000/2 RTP/AVP 0\r\n";
        assert!(validate(v6.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_offers_get_a_reason_naming_the_line() {
        let cases: &[(&str, &str)] = &[
            ("", "malformed SDP: empty"),
            ("x", "malformed SDP: line 1 is not type=value"),
            (
                "o=- 1 1 IN IP4 1.2.3.4\r\n",
                "malformed SDP: the first line must be v=0",
            ),
            (
                "v=0\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 1.2.3.4\r\n",
                "malformed SDP: no o= line",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",
                "malformed SDP: no s= line",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\n",
                "malformed SDP: no m= line",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n",
                "malformed SDP: media section 1 has no c= line and there is no session-level c=",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio port RTP/AVP 0\r\n",
                "malformed SDP: line 5: m= port \"port\" is not a number",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 99999 RTP/AVP 0\r\n",
                "malformed SDP: line 5: m= port \"99999\" is not a number",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP\r\n",
                "malformed SDP: line 5: m= needs media, port, protocol and formats",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 999.1.1.1\r\nm=audio 1 RTP/AVP 0\r\n",
                "malformed SDP: line 4: c= address is not an address of its type",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IPX 1.1.1.1\r\nm=audio 1 RTP/AVP 0\r\n",
                "malformed SDP: line 4: c= address type is not IP4 or IP6",
            ),
            (
                "v=0\r\no=- 1 1\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 0\r\n",
                "malformed SDP: line 2: o= needs 6 fields",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nv=0\r\n",
                "malformed SDP: line 4: a second v= line",
            ),
            (
                "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=\x01\r\n",
                "malformed SDP: line 3 has a control character",
            ),
        ];
        for (sdp, reason) in cases {
            assert_eq!(
                validate(sdp.as_bytes()).unwrap_err().to_string(),
                *reason,
                "{sdp:?}"
            );
        }
        assert_eq!(
            validate(&[0xff, 0xfe]).unwrap_err().to_string(),
            "malformed SDP: not UTF-8 text"
        );
        let huge = "a=x\r\n".repeat(20_000);
        assert!(validate(format!("v=0\r\n{huge}").as_bytes()).is_err());
    }
}
