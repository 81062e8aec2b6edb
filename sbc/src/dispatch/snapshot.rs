//! What `sbc ctl dispatcher list` and the admin endpoint show of the sets: a copy of their
//! state at one moment, in kamcmd's terms ([`kubesbc_crds::listing`], the one set of
//! listing types the sbc, `sbc ctl` and the operator share).

use kubesbc_crds::config::DestinationConfig;
use kubesbc_crds::listing::{DestinationCounters, DestinationSnapshot, DestinationState};

use super::destination::{DestState, Destination, flags};

/// The listing of destination `d`.
pub(super) fn destination(d: &Destination) -> DestinationSnapshot {
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
        uri: d.uri.clone(),
        flags: [state.letter(), probe].iter().collect(),
        priority: d.config.priority,
        attrs: render_attrs(&d.config),
        description: d.config.description.clone(),
        state: match state {
            DestState::Active => DestinationState::Active,
            DestState::Trying => DestinationState::Trying,
            DestState::Inactive => DestinationState::Inactive,
            DestState::Disabled => DestinationState::Disabled,
        },
        target: if d.is_resolved() {
            d.target.to_string()
        } else {
            format!("{}:unresolved", d.target.transport)
        },
        active_calls: u64::from(d.active_calls()),
        counters: Some(DestinationCounters {
            requests: d.requests_sent(),
            failures: d.failures(),
            probe_failures: d.probe_failures(),
            probe_successes: d.probe_successes(),
        }),
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
