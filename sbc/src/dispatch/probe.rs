//! OPTIONS probing of every destination, independent of the transport that sends them.
//!
//! [`run`] pings each destination of each set whose probing is enabled, every
//! `probing.intervalMs`, waits at most `probing.timeoutMs`, and applies the set's thresholds
//! with [`Destination::record_probe`]. Any reply counts as alive except `failureCodes`.
//! Sets swapped in by [`Dispatcher::update`] are picked up at the next wake-up; a new set
//! is probed at once.
//!
//! Outlier detection: a destination whose requests failed `failover.failureThreshold` times
//! since it last answered asks for a probe ([`Destination::mark_down`]) and is probed at
//! once, outside its schedule. That probe decides: no answer (or a `failureCodes` reply)
//! takes the destination out at once, an answer keeps it in and clears the count.
//!
//! The loop also resolves again, every [`super::RESOLVE_INTERVAL`], the destinations whose
//! host did not resolve ([`Dispatcher::resolve_again`], on a blocking thread).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Destination, DispatchTable, Dispatcher};

/// What came back from one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// A final reply with this status code.
    Reply(u16),
    /// No reply within the timeout.
    Timeout,
    /// The request could not be sent (connection refused, ICMP unreachable, ...).
    Unreachable,
}

/// Sends one OPTIONS to a destination. Implemented by the relay over real sockets, and by
/// fakes in tests.
pub trait Pinger: Send + Sync {
    /// Pings `dest` with `from` as From URI, giving up after `timeout`.
    fn ping<'a>(
        &'a self,
        dest: &'a Destination,
        from: &'a str,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = PingOutcome> + Send + 'a>>;
}

/// One finished probe, carried back to the loop that applies it.
struct Done {
    table: Arc<DispatchTable>,
    set_id: u32,
    dest: Arc<Destination>,
    outcome: PingOutcome,
    /// Asked for by failed requests: a failure takes the destination out at once.
    urgent: bool,
}

/// Probes until `shutdown` becomes true (or its sender is dropped).
pub async fn run(
    dispatcher: Arc<Dispatcher>,
    pinger: Arc<dyn Pinger>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut next_due: HashMap<u32, Instant> = HashMap::new();
    // Destinations with a probe in flight, by address, so a slow one is not pinged twice.
    let mut in_flight: HashSet<usize> = HashSet::new();
    let mut task_dest: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut probes: JoinSet<Done> = JoinSet::new();
    let mut resolve_due = Instant::now() + super::RESOLVE_INTERVAL;
    let mut resolving: Option<tokio::task::JoinHandle<usize>> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let table = dispatcher.table();
        let now = Instant::now();
        if now >= resolve_due {
            resolve_due = now + super::RESOLVE_INTERVAL;
            if resolving.as_ref().is_none_or(|h| h.is_finished()) && table.has_unresolved() {
                let d = Arc::clone(&dispatcher);
                resolving = Some(tokio::task::spawn_blocking(move || d.resolve_again()));
            }
        }
        next_due.retain(|id, _| table.set(*id).is_some_and(|s| s.probing().enabled));
        for set in table.sets() {
            let probing = set.probing();
            if !probing.enabled {
                continue;
            }
            let due = next_due.entry(set.id()).or_insert(now);
            let scheduled = *due <= now;
            if scheduled {
                let interval = Duration::from_millis(probing.interval_ms.max(1));
                // Fixed rate, but never a burst to catch up after a stall.
                *due = (*due + interval).max(now + interval / 2);
            }
            let timeout = Duration::from_millis(probing.timeout_ms.max(1));
            for dest in set.destinations() {
                let key = Arc::as_ptr(dest) as usize;
                if !dest.is_probed() || in_flight.contains(&key) {
                    continue;
                }
                // A probe asked for by failed requests is taken only when it can start.
                let urgent = dest.probe_requested() && dest.take_probe_request();
                if !scheduled && !urgent {
                    continue;
                }
                in_flight.insert(key);
                let from = dest
                    .config
                    .ping_from
                    .clone()
                    .unwrap_or_else(|| probing.from.clone());
                let (pinger, dest, table, set_id) = (
                    Arc::clone(&pinger),
                    Arc::clone(dest),
                    Arc::clone(&table),
                    set.id(),
                );
                let handle = probes.spawn(async move {
                    // Enforce the timeout here too, whatever the pinger does.
                    let outcome = tokio::time::timeout(timeout, pinger.ping(&dest, &from, timeout))
                        .await
                        .unwrap_or(PingOutcome::Timeout);
                    Done {
                        table,
                        set_id,
                        dest,
                        outcome,
                        urgent,
                    }
                });
                task_dest.insert(handle.id(), key);
            }
        }
        drop(table);

        let wake = next_due
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
            .min(resolve_due);
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            _ = dispatcher.probe_requested() => {}
            Some(joined) = probes.join_next_with_id(), if !probes.is_empty() => {
                let (id, done) = match joined {
                    Ok((id, done)) => (id, Some(done)),
                    // A pinger that panicked: the probe is lost, the destination stays as is.
                    Err(e) => (e.id(), None),
                };
                if let Some(key) = task_dest.remove(&id) {
                    in_flight.remove(&key);
                }
                if let Some(done) = done {
                    apply(&done);
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    probes.abort_all();
}

fn apply(done: &Done) {
    let Some(set) = done.table.set(done.set_id) else {
        return;
    };
    let probing = set.probing();
    let ok = match done.outcome {
        PingOutcome::Reply(code) => !probing.failure_codes.contains(&code),
        PingOutcome::Timeout | PingOutcome::Unreachable => false,
    };
    let change = if done.urgent && !ok {
        // Failed requests reached the threshold and the probe confirms it: out now.
        let counted = done.dest.record_probe(false, probing);
        match (counted, done.dest.set_inactive()) {
            (Some(a), Some(b)) => Some(super::StateChange {
                from: a.from,
                to: b.to,
            }),
            (a, b) => a.or(b),
        }
    } else {
        done.dest.record_probe(ok, probing)
    };
    if let Some(change) = change {
        tracing::info!(
            set = done.set_id,
            uri = %done.dest.uri,
            state = %change.to,
            previous = %change.from,
            outcome = ?done.outcome,
            "dispatcher destination state changed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::DestState;
    use kubesbc_crds::config::{DestinationConfig, DispatcherConfig, DispatcherSetConfig, Probing};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Answers 200 for live URIs, times out for dead ones; counts pings per URI.
    #[derive(Default)]
    struct FakePinger {
        dead: Mutex<HashSet<String>>,
        code: Mutex<HashMap<String, u16>>,
        pings: Mutex<HashMap<String, u32>>,
        froms: Mutex<Vec<String>>,
        total: AtomicU32,
    }

    impl FakePinger {
        fn set_dead(&self, uri: &str, dead: bool) {
            let mut d = self.dead.lock().unwrap();
            if dead {
                d.insert(uri.to_owned());
            } else {
                d.remove(uri);
            }
        }
        fn pings(&self, uri: &str) -> u32 {
            self.pings.lock().unwrap().get(uri).copied().unwrap_or(0)
        }
    }

    impl Pinger for FakePinger {
        fn ping<'a>(
            &'a self,
            dest: &'a Destination,
            from: &'a str,
            timeout: Duration,
        ) -> Pin<Box<dyn Future<Output = PingOutcome> + Send + 'a>> {
            Box::pin(async move {
                self.total.fetch_add(1, Ordering::Relaxed);
                *self
                    .pings
                    .lock()
                    .unwrap()
                    .entry(dest.uri.clone())
                    .or_default() += 1;
                self.froms.lock().unwrap().push(from.to_owned());
                let dead = self.dead.lock().unwrap().contains(&dest.uri);
                if dead {
                    // Never answer: the loop's own timeout must end this probe.
                    tokio::time::sleep(timeout * 10).await;
                    return PingOutcome::Reply(200);
                }
                let code = self.code.lock().unwrap().get(&dest.uri).copied();
                PingOutcome::Reply(code.unwrap_or(200))
            })
        }
    }

    const A: &str = "sip:127.0.0.1:5071";
    const B: &str = "sip:127.0.0.1:5072";

    fn config(
        interval_ms: u64,
        failure_threshold: u32,
        failure_codes: Vec<u16>,
    ) -> DispatcherConfig {
        DispatcherConfig {
            dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
            default_set: 1,
            sets: vec![DispatcherSetConfig {
                id: 1,
                algorithm: Default::default(),
                destinations: vec![
                    DestinationConfig {
                        uri: A.into(),
                        ..Default::default()
                    },
                    DestinationConfig {
                        uri: B.into(),
                        ping_from: Some("sip:custom@kubesbc".into()),
                        ..Default::default()
                    },
                ],
                probing: Probing {
                    interval_ms,
                    timeout_ms: 200,
                    failure_threshold,
                    failure_codes,
                    ..Default::default()
                },
                failover: Default::default(),
                service: None,
            }],
        }
    }

    fn state(d: &Dispatcher, uri: &str) -> DestState {
        let t = d.table();
        let set = t.set(1).unwrap();
        set.destinations()
            .iter()
            .find(|x| x.uri == uri)
            .unwrap()
            .state()
    }

    struct Loop {
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start(d: &Arc<Dispatcher>, p: &Arc<FakePinger>) -> Loop {
        let (stop, rx) = watch::channel(false);
        let pinger: Arc<dyn Pinger> = p.clone();
        let task = tokio::spawn(run(Arc::clone(d), pinger, rx));
        Loop { stop, task }
    }

    impl Loop {
        async fn stop(self) {
            self.stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("loop stops on shutdown")
                .unwrap();
        }
    }

    async fn advance(ms: u64) {
        // Step in small increments so spawned probes and the loop get to run in between.
        for _ in 0..ms / 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failing_destination_goes_out_within_an_interval_and_comes_back() {
        let d = Arc::new(Dispatcher::new(&config(1000, 1, vec![])).unwrap());
        let p = Arc::new(FakePinger::default());
        let l = start(&d, &p);
        advance(50).await;
        assert_eq!(p.pings(A), 1, "probed at once");
        assert_eq!(state(&d, A), DestState::Active);

        p.set_dead(A, true);
        // Next probe at 1000 ms, its 200 ms timeout ends at 1200 ms.
        advance(1250).await;
        assert_eq!(state(&d, A), DestState::Inactive);
        assert_eq!(state(&d, B), DestState::Active);

        p.set_dead(A, false);
        advance(1000).await;
        assert_eq!(
            state(&d, A),
            DestState::Active,
            "back after one answered probe"
        );
        assert!(p.pings(B) >= 3);
        let froms = p.froms.lock().unwrap().clone();
        assert!(froms.contains(&"sip:dispatcher@localhost".to_owned()));
        assert!(
            froms.contains(&"sip:custom@kubesbc".to_owned()),
            "ping_from attribute wins"
        );
        l.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_requests_trigger_a_probe_at_once_and_the_probe_decides() {
        // Probes every 10 s, two failed probes to go out; failover's threshold is 3.
        let d = Arc::new(Dispatcher::new(&config(10_000, 2, vec![])).unwrap());
        let p = Arc::new(FakePinger::default());
        let l = start(&d, &p);
        advance(50).await;
        assert_eq!(p.pings(A), 1, "probed at once");
        let a = || {
            d.table()
                .set(1)
                .unwrap()
                .destinations()
                .iter()
                .find(|x| x.uri == A)
                .unwrap()
                .clone()
        };
        // Two failed requests: below the threshold, no probe, still in.
        a().request_failed();
        a().request_failed();
        advance(100).await;
        assert_eq!(p.pings(A), 1);
        // The third asks for a probe now; A answers it, so A stays in.
        a().request_failed();
        advance(100).await;
        assert_eq!(p.pings(A), 2, "an immediate probe, not the next interval");
        assert_eq!(state(&d, A), DestState::Active);
        // Again, with A really gone: that one probe takes it out, whatever the probes'
        // own threshold.
        p.set_dead(A, true);
        for _ in 0..3 {
            a().request_failed();
        }
        advance(400).await;
        assert_eq!(p.pings(A), 3);
        assert_eq!(state(&d, A), DestState::Inactive);
        assert_eq!(state(&d, B), DestState::Active, "B is not touched");
        l.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn thresholds_and_failure_codes_apply() {
        let d = Arc::new(Dispatcher::new(&config(1000, 2, vec![503])).unwrap());
        let p = Arc::new(FakePinger::default());
        p.code.lock().unwrap().insert(B.into(), 503);
        p.code.lock().unwrap().insert(A.into(), 404);
        let l = start(&d, &p);
        advance(50).await;
        assert_eq!(state(&d, B), DestState::Trying, "one 503 of two needed");
        assert_eq!(state(&d, A), DestState::Active, "a 404 is a reply: alive");
        advance(1000).await;
        assert_eq!(state(&d, B), DestState::Inactive);
        l.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn swapped_sets_are_picked_up_and_state_kept() {
        let d = Arc::new(Dispatcher::new(&config(1000, 1, vec![])).unwrap());
        let p = Arc::new(FakePinger::default());
        p.set_dead(A, true);
        let l = start(&d, &p);
        advance(300).await;
        assert_eq!(state(&d, A), DestState::Inactive);

        let mut cfg = config(1000, 1, vec![]);
        let c = "sip:127.0.0.1:5073";
        cfg.sets[0].destinations.push(DestinationConfig {
            uri: c.into(),
            ..Default::default()
        });
        d.update(&cfg).unwrap();
        assert_eq!(state(&d, A), DestState::Inactive, "update keeps health");
        advance(1000).await;
        assert!(p.pings(c) >= 1, "new destination probed");

        // Probing switched off: no more pings.
        cfg.sets[0].probing.enabled = false;
        d.update(&cfg).unwrap();
        advance(300).await;
        let before = p.total.load(Ordering::Relaxed);
        advance(3000).await;
        assert_eq!(p.total.load(Ordering::Relaxed), before);
        l.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_and_noping_destinations_are_not_probed() {
        let mut cfg = config(1000, 1, vec![]);
        cfg.sets[0].destinations[0].flags = crate::dispatch::flags::DISABLED;
        cfg.sets[0].destinations[1].flags = crate::dispatch::flags::NOPING;
        let d = Arc::new(Dispatcher::new(&cfg).unwrap());
        let p = Arc::new(FakePinger::default());
        let l = start(&d, &p);
        advance(2500).await;
        assert_eq!(p.total.load(Ordering::Relaxed), 0);
        l.stop().await;
    }
}
