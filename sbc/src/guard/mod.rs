//! The guard stage (docs/architecture.md, step 5): who may talk to the sbc at all.
//!
//! In order, for every request the relay hands the stages:
//! 0. **Proxy-Require** ([`extensions`]): an extension required of proxies gets
//!    `420 Bad Extension` (RFC 3261 section 16.3), as the sbc implements none.
//! 1. **flood** (Kamailio's pike): more than `flood.requests` requests from one source IP in
//!    `flood.windowSecs` bans the source for `flood.banSecs`. The count and the ban live in
//!    the store (`flood:{ip}`, `ban:{ip}`), so every replica enforces a ban set by any of
//!    them; each replica tallies hits locally and syncs them in one round trip for all
//!    sources every 50 ms (see [`flood`]). Trusted sources (the dispatcher's destinations,
//!    `trusted` CIDRs) are exempt. A banned source gets no answer, or `banResponseCode` when
//!    configured.
//! 2. **access lists**, each in order of the configuration: the first matching rule decides,
//!    else the list's default action; a request must be allowed by every list. A deny answers
//!    the rule's code with a reason naming the rule's kind (`403 Forbidden (scanner)`,
//!    `403 Forbidden - Invalid Signature`), or drops scanners when the list says so.
//! 3. **scanners** ([`scanners`]): a User-Agent naming a known SIP scanner is dropped (or
//!    refused with `403 Forbidden (scanner)`), with or without access lists; off with
//!    `scanners.enabled: false`. Counted per pattern in `sbc_guard_scanners_total{rule}`.
//! 4. **targets**: a Request-URI or Route in multicast, link-local or mDNS `.local` space is
//!    refused with 403.
//! 5. **REGISTER flood** (the seeds' `auth_block_list`), keyed on what cannot be spoofed by
//!    someone else's requests: when the auth stage authenticates REGISTER, it counts the
//!    REGISTERs of each *authenticated* user after their credentials verify (see
//!    [`crate::auth`]) and the guard does nothing here; without auth, more than
//!    `registerFlood.requests` REGISTERs from one *source address* per window block that
//!    source's REGISTERs (`srcblock:{ip}`) for `registerFlood.banSecs`: `403 Blocked`. A
//!    To header naming someone else never blocks them.
//!
//! A store error never blocks traffic: the guard lets the request through and logs at debug
//! level (the fallback store already answers from memory when Redis is unreachable).

pub mod extensions;
pub mod flood;
pub mod rules;
pub mod scanners;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::pipeline::{Admission, BoxFuture, Refusal, RequestContext, Stage, Verdict};
use crate::sip::{Message, Method};
use crate::store::{FloodHit, FloodOutcome, Store, StoreError};
use kubesbc_crds::policy::{AccessListConfig, FloodLimit};

use crate::cidr::Cidr;
use flood::{FloodTracker, Local};
use rules::{Decision, List};

pub(crate) use crate::store::keys::IpKey;
use crate::store::keys::user_block as user_key;
pub use crate::store::keys::{
    BAN_PREFIX, FLOOD_PREFIX, REGBLOCK_PREFIX, REGFLOOD_PREFIX, REGFLOOD_SRC_PREFIX,
    SRCBLOCK_PREFIX,
};

/// Most bans a listing returns.
pub const MAX_LISTED_BANS: usize = 10_000;

/// Answers whether a source (address and port) is a trusted peer (the dispatcher's
/// destinations). The port matters: a caller on the same host as a backend is not trusted.
pub type TrustedFn = Arc<dyn Fn(std::net::SocketAddr) -> bool + Send + Sync>;

/// Why the guard refused a request, for the `reason` label of `sbc_guard_refused_total`.
#[derive(Debug, Clone, Copy)]
enum Refused {
    Rule = 0,
    Target = 1,
    Banned = 2,
    Blocked = 3,
}

const REFUSED: [&str; 4] = ["rule", "target", "banned", "blocked"];

/// The guard's metrics: `sbc_guard_refused_total{reason}`, `sbc_guard_bans_total` and
/// `sbc_guard_scanners_total{rule}` (one series per built-in scanner pattern).
/// Registered once per process and shared by the guards built on every configuration reload.
#[derive(Debug, Clone)]
pub struct GuardMetrics {
    refused: [IntCounter; 4],
    bans: IntCounter,
    scanners: Vec<IntCounter>,
}

impl GuardMetrics {
    /// Registers the guard's metrics on `registry`.
    pub fn new(registry: &Registry) -> Result<GuardMetrics, prometheus::Error> {
        let refused = IntCounterVec::new(
            Opts::new(
                "sbc_guard_refused_total",
                "Requests the guard refused or dropped, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        let bans = IntCounter::new(
            "sbc_guard_bans_total",
            "Sources and users banned by this replica for flooding",
        )?;
        registry.register(Box::new(bans.clone()))?;
        let scanners = IntCounterVec::new(
            Opts::new(
                "sbc_guard_scanners_total",
                "Requests from known SIP scanners dropped or refused, by built-in rule",
            ),
            &["rule"],
        )?;
        registry.register(Box::new(scanners.clone()))?;
        Ok(GuardMetrics {
            refused: REFUSED.map(|r| refused.with_label_values(&[r])),
            bans,
            scanners: scanners::BUILT_IN
                .iter()
                .map(|(p, _)| scanners.with_label_values(&[*p]))
                .collect(),
        })
    }
}

/// The guard stage.
pub struct Guard {
    lists: Vec<List>,
    flood: Option<FloodLimit>,
    tracker: Option<Arc<FloodTracker>>,
    register_flood: Option<FloodLimit>,
    trusted: Vec<Cidr>,
    trusted_fn: Option<TrustedFn>,
    ban_code: Option<u16>,
    store: Arc<dyn Store>,
    metrics: Option<GuardMetrics>,
    scanners: scanners::Scanners,
    /// The auth stage authenticates REGISTER and counts REGISTER floods per user itself.
    register_auth: bool,
    /// Host names that are the sbc itself (its inside Service name, `*.svc.cluster.local`):
    /// a Route naming one is the sbc's own Record-Route coming back, not a target.
    own_hosts: Vec<String>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("lists", &self.lists.len())
            .field("flood", &self.flood)
            .field("register_flood", &self.register_flood)
            .finish_non_exhaustive()
    }
}

/// The host names in `cfg` that are the sbc itself: the inside address and the advertised
/// names, written into Record-Route and so found in Route headers coming back.
pub fn own_hosts(cfg: &kubesbc_crds::config::SbcConfig) -> Vec<String> {
    let inside = cfg.relay.inside.as_ref().and_then(|i| i.address.as_deref());
    let advertised = cfg.listeners.iter().filter_map(|l| l.advertise.as_deref());
    inside
        .into_iter()
        .chain(advertised)
        .map(|a| match crate::sip::uri::split_host_port(a.as_bytes()) {
            Some((h, _)) => String::from_utf8_lossy(h).into_owned(),
            None => a.to_owned(),
        })
        .collect()
}

impl Guard {
    /// A guard applying `lists` (already validated), with bans and counters in `store`.
    /// Flood limits, trusted CIDRs and the ban answer come from the first list that sets
    /// them; trusted CIDRs of every list add up.
    pub fn new(lists: &[AccessListConfig], store: Arc<dyn Store>) -> Guard {
        let flood = lists.iter().find_map(|l| l.flood.clone());
        Guard {
            lists: lists.iter().map(List::compile).collect(),
            tracker: flood.as_ref().map(|f| Arc::new(FloodTracker::new(f))),
            flood,
            register_flood: lists.iter().find_map(|l| l.register_flood.clone()),
            trusted: lists
                .iter()
                .flat_map(|l| l.trusted.iter().filter_map(|c| Cidr::parse(c)))
                .collect(),
            trusted_fn: None,
            ban_code: lists.iter().find_map(|l| l.ban_response_code),
            store,
            metrics: None,
            scanners: scanners::Scanners::default(),
            register_auth: false,
            own_hosts: Vec::new(),
        }
    }

    /// Names `hosts` as the sbc's own (see [`own_hosts`]): Route entries naming them are not
    /// checked as targets.
    pub fn with_own_hosts(mut self, hosts: Vec<String>) -> Guard {
        self.own_hosts = hosts;
        self
    }

    /// Applies the scanner defence `cfg` (the default is on, dropping).
    pub fn with_scanners(mut self, cfg: &kubesbc_crds::config::ScannerDefence) -> Guard {
        self.scanners = scanners::Scanners::new(cfg);
        self
    }

    /// Whether the auth stage authenticates REGISTER: then it counts REGISTER floods per
    /// authenticated user and the guard leaves them alone.
    pub fn with_register_auth(mut self, on: bool) -> Guard {
        self.register_auth = on;
        self
    }

    /// Also trusts the peers `f` accepts (the dispatcher's destinations).
    pub fn with_trusted(mut self, f: TrustedFn) -> Guard {
        self.trusted_fn = Some(f);
        self
    }

    /// Counts refusals and bans in `metrics`.
    pub fn with_metrics(mut self, metrics: GuardMetrics) -> Guard {
        self.metrics = Some(metrics);
        self
    }

    /// Starts syncing the flood tallies with the store (see [`flood`]); call once, inside
    /// the runtime, when the guard is built. Without it every tracked source is decided by
    /// the store only when this replica alone takes it over the limit.
    pub fn start(self) -> Guard {
        if let (Some(t), Some(f)) = (&self.tracker, &self.flood) {
            let (bans, secs) = (self.metrics.as_ref().map(|m| m.bans.clone()), f.ban_secs);
            t.spawn_sync(self.store.clone(), move |ip| {
                tracing::warn!(%ip, secs, "source banned for flooding");
                if let Some(b) = &bans {
                    b.inc();
                }
            });
        }
        self
    }

    fn count(&self, r: Refused) {
        if let Some(m) = &self.metrics {
            m.refused[r as usize].inc();
        }
    }

    fn is_trusted(&self, ip: IpAddr, source: std::net::SocketAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
            || self.trusted_fn.as_ref().is_some_and(|f| f(source))
    }

    /// The whole decision for one request.
    pub async fn decide(&self, req: &Message, cx: &RequestContext) -> Verdict {
        if let Some(tags) = extensions::unsupported(req) {
            return Verdict::Reply(
                Refusal::new(420, "Bad Extension").with_header("Unsupported", tags),
            );
        }
        let ip = cx.peer.addr.ip().to_canonical();
        let trusted = self.is_trusted(ip, cx.peer.addr);

        if let (Some(f), Some(tracker)) = (&self.flood, &self.tracker)
            && !trusted
        {
            let local = tracker.hit(ip, Instant::now());
            let outcome = match local {
                Local::Allow => FloodOutcome::Allowed { count: 0 },
                Local::Banned(remaining) => FloodOutcome::Banned {
                    remaining,
                    new: false,
                },
                Local::Ask(hits) => {
                    let (counter, ban) = (IpKey::new(FLOOD_PREFIX, ip), IpKey::new(BAN_PREFIX, ip));
                    let hit = tracker.flood_hit(counter.as_str(), ban.as_str(), hits);
                    let answer = self.store.flood_hit(hit).await;
                    tracker.answered(ip, answer.as_ref().ok().copied(), Instant::now());
                    answer.unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "flood check skipped");
                        FloodOutcome::Allowed { count: 0 }
                    })
                }
            };
            if let FloodOutcome::Banned { new, .. } = outcome {
                if new {
                    tracing::warn!(%ip, secs = f.ban_secs, "source banned for flooding");
                    if let Some(m) = &self.metrics {
                        m.bans.inc();
                    }
                }
                self.count(Refused::Banned);
                return match self.ban_code {
                    Some(code) => Verdict::Reply(Refusal::new(code, "Forbidden (banned)")),
                    None => Verdict::Drop,
                };
            }
        }

        for list in &self.lists {
            match list.decide(req, ip) {
                Decision::Allow => {}
                Decision::Deny(rule) => {
                    self.count(Refused::Rule);
                    tracing::debug!(list = %list.name, %ip, reason = %rule.reason, "denied");
                    if rule.drop {
                        return Verdict::Drop;
                    }
                    return Verdict::Reply(Refusal::new(rule.code, rule.reason.clone()));
                }
                Decision::DenyDefault(reason) => {
                    self.count(Refused::Rule);
                    return Verdict::Reply(Refusal::new(403, reason.to_owned()));
                }
            }
        }

        if !trusted && let Some(i) = self.scanners.matches(req) {
            self.count(Refused::Rule);
            if let Some(m) = &self.metrics
                && let Some(c) = m.scanners.get(i)
            {
                c.inc();
            }
            tracing::debug!(%ip, rule = scanners::BUILT_IN[i].0, "known scanner refused");
            return if self.scanners.drops() {
                Verdict::Drop
            } else {
                Verdict::Reply(Refusal::new(403, "Forbidden (scanner)"))
            };
        }

        if let Some(bad) = rules::bad_target(req, &self.own_hosts) {
            self.count(Refused::Target);
            return Verdict::Reply(Refusal::new(403, bad.reason()));
        }

        if cx.method == Method::Register
            && !trusted
            && !self.register_auth
            && let Some(f) = &self.register_flood
        {
            // No authentication: the source address is the only identity nobody else can
            // use up (the To user is whatever the sender writes).
            let (counter, block) = (
                IpKey::new(REGFLOOD_SRC_PREFIX, ip),
                IpKey::new(SRCBLOCK_PREFIX, ip),
            );
            let blocked = match register_flood_hit(
                self.store.as_ref(),
                f,
                counter.as_str(),
                block.as_str(),
            )
            .await
            {
                Ok(FloodOutcome::Banned { new, .. }) => {
                    if new {
                        tracing::warn!(%ip, secs = f.ban_secs, "source blocked: REGISTER flood");
                        if let Some(m) = &self.metrics {
                            m.bans.inc();
                        }
                    }
                    true
                }
                Ok(FloodOutcome::Allowed { .. }) => false,
                Err(e) => {
                    tracing::debug!(error = %e, "REGISTER flood check skipped");
                    false
                }
            };
            if blocked {
                self.count(Refused::Blocked);
                return Verdict::Reply(Refusal::new(403, "Blocked"));
            }
        }
        Verdict::Continue
    }
}

/// Counts one REGISTER against `f` in `counter`, blocking with `block` past the limit.
pub(crate) async fn register_flood_hit(
    store: &dyn Store,
    f: &FloodLimit,
    counter: &str,
    block: &str,
) -> Result<FloodOutcome, StoreError> {
    store
        .flood_hit(FloodHit {
            counter_key: counter,
            ban_key: block,
            limit: u64::from(f.requests),
            window: Duration::from_secs(u64::from(f.window_secs)),
            ban_ttl: Duration::from_secs(u64::from(f.ban_secs)),
            ban_value: Bytes::from_static(b"register-flood"),
            hits: 1,
        })
        .await
}

impl Stage for Guard {
    fn name(&self) -> &'static str {
        "guard"
    }

    fn check<'a>(
        &'a self,
        req: &'a Message,
        cx: &'a RequestContext,
        _admission: &'a mut Admission,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(self.decide(req, cx))
    }
}

/// Blocks the authenticated `user` for `ttl`: their authenticated requests get `403 Blocked`
/// on every replica, as after a REGISTER flood; the value records why (`auth`).
pub async fn block_user(store: &dyn Store, user: &str, ttl: Duration) -> Result<(), StoreError> {
    store
        .set_ex(&user_key(user), Bytes::from_static(b"auth"), ttl)
        .await
}

/// Whether `user` is blocked (by a REGISTER flood or by [`block_user`]).
pub async fn is_blocked(store: &dyn Store, user: &str) -> Result<bool, StoreError> {
    Ok(store.get(&user_key(user)).await?.is_some())
}

/// An active ban, as `GET /bans` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BanEntry {
    /// The banned source address.
    pub ip: String,
    /// Why (`flood`, or what an operator wrote).
    pub reason: String,
    /// Seconds left.
    pub remaining_secs: u64,
}

/// The active source bans, sorted by address text.
pub async fn list_bans(store: &dyn Store) -> Result<Vec<BanEntry>, StoreError> {
    let listed = store.list_prefix_ttl(BAN_PREFIX, MAX_LISTED_BANS).await?;
    Ok(listed
        .into_iter()
        .filter_map(|l| {
            Some(BanEntry {
                ip: crate::store::keys::untag(&l.key, BAN_PREFIX)?.to_owned(),
                reason: String::from_utf8_lossy(&l.value).into_owned(),
                // Round up: a ban with 300 ms left still shows as 1 second.
                remaining_secs: l
                    .ttl
                    .as_millis()
                    .div_ceil(1000)
                    .try_into()
                    .unwrap_or(u64::MAX),
            })
        })
        .collect())
}

/// Lifts the ban of `ip` (and resets its flood counter); true when it was banned.
pub async fn remove_ban(store: &dyn Store, ip: IpAddr) -> Result<bool, StoreError> {
    let ip = ip.to_canonical();
    let ban = IpKey::new(BAN_PREFIX, ip);
    let counter = IpKey::new(FLOOD_PREFIX, ip);
    let was = store.del(ban.as_str()).await?;
    store.del(counter.as_str()).await?;
    Ok(was)
}

#[cfg(test)]
mod tests;
