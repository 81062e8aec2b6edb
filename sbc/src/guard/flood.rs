//! Flood counting per source IP (Kamailio's pike), tallied locally and synced with the store.
//!
//! Asking the store on every request would cost one round trip per request: three per call
//! (INVITE, ACK, BYE) before any other stage runs. Instead each replica counts hits per source
//! in memory and a background task sends the tallies of every active source to the store in
//! one round trip every [`SYNC_INTERVAL`]. The store stays the authority on bans:
//!
//! - a source this replica has not seen, or not heard about from the store for longer than
//!   two intervals, is asked about at once (one round trip), so a ban set by another replica
//!   is enforced from the first request;
//! - a request that would take the source over the limit by what this replica knows (the
//!   store's count at the last sync plus the local tally) is decided by the store at once, so
//!   one replica bans exactly at the limit, as pike does;
//! - everything else is allowed locally; the sync learns the other replicas' counts and
//!   bans, and a lifted ban (`sbc ctl bans remove`), within one interval.
//!
//! The table is bounded ([`MAX_TRACKED`] sources); beyond it, sources are asked about on every
//! request, which is the per-request behaviour without the saving.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

// Tokio's clock (the real one outside tests) so tests can move time like the memory store's.
use tokio::time::Instant;

use bytes::Bytes;

use super::{BAN_PREFIX, FLOOD_PREFIX, IpKey};
use crate::store::{FloodHit, FloodOutcome, Store};
use kubesbc_crds::policy::FloodLimit;

/// How often local tallies are sent to the store; also how late another replica's ban or
/// counts can be learned for a source this replica already tracks.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(50);
/// Knowledge about a source older than this is refreshed by asking the store.
const STALE_AFTER: Duration = SYNC_INTERVAL.saturating_mul(2);
/// Sources tracked at most; the rest are asked about per request.
pub const MAX_TRACKED: usize = 65_536;
/// Sources sent in one sync round trip at most (bounds the script's size).
const SYNC_CHUNK: usize = 512;
const SHARDS: usize = 16;

/// What the guard does with one request's hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Counted locally and allowed.
    Allow,
    /// The source is banned (as of the last answer from the store) for this long still.
    Banned(Duration),
    /// Ask the store now, counting this many hits.
    Ask(u64),
}

#[derive(Debug)]
struct Source {
    /// Hits not yet sent to the store.
    pending: u64,
    /// The store's count at its last answer.
    known: u64,
    /// When `known` was learned.
    learned_at: Instant,
    /// The store has answered about this source at least once.
    answered: bool,
    /// Asks in flight: their hits are in `known` already, and an answer that does not
    /// include them must not lower it.
    asking: u32,
    /// When the oldest pending hit arrived.
    pending_since: Instant,
    /// Until when the store said the source is banned.
    banned_until: Option<Instant>,
    /// A request arrived since the last sync.
    active: bool,
    last_seen: Instant,
}

impl Source {
    /// `authoritative`: the answer may lower `known` (a sync with no ask in flight: the
    /// window may have started again). An ask's answer, or one racing asks, may predate other
    /// hits already in `known`, so it only raises it.
    fn learn(&mut self, outcome: FloodOutcome, authoritative: bool, now: Instant) {
        self.answered = true;
        self.learned_at = now;
        match outcome {
            FloodOutcome::Allowed { count } => {
                self.known = if authoritative && self.asking == 0 {
                    count
                } else {
                    self.known.max(count)
                };
                self.banned_until = None;
            }
            FloodOutcome::Banned { remaining, .. } => {
                self.known = 0;
                self.pending = 0;
                self.banned_until = Some(now + remaining);
            }
        }
    }
}

/// The local tallies of one guard.
pub struct FloodTracker {
    shards: [Mutex<HashMap<IpAddr, Source>>; SHARDS],
    hasher: RandomState,
    limit: u64,
    window: Duration,
    ban: Duration,
}

impl std::fmt::Debug for FloodTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloodTracker")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl FloodTracker {
    /// A tracker for `limit`.
    pub fn new(limit: &FloodLimit) -> FloodTracker {
        FloodTracker {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: RandomState::new(),
            limit: u64::from(limit.requests),
            window: Duration::from_secs(u64::from(limit.window_secs)),
            ban: Duration::from_secs(u64::from(limit.ban_secs)),
        }
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Source>> {
        let i = (self.hasher.hash_one(ip) % SHARDS as u64) as usize;
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one request from `ip`.
    pub fn hit(&self, ip: IpAddr, now: Instant) -> Local {
        let mut shard = self.shard(ip);
        let room = shard.len() < MAX_TRACKED / SHARDS;
        match shard.entry(ip) {
            MapEntry::Vacant(v) => {
                if room {
                    v.insert(Source {
                        pending: 0,
                        known: 1,
                        learned_at: now,
                        // Until the store answers, requests racing this first one ask too.
                        answered: false,
                        asking: 1,
                        pending_since: now,
                        banned_until: None,
                        active: true,
                        last_seen: now,
                    });
                }
                Local::Ask(1)
            }
            MapEntry::Occupied(mut o) => {
                let s = o.get_mut();
                s.active = true;
                s.last_seen = now;
                // What this replica knows is fresh while syncs refresh it; a source quiet for
                // longer is asked about again (a ban set elsewhere, or lifted, is seen at once).
                let stale =
                    !s.answered || now.saturating_duration_since(s.learned_at) >= STALE_AFTER;
                if let Some(until) = s.banned_until {
                    if until > now && !stale {
                        return Local::Banned(until - now);
                    }
                    s.banned_until = None;
                    s.known = 0;
                }
                // Hits older than a window belong to a window that has ended (only when syncs
                // stall: a sync takes them every interval).
                if s.pending == 0 || now.saturating_duration_since(s.pending_since) >= self.window {
                    s.pending = 0;
                    s.pending_since = now;
                }
                let hits = s.pending.saturating_add(1);
                if stale || s.known.saturating_add(hits) > self.limit {
                    // Counted as sent, so requests racing the answer see them.
                    s.pending = 0;
                    s.known = s.known.saturating_add(hits);
                    s.asking = s.asking.saturating_add(1);
                    Local::Ask(hits)
                } else {
                    s.pending = hits;
                    Local::Allow
                }
            }
        }
    }

    /// Records the store's answer to an [`Local::Ask`] about `ip` (`None`: the store did not
    /// answer).
    pub fn answered(&self, ip: IpAddr, outcome: Option<FloodOutcome>, now: Instant) {
        if let Some(s) = self.shard(ip).get_mut(&ip) {
            s.asking = s.asking.saturating_sub(1);
            if let Some(o) = outcome {
                s.learn(o, false, now);
            }
        }
    }

    /// Records a sync's answer about `ip`.
    fn synced(&self, ip: IpAddr, outcome: FloodOutcome, now: Instant) {
        if let Some(s) = self.shard(ip).get_mut(&ip) {
            s.learn(outcome, true, now);
        }
    }

    /// Takes the tallies of the sources active since the last sync and drops sources idle
    /// for longer than a window (and not banned).
    fn take_active(&self, now: Instant) -> Vec<(IpAddr, u64)> {
        let mut out = Vec::new();
        let idle = self.window.max(SYNC_INTERVAL * 2);
        for m in &self.shards {
            let mut shard = m.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|ip, s| {
                if s.active {
                    let hits = std::mem::take(&mut s.pending);
                    // Counted as sent, so requests racing the sync's answer see them.
                    s.known = s.known.saturating_add(hits);
                    out.push((*ip, hits));
                    s.pending_since = now;
                    s.active = false;
                    return true;
                }
                s.banned_until.is_some_and(|u| u > now)
                    || now.saturating_duration_since(s.last_seen) < idle
            });
        }
        out
    }

    /// One sync: sends the active sources' tallies to `store` and learns its answers.
    /// Returns the sources this sync banned.
    pub async fn sync(&self, store: &dyn Store) -> Vec<IpAddr> {
        let active = self.take_active(Instant::now());
        let mut banned = Vec::new();
        for chunk in active.chunks(SYNC_CHUNK) {
            let keys: Vec<(IpKey, IpKey)> = chunk
                .iter()
                .map(|(ip, _)| (IpKey::new(FLOOD_PREFIX, *ip), IpKey::new(BAN_PREFIX, *ip)))
                .collect();
            let hits: Vec<FloodHit<'_>> = chunk
                .iter()
                .zip(&keys)
                .map(|((_, n), (c, b))| self.flood_hit(c.as_str(), b.as_str(), *n))
                .collect();
            match store.flood_sync(&hits).await {
                Ok(answers) => {
                    let now = Instant::now();
                    for ((ip, _), a) in chunk.iter().zip(answers) {
                        if let FloodOutcome::Banned { new: true, .. } = a {
                            banned.push(*ip);
                        }
                        self.synced(*ip, a, now);
                    }
                }
                Err(e) => {
                    // The tallies are lost for this window; requests keep flowing.
                    tracing::debug!(error = %e, sources = chunk.len(), "flood sync skipped");
                }
            }
        }
        banned
    }

    /// The store request counting `hits` for a source's keys.
    pub fn flood_hit<'a>(&self, counter: &'a str, ban: &'a str, hits: u64) -> FloodHit<'a> {
        FloodHit {
            counter_key: counter,
            ban_key: ban,
            limit: self.limit,
            window: self.window,
            ban_ttl: self.ban,
            ban_value: Bytes::from_static(b"flood"),
            hits,
        }
    }

    /// Runs [`FloodTracker::sync`] every [`SYNC_INTERVAL`] on the current Tokio runtime for
    /// as long as the tracker lives (a guard replaced by a reload drops it); `on_ban` hears
    /// of every source a sync banned. Does nothing outside a runtime (unit tests).
    pub fn spawn_sync(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        on_ban: impl Fn(IpAddr) + Send + 'static,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me: Weak<FloodTracker> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(SYNC_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(t) = me.upgrade() else { break };
                for ip in t.sync(store.as_ref()).await {
                    on_ban(ip);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_in_flight_count_toward_the_local_limit() {
        let t = FloodTracker::new(&FloodLimit {
            requests: 10,
            window_secs: 2,
            ban_secs: 60,
        });
        let (ip, now) = (IpAddr::from([192, 0, 2, 1]), Instant::now());
        assert_eq!(t.hit(ip, now), Local::Ask(1));
        t.answered(ip, Some(FloodOutcome::Allowed { count: 1 }), now);
        for _ in 0..5 {
            assert_eq!(t.hit(ip, now), Local::Allow);
        }
        // A sync takes the five hits; until it answers they still count here.
        assert_eq!(t.take_active(now), vec![(ip, 5)]);
        for _ in 0..4 {
            assert_eq!(t.hit(ip, now), Local::Allow);
        }
        // The eleventh request would pass the limit: the store decides.
        assert_eq!(t.hit(ip, now), Local::Ask(5));
        // An answer racing that ask (the sync's) does not lower the count.
        t.synced(ip, FloodOutcome::Allowed { count: 6 }, now);
        assert_eq!(t.hit(ip, now), Local::Ask(1));
    }
}
