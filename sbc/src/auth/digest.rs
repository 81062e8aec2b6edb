//! Digest computations (RFC 7616, RFC 2617) and the signed nonces, pure and allocation-light.
//!
//! A nonce is `hex(timestamp ‖ random ‖ HMAC-SHA-256(secret, timestamp ‖ random)[..16])`:
//! any replica holding the shared secret can check that it issued the nonce and how old it
//! is, without asking the store.

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use kubesbc_crds::policy::DigestAlgorithm;

/// Bytes of the nonce before hex encoding: 8 timestamp, 8 random, 16 MAC.
const NONCE_RAW: usize = 32;
/// Hex characters of a nonce.
pub const NONCE_LEN: usize = NONCE_RAW * 2;
/// Seconds a nonce may be dated in the future (clock skew between replicas).
pub const MAX_SKEW_SECS: u64 = 30;

/// A hex digest: 32 characters for MD5, 64 for SHA-256.
#[derive(Clone, Copy)]
pub struct Hex {
    buf: [u8; 64],
    len: usize,
}

impl Hex {
    /// The lower-case hex text.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn from_raw(raw: &[u8]) -> Hex {
        let mut buf = [0u8; 64];
        let n = raw.len().min(32);
        hex_into(&raw[..n], &mut buf);
        Hex { buf, len: n * 2 }
    }
}

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

fn hex_into(raw: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in raw.iter().enumerate() {
        if let Some(pair) = out.get_mut(2 * i..2 * i + 2) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
    }
}

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `H(p0:p1:...)` with the algorithm's hash, as hex.
pub fn h(alg: DigestAlgorithm, parts: &[&[u8]]) -> Hex {
    fn run<D: Digest>(parts: &[&[u8]]) -> Hex {
        let mut d = D::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                d.update(b":");
            }
            d.update(p);
        }
        Hex::from_raw(&d.finalize())
    }
    match alg {
        DigestAlgorithm::Md5 => run::<Md5>(parts),
        DigestAlgorithm::Sha256 => run::<Sha256>(parts),
    }
}

/// The digest `response` a client must send for `qop=auth` (RFC 7616 section 3.4.1), from
/// the stored `ha1` (`H(username:realm:password)`); `sess` for the `-sess` variants.
#[allow(clippy::too_many_arguments)]
pub fn response(
    alg: DigestAlgorithm,
    sess: bool,
    ha1: &[u8],
    nonce: &[u8],
    nc: &[u8],
    cnonce: &[u8],
    method: &[u8],
    uri: &[u8],
) -> Hex {
    let sess_ha1;
    let ha1 = if sess {
        sess_ha1 = h(alg, &[ha1, nonce, cnonce]);
        sess_ha1.as_bytes()
    } else {
        ha1
    };
    let ha2 = h(alg, &[method, uri]);
    h(alg, &[ha1, nonce, nc, cnonce, b"auth", ha2.as_bytes()])
}

/// Compares a client's hex response with the expected one in constant time (case-insensitive
/// for the client's hex digits).
pub fn response_matches(expected: &Hex, got: &[u8]) -> bool {
    let want = expected.as_bytes();
    if got.len() != want.len() {
        return false;
    }
    let mut lower = [0u8; 64];
    for (d, s) in lower.iter_mut().zip(got) {
        *d = s.to_ascii_lowercase();
    }
    bool::from(lower[..want.len()].ct_eq(want))
}

/// The parameters of a `Digest` credentials header value (borrowed, quotes removed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// `username`.
    pub username: &'a [u8],
    /// `realm`.
    pub realm: &'a [u8],
    /// `nonce`.
    pub nonce: &'a [u8],
    /// `uri`.
    pub uri: &'a [u8],
    /// `response`.
    pub response: &'a [u8],
    /// `algorithm`, when sent.
    pub algorithm: Option<&'a [u8]>,
    /// `qop`, when sent.
    pub qop: Option<&'a [u8]>,
    /// `nc`, when sent.
    pub nc: Option<&'a [u8]>,
    /// `cnonce`, when sent.
    pub cnonce: Option<&'a [u8]>,
}

/// The `k=v` list after `Digest `, or None when `v` is not Digest credentials.
fn digest_params(v: &[u8]) -> Option<DigestParams<'_>> {
    let v = v.trim_ascii_start();
    let scheme = v.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"digest") || !v.get(6).is_some_and(u8::is_ascii_whitespace) {
        return None;
    }
    Some(DigestParams { rest: &v[6..] })
}

/// The `name=value` pairs of Digest credentials; quoted values come without their quotes.
struct DigestParams<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for DigestParams<'a> {
    type Item = (&'a [u8], &'a [u8]);

    // Every call consumes at least one byte or ends, so iterating ends.
    fn next(&mut self) -> Option<Self::Item> {
        let mut rest = self.rest.trim_ascii_start();
        let eq = rest.iter().position(|b| *b == b'=')?;
        let name = rest[..eq].trim_ascii();
        rest = rest[eq + 1..].trim_ascii_start();
        let value;
        if let Some(q) = rest.strip_prefix(b"\"") {
            // Find the closing quote, skipping escaped characters.
            let mut i = 0;
            while i < q.len() && q[i] != b'"' {
                i += if q[i] == b'\\' { 2 } else { 1 };
            }
            let end = i.min(q.len());
            value = &q[..end];
            rest = q.get(end + 1..).unwrap_or(&[]);
        } else {
            let end = rest.iter().position(|b| *b == b',').unwrap_or(rest.len());
            value = rest[..end].trim_ascii();
            rest = &rest[end..];
        }
        rest = rest.trim_ascii_start();
        self.rest = rest.strip_prefix(b",").unwrap_or(rest);
        Some((name, value))
    }
}

/// The `username` of Digest credentials, whatever else they carry (the dispatcher hashes
/// on it; [`parse_credentials`] is for checking them).
pub fn username(v: &[u8]) -> Option<&[u8]> {
    digest_params(v)?
        .find(|(n, _)| n.eq_ignore_ascii_case(b"username"))
        .map(|(_, v)| v)
}

/// Parses `Digest k=v, k="v", ...`. None when it is not Digest or lacks a required field.
/// Quoted values are returned without their quotes; escapes are kept as written.
pub fn parse_credentials(v: &[u8]) -> Option<Credentials<'_>> {
    let mut c = Credentials::default();
    for (name, value) in digest_params(v)? {
        let lower = |n: &[u8]| name.eq_ignore_ascii_case(n);
        if lower(b"username") {
            c.username = value;
        } else if lower(b"realm") {
            c.realm = value;
        } else if lower(b"nonce") {
            c.nonce = value;
        } else if lower(b"uri") {
            c.uri = value;
        } else if lower(b"response") {
            c.response = value;
        } else if lower(b"algorithm") {
            c.algorithm = Some(value);
        } else if lower(b"qop") {
            c.qop = Some(value);
        } else if lower(b"nc") {
            c.nc = Some(value);
        } else if lower(b"cnonce") {
            c.cnonce = Some(value);
        }
    }
    if c.username.is_empty() || c.nonce.is_empty() || c.response.is_empty() {
        return None;
    }
    Some(c)
}

/// The algorithm named in credentials (absent: MD5) and whether it is a `-sess` variant.
pub fn algorithm(name: Option<&[u8]>) -> Option<(DigestAlgorithm, bool)> {
    let Some(n) = name else {
        return Some((DigestAlgorithm::Md5, false));
    };
    [
        (&b"MD5"[..], DigestAlgorithm::Md5, false),
        (b"MD5-sess", DigestAlgorithm::Md5, true),
        (b"SHA-256", DigestAlgorithm::Sha256, false),
        (b"SHA-256-sess", DigestAlgorithm::Sha256, true),
    ]
    .into_iter()
    .find(|(s, _, _)| s.eq_ignore_ascii_case(n))
    .map(|(_, a, s)| (a, s))
}

/// The name of an algorithm in a challenge.
pub fn algorithm_name(alg: DigestAlgorithm) -> &'static str {
    match alg {
        DigestAlgorithm::Md5 => "MD5",
        DigestAlgorithm::Sha256 => "SHA-256",
    }
}

/// What a nonce turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    /// Issued by a replica holding the secret and still fresh.
    Valid,
    /// Issued by us but expired: challenge again with `stale=true`.
    Stale,
    /// Not ours (forged, garbled, or signed with another secret).
    Invalid,
}

/// Signs and checks nonces with the secret shared by every replica.
#[derive(Clone)]
pub struct NonceKey {
    mac: Hmac<Sha256>,
    lifetime_secs: u64,
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceKey")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish_non_exhaustive()
    }
}

impl NonceKey {
    /// A key from the shared secret; nonces live `lifetime_secs`.
    pub fn new(secret: &[u8], lifetime_secs: u64) -> NonceKey {
        // The secret comes from the configuration, and HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        NonceKey { mac, lifetime_secs }
    }

    fn tag(&self, head: &[u8]) -> [u8; 16] {
        let mut m = self.mac.clone();
        m.update(head);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A new nonce issued at `now_secs` (Unix time), with `random` bytes.
    pub fn issue(&self, now_secs: u64, random: u64) -> [u8; NONCE_LEN] {
        let mut raw = [0u8; NONCE_RAW];
        raw[..8].copy_from_slice(&now_secs.to_be_bytes());
        raw[8..16].copy_from_slice(&random.to_be_bytes());
        let tag = self.tag(&raw[..16]);
        raw[16..].copy_from_slice(&tag);
        let mut out = [0u8; NONCE_LEN];
        hex_into(&raw, &mut out);
        out
    }

    /// Checks a nonce received at `now_secs`.
    pub fn check(&self, nonce: &[u8], now_secs: u64) -> NonceState {
        if nonce.len() != NONCE_LEN {
            return NonceState::Invalid;
        }
        let mut raw = [0u8; NONCE_RAW];
        for (i, pair) in nonce.chunks_exact(2).enumerate() {
            match (unhex(pair[0]), unhex(pair[1])) {
                (Some(a), Some(b)) => raw[i] = (a << 4) | b,
                _ => return NonceState::Invalid,
            }
        }
        let tag = self.tag(&raw[..16]);
        if !bool::from(tag.ct_eq(&raw[16..])) {
            return NonceState::Invalid;
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[..8]);
        let issued = u64::from_be_bytes(ts);
        if issued > now_secs.saturating_add(MAX_SKEW_SECS) {
            return NonceState::Invalid;
        }
        if now_secs.saturating_sub(issued) >= self.lifetime_secs {
            NonceState::Stale
        } else {
            NonceState::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_md5_example() {
        // RFC 2617 section 3.5: Mufasa / "Circle Of Life" at testrealm@host.com.
        let ha1 = h(
            DigestAlgorithm::Md5,
            &[b"Mufasa", b"testrealm@host.com", b"Circle Of Life"],
        );
        let r = response(
            DigestAlgorithm::Md5,
            false,
            ha1.as_bytes(),
            b"dcd98b7102dd2f0e8b11d0f600bfb0c093",
            b"00000001",
            b"0a4f113b",
            b"GET",
            b"/dir/index.html",
        );
        assert_eq!(r.as_bytes(), b"6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_md5_and_sha256_examples() {
        // RFC 7616 section 3.9.1: Mufasa / "Circle of Life" at http-auth@example.org.
        let nonce = b"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce = b"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let uri = b"/dir/index.html";
        for (alg, want) in [
            (
                DigestAlgorithm::Md5,
                &b"8ca523f5e9506fed4657c9700eebdbec"[..],
            ),
            (
                DigestAlgorithm::Sha256,
                b"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let ha1 = h(
                alg,
                &[b"Mufasa", b"http-auth@example.org", b"Circle of Life"],
            );
            let r = response(
                alg,
                false,
                ha1.as_bytes(),
                nonce,
                b"00000001",
                cnonce,
                b"GET",
                uri,
            );
            assert_eq!(r.as_bytes(), want, "{alg:?}");
            assert!(response_matches(&r, &want.to_ascii_uppercase()));
            assert!(!response_matches(&r, &want[1..]));
        }
    }

    #[test]
    fn parses_credentials_with_quotes_and_commas() {
        let v = br#"Digest username="alice", realm="example.com",nonce="abc",
 uri="sip:bob@example.com;transport=udp", response="0123", algorithm=SHA-256,
 cnonce="x,y", qop=auth, nc=00000001, opaque="""#;
        let c = parse_credentials(v).unwrap();
        assert_eq!(c.username, b"alice");
        assert_eq!(c.realm, b"example.com");
        assert_eq!(c.uri, b"sip:bob@example.com;transport=udp");
        assert_eq!(c.cnonce, Some(&b"x,y"[..]));
        assert_eq!(c.qop, Some(&b"auth"[..]));
        assert_eq!(c.nc, Some(&b"00000001"[..]));
        assert_eq!(c.algorithm, Some(&b"SHA-256"[..]));
        assert!(parse_credentials(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l").is_none());
        assert!(parse_credentials(b"Digest realm=\"x\"").is_none());
        // Garbage never panics.
        for g in [
            &b"Digest "[..],
            b"Digest =",
            b"Digest a=\"",
            b"Digest a=\"\\",
            b"Digest ,,,=",
        ] {
            let _ = parse_credentials(g);
        }
    }

    #[test]
    fn algorithms_by_name() {
        assert_eq!(algorithm(None), Some((DigestAlgorithm::Md5, false)));
        assert_eq!(
            algorithm(Some(b"sha-256-SESS")),
            Some((DigestAlgorithm::Sha256, true))
        );
        assert_eq!(algorithm(Some(b"SHA-512-256")), None);
    }

    #[test]
    fn nonces_verify_expire_and_refuse_forgery() {
        let k = NonceKey::new(b"0123456789abcdef", 300);
        let n = k.issue(1_000_000, 42);
        assert_eq!(k.check(&n, 1_000_000), NonceState::Valid);
        assert_eq!(k.check(&n, 1_000_299), NonceState::Valid);
        assert_eq!(k.check(&n, 1_000_300), NonceState::Stale);
        // Another replica with the same secret accepts it; another secret does not.
        let same = NonceKey::new(b"0123456789abcdef", 300);
        assert_eq!(same.check(&n, 1_000_010), NonceState::Valid);
        let other = NonceKey::new(b"another-secret-0", 300);
        assert_eq!(other.check(&n, 1_000_010), NonceState::Invalid);
        // A changed timestamp breaks the signature.
        let mut forged = n;
        forged[15] = if forged[15] == b'0' { b'1' } else { b'0' };
        assert_eq!(k.check(&forged, 1_000_000), NonceState::Invalid);
        // Far future, wrong length, not hex.
        assert_eq!(
            k.check(&k.issue(2_000_000, 1), 1_000_000),
            NonceState::Invalid
        );
        assert_eq!(k.check(&n[1..], 1_000_000), NonceState::Invalid);
        assert_eq!(k.check(&[b'z'; NONCE_LEN], 1_000_000), NonceState::Invalid);
        assert_ne!(k.issue(1_000_000, 43), n);
    }
}
