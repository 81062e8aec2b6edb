//! Releasing the concurrency slots of ended calls, in batches.
//!
//! Every BYE (and every failed INVITE) of a counted call gives its slot back through the
//! store. One background task per throttle stage sends them: it takes every release queued
//! while its previous round trip was in flight and sends them all in the next one, so at low
//! load a release costs one round trip as before and under load many share one.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::store::{DialogRelease, Store};

/// Releases queued at most; beyond it a release is sent on its own.
const QUEUE: usize = 16_384;
/// Releases sent in one round trip at most.
const BATCH: usize = 256;

/// One queued release, owning what [`DialogRelease`] borrows.
#[derive(Debug, Clone)]
pub(super) struct Release {
    pub dialog_key: String,
    pub counter_prefix: String,
    pub bucket_ms: u64,
    pub timeout_ms: u64,
    pub now_ms: u64,
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
pub(super) struct Releaser {
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

    /// Queues `jobs`. The task ends when the stage (and so this sender) is dropped, after
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
