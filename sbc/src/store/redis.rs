//! The Redis [`Store`]: every method is one round trip (a command, an atomic pipeline or a
//! Lua script), every key carries a TTL, and every key is prefixed with the cluster's key
//! prefix so several SbcClusters can share one Redis.
//!
//! The connection (see [`conn`]) goes to one server, a Redis Cluster or the master Sentinel
//! names; it is created lazily (a Redis that is down at startup does not stop the sbc) and
//! re-established after a failure. Timeouts are the caller's job (see
//! [`super::FallbackStore`]); the connection's own timeouts only bound a lost connection. On a
//! cluster, calls that merge several decisions are split by slot (see [`slots`]).

use std::time::Duration;

use ::redis::Script;
use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::{
    DialogRelease, FloodHit, FloodOutcome, Listed, Op as BatchOp, OpResult, Store, StoreError,
    StoreFuture,
};

/// Why a Redis store could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RedisStoreError {
    /// The URL is not one the client accepts.
    #[error("store.url: {0}")]
    Url(String),
    /// The round-trip counter could not be registered.
    #[error("store metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The store operations, for the `op` label of `sbc_store_round_trips_total`.
const OPS: [&str; 15] = [
    "incr_window",
    "get",
    "set_ex",
    "del",
    "incr_by",
    "list_prefix",
    "hash_get_all",
    "hash_set",
    "flood_hit",
    "list_prefix_ttl",
    "ping",
    "batch",
    "release_dialog",
    "flood_sync",
    "release_dialogs",
];

#[derive(Clone, Copy)]
enum Op {
    IncrWindow,
    Get,
    SetEx,
    Del,
    IncrBy,
    ListPrefix,
    HashGetAll,
    HashSet,
    FloodHit,
    ListPrefixTtl,
    Ping,
    Batch,
    ReleaseDialog,
    FloodSync,
    ReleaseDialogs,
}

/// Keys listed per listing at most; listings are for operators, not for the hot path.
const MAX_LIST: usize = 10_000;

mod answers;
mod conn;
mod scripts;
pub(crate) mod slots;
use answers::{batch_result, map_err, ms};
use conn::Conn;
pub use conn::Target;
use scripts::{BATCH, FLOOD, HASH_SET, INCR_WINDOW, LIST, RELEASE_DIALOG};

/// The Redis store. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    incr_window: Script,
    flood: Script,
    batch: Script,
    release_dialog: Script,
    hash_set: Script,
    trips: [IntCounter; OPS.len()],
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Installs ring as rustls' process-wide provider, once, for `rediss://` URLs.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one already: that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl RedisStore {
    /// A store for one server at `url` (`redis://[:password@]host:port/db` or
    /// `rediss://...`); see [`RedisStore::connect`].
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        registry: &Registry,
    ) -> Result<RedisStore, RedisStoreError> {
        Self::connect(&Target::Single(url.to_owned()), prefix, timeout, registry)
    }

    /// A store on `target`, prefixing every key with `prefix`. Connects lazily: must be
    /// called inside a Tokio runtime, and never waits for Redis. `timeout` bounds connection
    /// attempts and replies; the round trip counter is registered on `registry`.
    pub fn connect(
        target: &Target,
        prefix: &str,
        timeout: Duration,
        registry: &Registry,
    ) -> Result<RedisStore, RedisStoreError> {
        let tls = match target {
            Target::Single(u) => u.starts_with("rediss://"),
            Target::Cluster(us) | Target::Sentinel { urls: us, .. } => {
                us.iter().any(|u| u.starts_with("rediss://"))
            }
        };
        if tls {
            install_crypto_provider();
        }
        let conn = Conn::new(target, timeout).map_err(|e| RedisStoreError::Url(e.to_string()))?;
        let vec = IntCounterVec::new(
            Opts::new(
                "sbc_store_round_trips_total",
                "Round trips to the shared store (Redis), by operation",
            ),
            &["op"],
        )?;
        // A second store on the same registry (tests) shares the counter.
        let vec = match registry.register(Box::new(vec.clone())) {
            Ok(()) => vec,
            Err(prometheus::Error::AlreadyReg) => vec,
            Err(e) => return Err(e.into()),
        };
        let trips = OPS.map(|op| vec.with_label_values(&[op]));
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            incr_window: Script::new(INCR_WINDOW),
            flood: Script::new(FLOOD),
            batch: Script::new(BATCH),
            release_dialog: Script::new(RELEASE_DIALOG),
            hash_set: Script::new(HASH_SET),
            trips,
        })
    }

    fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    fn trip(&self, op: Op) -> Conn {
        self.trips[op as usize].inc();
        self.conn.clone()
    }

    /// One run of the release script for `releases`, answers in order.
    async fn release_run(
        &self,
        op: Op,
        releases: &[DialogRelease<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        if self.conn.is_cluster() && releases.len() > 1 {
            return slots::per_slot(
                releases,
                |r| slots::slot(&self.key(r.dialog_key)),
                |part| async move { self.release_one_slot(op, &part).await },
            )
            .await;
        }
        self.release_one_slot(op, releases).await
    }

    async fn release_one_slot(
        &self,
        op: Op,
        releases: &[DialogRelease<'_>],
    ) -> Result<Vec<bool>, StoreError> {
        let mut inv = self.release_dialog.prepare_invoke();
        for r in releases {
            inv.key(self.key(r.dialog_key))
                .arg(self.key(r.counter_prefix))
                .arg(r.bucket_ms.max(1))
                .arg(r.timeout_ms)
                .arg(r.now_ms);
        }
        let mut conn = self.trip(op);
        let out: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err(e, releases.first().map_or("", |r| r.dialog_key)))?;
        Ok(out.into_iter().map(|n| n == 1).collect())
    }

    /// One run of the flood script for `hits`, answers in order.
    async fn flood_run(
        &self,
        op: Op,
        hits: &[FloodHit<'_>],
    ) -> Result<Vec<FloodOutcome>, StoreError> {
        if self.conn.is_cluster() && hits.len() > 1 {
            return slots::per_slot(
                hits,
                |h| slots::slot(&self.key(h.counter_key)),
                |part| async move { self.flood_one_slot(op, &part).await },
            )
            .await;
        }
        self.flood_one_slot(op, hits).await
    }

    async fn flood_one_slot(
        &self,
        op: Op,
        hits: &[FloodHit<'_>],
    ) -> Result<Vec<FloodOutcome>, StoreError> {
        let mut inv = self.flood.prepare_invoke();
        for h in hits {
            inv.key(self.key(h.counter_key))
                .key(self.key(h.ban_key))
                .arg(h.limit)
                .arg(ms(h.window))
                .arg(ms(h.ban_ttl))
                .arg(h.ban_value.as_ref())
                .arg(h.hits);
        }
        let mut conn = self.trip(op);
        let flat: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err(e, hits.first().map_or("", |h| h.counter_key)))?;
        if flat.len() != hits.len() * 3 {
            return Err(StoreError::Rejected(format!(
                "flood script answered {} numbers for {} sources",
                flat.len(),
                hits.len()
            )));
        }
        Ok(flat
            .chunks_exact(3)
            .map(|t| match *t {
                [1, ms, new] => FloodOutcome::Banned {
                    remaining: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                    new: new == 1,
                },
                [_, n, _] => FloodOutcome::Allowed {
                    count: u64::try_from(n).unwrap_or(0),
                },
                // chunks_exact(3) yields only triples.
                _ => FloodOutcome::Allowed { count: 0 },
            })
            .collect())
    }

    /// The key an operation of a batch touches, as Redis sees it.
    fn batch_key(&self, op: &BatchOp) -> String {
        match op {
            BatchOp::HashGetAllUnprefixed(k) => k.clone(),
            op => self.key(op.key()),
        }
    }

    /// One run of the batch script (all keys of one slot on a cluster).
    async fn batch_one_slot(
        &self,
        ops: &[BatchOp],
    ) -> Result<Vec<Result<OpResult, StoreError>>, StoreError> {
        let mut inv = self.batch.prepare_invoke();
        for op in ops {
            match op {
                BatchOp::Get(k) => inv.key(self.key(k)).arg("g").arg(0).arg(0),
                BatchOp::IncrWindow(k, w) => inv.key(self.key(k)).arg("w").arg(ms(*w)).arg(0),
                BatchOp::IncrBy(k, d, ttl) => inv.key(self.key(k)).arg("i").arg(*d).arg(ms(*ttl)),
                BatchOp::SetEx(k, v, ttl) => {
                    inv.key(self.key(k)).arg("s").arg(v.as_ref()).arg(ms(*ttl))
                }
                BatchOp::Del(k) => inv.key(self.key(k)).arg("d").arg(0).arg(0),
                // Provisioned data: the key as the user's tooling wrote it.
                BatchOp::HashGetAllUnprefixed(k) => inv.key(k).arg("h").arg(0).arg(0),
                BatchOp::MaxAdvance(k, v, ttl) => {
                    inv.key(self.key(k)).arg("m").arg(*v).arg(ms(*ttl))
                }
            };
        }
        let mut conn = self.trip(Op::Batch);
        let answers: Vec<::redis::Value> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err(e, "batch"))?;
        if answers.len() != ops.len() {
            return Err(StoreError::Rejected(format!(
                "batch of {} operations answered {}",
                ops.len(),
                answers.len()
            )));
        }
        Ok(ops
            .iter()
            .zip(answers)
            .map(|(op, v)| batch_result(op, v))
            .collect())
    }

    /// The glob matching every key that starts with `prefix` (Redis glob characters escaped).
    fn pattern(&self, prefix: &str) -> String {
        let mut p = String::with_capacity(self.prefix.len() + prefix.len() + 2);
        for c in self.prefix.chars().chain(prefix.chars()) {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push('*');
        p
    }

    async fn list_raw(
        &self,
        op: Op,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let limit = limit.min(MAX_LIST);
        let mut conn = self.trip(op);
        // EVAL, not EVALSHA: a cluster runs it on every master, and a listing is not hot.
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(LIST)
            .arg(0)
            .arg(self.pattern(prefix))
            .arg(limit)
            .arg(1000);
        let value = conn
            .on_every_master(cmd)
            .await
            .map_err(|e| map_err(e, prefix))?;
        let raw: Vec<(String, Vec<u8>, i64)> =
            ::redis::from_redis_value(value).map_err(|e| map_err(e.into(), prefix))?;
        let mut out: Vec<Listed> = raw
            .into_iter()
            .filter_map(|(k, v, ttl)| {
                let key = k.strip_prefix(self.prefix.as_str())?.to_owned();
                // A key without TTL (-1) was not written by the sbc; list it as expiring now.
                let ttl = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
                Some(Listed {
                    key,
                    value: Bytes::from(v),
                    ttl,
                })
            })
            .collect();
        out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        out.truncate(limit);
        Ok(out)
    }
}

impl Store for RedisStore {
    fn incr_window<'a>(&'a self, key: &'a str, window: Duration) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            let mut conn = self.trip(Op::IncrWindow);
            let n: i64 = self
                .incr_window
                .key(self.key(key))
                .arg(ms(window))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| map_err(e, key))?;
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(async move {
            let mut conn = self.trip(Op::Get);
            let v: Option<Vec<u8>> = ::redis::cmd("GET")
                .arg(self.key(key))
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, key))?;
            Ok(v.map(Bytes::from))
        })
    }

    fn set_ex<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.trip(Op::SetEx);
            let () = ::redis::cmd("SET")
                .arg(self.key(key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ms(ttl))
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, key))?;
            Ok(())
        })
    }

    fn del<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.trip(Op::Del);
            let n: i64 = ::redis::cmd("DEL")
                .arg(self.key(key))
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, key))?;
            Ok(n > 0)
        })
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> StoreFuture<'a, i64> {
        Box::pin(async move {
            // The batch script's INCRBY + PEXPIRE: atomic, and one slot on a cluster (where
            // MULTI/EXEC pipelines are not routed).
            let mut conn = self.trip(Op::IncrBy);
            let mut answers: Vec<::redis::Value> = self
                .batch
                .key(self.key(key))
                .arg("i")
                .arg(delta)
                .arg(ms(ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(|e| map_err(e, key))?;
            let op = BatchOp::IncrBy(String::new(), delta, ttl);
            match answers.pop().map(|v| batch_result(&op, v)) {
                Some(Ok(OpResult::Count(n))) => Ok(n),
                Some(Err(StoreError::NotAnInteger(_))) => {
                    Err(StoreError::NotAnInteger(key.to_owned()))
                }
                Some(Err(StoreError::Overflow(_))) => Err(StoreError::Overflow(key.to_owned())),
                Some(Err(e)) => Err(e),
                _ => Err(StoreError::Rejected(format!("no count for {key:?}"))),
            }
        })
    }

    fn list_prefix<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        Box::pin(async move {
            let listed = self.list_raw(Op::ListPrefix, prefix, limit).await?;
            Ok(listed.into_iter().map(|l| (l.key, l.value)).collect())
        })
    }

    fn hash_get_all<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        Box::pin(async move {
            let mut conn = self.trip(Op::HashGetAll);
            let v: Vec<(String, Vec<u8>)> = ::redis::cmd("HGETALL")
                .arg(self.key(key))
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, key))?;
            Ok(v.into_iter().map(|(f, v)| (f, Bytes::from(v))).collect())
        })
    }

    fn hash_set<'a>(
        &'a self,
        key: &'a str,
        fields: Vec<(String, Bytes)>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if fields.is_empty() {
                return Ok(());
            }
            let mut inv = self.hash_set.prepare_invoke();
            inv.key(self.key(key)).arg(ttl.map_or(0, ms));
            for (f, v) in &fields {
                inv.arg(f).arg(v.as_ref());
            }
            let mut conn = self.trip(Op::HashSet);
            let _: i64 = inv
                .invoke_async(&mut conn)
                .await
                .map_err(|e| map_err(e, key))?;
            Ok(())
        })
    }

    fn flood_hit<'a>(&'a self, hit: FloodHit<'a>) -> StoreFuture<'a, FloodOutcome> {
        Box::pin(async move {
            let out = self
                .flood_run(Op::FloodHit, std::slice::from_ref(&hit))
                .await?;
            out.into_iter()
                .next()
                .ok_or_else(|| StoreError::Rejected("flood script answered nothing".into()))
        })
    }

    fn flood_sync<'a>(&'a self, hits: &'a [FloodHit<'a>]) -> StoreFuture<'a, Vec<FloodOutcome>> {
        Box::pin(async move {
            if hits.is_empty() {
                return Ok(Vec::new());
            }
            self.flood_run(Op::FloodSync, hits).await
        })
    }

    fn list_prefix_ttl<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Listed>> {
        Box::pin(self.list_raw(Op::ListPrefixTtl, prefix, limit))
    }

    fn batch<'a>(
        &'a self,
        ops: &'a [BatchOp],
    ) -> StoreFuture<'a, Vec<Result<OpResult, StoreError>>> {
        Box::pin(async move {
            if ops.is_empty() {
                return Ok(Vec::new());
            }
            if self.conn.is_cluster() && ops.len() > 1 {
                return slots::per_slot(
                    ops,
                    |op| slots::slot(&self.batch_key(op)),
                    |part| async move { self.batch_one_slot(&part).await },
                )
                .await;
            }
            self.batch_one_slot(ops).await
        })
    }

    fn release_dialog<'a>(&'a self, release: DialogRelease<'a>) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let out = self
                .release_run(Op::ReleaseDialog, std::slice::from_ref(&release))
                .await?;
            Ok(out.first().copied().unwrap_or(false))
        })
    }

    fn release_dialogs<'a>(
        &'a self,
        releases: &'a [DialogRelease<'a>],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            if releases.is_empty() {
                return Ok(Vec::new());
            }
            self.release_run(Op::ReleaseDialogs, releases).await
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.trip(Op::Ping);
            let _: String = ::redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err(e, "PING"))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
