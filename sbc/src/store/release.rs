//! Calls counted in expiring time buckets, and releasing them in batches.
//!
//! A throttle's concurrent calls and a destination's answered calls are counted the same
//! way: a counter per bucket of a quarter of the dialog timeout, each living a dialog timeout
//! past its end, and a dialog key per Call-ID naming the bucket its call was counted in. The
//! call's end (its BYE, on whichever replica) takes the dialog key once and decrements that
//! bucket; a call whose end is never seen leaves with its bucket.
//!
//! One background task per counting stage sends the releases: it takes every release queued
//! while its previous round trip was in flight and sends them all in the next one, so at low
//! load a release costs one round trip and under load many share one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{DialogRelease, Store};

/// Buckets per dialog timeout.
pub const BUCKETS: u64 = 4;

/// The bucket arithmetic of one dialog timeout, in milliseconds since the epoch (a clock
/// every replica shares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialogBuckets {
    timeout_ms: u64,
}

impl DialogBuckets {
    /// Buckets for calls that count at most `timeout_secs` without an end.
    pub fn new(timeout_secs: u32) -> DialogBuckets {
        DialogBuckets {
            timeout_ms: u64::from(timeout_secs) * 1000,
        }
    }

    /// Length of one bucket.
    pub fn len_ms(&self) -> u64 {
        self.timeout_ms.div_ceil(BUCKETS).max(1)
    }

    /// The number of the bucket `now_ms` falls in.
    pub fn current(&self, now_ms: u64) -> u64 {
        now_ms / self.len_ms()
    }

    /// TTL of bucket `b` at `now_ms`: it lives a dialog timeout past its end.
    pub fn ttl(&self, b: u64, now_ms: u64) -> Duration {
        let end = (b + 1).saturating_mul(self.len_ms());
        let expire = end.saturating_add(self.timeout_ms);
        Duration::from_millis(expire.saturating_sub(now_ms).max(1))
    }

    /// The older buckets still alive beside bucket `b`, newest first.
    pub fn older(&self, b: u64) -> impl Iterator<Item = u64> {
        (1..=BUCKETS).filter_map(move |i| b.checked_sub(i))
    }

    /// The release of the call recorded at `dialog_key`, counted under `counter_prefix`.
    pub fn release(&self, dialog_key: String, counter_prefix: String, now_ms: u64) -> Release {
        Release {
            dialog_key,
            counter_prefix,
            bucket_ms: self.len_ms(),
            timeout_ms: self.timeout_ms,
            now_ms,
        }
    }
}

/// Releases queued at most; beyond it a release is sent on its own.
const QUEUE: usize = 16_384;
/// Releases sent in one round trip at most.
const BATCH: usize = 256;

/// One queued release, owning what [`DialogRelease`] borrows ([`DialogBuckets::release`]).
#[derive(Debug, Clone)]
pub struct Release {
    dialog_key: String,
    counter_prefix: String,
    bucket_ms: u64,
    timeout_ms: u64,
    now_ms: u64,
}

impl Release {
    fn view(&self) -> DialogRelease<'_> {
        DialogRelease {
            dialog_key: &self.dialog_key,
            counter_prefix: &self.counter_prefix,
            bucket_ms: self.bucket_ms,
            timeout_ms: self.timeout_ms,
            now_ms: self.now_ms,
        }
    }
}

/// The queue in front of the releasing task.
pub struct Releaser {
    tx: Option<mpsc::Sender<Release>>,
    store: Arc<dyn Store>,
}

impl Releaser {
    /// Starts the task on the current runtime; outside one, releases are not sent (tests of
    /// the decisions alone).
    pub fn start(store: Arc<dyn Store>) -> Releaser {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Releaser { tx: None, store };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(run(rx, store.clone()));
        Releaser {
            tx: Some(tx),
            store,
        }
    }

    /// Queues `jobs`. The task ends when its owner (and so this sender) is dropped, after
    /// sending what is queued.
    pub fn send(&self, jobs: Vec<Release>) {
        let Some(tx) = &self.tx else { return };
        for job in jobs {
            if let Err(mpsc::error::TrySendError::Full(job)) = tx.try_send(job) {
                // A full queue must not leak the slot: this one goes on its own.
                let store = self.store.clone();
                tokio::spawn(async move {
                    let _ = store.release_dialogs(&[job.view()]).await;
                });
            }
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Release>, store: Arc<dyn Store>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let views: Vec<DialogRelease<'_>> = batch.iter().map(Release::view).collect();
        // The store takes each dialog key atomically, so a BYE seen twice (or a final
        // response racing a BYE) frees one slot. A failure leaves the counts to their TTLs.
        if let Err(e) = store.release_dialogs(&views).await {
            tracing::debug!(error = %e, calls = views.len(), "call releases not sent");
        }
        drop(views);
        batch.clear();
    }
}
