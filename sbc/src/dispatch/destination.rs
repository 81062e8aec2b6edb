//! One destination of a dispatcher set: its URI, resolved address and lock-free health state.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kubesbc_crds::config::{DestinationConfig, Probing, Transport};
use serde::{Deserialize, Serialize};

/// Kamailio's destination flag bits (`dispatch.h`), as written in `dispatcher.list`.
pub mod flags {
    /// `1`: inactive, never selected until a probe brings it back.
    pub const INACTIVE: u32 = 1;
    /// `2`: trying: probes are failing but the failure threshold is not reached yet.
    pub const TRYING: u32 = 2;
    /// `4`: disabled by the administrator: never selected, never probed.
    pub const DISABLED: u32 = 4;
    /// `8`: probing: OPTIONS keepalives are sent to it.
    pub const PROBING: u32 = 8;
    /// `16`: no DNS A/AAAA resolution (Kamailio); here it only turns probing off.
    pub const NODNSARES: u32 = 16;
    /// `32`: never probe this destination.
    pub const NOPING: u32 = 32;
    /// The bits that are runtime health rather than administration.
    pub const HEALTH: u32 = INACTIVE | TRYING;
}

/// Where requests for a destination go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Transport from the URI (`;transport=`, or TLS for `sips:`; UDP otherwise).
    pub transport: Transport,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// The health of a destination, as kamcmd's first flag letter shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestState {
    /// `A`: selected normally.
    Active,
    /// `T`: probes fail, threshold not reached; still selected.
    Trying,
    /// `I`: taken out (probes failed or a request timed out).
    Inactive,
    /// `D`: disabled by configuration.
    Disabled,
}

impl DestState {
    /// kamcmd's letter for this state.
    pub fn letter(self) -> char {
        match self {
            DestState::Active => 'A',
            DestState::Trying => 'T',
            DestState::Inactive => 'I',
            DestState::Disabled => 'D',
        }
    }

    /// The state of a flag word, with kamcmd's precedence (inactive before disabled).
    pub fn from_flags(f: u32) -> DestState {
        if f & flags::INACTIVE != 0 {
            DestState::Inactive
        } else if f & flags::DISABLED != 0 {
            DestState::Disabled
        } else if f & flags::TRYING != 0 {
            DestState::Trying
        } else {
            DestState::Active
        }
    }

    /// Whether requests may be sent to a destination in this state.
    pub fn is_up(self) -> bool {
        matches!(self, DestState::Active | DestState::Trying)
    }
}

impl fmt::Display for DestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DestState::Active => "active",
            DestState::Trying => "trying",
            DestState::Inactive => "inactive",
            DestState::Disabled => "disabled",
        })
    }
}

/// A change of a destination's state, returned so the caller can log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// State before.
    pub from: DestState,
    /// State after.
    pub to: DestState,
}

impl StateChange {
    /// The destination stopped receiving requests.
    pub fn went_down(&self) -> bool {
        self.from.is_up() && !self.to.is_up()
    }
    /// The destination receives requests again.
    pub fn came_up(&self) -> bool {
        !self.from.is_up() && self.to.is_up()
    }
}

/// Runtime state, shared by every build of a destination whose URI stays the same.
#[derive(Debug)]
pub(crate) struct Health {
    flags: AtomicU32,
    probe_failures: AtomicU32,
    probe_successes: AtomicU32,
    /// Calls sent here by this replica and not answered yet (they end on this replica).
    active_calls: AtomicU32,
    /// Answered calls of every replica, as the store counted them at the last refresh
    /// (see [`super::load`]).
    answered_shared: AtomicU32,
    /// Calls this replica saw answered since that refresh read the store.
    answered_here: AtomicU32,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Failed requests since the destination last answered a probe (outlier detection).
    request_failures: AtomicU32,
    /// The failure threshold was reached: the probe loop probes it at once.
    probe_wanted: AtomicBool,
    /// Dispatcher-wide counter bumped when any destination goes up or down, so sets can
    /// rebuild what depends on the set of active destinations (relative weights).
    epoch: Arc<AtomicU64>,
    /// Wakes the probe loop when a destination wants an immediate probe.
    wake: Arc<tokio::sync::Notify>,
}

impl Health {
    #[cfg(test)]
    pub(crate) fn new(initial_flags: u32, epoch: Arc<AtomicU64>) -> Health {
        Health::with_wake(initial_flags, epoch, Arc::default())
    }

    pub(crate) fn with_wake(
        initial_flags: u32,
        epoch: Arc<AtomicU64>,
        wake: Arc<tokio::sync::Notify>,
    ) -> Health {
        Health {
            flags: AtomicU32::new(initial_flags),
            probe_failures: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            active_calls: AtomicU32::new(0),
            answered_shared: AtomicU32::new(0),
            answered_here: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            request_failures: AtomicU32::new(0),
            probe_wanted: AtomicBool::new(false),
            epoch,
            wake,
        }
    }

    /// Takes the administrative flags of a new configuration, keeping the runtime health.
    pub(crate) fn apply_config_flags(&self, cfg_flags: u32) {
        let _ = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some((old & flags::HEALTH) | (cfg_flags & !flags::HEALTH))
            });
    }

    /// Applies `f` to the flag word and reports a state change, bumping the epoch when the
    /// destination went up or down.
    fn transition(&self, f: impl Fn(u32) -> u32) -> Option<StateChange> {
        let old = self
            .flags
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |o| Some(f(o)))
            .unwrap_or_else(|o| o);
        let change = StateChange {
            from: DestState::from_flags(old),
            to: DestState::from_flags(f(old)),
        };
        if change.from == change.to {
            return None;
        }
        if change.from.is_up() != change.to.is_up() {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        Some(change)
    }
}

/// One destination of a set. Shared as `Arc<Destination>`; the state is lock-free.
#[derive(Debug)]
pub struct Destination {
    /// The URI as configured (`sip:10.0.0.5:5060;transport=tcp`).
    pub uri: String,
    /// Where to send: the URI's host resolved when the set was built. For a host that did
    /// not resolve ([`Destination::is_resolved`] false) the address is unspecified and the
    /// destination is never selected nor probed.
    pub target: Target,
    /// Its configuration (flags, priority, attributes).
    pub config: DestinationConfig,
    /// The set it belongs to.
    pub set_id: u32,
    /// Whether its set probes (`probing.enabled`).
    set_probes: bool,
    /// Failed requests that trigger an immediate probe (`failover.failureThreshold`).
    failure_threshold: u32,
    /// Why the host did not resolve, when it did not.
    unresolved: Option<String>,
    /// Whether its answered calls are counted through the store: its set uses the
    /// call-load algorithm or it has a `maxload`.
    pub(crate) counts_load: bool,
    pub(crate) health: Arc<Health>,
}

/// Resolves a host name to one address (the system resolver, blocking), or says why not.
pub type Resolver = Arc<dyn Fn(&str, u16) -> Result<SocketAddr, String> + Send + Sync>;

/// The system resolver: the first address `(host, port)` resolves to.
pub fn system_resolver() -> Resolver {
    Arc::new(|host: &str, port: u16| {
        (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve host {host:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("host {host:?} has no address"))
    })
}

impl Destination {
    #[cfg(test)]
    pub(crate) fn new(
        set_id: u32,
        set_probes: bool,
        config: DestinationConfig,
        health: Arc<Health>,
    ) -> Result<Destination, String> {
        Destination::build(set_id, set_probes, 1, config, health, &system_resolver())
    }

    /// A destination whose URI is valid. A host that does not resolve makes a destination
    /// that is down (never selected, never probed) until a rebuild resolves it; a URI that
    /// is not valid is an error.
    pub(crate) fn build(
        set_id: u32,
        set_probes: bool,
        failure_threshold: u32,
        config: DestinationConfig,
        health: Arc<Health>,
        resolver: &Resolver,
    ) -> Result<Destination, String> {
        let t = parse_uri(&config.uri)?;
        let (addr, unresolved) = match t.host.parse::<IpAddr>() {
            Ok(ip) => (SocketAddr::new(ip, t.port), None),
            Err(_) => match resolver(t.host, t.port) {
                Ok(a) => (a, None),
                Err(why) => (
                    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), t.port),
                    Some(why),
                ),
            },
        };
        let counts_load = config.maxload.is_some_and(|m| m > 0);
        Ok(Destination {
            uri: config.uri.clone(),
            target: Target {
                addr,
                transport: t.transport,
            },
            config,
            set_id,
            set_probes,
            failure_threshold: failure_threshold.max(1),
            unresolved,
            counts_load,
            health,
        })
    }

    /// Whether the host resolved when the set was built.
    pub fn is_resolved(&self) -> bool {
        self.unresolved.is_none()
    }

    /// Why the host did not resolve, when it did not.
    pub fn unresolved_reason(&self) -> Option<&str> {
        self.unresolved.as_deref()
    }

    /// Kamailio's flag word: configured flags plus runtime health bits.
    pub fn flags(&self) -> u32 {
        self.health.flags.load(Ordering::Acquire)
    }

    /// Current state (`inactive` while the host does not resolve).
    pub fn state(&self) -> DestState {
        let f = self.flags();
        if self.unresolved.is_some() && f & flags::DISABLED == 0 {
            return DestState::Inactive;
        }
        DestState::from_flags(f)
    }

    /// Whether requests may be sent here (resolved, not inactive, not disabled).
    pub fn is_up(&self) -> bool {
        self.unresolved.is_none() && self.flags() & (flags::INACTIVE | flags::DISABLED) == 0
    }

    /// Whether panic routing may send here although it is down: resolved and not disabled.
    pub fn is_panic_eligible(&self) -> bool {
        self.unresolved.is_none() && self.flags() & flags::DISABLED == 0
    }

    /// A request to this destination failed (timed out, or a reply that fails over): one
    /// more failure since it last answered a probe. At `failover.failureThreshold` the probe
    /// loop probes it at once and that probe decides: no answer takes it out, an answer
    /// clears the count. A single request the backend ignores therefore never takes it out
    /// for everyone (Kamailio's `ds_mark_dst("ip")` did). Returns whether a probe was asked
    /// for. A destination that is not probed is only counted: nothing would bring it back.
    pub fn mark_down(&self) -> bool {
        let h = &self.health;
        h.failures.fetch_add(1, Ordering::Relaxed);
        if !self.is_probed() {
            return false;
        }
        let n = saturating_inc(&h.request_failures);
        if n < self.failure_threshold || h.probe_wanted.swap(true, Ordering::AcqRel) {
            return false;
        }
        tracing::info!(
            set = self.set_id,
            uri = %self.uri,
            failures = n,
            "dispatcher destination failed requests: probing it now"
        );
        h.wake.notify_one();
        true
    }

    /// Takes the destination out now, until probes bring it back (an administrator's
    /// decision, or a probe that failed after the failure threshold was reached).
    pub fn set_inactive(&self) -> Option<StateChange> {
        self.health.probe_successes.store(0, Ordering::Relaxed);
        self.health.transition(|f| {
            if f & (flags::DISABLED | flags::INACTIVE) != 0 {
                f
            } else {
                (f & !flags::TRYING) | flags::INACTIVE
            }
        })
    }

    /// Failed requests since the destination last answered a probe.
    pub fn request_failures(&self) -> u32 {
        self.health.request_failures.load(Ordering::Relaxed)
    }

    /// Takes the "probe me now" request, if there is one.
    pub(crate) fn take_probe_request(&self) -> bool {
        self.health.probe_wanted.swap(false, Ordering::AcqRel)
    }

    /// Whether an immediate probe is asked for.
    pub(crate) fn probe_requested(&self) -> bool {
        self.health.probe_wanted.load(Ordering::Acquire)
    }

    /// Applies the outcome of one OPTIONS probe with `probing`'s thresholds, as Kamailio's
    /// `ds_update_state`: `failureThreshold` consecutive failures take the destination out
    /// (before that it is `trying` and still used), `successThreshold` consecutive successes
    /// bring an inactive one back. A disabled destination is left alone.
    pub fn record_probe(&self, ok: bool, probing: &Probing) -> Option<StateChange> {
        let h = &self.health;
        if self.flags() & flags::DISABLED != 0 {
            return None;
        }
        if ok {
            h.probe_failures.store(0, Ordering::Relaxed);
            // It answers: the failed requests were the requests' problem, not its own.
            h.request_failures.store(0, Ordering::Relaxed);
            let successes = saturating_inc(&h.probe_successes);
            let enough = successes >= probing.success_threshold.max(1);
            let change = h.transition(|f| {
                if f & flags::DISABLED != 0 {
                    f
                } else if f & flags::INACTIVE != 0 {
                    if enough { f & !flags::HEALTH } else { f }
                } else {
                    f & !flags::TRYING
                }
            });
            if change.is_some_and(|c| c.came_up()) {
                h.probe_successes.store(0, Ordering::Relaxed);
            }
            change
        } else {
            h.probe_successes.store(0, Ordering::Relaxed);
            let failures = saturating_inc(&h.probe_failures);
            let enough = failures >= probing.failure_threshold.max(1);
            h.transition(|f| {
                if f & (flags::DISABLED | flags::INACTIVE) != 0 {
                    f
                } else if enough {
                    (f & !flags::TRYING) | flags::INACTIVE
                } else {
                    f | flags::TRYING
                }
            })
        }
    }

    /// A call to this destination started (for the call-load algorithm).
    pub fn call_started(&self) {
        saturating_inc(&self.health.active_calls);
    }

    /// A call sent by this replica got its final response: it no longer rings. Never goes
    /// below zero.
    pub fn call_ended(&self) {
        let _ = self
            .health
            .active_calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Whether its answered calls count through the store ([`super::load`]).
    pub fn counts_load(&self) -> bool {
        self.counts_load
    }

    /// A call sent here was answered on this replica; it counts until the next refresh
    /// reads it back from the store.
    pub(crate) fn call_answered(&self) {
        saturating_inc(&self.health.answered_here);
    }

    /// Takes what a refresh read: `answered` calls of every replica, which include the
    /// `seen_here` answered here that the refresh started after.
    pub(crate) fn set_answered(&self, answered: u32, seen_here: u32) {
        self.health
            .answered_shared
            .store(answered, Ordering::Release);
        let _ = self
            .health
            .answered_here
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(seen_here))
            });
    }

    /// Calls answered here since the last refresh.
    pub(crate) fn answered_here(&self) -> u32 {
        self.health.answered_here.load(Ordering::Acquire)
    }

    /// Calls in progress: ringing through this replica, plus answered calls of every
    /// replica until their BYE (when [`Destination::counts_load`]).
    pub fn active_calls(&self) -> u32 {
        let h = &self.health;
        h.active_calls
            .load(Ordering::Acquire)
            .saturating_add(h.answered_shared.load(Ordering::Acquire))
            .saturating_add(h.answered_here.load(Ordering::Acquire))
    }

    /// Whether the call-load algorithm may still pick it (`maxload` not reached).
    pub fn has_capacity(&self) -> bool {
        match self.config.maxload {
            Some(max) if max > 0 => self.active_calls() < max,
            _ => true,
        }
    }

    /// A request to it got a reply that fails over: counted like a timeout (see
    /// [`Destination::mark_down`]).
    pub fn request_failed(&self) {
        self.mark_down();
    }

    /// Requests sent here: the number of times the dispatcher selected it.
    pub fn requests_sent(&self) -> u64 {
        self.health.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn count_request(&self) {
        self.health.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed requests (see [`Destination::request_failed`], [`Destination::mark_down`]).
    pub fn failures(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    /// Consecutive failed probes.
    pub fn probe_failures(&self) -> u32 {
        self.health.probe_failures.load(Ordering::Relaxed)
    }

    /// Consecutive successful probes.
    pub fn probe_successes(&self) -> u32 {
        self.health.probe_successes.load(Ordering::Relaxed)
    }

    /// Whether the probe loop pings it: its set probes, it is not disabled, and it has
    /// neither Kamailio's no-ping (32) nor no-DNS (16) flag.
    pub fn is_probed(&self) -> bool {
        self.set_probes
            && self.unresolved.is_none()
            && self.flags() & (flags::DISABLED | flags::NOPING | flags::NODNSARES) == 0
    }
}

fn saturating_inc(a: &AtomicU32) -> u32 {
    let old = a
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            Some(n.saturating_add(1))
        })
        .unwrap_or_else(|n| n);
    old.saturating_add(1)
}

/// The parts of a destination URI that say where to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UriTarget<'a> {
    /// Host without IPv6 brackets.
    pub host: &'a str,
    pub port: u16,
    pub transport: Transport,
}

/// Parses a destination URI: `sip:`/`sips:`, optional user, host (IPv6 in brackets),
/// optional port, `;transport=`. `sips:` means TLS (WSS with `transport=ws`); the default
/// port is 5061 for TLS and 5060 otherwise.
pub(crate) fn parse_uri(uri: &str) -> Result<UriTarget<'_>, String> {
    let (secure, rest) = if let Some(r) = strip_prefix_ci(uri, "sip:") {
        (false, r)
    } else if let Some(r) = strip_prefix_ci(uri, "sips:") {
        (true, r)
    } else {
        return Err(format!("{uri:?} is not a sip: or sips: URI"));
    };
    let rest = match rest.find('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let end = rest.find([';', '?']).unwrap_or(rest.len());
    let (hostport, params) = (&rest[..end], &rest[end..]);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let close = v6
            .find(']')
            .ok_or_else(|| format!("{uri:?} has an unterminated IPv6 reference"))?;
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("{uri:?} has an invalid host")),
        };
        (&v6[..close], port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{uri:?} has no host"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(format!("{uri:?} has an invalid host"));
    }
    let mut transport = None;
    for p in params.split(';').skip(1) {
        let p = p.split('?').next().unwrap_or("");
        if let Some((name, value)) = p.split_once('=')
            && name.eq_ignore_ascii_case("transport")
        {
            let t = Transport::from_name(value).ok_or_else(|| {
                format!("{uri:?}: unsupported transport {value:?} (udp, tcp, tls, ws, wss)")
            })?;
            transport = Some(t);
        }
    }
    let transport = match (secure, transport) {
        (false, t) => t.unwrap_or(Transport::Udp),
        (true, None | Some(Transport::Tcp | Transport::Tls | Transport::Udp)) => Transport::Tls,
        (true, Some(Transport::Ws | Transport::Wss)) => Transport::Wss,
    };
    let port = match port {
        None => {
            if matches!(transport, Transport::Tls | Transport::Wss) {
                5061
            } else {
                5060
            }
        }
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{uri:?} has an invalid port {p:?}"))?,
    };
    Ok(UriTarget {
        host,
        port,
        transport,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parses `uri` and resolves its host: an IP literal as is, a name with the system resolver
/// (blocking; done when a set is built, never per request).
pub(crate) fn resolve(uri: &str) -> Result<Target, String> {
    let t = parse_uri(uri)?;
    let addr = match t.host.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, t.port),
        Err(_) => system_resolver()(t.host, t.port)?,
    };
    Ok(Target {
        addr,
        transport: t.transport,
    })
}

#[cfg(test)]
mod tests;
