//! The dispatcher as the admin endpoint, readiness and the metrics see it: the listing of
//! `GET /dispatcher` (what `kamcmd dispatcher.list` shows) and how it is taken.

use std::sync::Arc;

pub use kubesbc_crds::listing::{
    DestinationCounters, DestinationSnapshot, DestinationState, DispatcherSnapshot, SetSnapshot,
};

use crate::dispatch::Dispatcher;
use crate::telemetry::DestinationSample;

/// The listing served by `GET /dispatcher` (and printed by `sbc ctl dispatcher list`).
pub fn dispatcher_listing(d: &Dispatcher) -> Vec<SetSnapshot> {
    d.snapshot()
}

/// Whether any destination of any set takes traffic (readiness).
pub fn any_destination_up(d: &Dispatcher) -> bool {
    d.table()
        .sets()
        .iter()
        .any(|s| s.destinations().iter().any(|x| x.is_up()))
}

/// The dispatcher gauges' samples, taken at scrape time.
pub fn destination_samples(d: &Dispatcher) -> Vec<DestinationSample> {
    d.table()
        .sets()
        .iter()
        .flat_map(|s| {
            s.destinations().iter().map(move |x| {
                (
                    s.id(),
                    x.uri.clone(),
                    x.is_up(),
                    u64::from(x.active_calls()),
                )
            })
        })
        .collect()
}

/// Produces the dispatcher listing on demand (called per `/dispatcher` request).
pub type SnapshotProvider = Arc<dyn Fn() -> Vec<SetSnapshot> + Send + Sync>;
