//! The dispatcher as the admin endpoint, readiness and the metrics see it.

use crate::admin::{DestinationCounters, DestinationSnapshot, DestinationState, SetSnapshot};
use crate::dispatch::{DestState, Dispatcher};
use crate::telemetry::DestinationSample;

/// The listing served by `GET /dispatcher` (and printed by `sbc ctl dispatcher list`).
pub fn dispatcher_listing(d: &Dispatcher) -> Vec<SetSnapshot> {
    d.snapshot()
        .into_iter()
        .map(|s| SetSnapshot {
            id: s.id,
            algorithm: s.algorithm.name().to_owned(),
            destinations: s
                .destinations
                .into_iter()
                .map(|x| DestinationSnapshot {
                    uri: x.uri,
                    flags: x.flags,
                    priority: x.priority,
                    attrs: x.attrs,
                    state: match x.state {
                        DestState::Active => DestinationState::Active,
                        DestState::Trying => DestinationState::Trying,
                        DestState::Inactive => DestinationState::Inactive,
                        DestState::Disabled => DestinationState::Disabled,
                    },
                    active_calls: u64::from(x.active_calls),
                    description: x.description,
                    latency: None,
                    counters: Some(DestinationCounters {
                        requests: x.requests,
                        failures: x.failures,
                    }),
                })
                .collect(),
        })
        .collect()
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
