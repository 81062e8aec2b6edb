//! Test doubles of the [`Store`] shared by the stages' tests.

use std::time::Duration;

use bytes::Bytes;

use super::{
    DialogRelease, FloodHit, FloodOutcome, Listed, MemoryStore, Op, OpResult, Store, StoreError,
    StoreFuture,
};

/// A memory store that counts the calls made to it: each would be one Redis round trip.
/// Batches wait `batch_delay` before answering (zero: at once), so callers can pile up.
#[derive(Default)]
pub struct Counting {
    pub mem: MemoryStore,
    pub calls: std::sync::atomic::AtomicUsize,
    pub batch_delay: Duration,
}

impl Counting {
    /// The calls made since the last take.
    pub fn take(&self) -> usize {
        self.calls.swap(0, std::sync::atomic::Ordering::SeqCst)
    }
    fn hit(&self) -> &MemoryStore {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        &self.mem
    }
}

impl Store for Counting {
    fn incr_window<'a>(&'a self, k: &'a str, w: Duration) -> StoreFuture<'a, u64> {
        self.hit().incr_window(k, w)
    }
    fn get<'a>(&'a self, k: &'a str) -> StoreFuture<'a, Option<Bytes>> {
        self.hit().get(k)
    }
    fn set_ex<'a>(&'a self, k: &'a str, v: Bytes, t: Duration) -> StoreFuture<'a, ()> {
        self.hit().set_ex(k, v, t)
    }
    fn del<'a>(&'a self, k: &'a str) -> StoreFuture<'a, bool> {
        self.hit().del(k)
    }
    fn incr_by<'a>(&'a self, k: &'a str, d: i64, t: Duration) -> StoreFuture<'a, i64> {
        self.hit().incr_by(k, d, t)
    }
    fn list_prefix<'a>(&'a self, p: &'a str, l: usize) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        self.hit().list_prefix(p, l)
    }
    fn hash_get_all<'a>(&'a self, k: &'a str) -> StoreFuture<'a, Vec<(String, Bytes)>> {
        self.hit().hash_get_all(k)
    }
    fn hash_set<'a>(
        &'a self,
        k: &'a str,
        f: Vec<(String, Bytes)>,
        t: Option<Duration>,
    ) -> StoreFuture<'a, ()> {
        self.hit().hash_set(k, f, t)
    }
    fn flood_hit<'a>(&'a self, h: FloodHit<'a>) -> StoreFuture<'a, FloodOutcome> {
        self.hit().flood_hit(h)
    }
    fn list_prefix_ttl<'a>(&'a self, p: &'a str, l: usize) -> StoreFuture<'a, Vec<Listed>> {
        self.hit().list_prefix_ttl(p, l)
    }
    fn batch<'a>(&'a self, ops: &'a [Op]) -> StoreFuture<'a, Vec<Result<OpResult, StoreError>>> {
        let mem = self.hit();
        if self.batch_delay.is_zero() {
            return mem.batch(ops);
        }
        Box::pin(async move {
            tokio::time::sleep(self.batch_delay).await;
            mem.batch(ops).await
        })
    }
    fn release_dialog<'a>(&'a self, r: DialogRelease<'a>) -> StoreFuture<'a, bool> {
        self.hit().release_dialog(r)
    }
    fn release_dialogs<'a>(&'a self, r: &'a [DialogRelease<'a>]) -> StoreFuture<'a, Vec<bool>> {
        self.hit().release_dialogs(r)
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.hit().ping()
    }
}
