//! Dispatcher sets: Kamailio-compatible destination selection, probing and failover state.
//! (Temporary round-robin stand-in; the full module lands from the dispatch branch.)

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use kubesbc_crds::config::{DispatcherConfig, Transport};

/// Where a destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Address.
    pub addr: SocketAddr,
    /// Transport.
    pub transport: Transport,
}

/// One destination.
#[derive(Debug)]
pub struct Destination {
    /// URI as configured.
    pub uri: String,
    /// Resolved target.
    pub target: Target,
    up: AtomicBool,
    active: AtomicU32,
}

impl Destination {
    /// Whether it takes calls.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    /// A request to it timed out.
    pub fn mark_down(&self) {
        self.up.store(false, Ordering::Relaxed);
    }
    /// A call started.
    pub fn call_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }
    /// A call ended.
    pub fn call_ended(&self) {
        let _ = self
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

/// Inputs of the hashing algorithms.
pub struct SelectKey<'a> {
    /// Call-ID.
    pub call_id: &'a [u8],
    /// From URI.
    pub from_uri: &'a [u8],
    /// To URI.
    pub to_uri: &'a [u8],
    /// Request-URI.
    pub request_uri: &'a [u8],
    /// Auth username.
    pub auth_username: Option<&'a [u8]>,
}

/// A chosen destination.
pub struct Selected {
    /// The destination.
    pub dest: Arc<Destination>,
    /// Its index in the set.
    pub index: usize,
}

/// Errors building sets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DispatchError(String);

struct Set {
    id: u32,
    dests: Vec<Arc<Destination>>,
    rr: AtomicUsize,
}

/// The dispatcher.
pub struct Dispatcher {
    sets: Vec<Set>,
}

impl Dispatcher {
    /// Builds the sets.
    pub fn new(cfg: &DispatcherConfig) -> Result<Dispatcher, DispatchError> {
        let mut sets = Vec::new();
        for s in &cfg.sets {
            let mut dests = Vec::new();
            for d in &s.destinations {
                let rest = d.uri.trim_start_matches("sip:");
                let (hp, params) = rest.split_once(';').unwrap_or((rest, ""));
                let hp = if hp.contains(':') {
                    hp.to_string()
                } else {
                    format!("{hp}:5060")
                };
                let addr = hp
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| DispatchError(format!("cannot resolve {}", d.uri)))?;
                let transport = if params.contains("transport=tcp") {
                    Transport::Tcp
                } else {
                    Transport::Udp
                };
                dests.push(Arc::new(Destination {
                    uri: d.uri.clone(),
                    target: Target { addr, transport },
                    up: AtomicBool::new(true),
                    active: AtomicU32::new(0),
                }));
            }
            sets.push(Set {
                id: s.id,
                dests,
                rr: AtomicUsize::new(0),
            });
        }
        Ok(Dispatcher { sets })
    }

    /// Picks a destination.
    pub fn select(&self, set_id: u32, _key: &SelectKey<'_>, tried: &[usize]) -> Option<Selected> {
        let set = self.sets.iter().find(|s| s.id == set_id)?;
        let n = set.dests.len();
        let start = set.rr.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|i| !tried.contains(i) && set.dests[*i].is_up())
            .map(|index| Selected {
                dest: set.dests[index].clone(),
                index,
            })
    }

    /// All destinations.
    pub fn destinations(&self) -> Vec<(u32, Arc<Destination>)> {
        self.sets
            .iter()
            .flat_map(|s| s.dests.iter().map(|d| (s.id, d.clone())))
            .collect()
    }
}

/// Probing.
pub mod probe {
    use super::*;
    /// Result of one probe.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum PingOutcome {
        /// A reply.
        Reply(u16),
        /// No reply in time.
        Timeout,
        /// Could not send.
        Unreachable,
    }
    /// Sends probes.
    pub trait Pinger: Send + Sync {
        /// Pings one destination.
        fn ping<'a>(
            &'a self,
            dest: &'a Destination,
            from: &'a str,
            timeout: Duration,
        ) -> Pin<Box<dyn Future<Output = PingOutcome> + Send + 'a>>;
    }
}
