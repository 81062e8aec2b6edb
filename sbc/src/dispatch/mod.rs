//! Dispatcher sets: Kamailio-compatible destination selection, probing and failover state.
//!
//! A [`Dispatcher`] holds the sets behind an [`ArcSwap`], so [`Dispatcher::update`] swaps
//! them atomically while requests keep selecting; destinations whose URI is unchanged keep
//! their health and call counters across an update. [`Dispatcher::select`] runs per request
//! and neither allocates nor locks. See `docs/dispatcher.md` for the algorithms and where we
//! differ from Kamailio.

pub mod destination;
pub mod hash;
pub mod list;
pub mod probe;
mod snapshot;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use kubesbc_crds::config::{
    Algorithm, ConfigError, DestinationConfig, DispatcherConfig, DispatcherSetConfig, Failover,
    Probing,
};

use destination::Health;
pub use destination::{
    DestState, Destination, Resolver, StateChange, Target, flags, system_resolver,
};
pub use snapshot::{DestinationSnapshot, SetSnapshot, render_attrs};

/// Why a dispatcher configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A field is invalid (path and reason, as in the config file).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// A destination's URI cannot be turned into an address.
    #[error("dispatcher set {set}: destination {uri}: {reason}")]
    Destination {
        /// Set id.
        set: u32,
        /// The destination URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The request fields the hash algorithms read: raw bytes from the message.
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectKey<'a> {
    /// Call-ID header value (algorithm 0).
    pub call_id: &'a [u8],
    /// From URI, without display name (algorithm 1).
    pub from_uri: &'a [u8],
    /// To URI (algorithm 2).
    pub to_uri: &'a [u8],
    /// Request-URI (algorithm 3).
    pub request_uri: &'a [u8],
    /// Digest username from Proxy-Authorization, else Authorization (algorithm 5).
    pub auth_username: Option<&'a [u8]>,
}

/// The destination chosen for one attempt of a request.
#[derive(Debug, Clone)]
pub struct Selected {
    /// The destination.
    pub dest: Arc<Destination>,
    /// Its index in the set: pass it in `tried` when failing over.
    pub index: usize,
}

/// Selects destinations from dispatcher sets; shared as `Arc<Dispatcher>`.
pub struct Dispatcher {
    table: ArcSwap<DispatchTable>,
    /// Bumped whenever a destination goes up or down (see [`destination`]).
    epoch: Arc<AtomicU64>,
    /// Wakes the probe loop when a destination asks for an immediate probe.
    wake: Arc<tokio::sync::Notify>,
    resolver: Resolver,
    /// Serialises the writers (updates and re-resolution); selection never takes it.
    writing: Mutex<()>,
}

/// One immutable build of all sets. Get it with [`Dispatcher::table`].
pub struct DispatchTable {
    default_set: u32,
    /// Sorted by id.
    sets: Vec<DispatchSet>,
    /// The configuration it was built from (rebuilt from when a host resolves later).
    config: DispatcherConfig,
}

impl DispatchTable {
    /// The set initial requests go to.
    pub fn default_set(&self) -> u32 {
        self.default_set
    }

    /// The set with id `id`.
    pub fn set(&self, id: u32) -> Option<&DispatchSet> {
        self.sets
            .binary_search_by_key(&id, |s| s.id)
            .ok()
            .and_then(|i| self.sets.get(i))
    }

    /// All sets, by id.
    pub fn sets(&self) -> &[DispatchSet] {
        &self.sets
    }

    /// Whether some destination's host did not resolve.
    pub fn has_unresolved(&self) -> bool {
        self.sets
            .iter()
            .any(|s| s.dests.iter().any(|d| !d.is_resolved()))
    }
}

/// Slots in Kamailio's weight tables: a weight is a percentage.
const SLOTS: usize = 100;

/// One set as built: destinations in Kamailio's order plus the selection cursors.
pub struct DispatchSet {
    id: u32,
    algorithm: Algorithm,
    probing: Probing,
    failover: Failover,
    /// Kamailio's order: priority descending, equal priorities in reverse file order.
    dests: Vec<Arc<Destination>>,
    /// Round-robin cursor (Kamailio's `last`).
    rr_last: AtomicUsize,
    /// Weight table (`wlist`), fixed at build.
    wlist: [u32; SLOTS],
    wlast: AtomicUsize,
    /// Relative-weight table (`rwlist`), rebuilt when destinations go up or down.
    rwlist: [AtomicU32; SLOTS],
    rwlast: AtomicUsize,
    /// The dispatcher epoch `rwlist` was built for.
    rw_epoch: AtomicU64,
    rw_rebuilding: AtomicBool,
    /// Requests sent to a down destination because none was up (panic routing).
    panic_selections: AtomicU64,
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

    fn build(
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
            let d = Destination::build(
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
    fn rebuild_relative_weights(&self, epoch: u64) {
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
    fn select(&self, key: &SelectKey<'_>, tried: &[usize], epoch: &AtomicU64) -> Option<Selected> {
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

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.table.load();
        f.debug_struct("Dispatcher")
            .field("default_set", &t.default_set)
            .field(
                "sets",
                &t.sets
                    .iter()
                    .map(|s| (s.id, s.algorithm, s.dests.len()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Dispatcher {
    /// Builds the sets of `cfg`. Destination hosts that are not IP literals are resolved
    /// now, with the blocking system resolver.
    pub fn new(cfg: &DispatcherConfig) -> Result<Dispatcher, DispatchError> {
        Dispatcher::with_resolver(cfg, system_resolver())
    }

    /// As [`Dispatcher::new`], resolving host names with `resolver`. A host that does not
    /// resolve makes its destination down, not the configuration invalid; see
    /// [`Dispatcher::resolve_again`].
    pub fn with_resolver(
        cfg: &DispatcherConfig,
        resolver: Resolver,
    ) -> Result<Dispatcher, DispatchError> {
        let epoch = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(tokio::sync::Notify::new());
        let table = build_table(cfg, None, &epoch, &wake, &resolver)?;
        Ok(Dispatcher {
            table: ArcSwap::from_pointee(table),
            epoch,
            wake,
            resolver,
            writing: Mutex::new(()),
        })
    }

    /// Replaces the sets atomically. Destinations whose set id and URI are unchanged keep
    /// their health, probe counters, active calls and request counters (and take the new
    /// configuration's administrative flags). On error the current sets stay.
    pub fn update(&self, cfg: &DispatcherConfig) -> Result<(), DispatchError> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.table.load_full();
        let table = build_table(cfg, Some(&old), &self.epoch, &self.wake, &self.resolver)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// Rebuilds the sets from the configuration in force when some destination's host did
    /// not resolve, so a host that resolves now comes up.
    /// Blocking (the resolver); returns how many destinations resolved that did not.
    pub fn resolve_again(&self) -> usize {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.table.load_full();
        if !old.has_unresolved() {
            return 0;
        }
        let unresolved = |t: &DispatchTable| {
            t.sets
                .iter()
                .flat_map(|s| s.dests.iter())
                .filter(|d| !d.is_resolved())
                .count()
        };
        match build_table(
            &old.config,
            Some(&old),
            &self.epoch,
            &self.wake,
            &self.resolver,
        ) {
            Ok(table) => {
                let fixed = unresolved(&old).saturating_sub(unresolved(&table));
                if fixed > 0 {
                    tracing::info!(fixed, "dispatcher destinations resolve now");
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                }
                self.table.store(Arc::new(table));
                fixed
            }
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher: re-resolving failed");
                0
            }
        }
    }

    /// Completes when a destination asks for an immediate probe (see
    /// [`Destination::mark_down`]).
    pub async fn probe_requested(&self) {
        self.wake.notified().await;
    }

    /// The current build of all sets.
    pub fn table(&self) -> Arc<DispatchTable> {
        self.table.load_full()
    }

    /// The set initial requests go to.
    pub fn default_set(&self) -> u32 {
        self.table.load().default_set
    }

    /// Picks a destination of set `set_id` for a request with Kamailio's algorithm for the
    /// set. `tried` holds the indexes already attempted for this request, the first choice
    /// first: then the next destination after the first choice that is up and not tried is
    /// returned (Kamailio's failover order). `None` when the set does not exist or no
    /// destination is up and untried: the caller answers 503.
    ///
    /// Counts a request sent on the destination returned. No allocation, no lock.
    pub fn select(&self, set_id: u32, key: &SelectKey<'_>, tried: &[usize]) -> Option<Selected> {
        let table = self.table.load();
        table.set(set_id)?.select(key, tried, &self.epoch)
    }

    /// A listing of every set and destination, for the admin API and `sbc ctl`.
    pub fn snapshot(&self) -> Vec<SetSnapshot> {
        let table = self.table.load();
        table
            .sets
            .iter()
            .map(|s| SetSnapshot {
                id: s.id,
                algorithm: s.algorithm,
                algorithm_number: s.algorithm.number(),
                destinations: s
                    .dests
                    .iter()
                    .enumerate()
                    .map(|(i, d)| DestinationSnapshot::of(i, d))
                    .collect(),
            })
            .collect()
    }
}

/// How often destinations whose host did not resolve are resolved again.
pub const RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

fn build_table(
    cfg: &DispatcherConfig,
    old: Option<&DispatchTable>,
    epoch: &Arc<AtomicU64>,
    wake: &Arc<tokio::sync::Notify>,
    resolver: &Resolver,
) -> Result<DispatchTable, DispatchError> {
    for (i, set) in cfg.sets.iter().enumerate() {
        let path = format!("dispatcher.sets[{i}]");
        if cfg.sets[..i].iter().any(|o| o.id == set.id) {
            return Err(ConfigError::Field {
                path: format!("{path}.id"),
                message: format!("set id {} is used twice", set.id),
            }
            .into());
        }
        set.validate(&path)?;
    }
    let mut sets = cfg
        .sets
        .iter()
        .map(|c| DispatchSet::build(c, old.and_then(|o| o.set(c.id)), epoch, wake, resolver))
        .collect::<Result<Vec<_>, _>>()?;
    sets.sort_by_key(|s| s.id);
    Ok(DispatchTable {
        default_set: cfg.default_set,
        sets,
        config: cfg.clone(),
    })
}

#[cfg(test)]
mod tests;
