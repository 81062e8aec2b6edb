//! Shared state: one trait, an in-memory implementation, a Redis one, and a fallback that
//! answers from memory while Redis is unreachable.
//!
//! Every [`Store`] method is one decision and, for Redis, one round trip. The trait is
//! dyn-compatible (methods return boxed futures) so the sbc holds an `Arc<dyn Store>` and
//! picks the implementation at startup. Callers treat an error as "the shared store is
//! unreachable" and fall back to local limits.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

mod coalesce;
mod fallback;
pub mod keys;
mod memory;
mod redis;
mod release;
#[cfg(test)]
pub(crate) mod testing;

pub use self::redis::{RedisStore, RedisStoreError, Target as RedisTarget};
pub use coalesce::Coalescing;
pub use fallback::{FallbackStore, StoreMetrics};
pub use memory::{DEFAULT_MAX_ENTRIES, MemoryStore};
pub use release::{BUCKETS, DialogBuckets, Release, Releaser};

/// A counter's value as read with [`Op::Get`]: 0 when it is not a number or is negative.
pub fn parse_count(v: &[u8]) -> u64 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
}

/// What a store operation can fail with.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A counter operation met a value that is not an integer.
    #[error("value of key {0:?} is not an integer")]
    NotAnInteger(String),
    /// A counter would overflow.
    #[error("counter {0:?} would overflow")]
    Overflow(String),
    /// The in-memory store holds its maximum number of keys.
    #[error("store is full ({0} keys)")]
    Full(usize),
    /// The backend refused the command (a key of another type, a bad configuration).
    #[error("store refused the command: {0}")]
    Rejected(String),
}

/// The future every [`Store`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Key/value state shared by every sbc replica. Keys are UTF-8, values bytes; a key with a
/// TTL disappears when it expires.
pub trait Store: Send + Sync {
    /// Fixed-window counter: increments `key` and returns the count in the current window. The
    /// first increment starts the window, which ends (and the key expires) `window` later.
    /// (Redis: `INCR` then `EXPIRE key window NX`, in one pipeline.)
    fn incr_window<'a>(&'a self, key: &'a str, window: Duration) -> StoreFuture<'a, u64>;

    /// The value of `key`, if it exists. A counter reads as its decimal text.
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>>;

    /// Sets `key` to `value`, expiring after `ttl`. (Redis: `SET key value PX ttl`.)
    fn set_ex<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()>;

    /// Removes `key`; true when it existed.
    fn del<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool>;

    /// Adds `delta` (possibly negative) to the counter `key` (0 when absent), sets its TTL to
    /// `ttl`, and returns the new value. Safe under concurrent calls from many replicas: the
    /// TTL only cleans up counters whose owner died. (Redis: `INCRBY` + `PEXPIRE`, pipelined.)
    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> StoreFuture<'a, i64>;

    /// Up to `limit` live keys starting with `prefix` and their values, sorted by key (for
    /// listings such as the bans). (Redis: `SCAN MATCH prefix*` + `MGET`.)
    fn list_prefix<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Bytes)>>;

    /// Every field of the hash `key` (empty when absent), e.g. the credentials
    /// `subscriber:<user>` with `ha1`. (Redis: `HGETALL`.)
    fn hash_get_all<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, Bytes)>>;

    /// Sets fields of the hash `key`, with a TTL (`None`: no expiry), for provisioning and
    /// tests. (Redis: `HSET` + `PEXPIRE`.)
    fn hash_set<'a>(
        &'a self,
        key: &'a str,
        fields: Vec<(String, Bytes)>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()>;

    /// Pike-like flood decision in one step (Redis: one Lua script). When `ban_key` exists
    /// the answer is [`FloodOutcome::Banned`] with its remaining time and nothing is counted.
    /// Otherwise `counter_key` is counted in a fixed window of `window`; the hit that takes
    /// the count over `limit` sets `ban_key` to `ban_value` for `ban_ttl`, resets the counter
    /// and answers [`FloodOutcome::Banned`] with `new: true`.
    fn flood_hit<'a>(&'a self, hit: FloodHit<'a>) -> StoreFuture<'a, FloodOutcome>;

    /// [`Store::flood_hit`] for many sources in one round trip (Redis: one Lua script), with
    /// one answer per hit, in order. The guard syncs its local tallies with this.
    fn flood_sync<'a>(&'a self, hits: &'a [FloodHit<'a>]) -> StoreFuture<'a, Vec<FloodOutcome>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(hits.len());
            for h in hits {
                out.push(self.flood_hit(h.clone()).await?);
            }
            Ok(out)
        })
    }

    /// Like [`Store::list_prefix`], with each key's remaining time to live.
    fn list_prefix_ttl<'a>(&'a self, prefix: &'a str, limit: usize)
    -> StoreFuture<'a, Vec<Listed>>;

    /// Runs `ops` in order as one round trip (Redis: one Lua script, atomic) and returns one
    /// result per operation, in order. Each operation succeeds or fails on its own (a counter
    /// that is not an integer fails only its operation); the outer error means the backend
    /// did not answer at all.
    fn batch<'a>(&'a self, ops: &'a [Op]) -> StoreFuture<'a, Vec<Result<OpResult, StoreError>>>;

    /// [`Store::batch`] of operations the caller no longer needs, so a store that queues them
    /// (see [`Coalescing`]) takes them without a copy.
    fn batch_owned(&self, ops: Vec<Op>) -> StoreFuture<'_, Vec<Result<OpResult, StoreError>>> {
        Box::pin(async move { self.batch(&ops).await })
    }

    /// Ends a counted call in one round trip (Redis: one Lua script): when the dialog key
    /// exists it is deleted and, if its counter bucket still lives, that bucket is decremented.
    /// True when this call released the slot; a dialog released twice (a BYE seen by two
    /// replicas) is released once.
    fn release_dialog<'a>(&'a self, release: DialogRelease<'a>) -> StoreFuture<'a, bool>;

    /// [`Store::release_dialog`] for many calls in one round trip (Redis: one Lua script),
    /// with one answer per release, in order.
    fn release_dialogs<'a>(
        &'a self,
        releases: &'a [DialogRelease<'a>],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(releases.len());
            for r in releases {
                out.push(self.release_dialog(r.clone()).await?);
            }
            Ok(out)
        })
    }

    /// Checks that the backend answers (Redis: `PING`). Always true for local stores.
    fn ping(&self) -> StoreFuture<'_, ()>;
}

/// One operation of [`Store::batch`]; each behaves as the [`Store`] method of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// [`Store::get`]: answers [`OpResult::Value`].
    Get(String),
    /// [`Store::incr_window`] with this window: answers [`OpResult::Count`].
    IncrWindow(String, Duration),
    /// [`Store::incr_by`] with this delta and TTL: answers [`OpResult::Count`].
    IncrBy(String, i64, Duration),
    /// [`Store::set_ex`] with this value and TTL: answers [`OpResult::Done`].
    SetEx(String, Bytes, Duration),
    /// [`Store::del`]: answers [`OpResult::Deleted`].
    Del(String),
    /// Every field of the hash at exactly this key, *without* the store's key prefix (data
    /// the user provisions with their own tooling, such as the credentials
    /// `subscriber:<user>`): answers [`OpResult::Fields`] (empty when absent). A store that
    /// cannot reach the shared backend fails this operation rather than answering from
    /// local memory, which never holds such data.
    HashGetAllUnprefixed(String),
    /// Compare-and-set of a maximum (the nonce counts of digest auth): when the value is
    /// greater than the counter (0 when absent), the counter takes it and its TTL is set to
    /// the duration. Answers [`OpResult::Count`] with the counter *before* the operation, so
    /// the caller knows whether its value advanced it.
    MaxAdvance(String, u64, Duration),
}

impl Op {
    /// The key the operation works on.
    pub fn key(&self) -> &str {
        match self {
            Op::Get(k)
            | Op::IncrWindow(k, _)
            | Op::IncrBy(k, _, _)
            | Op::SetEx(k, _, _)
            | Op::Del(k)
            | Op::HashGetAllUnprefixed(k)
            | Op::MaxAdvance(k, _, _) => k,
        }
    }
}

/// The answer to one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// The value read by [`Op::Get`].
    Value(Option<Bytes>),
    /// The counter after [`Op::IncrWindow`] or [`Op::IncrBy`].
    Count(i64),
    /// [`Op::SetEx`] stored its value.
    Done,
    /// Whether the key of [`Op::Del`] existed.
    Deleted(bool),
    /// The fields read by [`Op::HashGetAllUnprefixed`].
    Fields(Vec<(String, Bytes)>),
}

/// The arguments of [`Store::release_dialog`].
///
/// The dialog key holds `<bucket>|<segment>`; the counter released is
/// `<counter_prefix><segment>:<bucket>`, which lives until
/// `(bucket + 1) * bucket_ms + timeout_ms` (milliseconds since the epoch).
#[derive(Debug, Clone)]
pub struct DialogRelease<'a> {
    /// The dialog key (`thr:<throttle>:dlg:<Call-ID>`).
    pub dialog_key: &'a str,
    /// The counter keys' common prefix (`thr:<throttle>:cc:`).
    pub counter_prefix: &'a str,
    /// Length of a bucket.
    pub bucket_ms: u64,
    /// How long a bucket lives after it ends (the dialog timeout).
    pub timeout_ms: u64,
    /// Now, in milliseconds since the epoch (the caller's clock, shared by all replicas).
    pub now_ms: u64,
}

impl DialogRelease<'_> {
    /// Parses a dialog value into the counter key to decrement and its remaining TTL;
    /// None when the value is not one the throttle wrote or the bucket has expired.
    pub(crate) fn counter(&self, value: &[u8]) -> Option<(String, Duration)> {
        let (b, seg) = std::str::from_utf8(value).ok()?.split_once('|')?;
        if !b.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let bucket: u64 = b.parse().ok()?;
        let expire = bucket
            .saturating_add(1)
            .saturating_mul(self.bucket_ms.max(1))
            .saturating_add(self.timeout_ms)
            .saturating_sub(self.now_ms);
        if expire == 0 || seg.is_empty() {
            return None;
        }
        // The bucket as written (not re-formatted), as the Redis script does.
        Some((
            format!("{}{seg}:{b}", self.counter_prefix),
            Duration::from_millis(expire),
        ))
    }
}

/// The arguments of [`Store::flood_hit`].
#[derive(Debug, Clone)]
pub struct FloodHit<'a> {
    /// The window counter (`flood:{ip}`).
    pub counter_key: &'a str,
    /// The ban (`ban:{ip}`).
    pub ban_key: &'a str,
    /// Hits allowed per window.
    pub limit: u64,
    /// Length of the window.
    pub window: Duration,
    /// How long a ban lasts.
    pub ban_ttl: Duration,
    /// What the ban key holds (see [`crate::guard::BanRecord`]).
    pub ban_value: Bytes,
    /// Hits to count at once (a replica's local tally since its last sync); 0 only reads the
    /// count and the ban.
    pub hits: u64,
}

/// The answer of [`Store::flood_hit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloodOutcome {
    /// Counted; `count` hits so far in this window.
    Allowed {
        /// Hits in the current window, this one included.
        count: u64,
    },
    /// The source is banned.
    Banned {
        /// Time left on the ban.
        remaining: Duration,
        /// Whether this hit set the ban.
        new: bool,
    },
}

/// One entry of [`Store::list_prefix_ttl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key (without the store's key prefix).
    pub key: String,
    /// Its value.
    pub value: Bytes,
    /// Time left before it expires.
    pub ttl: Duration,
}

pub(crate) fn ready<'a, T: Send + 'a>(r: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(r))
}

/// Checks shared by the memory and Redis tests: the operations the auth stage relies on.
#[cfg(test)]
pub(crate) mod auth_ops {
    use super::*;

    /// `store` is checked; `provision` writes keys without `store`'s prefix (the same store
    /// when it has none). After the call `store` holds the counter `nc:x` at 3.
    pub(crate) async fn credentials_and_nonce_counts(store: &dyn Store, provision: &dyn Store) {
        let ha1 = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
        provision
            .hash_set("subscriber:alice", vec![("ha1".into(), ha1.clone())], None)
            .await
            .unwrap();
        let ttl = Duration::from_secs(60);
        let adv = |n| Op::MaxAdvance("nc:x".into(), n, ttl);
        let ops = [
            Op::HashGetAllUnprefixed("subscriber:alice".into()),
            Op::HashGetAllUnprefixed("subscriber:nobody".into()),
            adv(1),
            adv(1),
            adv(3),
            adv(2),
            adv(4_294_967_295),
        ];
        let r: Vec<OpResult> = store
            .batch(&ops)
            .await
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            r,
            [
                OpResult::Fields(vec![("ha1".into(), ha1)]),
                OpResult::Fields(vec![]),
                // Each answer is the maximum before the operation: 1 advanced it from 0, the
                // second 1 and the 2 did not (1, 3), the largest nc does (3).
                OpResult::Count(0),
                OpResult::Count(1),
                OpResult::Count(1),
                OpResult::Count(3),
                OpResult::Count(3),
            ]
        );
        assert_eq!(
            store.get("nc:x").await.unwrap().as_deref(),
            Some(&b"4294967295"[..])
        );
        // A value that is not a counter fails its operation only.
        store
            .set_ex("nc:bad", Bytes::from_static(b"x1"), ttl)
            .await
            .unwrap();
        let r = store
            .batch(&[Op::MaxAdvance("nc:bad".into(), 5, ttl), adv(1)])
            .await
            .unwrap();
        assert!(matches!(r[0], Err(StoreError::NotAnInteger(_))), "{r:?}");
        assert_eq!(r[1].as_ref().unwrap(), &OpResult::Count(4_294_967_295));
    }
}
