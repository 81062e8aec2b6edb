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

impl MemoryStore {
    /// The live keys starting with `prefix`, the `limit` smallest, sorted.
    fn listed(&self, prefix: &str, limit: usize) -> Vec<Listed> {
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
            // Keep memory bounded by `limit` even when the prefix matches most keys: the
            // smallest keys survive, as the sorted result needs.
            if out.len() > limit.saturating_mul(2).max(1024) {
                out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                out.truncate(limit);
            }
        }
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        out
    }
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
        ready(Ok(self.listed(prefix, limit)))
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
        let listed = self.listed(prefix, limit);
        ready(Ok(listed.into_iter().map(|l| (l.key, l.value)).collect()))
    }
}

#[cfg(test)]
mod tests;

/// What every [`Store`] must do, whatever keeps its data: run here against the memory store
/// and in `redis.rs` against a real redis-server. Keys start with `b:`, `cc:` and `dlg:`.
#[cfg(test)]
pub(super) mod contract;
