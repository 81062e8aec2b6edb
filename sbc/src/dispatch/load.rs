//! The call load every replica shares: an answered call counts against its destination's
//! `maxload` and the call-load algorithm until its BYE, whichever replica relays it, or until
//! `dispatcher.dialogTimeoutSecs` when no BYE is seen.
//!
//! Ringing calls stay counted per replica in memory: they end on the replica holding their
//! transaction. Answered calls are counted in the store as a throttle's concurrent calls are
//! ([`crate::store::DialogBuckets`]): a counter per destination and bucket, and a record per
//! Call-ID that the first BYE takes. Every [`REFRESH`] one batch reads the live buckets of
//! every counted destination; calls answered here since that read are added on top until the
//! next read includes them. A BYE frees its capacity on every replica at the next refresh.
//!
//! A destination is counted when its set uses the call-load algorithm or it has a `maxload`;
//! nothing reaches the store otherwise. A change of `dialogTimeoutSecs` re-buckets: calls
//! answered before it stop counting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Destination, Dispatcher};
use crate::store::{DialogBuckets, Op, OpResult, Releaser, Store, keys, parse_count};
use crate::throttle::Clock;

/// How often the answered calls of the counted destinations are read back from the store.
pub const REFRESH: Duration = Duration::from_millis(500);
/// Answered calls queued for the store at most; beyond it one is written on its own.
const QUEUE: usize = 16_384;
/// Answered calls written in one round trip at most.
const BATCH: usize = 256;

/// One answered call to record.
#[derive(Debug)]
struct Answered {
    /// `<set>/<uri>`: the destination's counters.
    segment: String,
    call_id: Bytes,
}

/// The shared call load of one sbc process; [`CallLoad::start`] runs its task.
pub struct CallLoad {
    tx: Option<mpsc::Sender<Answered>>,
    releaser: Releaser,
    store: Arc<dyn Store>,
    clock: Clock,
    timeout_secs: Arc<AtomicU32>,
    /// Whether some destination is counted (BYEs need a release only then).
    counting: Arc<AtomicBool>,
}

impl std::fmt::Debug for CallLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallLoad")
            .field("timeout_secs", &self.timeout_secs)
            .field("counting", &self.counting)
            .finish_non_exhaustive()
    }
}

impl CallLoad {
    /// Starts counting the answered calls of `dispatcher`'s counted destinations in `store`,
    /// refreshing them every [`REFRESH`] on the current runtime. Outside a runtime nothing is
    /// recorded (tests of the selection alone).
    pub fn start(
        dispatcher: Arc<Dispatcher>,
        store: Arc<dyn Store>,
        clock: Clock,
        timeout_secs: u32,
    ) -> CallLoad {
        let timeout = Arc::new(AtomicU32::new(timeout_secs));
        let counting = Arc::new(AtomicBool::new(counts_any(&dispatcher)));
        let tx = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = Task {
                dispatcher,
                store: store.clone(),
                clock,
                timeout: timeout.clone(),
                counting: counting.clone(),
            };
            rt.spawn(task.run(rx));
            tx
        });
        CallLoad {
            tx,
            releaser: Releaser::start(store.clone()),
            store,
            clock,
            timeout_secs: timeout,
            counting,
        }
    }

    /// Applies a new `dispatcher.dialogTimeoutSecs`.
    pub fn set_timeout(&self, secs: u32) {
        self.timeout_secs.store(secs, Ordering::Relaxed);
    }

    /// The initial INVITE with Call-ID `call_id` sent to `dest` by this replica got a 2xx.
    pub fn answered(&self, dest: &Destination, call_id: &[u8]) {
        if !dest.counts_load() {
            return;
        }
        dest.call_answered();
        let Some(tx) = &self.tx else { return };
        let job = Answered {
            segment: segment(dest),
            call_id: Bytes::copy_from_slice(call_id),
        };
        if let Err(mpsc::error::TrySendError::Full(job)) = tx.try_send(job) {
            // A full queue must not lose the count: this one goes on its own.
            let (store, ops) = (self.store.clone(), self.record_ops(&[job]));
            tokio::spawn(async move {
                let _ = store.batch_owned(ops).await;
            });
        }
    }

    /// A BYE with Call-ID `call_id` was relayed: its call, if counted, ends for every replica.
    pub fn ended(&self, call_id: &[u8]) {
        if !self.counting.load(Ordering::Relaxed) {
            return;
        }
        let buckets = DialogBuckets::new(self.timeout_secs.load(Ordering::Relaxed));
        let release = buckets.release(
            keys::load_dialog(call_id),
            keys::LOAD_COUNTERS.to_owned(),
            self.clock.now_ms(),
        );
        self.releaser.send(vec![release]);
    }

    fn record_ops(&self, calls: &[Answered]) -> Vec<Op> {
        record_ops(
            calls,
            DialogBuckets::new(self.timeout_secs.load(Ordering::Relaxed)),
            self.clock.now_ms(),
        )
    }
}

/// The counters of `dest`: its set and URI.
fn segment(dest: &Destination) -> String {
    format!("{}/{}", dest.set_id, dest.uri)
}

fn counts_any(d: &Dispatcher) -> bool {
    d.table()
        .sets()
        .iter()
        .any(|s| s.destinations().iter().any(|d| d.counts_load()))
}

/// The writes recording `calls`: each call's bucket counter up by one, and its record naming
/// that bucket, both living a dialog timeout past the bucket's end.
fn record_ops(calls: &[Answered], buckets: DialogBuckets, now_ms: u64) -> Vec<Op> {
    let b = buckets.current(now_ms);
    let ttl = buckets.ttl(b, now_ms);
    let mut ops = Vec::with_capacity(calls.len() * 2);
    for c in calls {
        let counter = format!("{}{}:{b}", keys::LOAD_COUNTERS, c.segment);
        ops.push(Op::IncrBy(counter, 1, ttl));
        ops.push(Op::SetEx(
            keys::load_dialog(&c.call_id),
            Bytes::from(format!("{b}|{}", c.segment)),
            ttl,
        ));
    }
    ops
}

/// The task writing answered calls and refreshing the counts.
struct Task {
    dispatcher: Arc<Dispatcher>,
    store: Arc<dyn Store>,
    clock: Clock,
    timeout: Arc<AtomicU32>,
    counting: Arc<AtomicBool>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Answered>) {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    let ops = record_ops(&batch, self.buckets(), self.clock.now_ms());
                    batch.clear();
                    if let Err(e) = self.store.batch_owned(ops).await {
                        tracing::debug!(error = %e, "answered calls not recorded");
                    }
                }
                _ = tick.tick() => self.refresh().await,
            }
        }
    }

    fn buckets(&self) -> DialogBuckets {
        DialogBuckets::new(self.timeout.load(Ordering::Relaxed))
    }

    /// Reads the live buckets of every counted destination in one round trip.
    async fn refresh(&self) {
        let table = self.dispatcher.table();
        let dests: Vec<&Arc<Destination>> = table
            .sets()
            .iter()
            .flat_map(|s| s.destinations())
            .filter(|d| d.counts_load())
            .collect();
        self.counting.store(!dests.is_empty(), Ordering::Relaxed);
        if dests.is_empty() {
            return;
        }
        let buckets = self.buckets();
        let b = buckets.current(self.clock.now_ms());
        let live: Vec<u64> = std::iter::once(b).chain(buckets.older(b)).collect();
        let mut ops = Vec::with_capacity(dests.len() * live.len());
        let mut seen = Vec::with_capacity(dests.len());
        for d in &dests {
            seen.push(d.answered_here());
            let seg = segment(d);
            ops.extend(
                live.iter()
                    .map(|n| Op::Get(format!("{}{seg}:{n}", keys::LOAD_COUNTERS))),
            );
        }
        let Ok(res) = self.store.batch_owned(ops).await else {
            // Unreachable (and no fallback): keep the last counts.
            return;
        };
        for ((d, chunk), seen) in dests.iter().zip(res.chunks(live.len())).zip(seen) {
            let sum: u64 = chunk
                .iter()
                .map(|r| match r {
                    Ok(OpResult::Value(Some(v))) => parse_count(v),
                    _ => 0,
                })
                .sum();
            d.set_answered(u32::try_from(sum).unwrap_or(u32::MAX), seen);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use kubesbc_crds::config::DispatcherConfig;

    fn dispatcher(yaml: &str) -> Arc<Dispatcher> {
        let cfg: DispatcherConfig = serde_saphyr::from_str(yaml).expect("dispatcher yaml");
        Arc::new(Dispatcher::new(&cfg).expect("dispatcher"))
    }

    const CALL_LOAD: &str = "
sets:
  - id: 1
    algorithm: call-load
    destinations:
      - uri: sip:127.0.0.1:5071
      - uri: sip:127.0.0.1:5072
        maxload: 1
";

    async fn settle() {
        // The task writes, then a refresh reads.
        for _ in 0..3 {
            tokio::time::sleep(REFRESH).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answered_call_counts_on_every_replica_until_its_bye_on_any_of_them() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1024));
        let clock = Clock::new();
        // Two replicas: their own dispatchers, one store.
        let (da, db) = (dispatcher(CALL_LOAD), dispatcher(CALL_LOAD));
        let a = CallLoad::start(da.clone(), store.clone(), clock, 3600);
        let b = CallLoad::start(db.clone(), store.clone(), clock, 3600);
        // 1: the one with maxload 1; 0: the other.
        let dest = |d: &Dispatcher, i: usize| {
            let port = if i == 1 { ":5072" } else { ":5071" };
            d.table().sets()[0]
                .destinations()
                .iter()
                .find(|x| x.uri.ends_with(port))
                .expect("destination")
                .clone()
        };
        a.answered(&dest(&da, 1), b"call-1");
        // At once on the replica that saw it, and it is full (maxload 1) there.
        assert_eq!(dest(&da, 1).active_calls(), 1);
        assert!(!dest(&da, 1).has_capacity());
        settle().await;
        assert_eq!(dest(&da, 1).active_calls(), 1, "counted once, not twice");
        assert_eq!(dest(&db, 1).active_calls(), 1, "replica B sees A's call");
        assert!(!dest(&db, 1).has_capacity());
        assert_eq!(dest(&db, 0).active_calls(), 0);
        // The BYE goes through B.
        b.ended(b"call-1");
        settle().await;
        assert_eq!(dest(&da, 1).active_calls(), 0);
        assert_eq!(dest(&db, 1).active_calls(), 0);
        // A second BYE (a retransmission, or on another replica) frees nothing more.
        a.answered(&dest(&da, 0), b"call-2");
        b.ended(b"call-1");
        settle().await;
        assert_eq!(dest(&db, 0).active_calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_whose_bye_is_lost_stops_counting_after_the_dialog_timeout() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(1024));
        let clock = Clock::new();
        let d = dispatcher(CALL_LOAD);
        let load = CallLoad::start(d.clone(), store, clock, 60);
        let dest = d.table().sets()[0].destinations()[0].clone();
        load.answered(&dest, b"lost-bye");
        settle().await;
        assert_eq!(dest.active_calls(), 1);
        // Buckets of 15 s live 60 s past their end: gone within 75 s.
        tokio::time::sleep(Duration::from_secs(76)).await;
        settle().await;
        assert_eq!(dest.active_calls(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn sets_that_do_not_count_write_nothing() {
        let store = Arc::new(MemoryStore::new(1024));
        let d = dispatcher(
            "
sets:
  - id: 1
    algorithm: round-robin
    destinations:
      - uri: sip:127.0.0.1:5071
",
        );
        let load = CallLoad::start(d.clone(), store.clone(), Clock::new(), 3600);
        let dest = d.table().sets()[0].destinations()[0].clone();
        assert!(!dest.counts_load());
        load.answered(&dest, b"c");
        load.ended(b"c");
        settle().await;
        assert_eq!(dest.active_calls(), 0);
        let keys = store.list_prefix("load:", 10).await.expect("list");
        assert!(keys.is_empty(), "nothing written: {keys:?}");
    }
}
