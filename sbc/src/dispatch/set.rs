//! One dispatcher set as built, and Kamailio's selection over it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use kubesbc_crds::config::{Algorithm, DestinationConfig, DispatcherSetConfig, Failover, Probing};

use super::destination::{Destination, Health, Resolver};
use super::{DispatchError, RESOLVE_INTERVAL, SelectKey, Selected, hash};

/// Slots in Kamailio's weight tables: a weight is a percentage.
pub(super) const SLOTS: usize = 100;

/// One set as built: destinations in Kamailio's order plus the selection cursors.
pub struct DispatchSet {
    pub(super) id: u32,
    pub(super) algorithm: Algorithm,
    pub(super) probing: Probing,
    pub(super) failover: Failover,
    /// Kamailio's order: priority descending, equal priorities in reverse file order.
    pub(super) dests: Vec<Arc<Destination>>,
    /// Round-robin cursor (Kamailio's `last`).
    pub(super) rr_last: AtomicUsize,
    /// Weight table (`wlist`), fixed at build.
    pub(super) wlist: [u32; SLOTS],
    pub(super) wlast: AtomicUsize,
    /// Relative-weight table (`rwlist`), rebuilt when destinations go up or down.
    pub(super) rwlist: [AtomicU32; SLOTS],
    pub(super) rwlast: AtomicUsize,
    /// The dispatcher epoch `rwlist` was built for.
    pub(super) rw_epoch: AtomicU64,
    pub(super) rw_rebuilding: AtomicBool,
    /// Requests sent to a down destination because none was up (panic routing).
    pub(super) panic_selections: AtomicU64,
}

impl DispatchSet {
    /// Set id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// Selection algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    /// Probing settings.
    pub fn probing(&self) -> &Probing {
        &self.probing
    }
    /// Failover settings (codes, attempts, reply timeout).
    pub fn failover(&self) -> &Failover {
        &self.failover
    }
    /// Destinations, in selection-index order.
    pub fn destinations(&self) -> &[Arc<Destination>] {
        &self.dests
    }
    /// Requests sent to a down destination because none was up (panic routing).
    pub fn panic_selections(&self) -> u64 {
        self.panic_selections.load(Ordering::Relaxed)
    }

    pub(super) fn build(
        cfg: &DispatcherSetConfig,
        old: Option<&DispatchSet>,
        epoch: &Arc<AtomicU64>,
        wake: &Arc<tokio::sync::Notify>,
        resolver: &Resolver,
    ) -> Result<DispatchSet, DispatchError> {
        // Kamailio's add_dest2list + reindex_dests: priority descending, and among equal
        // priorities the destination listed last comes first.
        let mut order: Vec<(usize, &DestinationConfig)> =
            cfg.destinations.iter().enumerate().collect();
        order.sort_by(|(ia, a), (ib, b)| b.priority.cmp(&a.priority).then(ib.cmp(ia)));

        let mut claimed = vec![false; old.map_or(0, |o| o.dests.len())];
        let mut dests = Vec::with_capacity(order.len());
        for (_, dc) in order {
            // Keep the health of a destination whose URI is unchanged (first unclaimed match,
            // so duplicates pair up in order).
            let reused = old.and_then(|o| {
                o.dests.iter().enumerate().find_map(|(i, d)| {
                    let free = claimed.get(i).is_some_and(|c| !c);
                    (free && d.uri.eq_ignore_ascii_case(&dc.uri)).then_some(i)
                })
            });
            let known_unresolved = reused
                .zip(old)
                .is_some_and(|(i, o)| !o.dests[i].is_resolved());
            let health = match (reused, old) {
                (Some(i), Some(o)) => {
                    if let Some(c) = claimed.get_mut(i) {
                        *c = true;
                    }
                    let h = Arc::clone(&o.dests[i].health);
                    h.apply_config_flags(dc.flags);
                    h
                }
                _ => Arc::new(Health::with_wake(
                    dc.flags,
                    Arc::clone(epoch),
                    Arc::clone(wake),
                )),
            };
            let mut d = Destination::build(
                cfg.id,
                cfg.probing.enabled,
                cfg.failover.failure_threshold,
                dc.clone(),
                health,
                resolver,
            )
            .map_err(|reason| DispatchError::Destination {
                set: cfg.id,
                uri: dc.uri.clone(),
                reason,
            })?;
            if let Some(why) = d.unresolved_reason().filter(|_| !known_unresolved) {
                tracing::warn!(
                    set = cfg.id,
                    uri = %dc.uri,
                    reason = why,
                    "dispatcher destination does not resolve: down until it does (retried every {}s)",
                    RESOLVE_INTERVAL.as_secs()
                );
            }
            d.counts_load |= cfg.algorithm == Algorithm::CallLoad;
            dests.push(Arc::new(d));
        }
        let set = DispatchSet {
            id: cfg.id,
            algorithm: cfg.algorithm,
            probing: cfg.probing.clone(),
            failover: cfg.failover.clone(),
            wlist: weight_table(&dests),
            dests,
            rr_last: AtomicUsize::new(0),
            wlast: AtomicUsize::new(0),
            rwlist: std::array::from_fn(|_| AtomicU32::new(0)),
            rwlast: AtomicUsize::new(0),
            rw_epoch: AtomicU64::new(0),
            rw_rebuilding: AtomicBool::new(false),
            panic_selections: AtomicU64::new(old.map_or(0, |o| o.panic_selections())),
        };
        set.rebuild_relative_weights(epoch.load(Ordering::Acquire));
        Ok(set)
    }

    /// Kamailio's `dp_init_relative_weights`: each active destination gets
    /// `rweight * 100 / sum` slots (truncated), the remainder goes to the last one filled,
    /// then the table is shuffled. With fewer than two destinations or no active rweight
    /// the table is left as it is. No allocation: the table is built on the stack.
    pub(super) fn rebuild_relative_weights(&self, epoch: u64) {
        self.rw_epoch.store(epoch, Ordering::Release);
        if self.dests.len() < 2 {
            return;
        }
        let rweight = |d: &Destination| {
            if d.is_up() {
                d.config.rweight.unwrap_or(0)
            } else {
                0
            }
        };
        let sum: u32 = self.dests.iter().map(|d| rweight(d)).sum();
        if sum == 0 {
            return;
        }
        let mut table = [0u32; SLOTS];
        let mut t = 0;
        for (j, d) in self.dests.iter().enumerate() {
            let slice = (rweight(d) * 100 / sum) as usize;
            for _ in 0..slice {
                if let Some(slot) = table.get_mut(t) {
                    *slot = j as u32;
                    t += 1;
                }
            }
        }
        let last = if t > 0 {
            table[t - 1]
        } else {
            (self.dests.len() - 1) as u32
        };
        table[t..].fill(last);
        shuffle(&mut table);
        for (slot, v) in self.rwlist.iter().zip(table) {
            slot.store(v, Ordering::Relaxed);
        }
    }

    /// Picks a destination; see [`Dispatcher::select`].
    pub(super) fn select(
        &self,
        key: &SelectKey<'_>,
        tried: &[usize],
        epoch: &AtomicU64,
    ) -> Option<Selected> {
        if let Some(s) = self.select_up(key, tried, epoch) {
            return Some(s);
        }
        // Only when nothing is up: a full (call-load) or already tried set answers 503.
        if !self.failover.panic_routing || self.dests.iter().any(|d| d.is_up()) {
            return None;
        }
        // Panic routing: nothing is up, so try the destinations in order anyway (the first
        // untried one that is resolved and not disabled): a set whose probes fail because of
        // the probes themselves (a firewall, an overloaded OPTIONS handler) still carries
        // calls, and a set that is really down answers each caller 408 or 503 as before.
        let n = self.dests.len();
        let start = tried.first().map_or(0, |f| f + 1);
        let index = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !tried.contains(&i) && self.dests[i].is_panic_eligible())?;
        let before = self.panic_selections.fetch_add(1, Ordering::Relaxed);
        if before == 0 || before.is_power_of_two() {
            tracing::warn!(
                set = self.id,
                uri = %self.dests[index].uri,
                panic_selections = before + 1,
                "no destination up: panic routing sends the request to a down destination"
            );
        }
        Some(self.selected(index))
    }

    /// Picks a destination that is up; see [`Dispatcher::select`].
    fn select_up(
        &self,
        key: &SelectKey<'_>,
        tried: &[usize],
        epoch: &AtomicU64,
    ) -> Option<Selected> {
        let n = self.dests.len();
        if n == 0 {
            return None;
        }
        let call_load = self.algorithm == Algorithm::CallLoad;
        let eligible = |i: usize| {
            self.dests
                .get(i)
                .is_some_and(|d| d.is_up() && (!call_load || d.has_capacity()))
                && !tried.contains(&i)
        };

        if let Some(&first) = tried.first() {
            // Failover: Kamailio fills its list with the destinations after the selected one,
            // then those before it, skipping inactive ones (and full ones for call load).
            let index = (1..=n).map(|k| (first + k) % n).find(|&i| eligible(i))?;
            return Some(self.selected(index));
        }

        let mut rr_next = None;
        let hash: usize = match self.algorithm {
            Algorithm::HashCallId => hash::ds_get_hash(hash::trim(key.call_id), None) as usize,
            Algorithm::HashFromUri => hash::uri_hash(key.from_uri) as usize,
            Algorithm::HashToUri => hash::uri_hash(key.to_uri) as usize,
            Algorithm::HashRequestUri => hash::uri_hash(key.request_uri) as usize,
            Algorithm::HashAuthUsername => match key.auth_username.map(hash::trim) {
                Some(user) if !user.is_empty() => hash::ds_get_hash(user, None) as usize,
                // Kamailio falls back to round robin without credentials.
                _ => self.round_robin_start(n, &mut rr_next),
            },
            Algorithm::RoundRobin => self.round_robin_start(n, &mut rr_next),
            Algorithm::Random => fastrand::usize(..),
            Algorithm::Priority => 0,
            Algorithm::Weight => {
                let slot = self.wlast.fetch_add(1, Ordering::Relaxed) % SLOTS;
                self.wlist[slot] as usize
            }
            Algorithm::CallLoad => {
                // ds_get_leastloaded: the first active destination with the fewest calls
                // among those under their maxload; none means no destination.
                let mut best: Option<(usize, u32)> = None;
                for (i, d) in self.dests.iter().enumerate() {
                    if eligible(i) && best.is_none_or(|(_, load)| d.active_calls() < load) {
                        best = Some((i, d.active_calls()));
                    }
                }
                best?.0
            }
            Algorithm::RelativeWeight => {
                let now = epoch.load(Ordering::Acquire);
                if self.rw_epoch.load(Ordering::Acquire) != now
                    && self
                        .rw_rebuilding
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.rebuild_relative_weights(now);
                    self.rw_rebuilding.store(false, Ordering::Release);
                }
                let slot = self.rwlast.fetch_add(1, Ordering::Relaxed) % SLOTS;
                self.rwlist[slot].load(Ordering::Relaxed) as usize
            }
        };

        // Kamailio: index = hash % count, then the next active one, wrapping once.
        let start = hash % n;
        let index = (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))?;
        if let Some(expected) = rr_next {
            // Point the cursor after the one used, unless another request moved it meanwhile.
            let _ = self.rr_last.compare_exchange(
                expected,
                (index + 1) % n,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        Some(self.selected(index))
    }

    /// Takes the round-robin cursor and advances it; remembers the advanced value so the
    /// caller can move it past a skipped destination.
    fn round_robin_start(&self, n: usize, rr_next: &mut Option<usize>) -> usize {
        let prev = self
            .rr_last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| Some((c + 1) % n))
            .unwrap_or_else(|c| c);
        *rr_next = Some((prev + 1) % n);
        prev
    }

    fn selected(&self, index: usize) -> Selected {
        let dest = Arc::clone(&self.dests[index]);
        dest.count_request();
        Selected { dest, index }
    }
}

/// Kamailio's `dp_init_weights`: only when the first destination has a weight; each gets
/// `weight` slots in order until 100 are filled, the remainder goes to the last
/// destination, then the table is shuffled. Without weights every slot is index 0.
fn weight_table(dests: &[Arc<Destination>]) -> [u32; SLOTS] {
    let mut table = [0u32; SLOTS];
    let weight = |d: &Arc<Destination>| d.config.weight.unwrap_or(0) as usize;
    if dests.first().is_none_or(|d| weight(d) == 0) {
        return table;
    }
    let mut t = 0;
    'fill: for (j, d) in dests.iter().enumerate() {
        for _ in 0..weight(d) {
            if t >= SLOTS {
                break 'fill;
            }
            table[t] = j as u32;
            t += 1;
        }
    }
    table[t..].fill((dests.len() - 1) as u32);
    shuffle(&mut table);
    table
}

/// Kamailio's `shuffle_uint100array` (Fisher-Yates), with our RNG.
fn shuffle(table: &mut [u32; SLOTS]) {
    for j in 0..SLOTS {
        let k = j + fastrand::usize(..SLOTS - j);
        table.swap(j, k);
    }
}
