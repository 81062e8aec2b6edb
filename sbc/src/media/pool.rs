//! The configured rtpengines, their health, and which one a call uses.
//!
//! Every engine is pinged on an interval; a reply marks it live, a timeout (of a ping or of
//! any request) marks it down. A call's engine is chosen by rendezvous hashing of its
//! Call-ID over the live engines: each engine scores `hash(engine name, Call-ID)` and the
//! highest wins. Every replica with the same configuration and the same view of health picks
//! the same engine for the whole dialog, and an engine going down moves only its own calls.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::task::JoinHandle;

use super::client::{NgClient, NgError};
use super::ng::{Outcome, Reply, Request};

/// One configured rtpengine.
#[derive(Debug)]
pub struct Engine {
    name: String,
    addr: ArcSwapOption<SocketAddr>,
    up: AtomicBool,
    pings_failed: AtomicU64,
}

impl Engine {
    /// The configured address, `host:port` (also the key its calls hash on).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it resolved to last, if any.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// Whether its last ping (or request) was answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Pings that went unanswered since the process started.
    pub fn pings_failed(&self) -> u64 {
        self.pings_failed.load(Ordering::Relaxed)
    }
}

/// Why no engine can take a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no rtpengine reachable (of {configured} configured)")]
pub struct NoneReachable {
    /// How many are configured.
    pub configured: usize,
}

/// The set of rtpengines and the task that pings them.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    engines: Vec<Engine>,
    client: NgClient,
    pinger: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        if let Some(t) = self.pinger.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

/// A stable 64-bit hash (FNV-1a) of an engine's name and a Call-ID: the same in every
/// process and version, unlike std's `DefaultHasher`.
pub fn score(engine: &str, call_id: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in engine.as_bytes().iter().chain(&[0u8]).chain(call_id) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for similar inputs; a final avalanche (splitmix64).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The index of the engine that `call_id` goes to among `names` whose `live` flag is set.
pub fn pick(names: &[&str], live: &[bool], call_id: &[u8]) -> Option<usize> {
    names
        .iter()
        .zip(live)
        .enumerate()
        .filter(|(_, (_, l))| **l)
        .max_by_key(|(_, (n, _))| score(n, call_id))
        .map(|(i, _)| i)
}

impl Pool {
    /// A pool over `names` (`host:port`), resolved now, all considered down until the first
    /// ping round (call [`Pool::ping_all`] or [`Pool::start_pinging`]).
    pub async fn new(names: &[String], client: NgClient) -> Pool {
        let mut engines = Vec::with_capacity(names.len());
        for n in names {
            let e = Engine {
                name: n.clone(),
                addr: ArcSwapOption::empty(),
                up: AtomicBool::new(false),
                pings_failed: AtomicU64::new(0),
            };
            resolve(&e).await;
            engines.push(e);
        }
        Pool {
            inner: Arc::new(PoolInner {
                engines,
                client,
                pinger: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The engines, in configuration order.
    pub fn engines(&self) -> &[Engine] {
        &self.inner.engines
    }

    /// The client requests go through.
    pub fn client(&self) -> &NgClient {
        &self.inner.client
    }

    /// Pings every engine at once (re-resolving its name first) and records who answered.
    pub async fn ping_all(&self) {
        let pings = self.inner.engines.iter().map(|e| async move {
            resolve(e).await;
            let ok = match e.addr() {
                Some(addr) => matches!(
                    self.inner.client.request(addr, &Request::ping()).await,
                    Ok(Reply {
                        outcome: Outcome::Ok,
                        ..
                    })
                ),
                None => false,
            };
            if !ok {
                e.pings_failed.fetch_add(1, Ordering::Relaxed);
            }
            let was = e.up.swap(ok, Ordering::Relaxed);
            if was != ok {
                if ok {
                    tracing::info!(rtpengine = %e.name, "rtpengine is up");
                } else {
                    tracing::warn!(rtpengine = %e.name, "rtpengine does not answer ping: down");
                }
            }
        });
        futures::future::join_all(pings).await;
    }

    /// Pings every engine now and then every `interval`, in a task that ends with the pool.
    pub async fn start_pinging(&self, interval: Duration) {
        self.ping_all().await;
        let weak = Arc::downgrade(&self.inner);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                Pool { inner }.ping_all().await;
            }
        });
        let old = self
            .inner
            .pinger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task);
        if let Some(old) = old {
            old.abort();
        }
    }

    /// The engine for `call_id`: the highest score among the live ones.
    pub fn select(&self, call_id: &[u8]) -> Result<&Engine, NoneReachable> {
        self.inner
            .engines
            .iter()
            .filter(|e| e.is_up() && e.addr().is_some())
            .max_by_key(|e| score(&e.name, call_id))
            .ok_or(NoneReachable {
                configured: self.inner.engines.len(),
            })
    }

    /// Sends `req` to `engine`. A timeout marks the engine down at once (the next ping may
    /// bring it back), so the calls after it go elsewhere without waiting for the pinger.
    pub async fn request(&self, engine: &Engine, req: &Request) -> Result<Reply, NgError> {
        let addr = engine.addr().ok_or(NgError::Closed)?;
        let r = self.inner.client.request(addr, req).await;
        if let Err(NgError::Timeout { .. }) = &r
            && engine.up.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(rtpengine = %engine.name, command = req.command.name(), "rtpengine did not answer: down");
        }
        r
    }
}

async fn resolve(e: &Engine) {
    if let Ok(a) = e.name.parse::<SocketAddr>() {
        e.addr.store(Some(Arc::new(a)));
        return;
    }
    match tokio::net::lookup_host(e.name.as_str()).await {
        Ok(mut addrs) => {
            if let Some(a) = addrs.next() {
                e.addr.store(Some(Arc::new(a)));
            }
        }
        // Keep the last address: DNS hiccups must not take a live engine away.
        Err(err) => tracing::debug!(rtpengine = %e.name, error = %err, "cannot resolve"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_stable_across_processes() {
        // Fixed values: a change here moves every dialog between replicas of two versions.
        // (FNV-1a 64 then splitmix64's finalizer, computed independently.)
        assert_eq!(score("10.0.0.1:22222", b"abc@host"), 0x6028_a2ea_af6f_58cd);
        assert_eq!(score("a", b""), 0xd013_7a57_d0ef_408f);
        assert_ne!(
            score("10.0.0.1:22222", b"abc@host"),
            score("10.0.0.2:22222", b"abc@host")
        );
    }

    #[test]
    fn calls_spread_over_engines_and_only_a_dead_engines_calls_move() {
        let names = ["rtp1:22222", "rtp2:22222", "rtp3:22222"];
        let all = [true, true, true];
        let no2 = [true, false, true];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let cid = format!("{i}-call@example.com");
            let a = pick(&names, &all, cid.as_bytes()).unwrap();
            counts[a] += 1;
            let b = pick(&names, &no2, cid.as_bytes()).unwrap();
            if a != 1 {
                assert_eq!(a, b, "a call on a live engine moved");
            } else {
                assert_ne!(b, 1);
            }
        }
        for c in counts {
            assert!((850..=1150).contains(&c), "uneven spread {counts:?}");
        }
        assert_eq!(pick(&names, &[false; 3], b"x"), None);
    }
}
