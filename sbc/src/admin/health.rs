//! Liveness and readiness of the process.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Answers "is at least one destination up?" for readiness.
pub type UpCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why the sbc is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The SIP listeners are not bound yet.
    ListenersNotBound,
    /// SIGTERM was received: the sbc is draining.
    Draining,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotReady::ListenersNotBound => "listeners not bound",
            NotReady::Draining => "draining",
        })
    }
}

/// Liveness and readiness of the process, updated by the binary as it starts and drains.
pub struct Health {
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    any_destination_up: UpCheck,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("listeners_bound", &self.listeners_bound)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Starts not ready (listeners unbound, not draining); `any_destination_up` is asked on
    /// every readiness check.
    pub fn new(any_destination_up: UpCheck) -> Health {
        Health {
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            any_destination_up,
        }
    }

    /// Records that every SIP listener is bound (or no longer is).
    pub fn set_listeners_bound(&self, bound: bool) {
        self.listeners_bound.store(bound, Ordering::Release);
    }

    /// Records that the sbc is draining: readiness goes false for good.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready, or the first reason why not: the sbc's own state only. No destination up is
    /// not a reason: a pod that leaves the Service then makes callers time out, where a ready
    /// one answers 503 with Retry-After.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if !self.listeners_bound.load(Ordering::Acquire) {
            Err(NotReady::ListenersNotBound)
        } else if self.is_draining() {
            Err(NotReady::Draining)
        } else {
            Ok(())
        }
    }

    /// Whether a dispatcher destination is up (reported in `/readyz`'s body).
    pub fn any_destination_up(&self) -> bool {
        (self.any_destination_up)()
    }
}
