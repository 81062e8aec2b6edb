//! Sealing the values topology hiding carries in messages: AES-256-GCM (ring) under keys
//! derived from the configured ones (the first seals, every one opens), a kind byte as
//! associated data, the token `hex(nonce + ciphertext + tag)`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use super::Refused;

/// The AEAD tag's length.
const TAG_LEN: usize = 16;

/// The keys of a topology stage.
pub(super) struct Sealer {
    /// The first seals, every one opens.
    keys: Vec<LessSafeKey>,
    /// The key that derives the nonce of a deterministic seal (a Call-ID) from its value.
    siv_key: Vec<u8>,
}

impl Sealer {
    /// A sealer over `keys` (the first seals).
    pub(super) fn new(keys: &[Vec<u8>]) -> Sealer {
        Sealer {
            keys: keys.iter().filter_map(|k| aead_key(k)).collect(),
            siv_key: keys.first().map_or_else(Vec::new, |k| {
                let mut h = Sha256::new();
                h.update(b"kubesbc relay.topology nonce v1\0");
                h.update(k);
                h.finalize().to_vec()
            }),
        }
    }

    /// How many keys open.
    pub(super) fn keys(&self) -> usize {
        self.keys.len()
    }

    /// `data` sealed with a nonce derived from it: one value, one token (a Call-ID must
    /// look the same in every message of its dialog). Two values never share a nonce.
    pub(super) fn seal_fixed(&self, kind: u8, data: &[u8]) -> Vec<u8> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.siv_key)
            .expect("HMAC takes keys of any length");
        m.update(&[kind]);
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&full[..NONCE_LEN]);
        self.seal_with(kind, data, nonce)
    }

    /// `data` encrypted with its tag, after its nonce, in hex (a token: fits a URI or Via
    /// parameter as is).
    pub(super) fn seal(&self, kind: u8, data: &[u8]) -> Vec<u8> {
        self.seal_with(kind, data, next_nonce())
    }

    /// [`Sealer::seal`] with `nonce`, which must never seal another value under this key.
    fn seal_with(&self, kind: u8, data: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut body = Vec::with_capacity(data.len() + TAG_LEN);
        body.extend_from_slice(data);
        let sealed = self.keys.first().is_some_and(|k| {
            k.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([kind]),
                &mut body,
            )
            .is_ok()
        });
        if !sealed {
            // No key, or ring refused (a value over GCM's 64 GiB): a token nothing opens.
            tracing::warn!("relay.topology: a value could not be sealed");
            return hex(&nonce);
        }
        let mut out = hex(&nonce);
        out.extend_from_slice(&hex(&body));
        out
    }

    /// The value a token carries, if some key opens it.
    pub(super) fn open(&self, kind: u8, token: &[u8]) -> Result<Vec<u8>, Refused> {
        let raw = unhex(token).ok_or(Refused::BadToken)?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(Refused::BadToken);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Refused::BadToken)?;
        for k in &self.keys {
            let mut buf = sealed.to_vec();
            if let Ok(plain) = k.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([kind]),
                &mut buf,
            ) {
                let n = plain.len();
                buf.truncate(n);
                return Ok(buf);
            }
        }
        Err(Refused::BadToken)
    }
}

/// The AES-256 key of a configured key (any length; `keyFile` asks for 16 characters).
fn aead_key(secret: &[u8]) -> Option<LessSafeKey> {
    let mut h = Sha256::new();
    h.update(b"kubesbc relay.topology v1\0");
    h.update(secret);
    // A SHA-256 digest is 32 bytes, AES-256's key length: ring takes it.
    match UnboundKey::new(&AES_256_GCM, &h.finalize()) {
        Ok(k) => Some(LessSafeKey::new(k)),
        Err(_) => {
            tracing::error!("relay.topology: a key was refused by the cipher; skipped");
            None
        }
    }
}

/// A nonce not used before under a key: 96 random bits drawn once per process (replicas
/// sharing a key start far apart), then counted up.
fn next_nonce() -> [u8; NONCE_LEN] {
    static START: OnceLock<([u8; 4], AtomicU64)> = OnceLock::new();
    let (prefix, counter) = START.get_or_init(|| {
        let k = random_key();
        let [a, b, c, d, e, f, g, h, i, j, l, m, ..] = k;
        let start = u64::from_be_bytes([e, f, g, h, i, j, l, m]);
        ([a, b, c, d], AtomicU64::new(start))
    });
    let n = counter.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; NONCE_LEN];
    out[..4].copy_from_slice(prefix);
    out[4..].copy_from_slice(&n.to_be_bytes());
    out
}

/// A fresh 32-byte key from the operating system's generator (ring's `SystemRandom`).
/// Should that fail, a fastrand key, logged: the values still verify on this replica, they
/// are only easier to forge.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
        tracing::warn!("relay.topology: the system random generator failed; using fastrand");
        key.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    key
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `b` in lower-case hex.
pub(super) fn hex(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() * 2);
    for c in b {
        out.push(HEX[(c >> 4) as usize]);
        out.push(HEX[(c & 15) as usize]);
    }
    out
}

/// Hex (either case) back to bytes; None when it is not hex.
fn unhex(h: &[u8]) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    h.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}
