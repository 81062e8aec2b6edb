//! What `sbc ctl dispatcher list` and the admin endpoint show of the sets: a copy of their
//! state at one moment, in kamcmd's terms.

use kubesbc_crds::config::{Algorithm, DestinationConfig};
use serde::{Deserialize, Serialize};

use super::destination::{DestState, Destination, flags};

/// One set in a [`Dispatcher::snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetSnapshot {
    /// Set id.
    pub id: u32,
    /// Algorithm name.
    pub algorithm: Algorithm,
    /// Kamailio's number for it.
    pub algorithm_number: u8,
    /// Destinations in selection-index order (kamcmd's `IDX`).
    pub destinations: Vec<DestinationSnapshot>,
}

/// One destination in a [`Dispatcher::snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationSnapshot {
    /// Index in the set.
    pub index: usize,
    /// URI as configured.
    pub uri: String,
    /// kamcmd's two flag letters: `A`ctive/`I`nactive/`D`isabled/`T`rying, then
    /// `P`robing/`N`o-ping/`X`.
    pub flags: String,
    /// Priority.
    pub priority: i32,
    /// Attributes as `dispatcher.list` writes them (`duid=a;weight=50`).
    pub attrs: String,
    /// Description from the list or config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Health state.
    pub state: DestState,
    /// Resolved address and transport (`udp:10.0.0.5:5060`).
    pub target: String,
    /// Calls in progress.
    pub active_calls: u32,
    /// Requests sent.
    pub requests: u64,
    /// Failed requests.
    pub failures: u64,
    /// Consecutive failed probes.
    pub probe_failures: u32,
    /// Consecutive successful probes.
    pub probe_successes: u32,
}

impl DestinationSnapshot {
    pub(super) fn of(index: usize, d: &Destination) -> DestinationSnapshot {
        let f = d.flags();
        let state = d.state();
        // `P` means "pinged": a probing set pings every destination, whatever flag 8 says.
        let probe = if d.is_probed() {
            'P'
        } else if f & flags::NOPING != 0 {
            'N'
        } else {
            'X'
        };
        DestinationSnapshot {
            index,
            uri: d.uri.clone(),
            flags: [state.letter(), probe].iter().collect(),
            priority: d.config.priority,
            attrs: render_attrs(&d.config),
            description: d.config.description.clone(),
            state,
            target: if d.is_resolved() {
                d.target.to_string()
            } else {
                format!("{}:unresolved", d.target.transport)
            },
            active_calls: d.active_calls(),
            requests: d.requests_sent(),
            failures: d.failures(),
            probe_failures: d.probe_failures(),
            probe_successes: d.probe_successes(),
        }
    }
}

/// The attributes of a destination in `dispatcher.list` syntax.
pub fn render_attrs(c: &DestinationConfig) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(v) = &c.duid {
        parts.push(format!("duid={v}"));
    }
    if let Some(v) = c.weight {
        parts.push(format!("weight={v}"));
    }
    if let Some(v) = c.rweight {
        parts.push(format!("rweight={v}"));
    }
    if let Some(v) = c.maxload {
        parts.push(format!("maxload={v}"));
    }
    if let Some(v) = &c.socket {
        parts.push(format!("socket={v}"));
    }
    if let Some(v) = &c.ping_from {
        parts.push(format!("ping_from={v}"));
    }
    parts.join(";")
}
