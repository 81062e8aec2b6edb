//! The dispatcher as the admin endpoint, readiness and the metrics see it: the listing of
//! `GET /dispatcher` (what `kamcmd dispatcher.list` shows) and how it is taken.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

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

/// A destination's state, as Kamailio's dispatcher names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationState {
    /// Up: receives traffic.
    Active,
    /// Down (probes failing): receives no traffic.
    Inactive,
    /// Switched off by configuration or an operator: receives no traffic and is not probed.
    Disabled,
    /// Being tried again after failures (Kamailio's trying state): still receives traffic.
    Trying,
}

impl DestinationState {
    /// The name used in JSON and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationState::Active => "active",
            DestinationState::Inactive => "inactive",
            DestinationState::Disabled => "disabled",
            DestinationState::Trying => "trying",
        }
    }
}

/// OPTIONS probe latency of a destination, in milliseconds (Kamailio's LATENCY block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    /// Average round-trip time.
    pub avg_ms: f64,
    /// Standard deviation of the round-trip time.
    pub std_ms: f64,
    /// Estimated (smoothed) round-trip time.
    pub est_ms: f64,
    /// Largest round-trip time seen.
    pub max_ms: f64,
    /// Probes that timed out.
    pub timeouts: u64,
}

/// Traffic counters of a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationCounters {
    /// Requests sent to the destination.
    pub requests: u64,
    /// Requests that failed there (timeout, 408, 5xx) and moved on.
    pub failures: u64,
}

/// One destination of a set, as listed by `/dispatcher`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationSnapshot {
    /// SIP URI of the destination.
    pub uri: String,
    /// Kamailio's flag letters (`AP`, `IP`, `DX`...): taken from [`crate::dispatch::DestinationSnapshot`].
    pub flags: String,
    /// Priority of the destination.
    pub priority: i32,
    /// The attributes, as written in `dispatcher.list` (`weight=50;duid=a`).
    #[serde(default)]
    pub attrs: String,
    /// State of the destination.
    pub state: DestinationState,
    /// Calls in progress through this destination.
    #[serde(default)]
    pub active_calls: u64,
    /// Free text from the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Probe latency, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySnapshot>,
    /// Traffic counters, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<DestinationCounters>,
}

/// One dispatcher set, as listed by `/dispatcher`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSnapshot {
    /// The set id.
    pub id: u32,
    /// The algorithm's name (`round-robin`, `hash-callid`...).
    pub algorithm: String,
    /// The destinations, in the set's order.
    #[serde(default)]
    pub destinations: Vec<DestinationSnapshot>,
}

/// The body of `GET /dispatcher`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DispatcherSnapshot {
    /// Every set, by id.
    #[serde(default)]
    pub sets: Vec<SetSnapshot>,
}

/// Produces the dispatcher listing on demand (called per `/dispatcher` request).
pub type SnapshotProvider = Arc<dyn Fn() -> Vec<SetSnapshot> + Send + Sync>;
