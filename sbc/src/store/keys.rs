//! Every key the stages keep in the store, built here so that stages sharing a key (guard and
//! auth both block sources and users) spell it the same, and so the key space reads in one
//! place. The Redis store prepends the cluster's key prefix to each of these itself; stages
//! that are given a prefix of their own (auth, throttle) put it first.
//!
//! Hash tags: the part of a key in braces is what a Redis Cluster hashes to pick the key's
//! slot, and a Lua script may only touch keys of one slot. Every key that one decision (one
//! script) touches carries the same tag: a source's keys `{ip}`, a user's `{user}`, a
//! throttle's `{name}` (its counters and its calls' records, which the release script reads
//! together). A decision is then one slot and one round trip in every mode; on one server the
//! braces are just characters. The prefixes never hold braces (validated), so the tag here is
//! always the key's first one.

use std::io::Write as _;
use std::net::IpAddr;

/// Source bans: `ban:{ip}` (the braces are in the key: the hash tag).
pub const BAN_PREFIX: &str = "ban:";
/// Per-source flood counters: `flood:{ip}`.
pub const FLOOD_PREFIX: &str = "flood:";
/// Per-user REGISTER counters: `regflood:{user}` (authenticated users).
pub const REGFLOOD_PREFIX: &str = "regflood:";
/// Blocked users: `regblock:{user}` (authenticated users).
pub const REGBLOCK_PREFIX: &str = "regblock:";
/// Per-source REGISTER counters: `regflood-src:{ip}` (without auth).
pub const REGFLOOD_SRC_PREFIX: &str = "regflood-src:";
/// Blocked sources: `srcblock:{ip}` (REGISTER flood without auth, or failed authentications).
pub const SRCBLOCK_PREFIX: &str = "srcblock:";
/// The highest nonce count seen per nonce: `authnc:{nonce}`.
pub const AUTH_NONCE_PREFIX: &str = "authnc:";
/// Failed authentications per source: `authfail:{ip}`.
pub const AUTH_FAIL_PREFIX: &str = "authfail:";

/// Longest user name used in a key; longer names are cut (bounded keys).
pub const MAX_USER: usize = 128;

/// `prefix` `kind` `{rest}`: a key of a stage that carries its own prefix, tagged by `rest`
/// (a user, a nonce, an address).
pub fn join(prefix: &str, kind: &str, rest: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + kind.len() + rest.len() + 2);
    k.push_str(prefix);
    k.push_str(kind);
    k.push('{');
    k.push_str(rest);
    k.push('}');
    k
}

/// The entity of a tagged key of `kind` (`ban:{192.0.2.1}` → `192.0.2.1`), for listings.
pub fn untag<'a>(key: &'a str, kind: &str) -> Option<&'a str> {
    key.strip_prefix(kind)?.strip_prefix('{')?.strip_suffix('}')
}

/// The block key of an authenticated user, `regblock:{user}`, the name cut at [`MAX_USER`].
pub fn user_block(user: &str) -> String {
    let cut = user.len().min(MAX_USER);
    let user = user.get(..cut).unwrap_or(user);
    join("", REGBLOCK_PREFIX, user)
}

/// A throttle's counter of one window: `{prefix}thr:{name}:{kind}:{segment}:{n}`, the name
/// in braces.
pub fn throttle_window(prefix: &str, name: &str, kind: &str, segment: &str, n: u64) -> String {
    format!("{prefix}thr:{{{name}}}:{kind}:{segment}:{n}")
}

/// A throttle's record of one call: `{prefix}thr:{name}:dlg:{call-id}`, the name in braces
/// (the release script reads the counters it names: same slot).
pub fn throttle_dialog(prefix: &str, name: &str, call_id: &[u8]) -> String {
    format!(
        "{prefix}thr:{{{name}}}:dlg:{}",
        String::from_utf8_lossy(call_id)
    )
}

/// The prefix of a throttle's concurrent-call counters: `{prefix}thr:{name}:cc:`, the name
/// in braces.
pub fn throttle_calls(prefix: &str, name: &str) -> String {
    format!("{prefix}thr:{{{name}}}:cc:")
}

/// The counters of answered calls per destination (the dispatcher's call load), before
/// `<set>/<uri>:<bucket>`. Every call-load key carries the tag `{calls}`: the release script
/// reads a call's record and decrements its counter in one slot.
pub const LOAD_COUNTERS: &str = "load:{calls}:cc:";

/// The record of one answered call of the call load: `load:{calls}:dlg:<Call-ID>`.
pub fn load_dialog(call_id: &[u8]) -> String {
    format!("load:{{calls}}:dlg:{}", String::from_utf8_lossy(call_id))
}

/// `prefix` + `{address}`, formatted on the stack (no allocation per request).
pub(crate) struct IpKey {
    buf: [u8; 64],
    len: usize,
}

impl IpKey {
    pub(crate) fn new(prefix: &str, ip: IpAddr) -> IpKey {
        let mut buf = [0u8; 64];
        let mut w: &mut [u8] = &mut buf;
        // 64 bytes hold the longest prefix (13) plus the longest IPv6 text (45) in braces.
        let _ = write!(w, "{prefix}{{{ip}}}");
        let len = 64 - w.len();
        IpKey { buf, len }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}
