//! A [`Store`] that uses a shared backend (Redis) while it answers and a local
//! [`MemoryStore`] while it does not.
//!
//! Every backend call is bounded by a timeout. The first failure or timeout switches the store
//! to local mode (logged once, `sbc_store_backend_up 0`); from then on calls answer from
//! memory at once, without waiting on the backend, and a background task pings it every
//! second. When a ping succeeds the store goes back to the backend (logged once,
//! `sbc_store_backend_up 1`). Local state is kept meanwhile and expires by its TTLs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge, Registry};

use super::{
    DialogRelease, FloodHit, FloodOutcome, Listed, MemoryStore, Op, OpResult, Store, StoreError,
    StoreFuture,
};

/// How often a down backend is pinged.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The metrics of the fallback store.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// `sbc_store_backend_up`: 1 while the shared store answers, 0 while falling back.
    pub backend_up: IntGauge,
    /// `sbc_store_fallbacks_total`: operations answered from local memory.
    pub fallbacks: IntCounter,
}

impl StoreMetrics {
    /// Registers the metrics on `registry` (or reuses them if already registered).
    pub fn new(registry: &Registry) -> Result<StoreMetrics, prometheus::Error> {
        let backend_up = IntGauge::new(
            "sbc_store_backend_up",
            "1 while the shared store (Redis) answers, 0 while the sbc falls back to local state",
        )?;
        let fallbacks = IntCounter::new(
            "sbc_store_fallbacks_total",
            "Store operations answered from local memory because the shared store did not",
        )?;
        for c in [
            Box::new(backend_up.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fallbacks.clone()),
        ] {
            match registry.register(c) {
                Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
                Err(e) => return Err(e),
            }
        }
        backend_up.set(1);
        Ok(StoreMetrics {
            backend_up,
            fallbacks,
        })
    }
}

struct Inner {
    backend: Arc<dyn Store>,
    local: MemoryStore,
    timeout: Duration,
    up: AtomicBool,
    probing: AtomicBool,
    metrics: StoreMetrics,
}

/// The shared backend with a local fallback. Cheap to clone.
#[derive(Clone)]
pub struct FallbackStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FallbackStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackStore")
            .field("timeout", &self.inner.timeout)
            .field("up", &self.inner.up)
            .finish_non_exhaustive()
    }
}

impl FallbackStore {
    /// Wraps `backend`; each of its calls may take at most `timeout`.
    pub fn new(backend: Arc<dyn Store>, timeout: Duration, metrics: StoreMetrics) -> FallbackStore {
        metrics.backend_up.set(1);
        FallbackStore {
            inner: Arc::new(Inner {
                backend,
                local: MemoryStore::default(),
                timeout,
                up: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// Whether calls currently go to the backend.
    pub fn backend_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// The local store answering while the backend is down.
    pub fn local(&self) -> &MemoryStore {
        &self.inner.local
    }

    /// Runs `remote` on the backend within the timeout, or `local` on memory. While the
    /// backend is down `remote` is not even built.
    async fn call<'a, T, R, L>(&'a self, remote: R, local: L) -> Result<T, StoreError>
    where
        R: FnOnce() -> StoreFuture<'a, T>,
        L: FnOnce(&'a MemoryStore) -> StoreFuture<'a, T>,
    {
        let inner = &*self.inner;
        if inner.up.load(Ordering::Acquire) {
            match tokio::time::timeout(inner.timeout, remote()).await {
                Ok(Err(StoreError::Unavailable(why))) => self.went_down(&why),
                Err(_) => self.went_down(&format!("no answer within {:?}", inner.timeout)),
                // Answers, including the backend's refusals of a command, are final.
                Ok(r) => return r,
            }
        }
        inner.metrics.fallbacks.inc();
        local(&inner.local).await
    }

    /// Switches to local mode (logging only the switch) and starts the probe.
    fn went_down(&self, why: &str) {
        let inner = &*self.inner;
        if inner.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = why,
                "shared store unreachable: falling back to local state until it answers again"
            );
            inner.metrics.backend_up.set(0);
        }
        if !inner.probing.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move { me.probe().await });
        }
    }

    async fn probe(self) {
        let inner = &*self.inner;
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            // The store's owner dropped it: stop probing.
            if Arc::strong_count(&self.inner) == 1 {
                break;
            }
            if let Ok(Ok(())) = tokio::time::timeout(inner.timeout, inner.backend.ping()).await {
                inner.up.store(true, Ordering::Release);
                inner.metrics.backend_up.set(1);
                tracing::info!("shared store answers again: back to shared state");
                break;
            }
        }
        inner.probing.store(false, Ordering::Release);
    }
}

impl Store for FallbackStore {
    fn incr_window<'a>(&'a self, key: &'a str, window: Duration) -> StoreFuture<'a, u64> {
        Box::pin(self.call(
            move || self.inner.backend.incr_window(key, window),
            move |m| m.incr_window(key, window),
        ))
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        Box::pin(self.call(move || self.inner.backend.get(key), move |m| m.get(key)))
    }

    fn set_ex<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        let v = value.clone();
        Box::pin(self.call(
            move || self.inner.backend.set_ex(key, value, ttl),
            move |m| m.set_ex(key, v, ttl),
        ))
    }

    fn del<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            // A delete (an operator lifting a ban) also clears the local copy, so a ban set
            // during an outage does not outlive its removal.
            let local = self.inner.local.del(key).await.unwrap_or(false);
            let r = self
                .call(move || self.inner.backend.del(key), move |m| m.del(key))
                .await?;
            Ok(r || local)
        })
    }

    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> StoreFuture<'a, i64> {
        Box::pin(self.call(
            move || self.inner.backend.incr_by(key, delta, ttl),
            move |m| m.incr_by(key, delta, ttl),
        ))
    }

    fn list_prefix<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        Box::pin(self.call(
            move || self.inner.backend.list_prefix(prefix, limit),
            move |m| m.list_prefix(prefix, limit),
        ))
    }

    fn hash_get_all<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        Box::pin(self.call(
            move || self.inner.backend.hash_get_all(key),
            move |m| m.hash_get_all(key),
        ))
    }

    fn hash_set<'a>(
        &'a self,
        key: &'a str,
        fields: Vec<(String, Bytes)>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        let f = fields.clone();
        Box::pin(self.call(
            move || self.inner.backend.hash_set(key, fields, ttl),
            move |m| m.hash_set(key, f, ttl),
        ))
    }

    fn flood_hit<'a>(&'a self, hit: FloodHit<'a>) -> StoreFuture<'a, FloodOutcome> {
        let h = hit.clone();
        Box::pin(self.call(
            move || self.inner.backend.flood_hit(hit),
            move |m| m.flood_hit(h),
        ))
    }

    fn release_dialogs<'a>(
        &'a self,
        releases: &'a [DialogRelease<'a>],
    ) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(self.call(
            move || self.inner.backend.release_dialogs(releases),
            move |m| m.release_dialogs(releases),
        ))
    }

    fn flood_sync<'a>(&'a self, hits: &'a [FloodHit<'a>]) -> StoreFuture<'a, Vec<FloodOutcome>> {
        Box::pin(self.call(
            move || self.inner.backend.flood_sync(hits),
            move |m| m.flood_sync(hits),
        ))
    }

    fn list_prefix_ttl<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Listed>> {
        Box::pin(self.call(
            move || self.inner.backend.list_prefix_ttl(prefix, limit),
            move |m| m.list_prefix_ttl(prefix, limit),
        ))
    }

    fn batch<'a>(&'a self, ops: &'a [Op]) -> StoreFuture<'a, Vec<Result<OpResult, StoreError>>> {
        Box::pin(self.call(
            move || self.inner.backend.batch(ops),
            move |m| {
                Box::pin(async move {
                    let mut out = m.batch(ops).await?;
                    // Provisioned data lives only in the shared store: say it is unreachable
                    // rather than answer "absent" (auth would count every user as unknown).
                    for (op, r) in ops.iter().zip(out.iter_mut()) {
                        if matches!(op, Op::HashGetAllUnprefixed(_)) {
                            *r = Err(StoreError::Unavailable(
                                "provisioned data is only in the shared store".into(),
                            ));
                        }
                    }
                    Ok(out)
                })
            },
        ))
    }

    fn release_dialog<'a>(&'a self, release: DialogRelease<'a>) -> StoreFuture<'a, bool> {
        let r = release.clone();
        Box::pin(self.call(
            move || self.inner.backend.release_dialog(release),
            move |m| m.release_dialog(r),
        ))
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if self.backend_up() {
                Ok(())
            } else {
                Err(StoreError::Unavailable(
                    "falling back to local state".into(),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU8;

    /// A backend whose behaviour the test switches: 0 answers (from its own memory),
    /// 1 fails as unreachable, 2 never answers.
    struct Flaky {
        mode: AtomicU8,
        mem: MemoryStore,
    }

    impl Flaky {
        /// The memory store works when called, so it is only called when answering.
        fn run<'a, T: Send + 'a>(
            &'a self,
            f: impl FnOnce() -> StoreFuture<'a, T> + Send + 'a,
        ) -> StoreFuture<'a, T> {
            Box::pin(async move {
                match self.mode.load(Ordering::SeqCst) {
                    0 => f().await,
                    1 => Err(StoreError::Unavailable("refused".into())),
                    _ => std::future::pending().await,
                }
            })
        }
    }

    impl Store for Flaky {
        fn incr_window<'a>(&'a self, key: &'a str, window: Duration) -> StoreFuture<'a, u64> {
            self.run(move || self.mem.incr_window(key, window))
        }
        fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
            self.run(move || self.mem.get(key))
        }
        fn set_ex<'a>(&'a self, key: &'a str, v: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
            self.run(move || self.mem.set_ex(key, v, ttl))
        }
        fn del<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
            self.run(move || self.mem.del(key))
        }
        fn incr_by<'a>(&'a self, key: &'a str, d: i64, ttl: Duration) -> StoreFuture<'a, i64> {
            self.run(move || self.mem.incr_by(key, d, ttl))
        }
        fn list_prefix<'a>(
            &'a self,
            p: &'a str,
            l: usize,
        ) -> StoreFuture<'a, Vec<(String, Bytes)>> {
            self.run(move || self.mem.list_prefix(p, l))
        }
        fn hash_get_all<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, Bytes)>> {
            self.run(move || self.mem.hash_get_all(key))
        }
        fn hash_set<'a>(
            &'a self,
            key: &'a str,
            f: Vec<(String, Bytes)>,
            ttl: Option<Duration>,
        ) -> StoreFuture<'a, ()> {
            self.run(move || self.mem.hash_set(key, f, ttl))
        }
        fn flood_hit<'a>(&'a self, hit: FloodHit<'a>) -> StoreFuture<'a, FloodOutcome> {
            self.run(move || self.mem.flood_hit(hit))
        }
        fn list_prefix_ttl<'a>(&'a self, p: &'a str, l: usize) -> StoreFuture<'a, Vec<Listed>> {
            self.run(move || self.mem.list_prefix_ttl(p, l))
        }
        fn batch<'a>(
            &'a self,
            ops: &'a [Op],
        ) -> StoreFuture<'a, Vec<Result<OpResult, StoreError>>> {
            self.run(move || self.mem.batch(ops))
        }
        fn release_dialog<'a>(&'a self, r: DialogRelease<'a>) -> StoreFuture<'a, bool> {
            self.run(move || self.mem.release_dialog(r))
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            self.run(move || self.mem.ping())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn falls_back_within_the_timeout_and_returns_when_the_backend_answers() {
        let backend = Arc::new(Flaky {
            mode: AtomicU8::new(0),
            mem: MemoryStore::new(100),
        });
        let registry = Registry::new();
        let metrics = StoreMetrics::new(&registry).unwrap();
        let s = FallbackStore::new(backend.clone(), Duration::from_millis(100), metrics.clone());
        let w = Duration::from_secs(60);
        assert_eq!(s.incr_window("c", w).await.unwrap(), 1);
        assert_eq!(
            backend.mem.get("c").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(metrics.backend_up.get(), 1);

        // The backend hangs: the call ends after the timeout and answers locally.
        backend.mode.store(2, Ordering::SeqCst);
        let t0 = tokio::time::Instant::now();
        assert_eq!(s.incr_window("c", w).await.unwrap(), 1);
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert!(!s.backend_up());
        assert_eq!(metrics.backend_up.get(), 0);
        // Later calls do not wait at all.
        let t1 = tokio::time::Instant::now();
        assert_eq!(s.incr_window("c", w).await.unwrap(), 2);
        assert_eq!(t1.elapsed(), Duration::ZERO);
        assert_eq!(metrics.fallbacks.get(), 2);

        // The backend answers again: the probe notices within a second or two.
        backend.mode.store(0, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(s.backend_up());
        assert_eq!(metrics.backend_up.get(), 1);
        assert_eq!(s.incr_window("c", w).await.unwrap(), 2);

        // A refusal (not an outage) also falls back, without hanging.
        backend.mode.store(1, Ordering::SeqCst);
        assert!(s.get("c").await.unwrap().is_some());
        assert!(!s.backend_up());
    }

    #[tokio::test(start_paused = true)]
    async fn provisioned_data_is_unavailable_not_absent_while_falling_back() {
        let backend = Arc::new(Flaky {
            mode: AtomicU8::new(1),
            mem: MemoryStore::new(100),
        });
        let registry = Registry::new();
        let metrics = StoreMetrics::new(&registry).unwrap();
        let s = FallbackStore::new(backend, Duration::from_millis(100), metrics);
        let ops = [
            Op::Get("regblock:alice".into()),
            Op::HashGetAllUnprefixed("subscriber:alice".into()),
            Op::MaxAdvance("nc".into(), 1, Duration::from_secs(5)),
        ];
        let r = s.batch(&ops).await.unwrap();
        assert!(!s.backend_up());
        assert_eq!(r[0].as_ref().unwrap(), &OpResult::Value(None));
        assert!(matches!(r[1], Err(StoreError::Unavailable(_))), "{r:?}");
        assert_eq!(r[2].as_ref().unwrap(), &OpResult::Count(0));
    }

    #[tokio::test(start_paused = true)]
    async fn command_errors_are_not_outages() {
        let backend = Arc::new(MemoryStore::new(100));
        let registry = Registry::new();
        let metrics = StoreMetrics::new(&registry).unwrap();
        let s = FallbackStore::new(backend.clone(), Duration::from_millis(100), metrics);
        s.set_ex("t", Bytes::from_static(b"x"), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(matches!(
            s.incr_by("t", 1, Duration::from_secs(5)).await,
            Err(StoreError::NotAnInteger(_))
        ));
        assert!(s.backend_up());
    }
}
