//! Whose fault a failed request is, which decides what the sbc does about it (as pingora's
//! errors carry where they came from): the caller's gets a 4xx, the backend's moves the call
//! on and counts against the destination, ours gets 500 and a metric named after it.

use crate::sanity::Reject;
use crate::telemetry::InternalError;

/// A request that could not go on, and whose fault that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The caller's: a malformed, looping or unroutable request. It gets this 4xx.
    #[error("caller: {0}")]
    Caller(Reject),
    /// The backend's: it answered with a failure status. The call moves to the next
    /// destination when the set's failover codes say so, and the failure counts towards
    /// the destination's probe threshold.
    #[error("backend answered {0}")]
    Backend(u16),
    /// The backend's: no answer in time, or the request could not be sent. The call moves
    /// on; with `markDownOnTimeout` it counts towards the destination's failure threshold
    /// (an immediate probe then decides).
    #[error("backend did not answer")]
    Timeout,
    /// Ours: `sbc_internal_errors_total{error}` counts it and it is logged. The core meets
    /// one only once the caller has its answer (reading back its own request to write a
    /// CANCEL or an ACK); a request the relay cannot carry on for its own reason (topology's
    /// inside view) gets 500.
    #[error("internal: {0:?}")]
    Internal(InternalError),
}

impl Fault {
    /// A caller's fault with this status.
    pub const fn caller(code: u16, reason: &'static str) -> Fault {
        Fault::Caller(Reject { code, reason })
    }
}
