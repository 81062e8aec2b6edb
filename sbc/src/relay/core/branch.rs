//! Transaction identities: our Via branches, server transaction keys, the loop hash.

use crate::sanity::View;
use crate::sip::build;
use crate::sip::{Message, Method};

/// The magic cookie plus our marker: branches we generate start with this.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKkS";

/// A branch of ours: the prefix, the loop hash of the request, and `n` (unique per relay).
pub fn new_branch(loop_hash: u64, n: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(BRANCH_PREFIX.len() + 34);
    b.extend_from_slice(BRANCH_PREFIX);
    push_hex(&mut b, loop_hash);
    b.push(b'.');
    push_hex(&mut b, n);
    b
}

/// The server transaction key (RFC 3261 section 17.2.3): branch, sent-by and method class
/// (ACK and CANCEL match the INVITE's branch; CANCEL has its own class).
pub fn server_key(msg: &Message, view: &View<'_>, method: Method) -> Vec<u8> {
    let via = &view.via;
    let class = match method {
        Method::Invite | Method::Ack => b'I',
        Method::Cancel => b'C',
        _ => b'N',
    };
    let mut k = Vec::with_capacity(64);
    k.push(class);
    match via.branch().filter(|b| b.starts_with(b"z9hG4bK")) {
        Some(b) => k.extend_from_slice(b),
        None => {
            // RFC 2543 peers: fall back to the dialog identifiers.
            k.extend_from_slice(msg.call_id().unwrap_or(b""));
            k.extend_from_slice(&build::itoa(view.cseq));
            k.extend_from_slice(view.from_tag);
        }
    }
    k.push(b'|');
    k.extend_from_slice(via.host);
    k.extend_from_slice(&build::itoa(via.port.unwrap_or(5060)));
    k
}

/// The client transaction key of the CANCEL we send for our INVITE with `branch`.
pub fn client_cancel_key(branch: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(branch.len() + 2);
    key.extend_from_slice(branch);
    key.extend_from_slice(b"\0C");
    key
}

/// Hash over what identifies a request for loop detection (RFC 3261 section 16.3 item 4).
pub fn loop_hash(msg: &Message, view: &View<'_>) -> u64 {
    fnv(
        0,
        &[
            msg.request_uri(),
            msg.call_id().unwrap_or(b""),
            &view.cseq.to_le_bytes(),
            view.from_tag,
            view.to_tag.unwrap_or(b""),
        ],
    )
}

/// FNV-1a over `parts`, each followed by a separator.
pub fn fnv(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for p in parts {
        for b in p.iter() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Appends `n` as 16 lowercase hex digits.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((n >> (i * 4)) & 0xf) as usize]);
    }
}
