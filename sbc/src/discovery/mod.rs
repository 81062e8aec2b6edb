//! Discovery: dispatcher sets fed live from the EndpointSlices of Kubernetes Services.
//!
//! [`LiveDispatch`] owns the dispatcher configuration currently in force (static sets from
//! the config file) and the last known EndpointSlices of every referenced Service, and
//! rebuilds the [`Dispatcher`] from both: static destinations first, then the ready endpoints
//! of the set's Service. [`watch`] runs one kube-runtime watcher per Service and feeds it.
//!
//! The dispatcher swaps its sets atomically ([`Dispatcher::update`]), so requests never wait
//! on discovery; the lock here only orders control-plane updates. A watch error changes
//! nothing: the last known endpoints stay until the watch lists them again.

pub mod slices;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kubesbc_crds::config::{DispatcherConfig, DispatcherSetConfig};
use kubesbc_crds::policy::ServiceSource;
use tokio::sync::Notify;

use crate::dispatch::{DispatchError, Dispatcher};
use crate::telemetry::LiveMetrics;

/// Bursts of EndpointSlice events within this window are applied as one update (the first
/// event of a burst is applied at once).
pub const COALESCE: Duration = Duration::from_millis(50);

/// A Service, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The last known slices of one Service, by slice name.
type Slices = BTreeMap<String, EndpointSlice>;

struct State {
    /// Dispatcher configuration in force, without discovered destinations.
    config: DispatcherConfig,
    /// Last known slices of each watched Service; absent until its first listing.
    services: BTreeMap<ServiceKey, Slices>,
    /// Each set as last built, to tell which sets an update changed.
    applied: BTreeMap<u32, DispatcherSetConfig>,
    generations: BTreeMap<u32, u64>,
}

/// The dispatcher configuration in force plus discovered endpoints; see the module doc.
pub struct LiveDispatch {
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<LiveMetrics>,
    default_namespace: String,
    state: Mutex<State>,
    changed: Notify,
}

impl LiveDispatch {
    /// Starts from `config`, which `dispatcher` was built from. A Service reference without a
    /// namespace means `default_namespace`.
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        config: DispatcherConfig,
        metrics: Arc<LiveMetrics>,
        default_namespace: &str,
    ) -> LiveDispatch {
        let live = LiveDispatch {
            dispatcher,
            metrics,
            default_namespace: default_namespace.to_owned(),
            state: Mutex::new(State {
                config,
                services: BTreeMap::new(),
                applied: BTreeMap::new(),
                generations: BTreeMap::new(),
            }),
            changed: Notify::new(),
        };
        let mut st = live.lock();
        let merged = live.merged(&st);
        live.record(&mut st, &merged);
        drop(st);
        live
    }

    /// The dispatcher this feeds.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Service a source refers to.
    pub fn service_key(&self, source: &ServiceSource) -> ServiceKey {
        ServiceKey {
            namespace: source
                .namespace
                .clone()
                .unwrap_or_else(|| self.default_namespace.clone()),
            name: source.name.clone(),
        }
    }

    /// The Services `config` references, with the set ids that reference each.
    pub fn services_of(&self, config: &DispatcherConfig) -> BTreeMap<ServiceKey, Vec<u32>> {
        let mut out: BTreeMap<ServiceKey, Vec<u32>> = BTreeMap::new();
        for set in &config.sets {
            if let Some(src) = &set.service {
                out.entry(self.service_key(src)).or_default().push(set.id);
            }
        }
        out
    }

    /// The dispatcher configuration in force, without discovered destinations.
    pub fn config(&self) -> DispatcherConfig {
        self.lock().config.clone()
    }

    /// The configuration the dispatcher is built from: each set's static destinations, then
    /// the ready endpoints of its Service that are not already listed.
    fn merged(&self, st: &State) -> DispatcherConfig {
        let mut cfg = st.config.clone();
        for set in &mut cfg.sets {
            let Some(src) = &set.service else { continue };
            let key = self.service_key(src);
            let Some(slices) = st.services.get(&key) else {
                continue;
            };
            let uris = slices::service_uris(slices.values(), src);
            for d in slices::destinations(&uris, &key.to_string()) {
                if !set
                    .destinations
                    .iter()
                    .any(|s| s.uri.eq_ignore_ascii_case(&d.uri))
                {
                    set.destinations.push(d);
                }
            }
        }
        cfg
    }

    /// Bumps the generation of every set whose build changed.
    fn record(&self, st: &mut State, merged: &DispatcherConfig) {
        for set in &merged.sets {
            if st.applied.get(&set.id) != Some(set) {
                let g = st.generations.entry(set.id).or_insert(0);
                *g += 1;
                self.metrics.set_updated(set.id, *g);
                st.applied.insert(set.id, set.clone());
            }
        }
        let gone: Vec<u32> = st
            .applied
            .keys()
            .copied()
            .filter(|id| !merged.sets.iter().any(|s| s.id == *id))
            .collect();
        for id in gone {
            st.applied.remove(&id);
            st.generations.remove(&id);
            self.metrics.set_removed(id);
        }
    }

    fn rebuild(&self, st: &mut State) -> Result<(), DispatchError> {
        let merged = self.merged(st);
        self.dispatcher.update(&merged)?;
        self.record(st, &merged);
        Ok(())
    }

    /// Puts a new dispatcher configuration in force, merged with the discovered endpoints.
    /// On error nothing changes. Blocks while hostnames of static destinations resolve: call
    /// it from a blocking context.
    pub fn set_config(&self, config: DispatcherConfig) -> Result<(), DispatchError> {
        let mut st = self.lock();
        let old = std::mem::replace(&mut st.config, config);
        if let Err(e) = self.rebuild(&mut st) {
            st.config = old;
            return Err(e);
        }
        // Forget Services no set references any more.
        let wanted = self.services_of(&st.config);
        st.services.retain(|k, _| wanted.contains_key(k));
        Ok(())
    }

    /// The generation of set `id`: how many distinct builds it has had.
    pub fn generation(&self, id: u32) -> u64 {
        self.lock().generations.get(&id).copied().unwrap_or(0)
    }

    /// Replaces every slice of `service` (a complete listing).
    pub fn replace_slices(&self, service: &ServiceKey, slices: Slices) {
        self.update_service(service, |s| *s = slices);
    }

    /// A slice of `service` was added or changed.
    pub fn apply_slice(&self, service: &ServiceKey, slice: EndpointSlice) {
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.update_service(service, |s| {
            s.insert(name, slice);
        });
    }

    /// A slice of `service` was deleted.
    pub fn delete_slice(&self, service: &ServiceKey, slice: &EndpointSlice) {
        let name = slice.metadata.name.as_deref().unwrap_or_default();
        self.update_service(service, |s| {
            s.remove(name);
        });
    }

    fn update_service(&self, service: &ServiceKey, f: impl FnOnce(&mut Slices)) {
        let mut st = self.lock();
        let st = &mut *st;
        let slices = st.services.entry(service.clone()).or_default();
        f(slices);
        let n = st
            .config
            .sets
            .iter()
            .filter_map(|s| s.service.as_ref())
            .find(|src| self.service_key(src) == *service)
            .map(|src| slices::service_uris(slices.values(), src).len());
        self.metrics.discovered(&service.to_string(), n);
        self.changed.notify_one();
    }

    /// Applies the endpoint changes now. Blocking (see [`LiveDispatch::set_config`]).
    pub fn apply(&self) -> Result<(), DispatchError> {
        let mut st = self.lock();
        self.rebuild(&mut st)
    }

    /// Applies endpoint changes as they come: the first change of a burst at once, later
    /// ones of the same [`COALESCE`] window together. Runs until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.changed.notified().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.apply()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(
                    error = %e,
                    "dispatcher update from discovered endpoints refused; the sets in force stay"
                ),
                Err(e) => tracing::error!(error = %e, "dispatcher update task failed"),
            }
            // Notifications during the window leave one permit: one more update after it.
            tokio::time::sleep(COALESCE).await;
        }
    }
}

/// Destinations of every set by state, for `sbc_dispatcher_set_destinations` (scrape time).
pub fn set_state_samples(d: &Dispatcher) -> Vec<crate::telemetry::SetStateSample> {
    use crate::dispatch::DestState;
    const STATES: [(DestState, &str); 4] = [
        (DestState::Active, "active"),
        (DestState::Trying, "trying"),
        (DestState::Inactive, "inactive"),
        (DestState::Disabled, "disabled"),
    ];
    let table = d.table();
    let mut out = Vec::with_capacity(table.sets().len() * STATES.len());
    for set in table.sets() {
        for (state, name) in STATES {
            let n = set
                .destinations()
                .iter()
                .filter(|x| x.state() == state)
                .count();
            out.push((set.id(), name, i64::try_from(n).unwrap_or(i64::MAX)));
        }
    }
    out
}

#[cfg(test)]
mod tests;
