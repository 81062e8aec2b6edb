//! The guard stage (DESIGN.md step 3): who may talk to the sbc at all.
//!
//! In order, for every request the relay hands the stages:
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
//! 3. **targets**: a Request-URI or Route in multicast, link-local or mDNS `.local` space is
//!    refused with 403.
//! 4. **REGISTER flood per user** (the seeds' `auth_block_list`): more than
//!    `registerFlood.requests` REGISTERs for one user (the To URI's user part) per window
//!    blocks that user (`regblock:{user}`) for `registerFlood.banSecs`: `403 Blocked`. The
//!    auth stage writes the same key after repeated failed attempts (by digest username), and
//!    a blocked user's REGISTERs are refused whether or not `registerFlood` is configured.
//!
//! A store error never blocks traffic: the guard lets the request through and logs at debug
//! level (the fallback store already answers from memory when Redis is unreachable).

pub mod flood;
pub mod rules;

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::pipeline::{Admission, BoxFuture, Refusal, RequestContext, Stage, Verdict};
use crate::sip::uri::{self, Uri};
use crate::sip::{HeaderName, Message, Method};
use crate::store::{FloodHit, FloodOutcome, Store, StoreError};
use kubesbc_crds::policy::{AccessListConfig, FloodLimit};

use flood::{FloodTracker, Local};
use rules::{Cidr, Decision, List};

/// Key prefix of source bans: `ban:{ip}`.
pub const BAN_PREFIX: &str = "ban:";
/// Key prefix of the per-source flood counters: `flood:{ip}`.
pub const FLOOD_PREFIX: &str = "flood:";
/// Key prefix of the per-user REGISTER counters: `regflood:{user}`.
pub const REGFLOOD_PREFIX: &str = "regflood:";
/// Key prefix of blocked users: `regblock:{user}`.
pub const REGBLOCK_PREFIX: &str = "regblock:";

/// Longest user name used in a key; longer names are cut (bounded keys).
const MAX_USER: usize = 128;
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

/// The guard's metrics: `sbc_guard_refused_total{reason}` and `sbc_guard_bans_total`.
/// Registered once per process and shared by the guards built on every configuration reload.
#[derive(Debug, Clone)]
pub struct GuardMetrics {
    refused: [IntCounter; 4],
    bans: IntCounter,
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
        Ok(GuardMetrics {
            refused: REFUSED.map(|r| refused.with_label_values(&[r])),
            bans,
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
        }
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

        if let Some(bad) = rules::bad_target(req) {
            self.count(Refused::Target);
            return Verdict::Reply(Refusal::new(403, bad.reason()));
        }

        if cx.method == Method::Register
            && !trusted
            && let Some(user) = register_user(req)
        {
            let blocked = match &self.register_flood {
                Some(f) => {
                    let counter = format!("{REGFLOOD_PREFIX}{user}");
                    let block = format!("{REGBLOCK_PREFIX}{user}");
                    let hit = FloodHit {
                        counter_key: &counter,
                        ban_key: &block,
                        limit: u64::from(f.requests),
                        window: Duration::from_secs(u64::from(f.window_secs)),
                        ban_ttl: Duration::from_secs(u64::from(f.ban_secs)),
                        ban_value: Bytes::from_static(b"register-flood"),
                        hits: 1,
                    };
                    match self.store.flood_hit(hit).await {
                        Ok(FloodOutcome::Banned { new, .. }) => {
                            if new {
                                tracing::warn!(
                                    user,
                                    secs = f.ban_secs,
                                    "user blocked: REGISTER flood"
                                );
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
                    }
                }
                None => is_blocked(self.store.as_ref(), user).await.unwrap_or(false),
            };
            if blocked {
                self.count(Refused::Blocked);
                return Verdict::Reply(Refusal::new(403, "Blocked"));
            }
        }
        Verdict::Continue
    }
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

/// `prefix` + an address, formatted on the stack (no allocation per request).
pub(crate) struct IpKey {
    buf: [u8; 64],
    len: usize,
}

impl IpKey {
    pub(crate) fn new(prefix: &str, ip: IpAddr) -> IpKey {
        let mut buf = [0u8; 64];
        let mut w: &mut [u8] = &mut buf;
        // 64 bytes hold the longest prefix plus the longest IPv6 text (45 bytes).
        let _ = write!(w, "{prefix}{ip}");
        let len = 64 - w.len();
        IpKey { buf, len }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(..self.len).unwrap_or(&[])).unwrap_or("")
    }
}

/// The user a REGISTER is for: the To URI's user part (what digest usernames usually are),
/// cut to a bounded length; None when absent or not UTF-8.
fn register_user(req: &Message) -> Option<&str> {
    let to = req.header_value(HeaderName::To)?;
    let user = Uri::parse(uri::name_addr_uri(to))?.user?;
    // User parameters (`;x=y`) and a password part are not part of the name.
    let user = user.split(|c| *c == b';' || *c == b':').next()?;
    if user.is_empty() {
        return None;
    }
    let user = user.get(..MAX_USER).unwrap_or(user);
    std::str::from_utf8(user).ok()
}

fn user_key(user: &str) -> String {
    let cut = user.len().min(MAX_USER);
    let user = user.get(..cut).unwrap_or(user);
    format!("{REGBLOCK_PREFIX}{user}")
}

/// Blocks `user` for `ttl`: their REGISTERs get `403 Blocked` on every replica, as after the
/// auth stage's failure block (which writes the same key); the value records why (`auth`).
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
                ip: l.key.strip_prefix(BAN_PREFIX)?.to_owned(),
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
