//! Prometheus metrics of the sbc and the tracing setup of the binary.
//!
//! [`Metrics`] is created once and shared in an `Arc`. Every labelled series the hot path
//! touches is resolved when `Metrics` is built and kept in a fixed array, so counting a message
//! is an index and an atomic add: no map lookup, no allocation, no lock.
//!
//! `labels` holds the bounded label sets, `metrics` the hot-path counters, `live` the metrics of
//! dispatcher and configuration updates, `logging` the subscriber of the binary.

mod labels;
mod live;
mod logging;
mod metrics;

pub use labels::{
    COMMON_CODES, Direction, DropReason, InternalError, ParseErrorKind, ResponseOrigin,
    TransactionKind,
};
pub use live::{LiveMetrics, SetStateSample};
pub use logging::init_tracing;
pub use metrics::{DestinationSample, DestinationSource, METRICS_CONTENT_TYPE, Metrics};

use thiserror::Error;

/// Failures while building the metrics or the logger.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// A metric could not be registered (a name clash: a programming error).
    #[error("metric registration failed: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The metrics could not be rendered as text.
    #[error("metrics could not be rendered: {0}")]
    Encode(String),
    /// A global tracing subscriber was already installed.
    #[error("logging already initialised: {0}")]
    Tracing(String),
}

#[cfg(test)]
mod tests;
