//! Proxy-Require (RFC 3261 section 16.3 item 5): a request that requires of proxies an
//! extension the sbc does not implement is answered `420 Bad Extension` with an
//! `Unsupported` header listing the option tags. The sbc implements no proxy extension, so
//! every option tag is unsupported. `Require` is for the UAS and is relayed untouched.

use crate::sip::Message;

/// The option tags of the request's Proxy-Require headers, comma-separated, when it has
/// any: the value of the 420's `Unsupported` header.
pub fn unsupported(req: &Message) -> Option<Vec<u8>> {
    let mut tags: Vec<u8> = Vec::new();
    for h in req.headers.iter().filter(|h| {
        req.slice(h.name_span)
            .eq_ignore_ascii_case(b"proxy-require")
    }) {
        for tag in req.slice(h.value).split(|c| *c == b',') {
            let tag = tag.trim_ascii();
            if tag.is_empty() {
                continue;
            }
            if !tags.is_empty() {
                tags.extend_from_slice(b", ");
            }
            tags.extend_from_slice(tag);
        }
    }
    (!tags.is_empty()).then_some(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(extra: &str) -> Message {
        let s = format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(s), 65535).unwrap()
    }

    #[test]
    fn proxy_require_tags_are_listed_and_require_is_not_ours() {
        assert_eq!(unsupported(&msg("")), None);
        assert_eq!(unsupported(&msg("Require: 100rel\r\n")), None);
        assert_eq!(
            unsupported(&msg("Proxy-Require: foo, bar\r\nProxy-Require:  baz \r\n")).as_deref(),
            Some(&b"foo, bar, baz"[..])
        );
    }
}
