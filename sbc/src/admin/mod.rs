//! The HTTP admin endpoint and the `sbc ctl` client.
//!
//! Routes (GET or HEAD unless said otherwise; request bodies are ignored):
//! - `/metrics`: Prometheus text of [`Metrics`].
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 when the sbc itself can take calls: its listeners are bound (so its
//!   configuration loaded) and it is not draining; otherwise 503 with a one-line reason. The
//!   backends do not count: with every destination down the pods stay in the Service and
//!   callers get a SIP 503 instead of a timeout (the body says so). The store does not count
//!   either: without Redis a pod falls back to its local state.
//! - `/dispatcher`: JSON [`DispatcherSnapshot`] (what `kamcmd dispatcher.list` shows).
//! - `/dialogs`, `/registrations`: JSON lists of the calls up now and of the registrations
//!   that passed through this sbc ([`crate::observe`]); 404 without an `observability`
//!   section.
//! - `/bans`: JSON list of active source bans ([`BanEntry`]: ip, reason, remainingSecs);
//!   `[]` without a store.
//! - `DELETE /bans/{ip}` (or `POST /bans/remove?ip=...`): lifts a ban; 404 when none. Write
//!   requests are accepted from loopback clients only (`sbc ctl` run in the pod, e.g. with
//!   `kubectl exec`), so whoever reaches the port over the network (or, with `hostNetwork`,
//!   the node's interfaces) can read but never lift a ban; others get 403.
//!
//! `listing` holds the dispatcher listing, `health` readiness, `routes` the answers,
//! `server` the HTTP server, `ctl` the client.

pub mod ctl;
mod health;
mod listing;
mod routes;
mod server;

pub use health::{Health, NotReady, UpCheck};
pub use listing::{
    DestinationCounters, DestinationSnapshot, DestinationState, DispatcherSnapshot, SetSnapshot,
    SnapshotProvider, any_destination_up, destination_samples, dispatcher_listing,
};
pub use routes::{admits, respond, respond_async};
pub use server::{AdminServer, serve};

use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;

pub use crate::guard::BanEntry;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Failures of the admin server.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The admin address could not be bound (in use, or not a local address).
    #[error("cannot bind the admin endpoint on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// What the admin endpoint serves.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Readiness for `/readyz`.
    pub health: Arc<Health>,
    /// The listing served by `/dispatcher`.
    pub dispatcher: SnapshotProvider,
    /// The store holding the bans listed and lifted by `/bans`.
    pub store: Option<Arc<dyn Store>>,
    /// The dialog and registration tables of `/dialogs` and `/registrations` (None without
    /// an `observability` section).
    pub observe: Option<Arc<crate::observe::ObserveView>>,
}

#[cfg(test)]
mod tests;
