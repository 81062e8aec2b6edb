//! Merging concurrent [`Store::batch`] calls into one round trip.
//!
//! Under load many requests need a decision at once (every initial INVITE a throttle counts).
//! Each would be its own round trip: a command for the client to encode and a script call for
//! Redis to run. [`Coalescing`] queues them, and one task sends every batch queued while its
//! previous round trip was in flight as one batch, then hands each caller its own results. At
//! low load a batch goes alone, as before; the operations stay independent of each other (see
//! [`Store::batch`]), so merging them changes no answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{
    DialogRelease, FloodHit, FloodOutcome, Listed, Op, OpResult, Store, StoreError, StoreFuture,
};

/// Batches waiting at most; beyond it a caller's batch goes on its own.
const QUEUE: usize = 4096;
/// Callers merged into one round trip at most (bounds the script's size).
const MERGE: usize = 64;

type Answer = Result<Vec<Result<OpResult, StoreError>>, StoreError>;

struct Job {
    ops: Vec<Op>,
    reply: oneshot::Sender<Answer>,
}

/// A [`Store`] that merges concurrent [`Store::batch`] calls; every other method goes straight
/// to the inner store.
#[derive(Clone)]
pub struct Coalescing {
    inner: Arc<dyn Store>,
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Coalescing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescing").finish_non_exhaustive()
    }
}

impl Coalescing {
    /// Wraps `inner`; starts the merging task on the current Tokio runtime (call inside it).
    /// The task ends when the last clone of the store is dropped.
    pub fn new(inner: Arc<dyn Store>) -> Coalescing {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(rx, inner.clone()));
        Coalescing { inner, tx }
    }
}

async fn run(mut rx: mpsc::Receiver<Job>, inner: Arc<dyn Store>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MERGE);
    while rx.recv_many(&mut jobs, MERGE).await > 0 {
        let lens: Vec<usize> = jobs.iter().map(|j| j.ops.len()).collect();
        let ops: Vec<Op> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.ops))
            .collect();
        match inner.batch(&ops).await {
            Ok(results) => {
                let mut results = results.into_iter();
                for (job, n) in jobs.drain(..).zip(lens) {
                    let _ = job.reply.send(Ok(results.by_ref().take(n).collect()));
                }
            }
            Err(e) => {
                let why = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(StoreError::Unavailable(why.clone())));
                }
            }
        }
    }
}

impl Store for Coalescing {
    fn batch<'a>(&'a self, ops: &'a [Op]) -> StoreFuture<'a, Vec<Result<OpResult, StoreError>>> {
        self.batch_owned(ops.to_vec())
    }

    fn batch_owned(&self, ops: Vec<Op>) -> StoreFuture<'_, Vec<Result<OpResult, StoreError>>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            match self.tx.try_send(Job { ops, reply }) {
                Ok(()) => answer
                    .await
                    .unwrap_or_else(|_| Err(StoreError::Unavailable("batch task stopped".into()))),
                // Full (or stopping): this batch goes on its own.
                Err(
                    mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job),
                ) => self.inner.batch(&job.ops).await,
            }
        })
    }

    fn incr_window<'a>(&'a self, key: &'a str, window: Duration) -> StoreFuture<'a, u64> {
        self.inner.incr_window(key, window)
    }
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.inner.get(key)
    }
    fn set_ex<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> StoreFuture<'a, ()> {
        self.inner.set_ex(key, value, ttl)
    }
    fn del<'a>(&'a self, key: &'a str) -> StoreFuture<'a, bool> {
        self.inner.del(key)
    }
    fn incr_by<'a>(&'a self, key: &'a str, delta: i64, ttl: Duration) -> StoreFuture<'a, i64> {
        self.inner.incr_by(key, delta, ttl)
    }
    fn list_prefix<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        self.inner.list_prefix(prefix, limit)
    }
    fn hash_get_all<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        self.inner.hash_get_all(key)
    }
    fn hash_set<'a>(
        &'a self,
        key: &'a str,
        fields: Vec<(String, Bytes)>,
        ttl: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.inner.hash_set(key, fields, ttl)
    }
    fn flood_hit<'a>(&'a self, hit: FloodHit<'a>) -> StoreFuture<'a, FloodOutcome> {
        self.inner.flood_hit(hit)
    }
    fn flood_sync<'a>(&'a self, hits: &'a [FloodHit<'a>]) -> StoreFuture<'a, Vec<FloodOutcome>> {
        self.inner.flood_sync(hits)
    }
    fn list_prefix_ttl<'a>(
        &'a self,
        prefix: &'a str,
        limit: usize,
    ) -> StoreFuture<'a, Vec<Listed>> {
        self.inner.list_prefix_ttl(prefix, limit)
    }
    fn release_dialog<'a>(&'a self, release: DialogRelease<'a>) -> StoreFuture<'a, bool> {
        self.inner.release_dialog(release)
    }
    fn release_dialogs<'a>(
        &'a self,
        releases: &'a [DialogRelease<'a>],
    ) -> StoreFuture<'a, Vec<bool>> {
        self.inner.release_dialogs(releases)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::Counting;

    #[tokio::test(start_paused = true)]
    async fn concurrent_batches_share_round_trips_and_get_their_own_answers() {
        // Slow answers, so callers pile up behind the first round trip.
        let slow = Arc::new(Counting {
            batch_delay: Duration::from_millis(5),
            ..Counting::default()
        });
        let store = Coalescing::new(slow.clone());
        let w = Duration::from_secs(10);
        let batches: Vec<Vec<Op>> = (0..10)
            .map(|i| {
                vec![
                    Op::IncrWindow("shared".into(), w),
                    Op::IncrBy(format!("own:{i}"), i, w),
                ]
            })
            .collect();
        let answers = futures::future::join_all(batches.iter().map(|ops| store.batch(ops))).await;
        // Ten callers, far fewer round trips: the first goes alone, the rest wait together.
        let trips = slow.take();
        assert!((1..=3).contains(&trips), "{trips} round trips");
        let mut shared: Vec<i64> = Vec::new();
        for (i, a) in answers.into_iter().enumerate() {
            let a = a.expect("answered");
            assert_eq!(a.len(), 2, "caller {i} got its two results");
            match (&a[0], &a[1]) {
                (Ok(OpResult::Count(s)), Ok(OpResult::Count(own))) => {
                    shared.push(*s);
                    assert_eq!(*own, i as i64, "caller {i} got its own counter");
                }
                other => panic!("caller {i}: {other:?}"),
            }
        }
        shared.sort_unstable();
        assert_eq!(shared, (1..=10).collect::<Vec<i64>>());
    }
}
