//! The dispatcher listing of the sbc's admin endpoint (`GET /dispatcher`, what `kamcmd
//! dispatcher.list` shows): one set of types for the sbc that writes it, `sbc ctl` that
//! prints it and the operator that reads it from every pod. Readers ignore fields they do not
//! know, and a state they do not know reads as [`DestinationState::Unknown`], so an sbc and
//! an operator of different versions still understand each other.

use serde::{Deserialize, Serialize};

/// The body of `GET /dispatcher`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DispatcherSnapshot {
    /// Every set, by id.
    #[serde(default)]
    pub sets: Vec<SetSnapshot>,
}

/// One dispatcher set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSnapshot {
    /// The set id.
    pub id: u32,
    /// The algorithm's name (`round-robin`, `hash-callid`...).
    pub algorithm: String,
    /// The destinations, in the set's selection order (kamcmd's `IDX`).
    #[serde(default)]
    pub destinations: Vec<DestinationSnapshot>,
}

/// One destination of a set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationSnapshot {
    /// SIP URI, as configured.
    pub uri: String,
    /// Kamailio's two flag letters: `A`ctive/`I`nactive/`D`isabled/`T`rying, then
    /// `P`robed/`N`o-ping/`X`.
    pub flags: String,
    /// Priority.
    pub priority: i32,
    /// The attributes, as `dispatcher.list` writes them (`duid=a;weight=50`).
    #[serde(default)]
    pub attrs: String,
    /// State, in words.
    pub state: DestinationState,
    /// Where requests go: `udp:10.0.0.5:5060`, or `udp:unresolved` for a host that does
    /// not resolve (yet).
    #[serde(default)]
    pub target: String,
    /// Calls in progress: ringing through this replica, answered ones of every replica.
    #[serde(default)]
    pub active_calls: u64,
    /// Free text from the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Traffic and probe counters of this replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<DestinationCounters>,
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
    /// Probes failing, threshold not reached yet (Kamailio's trying): still receives traffic.
    Trying,
    /// A state a newer sbc knows and this reader does not.
    #[serde(other)]
    Unknown,
}

impl DestinationState {
    /// The name used in JSON and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationState::Active => "active",
            DestinationState::Inactive => "inactive",
            DestinationState::Disabled => "disabled",
            DestinationState::Trying => "trying",
            DestinationState::Unknown => "unknown",
        }
    }

    /// Whether the destination takes traffic (active, or trying: Kamailio's meaning).
    pub fn takes_traffic(self) -> bool {
        matches!(self, DestinationState::Active | DestinationState::Trying)
    }
}

/// Counters of one destination on one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationCounters {
    /// Requests sent to it.
    pub requests: u64,
    /// Requests that failed there (timeout, or a reply that fails over) and moved on.
    pub failures: u64,
    /// Consecutive failed probes.
    #[serde(default)]
    pub probe_failures: u32,
    /// Consecutive answered probes.
    #[serde(default)]
    pub probe_successes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_takes_what_it_knows_of_a_newer_listing() {
        let newer = r#"{"sets":[{"id":1,"algorithm":"round-robin","future":1,"destinations":[
            {"uri":"sip:a","flags":"AP","priority":0,"state":"draining","shiny":true},
            {"uri":"sip:b","flags":"TP","priority":0,"state":"trying"}]}]}"#;
        let l: DispatcherSnapshot = serde_json::from_str(newer).expect("parses");
        let d = &l.sets[0].destinations;
        assert_eq!(d[0].state, DestinationState::Unknown);
        assert!(!d[0].state.takes_traffic());
        assert!(d[1].state.takes_traffic());
    }
}
