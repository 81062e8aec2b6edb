//! Kamailio's dispatcher hash (`ds_get_hash`) and the URI keys it is fed with
//! (`get_uri_hash_keys`), so a hash algorithm picks the same destination as Kamailio.
//!
//! Everything here works on borrowed bytes and never allocates: it runs per request.

/// Kamailio's `ds_get_hash(x, y)`: a word-wise xor-shift sum over both keys, folded.
///
/// Kamailio reads the bytes through a (signed on x86) `char *`, so bytes >= 0x80 are
/// sign-extended before shifting; `byte` reproduces that, so non-ASCII keys hash alike too.
/// Never returns 0 (Kamailio maps 0 to 1).
pub fn ds_get_hash(x: &[u8], y: Option<&[u8]>) -> u32 {
    let mut h = sum(0, x);
    if let Some(y) = y {
        h = sum(h, y);
    }
    h = h
        .wrapping_add(h >> 11)
        .wrapping_add((h >> 13).wrapping_add(h >> 23));
    if h == 0 { 1 } else { h }
}

/// A byte as C's signed `char`, promoted to `int`, seen as `unsigned`.
fn byte(b: u8) -> u32 {
    i32::from(b as i8) as u32
}

fn sum(mut h: u32, s: &[u8]) -> u32 {
    let mut chunks = s.chunks_exact(4);
    for c in &mut chunks {
        let v = (byte(c[0]) << 24)
            .wrapping_add(byte(c[1]) << 16)
            .wrapping_add(byte(c[2]) << 8)
            .wrapping_add(byte(c[3]));
        h = h.wrapping_add(v ^ (v >> 3));
    }
    let mut v: u32 = 0;
    for &b in chunks.remainder() {
        v = (v << 8).wrapping_add(byte(b));
    }
    h.wrapping_add(v ^ (v >> 3))
}

/// Strips the whitespace Kamailio's `trim()` removes (space, tab, CR, LF) from both ends.
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

/// The hash Kamailio's `ds_hash_fromuri`/`ds_hash_touri`/`ds_hash_ruri` compute for `uri`:
/// `ds_get_hash(user, host[:port])`, the port included only when present and not the
/// scheme's default (5060, 5061 for `sips:`). Parameters and headers are not hashed.
///
/// Kamailio fails the selection for a URI it cannot parse; we hash the whole text instead,
/// so such a request still lands somewhere deterministic.
pub fn uri_hash(uri: &[u8]) -> u32 {
    match uri_keys(uri) {
        Some((user, hostport)) => ds_get_hash(user, Some(hostport)),
        None => ds_get_hash(trim(uri), None),
    }
}

/// Splits a SIP/SIPS/TEL URI into Kamailio's two hash keys: the user part and `host[:port]`.
fn uri_keys(uri: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut uri = trim(uri);
    // Tolerate a whole name-addr (`"Alice" <sip:a@h>;tag=1`): a bare URI never holds `<`.
    if let Some(open) = uri.iter().position(|&b| b == b'<') {
        let inner = &uri[open + 1..];
        let end = inner.iter().position(|&b| b == b'>').unwrap_or(inner.len());
        uri = &inner[..end];
    }
    let colon = uri.iter().position(|&b| b == b':')?;
    let (scheme, rest) = (&uri[..colon], &uri[colon + 1..]);
    let secure = if scheme.eq_ignore_ascii_case(b"sip") {
        false
    } else if scheme.eq_ignore_ascii_case(b"sips") {
        true
    } else if scheme.eq_ignore_ascii_case(b"tel") || scheme.eq_ignore_ascii_case(b"tels") {
        // Kamailio moves a tel: number into the user part and leaves the host empty.
        let end = rest
            .iter()
            .position(|&b| b == b';' || b == b'?')
            .unwrap_or(rest.len());
        return Some((&rest[..end], &[]));
    } else {
        return None;
    };

    let (userinfo, hostpart) = match rest.iter().position(|&b| b == b'@') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (&[][..], rest),
    };
    let mut user = match userinfo.iter().position(|&b| b == b':') {
        Some(p) => &userinfo[..p],
        None => userinfo,
    };
    let hp_end = hostpart
        .iter()
        .position(|&b| b == b';' || b == b'?')
        .unwrap_or(hostpart.len());
    let hostport = &hostpart[..hp_end];
    if hostport.is_empty() {
        return None;
    }
    // Kamailio's phone2tel (on by default): with `user=phone` the user params are not hashed.
    if has_user_phone(&hostpart[hp_end..])
        && let Some(semi) = user.iter().position(|&b| b == b';')
    {
        user = &user[..semi];
    }
    let host_len = if hostport[0] == b'[' {
        hostport.iter().position(|&b| b == b']').map(|p| p + 1)?
    } else {
        hostport
            .iter()
            .position(|&b| b == b':')
            .unwrap_or(hostport.len())
    };
    let host = &hostport[..host_len];
    let port = match hostport.get(host_len) {
        Some(b':') => &hostport[host_len + 1..],
        _ => &[][..],
    };
    if port.is_empty() {
        return Some((user, host));
    }
    let default = if secure { 5061 } else { 5060 };
    if parse_port(port) == Some(default) {
        Some((user, host))
    } else {
        Some((user, hostport))
    }
}

fn parse_port(p: &[u8]) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok()
}

fn has_user_phone(params: &[u8]) -> bool {
    params
        .split(|&b| b == b';')
        .any(|p| p.eq_ignore_ascii_case(b"user=phone"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values come from Kamailio's ds_get_hash compiled standalone
    // (src/modules/dispatcher/dispatch.c, gcc on x86_64, signed char):
    //   "a84b4c76e66710@pc33.atlanta.com" => 2175018094
    //   "abc"                             => 7167810
    //   ""                                => 1
    //   ("alice", "example.com")          => 1442294598
    //   ("bob", "10.0.0.1:5080")          => 2701604707
    //   ("1234", "")                      => 924651761
    //   "caf\xc3\xa9-id"                  => 723306890
    #[test]
    fn hash_matches_kamailio() {
        assert_eq!(
            ds_get_hash(b"a84b4c76e66710@pc33.atlanta.com", None),
            2175018094
        );
        assert_eq!(ds_get_hash(b"abc", None), 7167810);
        assert_eq!(ds_get_hash(b"", None), 1);
        assert_eq!(ds_get_hash(b"alice", Some(b"example.com")), 1442294598);
        assert_eq!(ds_get_hash(b"bob", Some(b"10.0.0.1:5080")), 2701604707);
        assert_eq!(ds_get_hash(b"1234", Some(b"")), 924651761);
        assert_eq!(ds_get_hash("café-id".as_bytes(), None), 723306890);
    }

    #[test]
    fn uri_keys_follow_kamailio() {
        let k = |u: &'static str| uri_keys(u.as_bytes()).map(|(a, b)| (a.to_vec(), b.to_vec()));
        let kk = |a: &str, b: &str| Some((a.as_bytes().to_vec(), b.as_bytes().to_vec()));
        assert_eq!(k("sip:alice@example.com"), kk("alice", "example.com"));
        assert_eq!(k("sip:alice@example.com:5060"), kk("alice", "example.com"));
        assert_eq!(
            k("sip:alice@example.com:5080;transport=tcp"),
            kk("alice", "example.com:5080")
        );
        assert_eq!(k("sips:alice@example.com:5061"), kk("alice", "example.com"));
        assert_eq!(
            k("sips:alice@example.com:5060"),
            kk("alice", "example.com:5060")
        );
        assert_eq!(k("sip:alice:secret@h"), kk("alice", "h"));
        assert_eq!(k("sip:example.com"), kk("", "example.com"));
        assert_eq!(k("sip:bob@[::1]:5070"), kk("bob", "[::1]:5070"));
        assert_eq!(k("sip:bob@[::1]"), kk("bob", "[::1]"));
        assert_eq!(k(" <sip:bob@h?Subject=x> "), kk("bob", "h"));
        assert_eq!(k("\"Bob\" <sip:bob@h:5070>;tag=1"), kk("bob", "h:5070"));
        assert_eq!(k("sip:+123;npdi@h;user=phone"), kk("+123", "h"));
        assert_eq!(k("sip:+123;npdi@h"), kk("+123;npdi", "h"));
        assert_eq!(k("tel:+4930123;phone-context=x"), kk("+4930123", ""));
        assert_eq!(k("http://x"), None);
        assert_eq!(k("sip:"), None);
    }

    #[test]
    fn trim_strips_sip_whitespace() {
        assert_eq!(trim(b" \tabc\r\n"), b"abc");
        assert_eq!(trim(b"   "), b"");
    }
}
