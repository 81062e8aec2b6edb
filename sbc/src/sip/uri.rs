//! Borrowed views of the pieces of header values a proxy reads: URIs, name-addrs, Via.

/// A `sip:`/`sips:`/`tel:`... URI, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    /// `sip`, `sips`, `tel`, ... (lowercase compare with `eq_ignore_ascii_case`).
    pub scheme: &'a [u8],
    /// The user part, without the `@`.
    pub user: Option<&'a [u8]>,
    /// The host, without brackets for IPv6.
    pub host: &'a [u8],
    /// The port when written.
    pub port: Option<u16>,
    /// The parameters, starting after the first `;` (empty if none), headers (`?`) excluded.
    pub params: &'a [u8],
}

impl<'a> Uri<'a> {
    /// Parses a URI; None when it has no scheme or no host.
    pub fn parse(b: &'a [u8]) -> Option<Uri<'a>> {
        let colon = b.iter().position(|c| *c == b':')?;
        let scheme = &b[..colon];
        if scheme.is_empty()
            || !scheme
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
        {
            return None;
        }
        let rest = &b[colon + 1..];
        // The user part may contain ';' and '?' (RFC 3261 user-unreserved), and '@' appears
        // only as the userinfo separator (escaped anywhere else), so find '@' first; headers
        // (`?...`) start after the host.
        let (user, hostpart) = match rest.iter().position(|c| *c == b'@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let hostpart = &hostpart[..hostpart
            .iter()
            .position(|c| *c == b'?')
            .unwrap_or(hostpart.len())];
        let semi = hostpart.iter().position(|c| *c == b';');
        let (hostport, params) = match semi {
            Some(i) => (&hostpart[..i], &hostpart[i + 1..]),
            None => (hostpart, &hostpart[hostpart.len()..]),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return None;
        }
        Some(Uri {
            scheme,
            user,
            host,
            port,
            params,
        })
    }

    /// A URI parameter: `Some(Some(v))` for `name=v`, `Some(None)` for a bare `name`.
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        param(self.params, name)
    }

    /// Whether this is `sip:` or `sips:`.
    pub fn is_sip(&self) -> bool {
        self.scheme.eq_ignore_ascii_case(b"sip") || self.scheme.eq_ignore_ascii_case(b"sips")
    }
}

/// Splits `host[:port]` (IPv6 in brackets). None when the port is not a number.
pub fn split_host_port(b: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let b = trim(b);
    if let Some(rest) = b.strip_prefix(b"[") {
        let close = rest.iter().position(|c| *c == b']')?;
        let host = &rest[..close];
        let after = &rest[close + 1..];
        return match after.strip_prefix(b":") {
            Some(p) => Some((host, Some(parse_port(p)?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match b.iter().rposition(|c| *c == b':') {
        // An IPv6 address outside brackets (RFC 5118 4.2) is not a host.
        Some(i) if b[..i].contains(&b':') => None,
        Some(i) => Some((&b[..i], Some(parse_port(&b[i + 1..])?))),
        None => Some((b, None)),
    }
}

fn parse_port(b: &[u8]) -> Option<u16> {
    let n = super::parse::parse_u32(trim(b))?;
    u16::try_from(n).ok().filter(|p| *p != 0)
}

fn trim(b: &[u8]) -> &[u8] {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    &b[s..e.max(s)]
}

/// Looks up `name` in a `;`-separated parameter list (case-insensitive names).
pub fn param<'a>(params: &'a [u8], name: &str) -> Option<Option<&'a [u8]>> {
    for p in params.split(|c| *c == b';') {
        let p = trim(p);
        let (k, v) = match p.iter().position(|c| *c == b'=') {
            Some(i) => (trim(&p[..i]), Some(trim(&p[i + 1..]))),
            None => (p, None),
        };
        if k.eq_ignore_ascii_case(name.as_bytes()) {
            return Some(v);
        }
    }
    None
}

/// The URI inside a name-addr (`"Bob" <sip:bob@x>;tag=1` gives `sip:bob@x`) or an addr-spec
/// without brackets (`sip:bob@x;tag=1` gives `sip:bob@x`, header params cut).
pub fn name_addr_uri(v: &[u8]) -> &[u8] {
    if let Some(lt) = v.iter().position(|c| *c == b'<')
        && let Some(gt) = v[lt..].iter().position(|c| *c == b'>')
    {
        return &v[lt + 1..lt + gt];
    }
    let end = v.iter().position(|c| *c == b';').unwrap_or(v.len());
    trim(&v[..end])
}

/// The header parameters after a name-addr (`;tag=1` part), as a parameter list.
pub fn name_addr_params(v: &[u8]) -> &[u8] {
    let after = match v.iter().rposition(|c| *c == b'>') {
        Some(gt) => &v[gt + 1..],
        None => v,
    };
    match after.iter().position(|c| *c == b';') {
        Some(i) => &after[i + 1..],
        None => &after[after.len()..],
    }
}

/// The `tag` parameter of a From or To value.
pub fn tag(v: &[u8]) -> Option<&[u8]> {
    param(name_addr_params(v), "tag")
        .flatten()
        .filter(|t| !t.is_empty())
}

/// A Via value: `SIP/2.0/UDP host:port;branch=...;received=...;rport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// `UDP`, `TCP`, `TLS`, `WS`, `WSS`, `SCTP`.
    pub transport: &'a [u8],
    /// The sent-by host.
    pub host: &'a [u8],
    /// The sent-by port when written.
    pub port: Option<u16>,
    /// Parameters after the sent-by.
    pub params: &'a [u8],
}

impl<'a> Via<'a> {
    /// Parses one Via value. None when it is not `SIP/2.0/TRANSPORT sent-by`.
    pub fn parse(b: &'a [u8]) -> Option<Via<'a>> {
        let b = trim(b);
        let mut parts = b.splitn(3, |c| *c == b'/');
        let name = trim(parts.next()?);
        let version = trim(parts.next()?);
        let rest = parts.next()?;
        if !name.eq_ignore_ascii_case(b"SIP") || version != b"2.0" {
            return None;
        }
        let rest = trim(rest);
        let sp = rest.iter().position(|c| c.is_ascii_whitespace())?;
        let transport = &rest[..sp];
        let sent = trim(&rest[sp..]);
        let semi = sent.iter().position(|c| *c == b';');
        let (hostport, params) = match semi {
            Some(i) => (&sent[..i], &sent[i + 1..]),
            None => (sent, &sent[sent.len()..]),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() || transport.is_empty() {
            return None;
        }
        Some(Via {
            transport,
            host,
            port,
            params,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        param(self.params, "branch").flatten()
    }

    /// A Via parameter.
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        param(self.params, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parts() {
        let u = Uri::parse(b"sip:alice;x=1@[::1]:5070;transport=tcp;lr?h=v").unwrap();
        assert_eq!(u.user, Some(&b"alice;x=1"[..]));
        assert_eq!(u.host, b"::1");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param("transport"), Some(Some(&b"tcp"[..])));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.param("x"), None);
        let u = Uri::parse(b"sip:10.0.0.1").unwrap();
        assert_eq!((u.host, u.port, u.user), (&b"10.0.0.1"[..], None, None));
        assert!(Uri::parse(b"sip:host:99999").is_none());
        assert!(Uri::parse(b"nocolon").is_none());
        assert!(Uri::parse(b"sip:").is_none());
        assert!(Uri::parse(b"sip:2001:db8::10").is_none(), "RFC 5118 4.2");
        // RFC 4475 3.1.1.2: '?' and ';' in the user part, '@' ends it.
        let u = Uri::parse(b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com").unwrap();
        assert_eq!(u.host, b"example.com");
        let u = Uri::parse(b"sip:user@example.com?Route=%3Csip:example.com%3E").unwrap();
        assert_eq!((u.host, u.params), (&b"example.com"[..], &b""[..]));
        // RFC 5118 4.3 and 4.4: inside the brackets is the address, a port only after them.
        let u = Uri::parse(b"sip:[2001:db8::10:5070]").unwrap();
        assert_eq!((u.host, u.port), (&b"2001:db8::10:5070"[..], None));
        let u = Uri::parse(b"sip:[2001:db8::10]:5070").unwrap();
        assert_eq!((u.host, u.port), (&b"2001:db8::10"[..], Some(5070)));
    }

    #[test]
    fn name_addr_and_tag() {
        let v = b"\"Bob\" <sip:bob@x;transport=udp>;tag=abc;foo";
        assert_eq!(name_addr_uri(v), b"sip:bob@x;transport=udp");
        assert_eq!(tag(v), Some(&b"abc"[..]));
        assert_eq!(name_addr_uri(b"sip:bob@x;tag=1"), b"sip:bob@x");
        assert_eq!(tag(b"sip:bob@x;tag=1"), Some(&b"1"[..]));
        assert_eq!(tag(b"<sip:bob@x>"), None);
    }

    #[test]
    fn via_parts() {
        let v = Via::parse(b"SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKx;rport;received=1.2.3.4")
            .unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"10.0.0.1");
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.branch(), Some(&b"z9hG4bKx"[..]));
        assert_eq!(v.param("rport"), Some(None));
        assert!(Via::parse(b"SIP/2.0 10.0.0.1").is_none());
        assert!(Via::parse(b"garbage").is_none());
    }
}
