//! The in-memory [`Store`] of a single replica (and the fallback of the Redis store).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{
    DialogRelease, FloodHit, FloodOutcome, Listed, Op, OpResult, Store, StoreError, StoreFuture,
    ready,
};

/// A stored value: counters are kept as integers so increments need no parsing.
#[derive(Debug, Clone)]
enum Value {
    Bytes(Bytes),
    Int(i64),
    Hash(Vec<(String, Bytes)>),
}

impl Value {
    fn to_bytes(&self) -> Bytes {
        match self {
            Value::Bytes(b) => b.clone(),
            Value::Int(n) => Bytes::from(n.to_string()),
            // Like Redis' WRONGTYPE, a hash has no plain value; listings show it empty.
            Value::Hash(_) => Bytes::new(),
        }
    }

    fn as_int(&self, key: &str) -> Result<i64, StoreError> {
        match self {
            Value::Int(n) => Ok(*n),
            Value::Bytes(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::NotAnInteger(key.to_string())),
            Value::Hash(_) => Err(StoreError::NotAnInteger(key.to_string())),
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Instant,
}

#[derive(Debug)]
struct Shard {
    map: HashMap<String, Entry>,
    next_sweep: Instant,
}

/// Shards keep replica-local throttle decisions from contending on one lock.
const SHARDS: usize = 16;
/// How often a shard drops all its expired keys (besides dropping them when touched).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The default cap on keys.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

/// The in-memory [`Store`] of a single replica. Every key has a TTL; expired keys are removed
/// when touched and by a sweep of the shard every few seconds. The number of keys is capped:
/// a new key beyond the cap is refused with [`StoreError::Full`].
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    max_per_shard: usize,
    max_entries: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_MAX_ENTRIES)
    }
}

impl MemoryStore {
    /// An empty store holding at most about `max_entries` keys.
    pub fn new(max_entries: usize) -> MemoryStore {
        let now = Instant::now();
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        next_sweep: now + SWEEP_INTERVAL,
                    })
                })
                .collect(),
            max_per_shard: max_entries.div_ceil(SHARDS).max(1),
            max_entries,
        }
    }

    /// Live keys, for tests and a metrics gauge (expired keys not yet swept are not counted).
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                s.map.values().filter(|e| e.expires_at > now).count()
            })
            .sum()
    }

    /// True when no live key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on the shard of `key`, after removing an expired entry for that key and, when
    /// due, sweeping the shard. The lock is never held across an await: `f` is synchronous.
    fn with_shard<T>(&self, key: &str, f: impl FnOnce(&mut Shard, Instant) -> T) -> T {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let idx = (h.finish() % SHARDS as u64) as usize;
        let shard = &self.shards[idx % self.shards.len()];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= shard.next_sweep {
            shard.map.retain(|_, e| e.expires_at > now);
            shard.next_sweep = now + SWEEP_INTERVAL;
        } else if shard.map.get(key).is_some_and(|e| e.expires_at <= now) {
            shard.map.remove(key);
        }
        f(&mut shard, now)
    }

    /// Makes room for a new key in `shard`, or refuses it.
    fn admit(&self, shard: &mut Shard, key: &str, now: Instant) -> Result<(), StoreError> {
        if shard.map.contains_key(key) || shard.map.len() < self.max_per_shard {
            return Ok(());
        }
        shard.map.retain(|_, e| e.expires_at > now);
        if shard.map.len() < self.max_per_shard {
            Ok(())
        } else {
            Err(StoreError::Full(self.max_entries))
        }
    }
}

impl MemoryStore {
    /// [`Op::MaxAdvance`] in one critical section: answers the counter before the operation.
    fn max_advance(&self, key: &str, value: u64, ttl: Duration) -> Result<OpResult, StoreError> {
        let value = i64::try_from(value).map_err(|_| StoreError::Overflow(key.to_owned()))?;
        self.with_shard(key, |shard, now| {
            let before = match shard.map.get(key) {
                Some(e) => e.value.as_int(key)?,
                None => 0,
            };
            if value > before {
                self.admit(shard, key, now)?;
                shard.map.insert(
                    key.to_owned(),
                    Entry {
                        value: Value::Int(value),
                        expires_at: deadline(now, ttl),
                    },
                );
            }
            Ok(OpResult::Count(before))
        })
    }
}

/// `now + ttl`, saturating: an absurd TTL (from a configuration typo) must not panic.
fn deadline(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Store for MemoryStore {
    fn incr_window<'a>(&'a self, key: &'a str, window: Duration) -> StoreFuture<'a, u64> {
        ready(self.with_shard(key, |shard, now| {
            self.admit(shard, key, now)?;
            match shard.map.get_mut(key) {
                Some(e) => {
                    let n = e
                        .value
                        .as_int(key)?
                        .checked_add(1)
                        .ok_or_else(|| StoreError::Overflow(key.to_string()))?;
                    e.value = Value::Int(n);
                    Ok(u64::try_from(n).unwrap_or(0))
                }
                None => {
                    shard.map.insert(
                        key.to_string(),
                        Entry {
                            value: Value::Int(1),
                            expires_at: deadline(now, window),
                        },
                    );
                    Ok(1)
                }
            }
        }))
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        ready(Ok(self.with_shard(key, |shard, _| {
            shard.map.get(key).map(|e| e.value.to_bytes())
        })))
    }

    fn set_ex<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        ready(self.with_shard(key, |shard, now| {
            self.admit(shard, key, now)?;
            shard.map.insert(
                key.to_string(),
                Entry {
                    value: Value::Bytes(value),
                    expires_at: deadline(now, ttl),
                },
            );
            Ok(())
        }))
    }

    fn del<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        ready(Ok(
            self.with_shard(key, |shard, _| shard.map.remove(key).is_some())
        ))
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> StoreFuture<'a, i64> {
        ready(self.with_shard(key, |shard, now| {
            self.admit(shard, key, now)?;
            let old = match shard.map.get(key) {
                Some(e) => e.value.as_int(key)?,
                None => 0,
            };
            let n = old
                .checked_add(delta)
                .ok_or_else(|| StoreError::Overflow(key.to_string()))?;
            shard.map.insert(
                key.to_string(),
                Entry {
                    value: Value::Int(n),
                    expires_at: deadline(now, ttl),
                },
            );
            Ok(n)
        }))
    }

    fn hash_get_all<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        ready(Ok(self.with_shard(key, |shard, _| {
            match shard.map.get(key) {
                Some(Entry {
                    value: Value::Hash(fields),
                    ..
                }) => fields.clone(),
                _ => Vec::new(),
            }
        })))
    }

    fn hash_set<'a>(
        &'a self,
        key: &'a str,
        fields: Vec<(String, Bytes)>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        ready(self.with_shard(key, |shard, now| {
            self.admit(shard, key, now)?;
            let ttl = ttl.unwrap_or(Duration::from_secs(10 * 365 * 24 * 3600));
            let mut merged = match shard.map.remove(key) {
                Some(Entry {
                    value: Value::Hash(old),
                    ..
                }) => old,
                _ => Vec::new(),
            };
            for (f, v) in fields {
                match merged.iter_mut().find(|(k, _)| *k == f) {
                    Some(slot) => slot.1 = v,
                    None => merged.push((f, v)),
                }
            }
            shard.map.insert(
                key.to_string(),
                Entry {
                    value: Value::Hash(merged),
                    expires_at: deadline(now, ttl),
                },
            );
            Ok(())
        }))
    }

    fn flood_hit<'a>(&'a self, hit: FloodHit<'a>) -> StoreFuture<'a, FloodOutcome> {
        // Two shards may be involved, so this is two short critical sections rather than one:
        // locally that race only lets a hit or two through at the moment of the ban.
        let banned = self.with_shard(hit.ban_key, |shard, now| {
            shard
                .map
                .get(hit.ban_key)
                .map(|e| e.expires_at.saturating_duration_since(now))
        });
        if let Some(remaining) = banned {
            return ready(Ok(FloodOutcome::Banned {
                remaining,
                new: false,
            }));
        }
        if hit.hits == 0 {
            let count = self.with_shard(hit.counter_key, |shard, _| {
                shard
                    .map
                    .get(hit.counter_key)
                    .map_or(Ok(0), |e| e.value.as_int(hit.counter_key))
            });
            return ready(count.map(|n| FloodOutcome::Allowed {
                count: u64::try_from(n).unwrap_or(0),
            }));
        }
        let count = self.with_shard(hit.counter_key, |shard, now| {
            self.admit(shard, hit.counter_key, now)?;
            let entry = shard
                .map
                .entry(hit.counter_key.to_string())
                .or_insert_with(|| Entry {
                    value: Value::Int(0),
                    expires_at: deadline(now, hit.window),
                });
            let hits = i64::try_from(hit.hits).unwrap_or(i64::MAX);
            let n = entry.value.as_int(hit.counter_key)?.saturating_add(hits);
            entry.value = Value::Int(n);
            if u64::try_from(n).unwrap_or(0) > hit.limit {
                shard.map.remove(hit.counter_key);
            }
            Ok(u64::try_from(n).unwrap_or(0))
        });
        let count = match count {
            Ok(c) => c,
            Err(e) => return ready(Err(e)),
        };
        if count <= hit.limit {
            return ready(Ok(FloodOutcome::Allowed { count }));
        }
        let set = self.with_shard(hit.ban_key, |shard, now| {
            self.admit(shard, hit.ban_key, now)?;
            shard.map.insert(
                hit.ban_key.to_string(),
                Entry {
                    value: Value::Bytes(hit.ban_value.clone()),
                    expires_at: deadline(now, hit.ban_ttl),
                },
            );
            Ok(())
        });
        ready(set.map(|()| FloodOutcome::Banned {
            remaining: hit.ban_ttl,
            new: true,
        }))
    }

    fn list_prefix_ttl<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Listed>> {
        let now = Instant::now();
        let mut out: Vec<Listed> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                shard
                    .map
                    .iter()
                    .filter(|(k, e)| e.expires_at > now && k.starts_with(prefix))
                    .map(|(k, e)| Listed {
                        key: k.clone(),
                        value: e.value.to_bytes(),
                        ttl: e.expires_at.saturating_duration_since(now),
                    }),
            );
            if out.len() > limit.saturating_mul(2).max(1024) {
                out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                out.truncate(limit);
            }
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        ready(Ok(out))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        ready(Ok(()))
    }

    fn batch<'a>(&'a self, ops: &'a [Op]) -> StoreFuture<'a, Vec<Result<OpResult, StoreError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(ops.len());
            // Every method of this store answers at once: the awaits never wait.
            for op in ops {
                out.push(match op {
                    Op::Get(k) => self.get(k).await.map(OpResult::Value),
                    Op::IncrWindow(k, w) => self
                        .incr_window(k, *w)
                        .await
                        .map(|n| OpResult::Count(i64::try_from(n).unwrap_or(i64::MAX))),
                    Op::IncrBy(k, d, ttl) => self.incr_by(k, *d, *ttl).await.map(OpResult::Count),
                    Op::SetEx(k, v, ttl) => self
                        .set_ex(k, v.clone(), *ttl)
                        .await
                        .map(|()| OpResult::Done),
                    Op::Del(k) => self.del(k).await.map(OpResult::Deleted),
                    Op::HashGetAllUnprefixed(k) => self.hash_get_all(k).await.map(OpResult::Fields),
                    Op::MaxAdvance(k, v, ttl) => self.max_advance(k, *v, *ttl),
                });
            }
            Ok(out)
        })
    }

    fn release_dialog<'a>(&'a self, release: DialogRelease<'a>) -> StoreFuture<'a, bool> {
        // Taking the dialog key is one critical section, so only one caller releases it.
        let value = self.with_shard(release.dialog_key, |shard, _| {
            shard.map.remove(release.dialog_key).map(|e| e.value)
        });
        let Some(value) = value else {
            return ready(Ok(false));
        };
        let Some((key, ttl)) = release.counter(&value.to_bytes()) else {
            return ready(Ok(true));
        };
        ready(self.with_shard(&key, |shard, now| {
            // Decrementing a bucket that expired meanwhile would only create a negative
            // counter: leave it absent.
            match shard.map.get_mut(&key) {
                Some(e) => {
                    let n = e.value.as_int(&key)?.saturating_sub(1);
                    e.value = Value::Int(n);
                    e.expires_at = deadline(now, ttl);
                    Ok(true)
                }
                None => Ok(true),
            }
        }))
    }

    fn list_prefix<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        let now = Instant::now();
        let mut out: Vec<(String, Bytes)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                shard
                    .map
                    .iter()
                    .filter(|(k, e)| e.expires_at > now && k.starts_with(prefix))
                    .map(|(k, e)| (k.clone(), e.value.to_bytes())),
            );
            // Keep memory bounded by `limit` even when the prefix matches most keys: the
            // smallest keys survive, as the sorted result needs.
            if out.len() > limit.saturating_mul(2).max(1024) {
                out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                out.truncate(limit);
            }
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        out.truncate(limit);
        ready(Ok(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> Arc<dyn Store> {
        Arc::new(MemoryStore::new(1000))
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_window_counts_then_resets() {
        let s = store();
        let w = Duration::from_secs(10);
        assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 1);
        assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 2);
        assert_eq!(s.incr_window("pike:10.0.0.2", w).await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        // The window does not slide: a hit near the end does not extend it.
        assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 3);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn set_get_expire_and_delete() {
        let s = store();
        s.set_ex(
            "ban:10.0.0.9",
            Bytes::from_static(b"flood"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert_eq!(
            s.get("ban:10.0.0.9").await.unwrap(),
            Some(Bytes::from_static(b"flood"))
        );
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(s.get("ban:10.0.0.9").await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(s.get("ban:10.0.0.9").await.unwrap(), None);

        s.set_ex("k", Bytes::from_static(b"v"), Duration::from_secs(60))
            .await
            .unwrap();
        assert!(s.del("k").await.unwrap());
        assert!(!s.del("k").await.unwrap());
        assert_eq!(s.get("k").await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn incr_by_counts_concurrent_calls_and_refreshes_ttl() {
        let s = store();
        let ttl = Duration::from_secs(30);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.incr_by("calls:tenant-a", 1, ttl).await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.incr_by("calls:tenant-a", -1, ttl).await.unwrap(), 49);
        assert_eq!(
            s.get("calls:tenant-a").await.unwrap(),
            Some(Bytes::from_static(b"49"))
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        s.incr_by("calls:tenant-a", 0, ttl).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(s.incr_by("calls:tenant-a", 0, ttl).await.unwrap(), 49);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(s.incr_by("calls:tenant-a", -1, ttl).await.unwrap(), -1);
    }

    #[tokio::test(start_paused = true)]
    async fn counters_refuse_non_integers_and_overflow() {
        let s = store();
        s.set_ex("text", Bytes::from_static(b"abc"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(
            s.incr_by("text", 1, Duration::from_secs(5)).await,
            Err(StoreError::NotAnInteger(_))
        ));
        s.set_ex("num", Bytes::from_static(b"41"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            s.incr_by("num", 1, Duration::from_secs(5)).await.unwrap(),
            42
        );
        s.incr_by("big", i64::MAX, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(
            s.incr_by("big", 1, Duration::from_secs(5)).await,
            Err(StoreError::Overflow(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn list_prefix_is_sorted_limited_and_skips_expired() {
        let s = store();
        for (k, ttl) in [("ban:b", 60), ("ban:a", 60), ("ban:c", 1), ("other", 60)] {
            s.set_ex(k, Bytes::from(k), Duration::from_secs(ttl))
                .await
                .unwrap();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let all = s.list_prefix("ban:", 100).await.unwrap();
        let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ban:a", "ban:b"]);
        assert_eq!(all[0].1, Bytes::from_static(b"ban:a"));
        assert_eq!(s.list_prefix("ban:", 1).await.unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn capped_and_expired_keys_are_reclaimed() {
        let m = Arc::new(MemoryStore::new(SHARDS));
        let s: Arc<dyn Store> = m.clone();
        let mut refused = 0;
        for i in 0..200 {
            if let Err(e) = s
                .set_ex(&format!("k{i}"), Bytes::new(), Duration::from_secs(5))
                .await
            {
                assert!(matches!(e, StoreError::Full(_)));
                refused += 1;
            }
        }
        assert!(refused > 0, "the cap refuses new keys");
        assert!(m.len() <= SHARDS);
        // Existing keys can still be updated when full.
        let kept = s.list_prefix("k", 1).await.unwrap();
        let (key, _) = &kept[0];
        s.set_ex(key, Bytes::from_static(b"x"), Duration::from_secs(5))
            .await
            .unwrap();
        // Once the keys expire their room is reused.
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(m.is_empty());
        for i in 0..200 {
            let _ = s
                .set_ex(&format!("n{i}"), Bytes::new(), Duration::from_secs(5))
                .await;
        }
        assert_eq!(s.list_prefix("k", 100).await.unwrap().len(), 0);
        assert!(!m.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn hashes_merge_fields_and_read_back() {
        let s = store();
        assert!(s.hash_get_all("subscriber:alice").await.unwrap().is_empty());
        s.hash_set(
            "subscriber:alice",
            vec![
                ("username".into(), Bytes::from("alice")),
                ("ha1".into(), Bytes::from("x")),
            ],
            None,
        )
        .await
        .unwrap();
        s.hash_set(
            "subscriber:alice",
            vec![("ha1".into(), Bytes::from("y"))],
            None,
        )
        .await
        .unwrap();
        let got = s.hash_get_all("subscriber:alice").await.unwrap();
        assert_eq!(
            got,
            vec![
                ("username".into(), Bytes::from("alice")),
                ("ha1".into(), Bytes::from("y"))
            ]
        );
        assert!(
            s.incr_by("subscriber:alice", 1, Duration::from_secs(1))
                .await
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flood_hit_counts_bans_and_expires() {
        let s = store();
        let hit = || FloodHit {
            counter_key: "flood:10.0.0.1",
            ban_key: "ban:10.0.0.1",
            limit: 3,
            window: Duration::from_secs(2),
            ban_ttl: Duration::from_secs(60),
            ban_value: Bytes::from_static(b"x"),
            hits: 1,
        };
        for n in 1..=3 {
            assert_eq!(
                s.flood_hit(hit()).await.unwrap(),
                FloodOutcome::Allowed { count: n }
            );
        }
        assert_eq!(
            s.flood_hit(hit()).await.unwrap(),
            FloodOutcome::Banned {
                remaining: Duration::from_secs(60),
                new: true
            }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            s.flood_hit(hit()).await.unwrap(),
            FloodOutcome::Banned {
                remaining: Duration::from_secs(50),
                new: false
            }
        );
        let listed = s.list_prefix_ttl("ban:", 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].ttl, Duration::from_secs(50));
        tokio::time::advance(Duration::from_secs(50)).await;
        assert_eq!(
            s.flood_hit(hit()).await.unwrap(),
            FloodOutcome::Allowed { count: 1 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batch_runs_operations_in_order_each_on_its_own() {
        contract::batch_runs_operations_in_order_each_on_its_own(store().as_ref()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn credentials_and_nonce_counts() {
        let s = store();
        crate::store::auth_ops::credentials_and_nonce_counts(s.as_ref(), s.as_ref()).await;
        // The maximum expires with its TTL, then any count starts again.
        tokio::time::advance(Duration::from_secs(61)).await;
        let r = s
            .batch(&[Op::MaxAdvance("nc:x".into(), 1, Duration::from_secs(60))])
            .await
            .unwrap();
        assert_eq!(r[0].as_ref().unwrap(), &OpResult::Count(0));
    }

    #[tokio::test(start_paused = true)]
    async fn release_dialog_decrements_its_live_bucket_once() {
        contract::release_dialog_decrements_its_live_bucket_once(store().as_ref()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn huge_ttl_does_not_panic() {
        let s = store();
        s.set_ex("forever", Bytes::from_static(b"1"), Duration::MAX)
            .await
            .unwrap();
        assert_eq!(s.incr_by("forever", 1, Duration::MAX).await.unwrap(), 2);
        assert_eq!(s.incr_window("w", Duration::MAX).await.unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_removes_expired_keys_never_touched_again() {
        let m = MemoryStore::new(1000);
        for i in 0..100 {
            m.set_ex(&format!("old{i}"), Bytes::new(), Duration::from_secs(1))
                .await
                .unwrap();
        }
        tokio::time::advance(SWEEP_INTERVAL + Duration::from_secs(1)).await;
        // Touch every shard once with other keys: each sweeps its expired entries.
        for i in 0..200 {
            m.get(&format!("probe{i}")).await.unwrap();
        }
        let stored: usize = m.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
        assert_eq!(stored, 0);
    }
}

/// What every [`Store`] must do, whatever keeps its data: run here against the memory store
/// and in `redis.rs` against a real redis-server. Keys start with `b:`, `cc:` and `dlg:`.
#[cfg(test)]
pub(super) mod contract {
    use super::*;

    /// A batch answers each operation on its own, in order; an error in one does not stop the
    /// others; every key it writes gets its TTL; an empty batch answers nothing.
    pub(in crate::store) async fn batch_runs_operations_in_order_each_on_its_own(s: &dyn Store) {
        let ttl = Duration::from_secs(10);
        s.set_ex("b:text", Bytes::from_static(b"abc"), ttl)
            .await
            .unwrap();
        let ops = [
            Op::IncrWindow("b:w".into(), ttl),
            Op::IncrWindow("b:w".into(), ttl),
            Op::IncrBy("b:text".into(), 1, ttl),
            Op::IncrBy("b:c".into(), 5, ttl),
            Op::SetEx("b:d".into(), Bytes::from_static(b"7|t=a"), ttl),
            Op::Get("b:d".into()),
            Op::Get("b:absent".into()),
            Op::Del("b:d".into()),
            Op::Del("b:d".into()),
        ];
        let r = s.batch(&ops).await.unwrap();
        assert_eq!(r.len(), ops.len());
        assert_eq!(r[0].as_ref().unwrap(), &OpResult::Count(1));
        assert_eq!(r[1].as_ref().unwrap(), &OpResult::Count(2));
        assert!(matches!(r[2], Err(StoreError::NotAnInteger(_))), "{r:?}");
        assert_eq!(r[3].as_ref().unwrap(), &OpResult::Count(5));
        assert_eq!(r[4].as_ref().unwrap(), &OpResult::Done);
        assert_eq!(
            r[5].as_ref().unwrap(),
            &OpResult::Value(Some(Bytes::from_static(b"7|t=a")))
        );
        assert_eq!(r[6].as_ref().unwrap(), &OpResult::Value(None));
        assert_eq!(r[7].as_ref().unwrap(), &OpResult::Deleted(true));
        assert_eq!(r[8].as_ref().unwrap(), &OpResult::Deleted(false));
        // The window counter got its TTL, the others theirs.
        let listed = s.list_prefix_ttl("b:", 10).await.unwrap();
        assert_eq!(listed.len(), 3, "{listed:?}");
        assert!(
            listed.iter().all(|l| l.ttl > Duration::from_secs(5)),
            "{listed:?}"
        );
        assert!(s.batch(&[]).await.unwrap().is_empty());
    }

    /// Releasing a dialog decrements its live bucket once (a second BYE releases nothing) and
    /// leaves a bucket past its life alone; the dialog's key is gone either way.
    pub(in crate::store) async fn release_dialog_decrements_its_live_bucket_once(s: &dyn Store) {
        let ttl = Duration::from_secs(100);
        s.incr_by("cc:t=a:7", 2, ttl).await.unwrap();
        s.set_ex("dlg:x", Bytes::from_static(b"7|t=a"), ttl)
            .await
            .unwrap();
        let rel = |key| DialogRelease {
            dialog_key: key,
            counter_prefix: "cc:",
            bucket_ms: 1000,
            timeout_ms: 4000,
            now_ms: 9000,
        };
        assert!(s.release_dialog(rel("dlg:x")).await.unwrap());
        assert_eq!(s.get("cc:t=a:7").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get("dlg:x").await.unwrap(), None);
        // The second BYE finds no dialog and releases nothing.
        assert!(!s.release_dialog(rel("dlg:x")).await.unwrap());
        assert_eq!(s.get("cc:t=a:7").await.unwrap().as_deref(), Some(&b"1"[..]));
        // A bucket past its life (ended at 8 s, lived 4 s more) is left alone.
        s.set_ex("dlg:y", Bytes::from_static(b"7|t=a"), ttl)
            .await
            .unwrap();
        let mut late = rel("dlg:y");
        late.now_ms = 12_000;
        assert!(s.release_dialog(late).await.unwrap());
        assert_eq!(s.get("cc:t=a:7").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get("dlg:y").await.unwrap(), None);
    }
}
