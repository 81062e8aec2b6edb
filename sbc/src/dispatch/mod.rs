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
pub mod load;
pub mod probe;
mod set;
mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use kubesbc_crds::config::{ConfigError, DispatcherConfig};

pub use destination::{
    DestState, Destination, Resolver, StateChange, Target, flags, system_resolver,
};
pub use set::DispatchSet;
pub use snapshot::render_attrs;

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
    /// Addresses of the destinations flagged `webrtc` (usually none).
    webrtc: Vec<std::net::SocketAddr>,
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

    /// Whether `addr` is a destination flagged `webrtc` (media towards it gets the WebRTC
    /// profile).
    pub fn is_webrtc(&self, addr: std::net::SocketAddr) -> bool {
        self.webrtc.contains(&addr)
    }

    /// Whether some destination's host did not resolve.
    pub fn has_unresolved(&self) -> bool {
        self.sets
            .iter()
            .any(|s| s.dests.iter().any(|d| !d.is_resolved()))
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

    /// Whether `ip` is the address of a resolved destination of set `set_id`, port and
    /// transport ignored (the routing rules' `fromSet`). No allocation, no lock.
    pub fn is_member(&self, set_id: u32, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        let table = self.table.load();
        table.set(set_id).is_some_and(|s| {
            s.dests
                .iter()
                .any(|d| d.is_resolved() && d.target.addr.ip().to_canonical() == ip)
        })
    }

    /// Whether `addr` is a destination flagged `webrtc` in the sets in force (the media
    /// stage asks per message: no refcount taken).
    pub fn is_webrtc(&self, addr: std::net::SocketAddr) -> bool {
        self.table.load().is_webrtc(addr)
    }

    /// A listing of every set and destination, for the admin API and `sbc ctl`.
    pub fn snapshot(&self) -> Vec<kubesbc_crds::listing::SetSnapshot> {
        let table = self.table.load();
        table
            .sets
            .iter()
            .map(|s| kubesbc_crds::listing::SetSnapshot {
                id: s.id,
                algorithm: s.algorithm.name().to_owned(),
                destinations: s.dests.iter().map(|d| snapshot::destination(d)).collect(),
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
    let webrtc = sets
        .iter()
        .flat_map(|s| s.dests.iter())
        .filter(|d| d.config.webrtc && d.is_resolved())
        .map(|d| d.target.addr)
        .collect();
    Ok(DispatchTable {
        default_set: cfg.default_set,
        sets,
        config: cfg.clone(),
        webrtc,
    })
}

#[cfg(test)]
mod tests;
