//! The throttle stage (docs/architecture.md, step 7): TenantThrottle limits by a header,
//! shared by every replica through the store.
//!
//! Per request, all counters a decision needs (of every throttle) are updated and read in one
//! store batch (one round trip), then the decision is taken; counts of a refused request are given back
//! in the background, so a tenant over its limit still gets its limit through.
//!
//! - `requestsPerSecond` + `burst`: a sliding window of `burst / rate` seconds allowing
//!   `burst` requests (the current window's counter plus the previous one, weighted by how
//!   much of it still overlaps).
//! - `callsPerSecond`: initial INVITEs per wall-clock second (a fixed window all replicas
//!   share, so N per second in total).
//! - `concurrentCalls`: open calls counted in time buckets of a quarter of
//!   `dialogTimeoutSecs`; a call is released by its non-2xx final response, or by its BYE
//!   (the dialog key `thr:...:dlg:<Call-ID>` remembers tenant and bucket), and a bucket
//!   expires `dialogTimeoutSecs` after it ends, so a lost BYE frees its capacity at the latest
//!   then, even while the tenant keeps calling.

mod clock;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kubesbc_crds::policy::{MissingTenant, TenantLimit, ThrottleConfig};

use crate::pipeline::{Admission, BoxFuture, Refusal, RequestContext, Stage, Verdict};
use crate::sip::{Message, Method};
use crate::store::{
    DialogBuckets, Op, OpResult, Release, Releaser, Store, StoreError, keys, parse_count,
};

pub use clock::Clock;

/// Longest tenant id accepted (it becomes part of store keys).
const MAX_TENANT: usize = 64;
/// Life of a calls-per-second counter: its second and the next.
const CPS_WINDOW: Duration = Duration::from_secs(2);

/// The throttle stage: every configured TenantThrottle, all of which must admit a request.
pub struct ThrottleStage {
    throttles: Vec<Throttle>,
    store: Arc<dyn Store>,
    prefix: String,
    clock: Clock,
    releaser: Releaser,
}

impl std::fmt::Debug for ThrottleStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleStage")
            .field("throttles", &self.throttles.len())
            .finish_non_exhaustive()
    }
}

struct Throttle {
    cfg: ThrottleConfig,
    /// The concurrency buckets of its `dialogTimeoutSecs`.
    buckets: DialogBuckets,
    retry_after: Vec<u8>,
    /// Whether any tenant (or the default) limits open calls: BYEs need a look-up then.
    counts_calls: bool,
}

/// Who a request is counted for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tenant<'a> {
    /// Not throttled by this throttle.
    Exempt,
    /// Refused: no tenant and the policy says so.
    Reject,
    /// Counted under this key segment with these limits.
    Counted(String, &'a TenantLimit),
}

/// Where one throttle's counters sit in the decision's batch, and what to compare them with.
#[derive(Debug, Default)]
struct Plan {
    /// Sliding window: index of the current window's increment (the previous window's read
    /// follows it), its key and TTL, the previous window's weight, and the burst.
    rps: Option<(usize, String, Duration, f64, u64)>,
    /// Calls per second: index of the increment, its key, the limit.
    cps: Option<(usize, String, u64)>,
    /// Concurrent calls: index of the bucket increment (the older buckets' reads and the
    /// dialog key's write follow it), the limit, bucket key and TTL, older buckets, dialog key.
    cc: Option<(usize, u64, String, Duration, usize, String)>,
}

/// The outcome of one throttle for one request.
#[derive(Debug, Default)]
struct Outcome {
    over: bool,
    /// Counter changes to give back when the request is refused after all.
    undo: Vec<Op>,
}

fn valid_tenant(v: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(v).ok()?;
    (!s.is_empty()
        && s.len() <= MAX_TENANT
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!%*`'~+@".contains(&b)))
    .then_some(s)
}

impl ThrottleStage {
    /// A stage for the configured throttles; `prefix` is the store key prefix of the cluster.
    pub fn new(
        throttles: &[ThrottleConfig],
        store: Arc<dyn Store>,
        prefix: &str,
        clock: Clock,
    ) -> ThrottleStage {
        let throttles = throttles
            .iter()
            .map(|cfg| Throttle {
                buckets: DialogBuckets::new(cfg.dialog_timeout_secs),
                retry_after: cfg.response.retry_after_secs.to_string().into_bytes(),
                counts_calls: cfg
                    .tenants
                    .values()
                    .chain(cfg.default.as_ref())
                    .any(|l| l.concurrent_calls.is_some()),
                cfg: cfg.clone(),
            })
            .collect();
        ThrottleStage {
            throttles,
            releaser: Releaser::start(store.clone()),
            store,
            prefix: prefix.to_owned(),
            clock,
        }
    }

    fn key(&self, t: &Throttle, kind: &str, seg: &str, n: u64) -> String {
        keys::throttle_window(&self.prefix, &t.cfg.name, kind, seg, n)
    }

    fn dialog_key(&self, t: &Throttle, call_id: &[u8]) -> String {
        keys::throttle_dialog(&self.prefix, &t.cfg.name, call_id)
    }

    fn tenant<'a>(&self, t: &'a Throttle, req: &Message) -> Tenant<'a> {
        let id = req
            .header_value_named(&t.cfg.header)
            .and_then(|v| valid_tenant(v.trim_ascii()));
        match id {
            Some(id) => match t.cfg.tenants.get(id).or(t.cfg.default.as_ref()) {
                Some(l) => Tenant::Counted(format!("t={id}"), l),
                None => Tenant::Exempt,
            },
            None => match t.cfg.missing_tenant {
                MissingTenant::Allow => Tenant::Exempt,
                MissingTenant::Reject => Tenant::Reject,
                MissingTenant::Default => match &t.cfg.default {
                    Some(l) => Tenant::Counted("none".to_owned(), l),
                    None => Tenant::Exempt,
                },
            },
        }
    }

    /// Appends the counter operations of one throttle for a request to `ops`.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        t: &Throttle,
        seg: &str,
        limit: &TenantLimit,
        req: &Message,
        counted: bool,
        new_call: bool,
        now_ms: u64,
        ops: &mut Vec<Op>,
    ) -> Plan {
        let mut plan = Plan::default();
        // requestsPerSecond + burst: sliding window.
        if let Some(rate) = limit.requests_per_second.filter(|_| counted) {
            let burst = u64::from(limit.burst.unwrap_or(rate).max(rate));
            let win_ms = (burst * 1000).div_ceil(u64::from(rate)).max(1);
            let idx = now_ms / win_ms;
            let cur = self.key(t, "rps", seg, idx);
            let prev = self.key(t, "rps", seg, idx.saturating_sub(1));
            let weight = 1.0 - (now_ms % win_ms) as f64 / win_ms as f64;
            let ttl = Duration::from_millis(win_ms * 2);
            plan.rps = Some((ops.len(), cur.clone(), ttl, weight, burst));
            ops.push(Op::IncrWindow(cur, ttl));
            ops.push(Op::Get(prev));
        }
        // callsPerSecond: the wall-clock second.
        if let Some(n) = limit.calls_per_second.filter(|_| new_call) {
            let key = self.key(t, "cps", seg, now_ms / 1000);
            plan.cps = Some((ops.len(), key.clone(), u64::from(n)));
            ops.push(Op::IncrWindow(key, CPS_WINDOW));
        }
        // concurrentCalls: current bucket plus the ones still alive.
        if let Some((n, call_id)) = limit
            .concurrent_calls
            .filter(|_| new_call)
            .and_then(|n| Some((n, req.call_id()?)))
        {
            let b = t.buckets.current(now_ms);
            let cur = self.key(t, "cc", seg, b);
            let ttl = t.buckets.ttl(b, now_ms);
            let dlg = self.dialog_key(t, call_id);
            let at = ops.len();
            ops.push(Op::IncrBy(cur.clone(), 1, ttl));
            let before = ops.len();
            ops.extend(
                t.buckets
                    .older(b)
                    .map(|ob| Op::Get(self.key(t, "cc", seg, ob))),
            );
            let older = ops.len() - before;
            ops.push(Op::SetEx(
                dlg.clone(),
                Bytes::from(format!("{b}|{seg}")),
                ttl,
            ));
            plan.cc = Some((at, u64::from(n), cur, ttl, older, dlg));
        }
        plan
    }

    /// Takes one throttle's decision from the batch's answers. A failed operation lets the
    /// request through: the store layer falls back and reports it.
    fn evaluate(plan: Plan, res: &[Result<OpResult, StoreError>]) -> Outcome {
        let count = |i: usize| match res.get(i) {
            Some(Ok(OpResult::Count(n))) => Some(*n),
            _ => None,
        };
        let value = |i: usize| match res.get(i) {
            Some(Ok(OpResult::Value(Some(v)))) => parse_count(v),
            _ => 0,
        };
        let mut out = Outcome::default();
        if let Some((i, cur, ttl, weight, burst)) = plan.rps
            && let Some(c) = count(i)
        {
            out.undo.push(Op::IncrBy(cur, -1, ttl));
            let estimate = c as f64 + value(i + 1) as f64 * weight;
            out.over |= estimate > burst as f64;
        }
        if let Some((i, key, n)) = plan.cps
            && let Some(c) = count(i)
        {
            out.undo.push(Op::IncrBy(key, -1, CPS_WINDOW));
            out.over |= u64::try_from(c).unwrap_or(0) > n;
        }
        if let Some((i, n, cur, ttl, older, dlg)) = plan.cc {
            if matches!(res.get(i + 1 + older), Some(Ok(OpResult::Done))) {
                out.undo.push(Op::Del(dlg));
            }
            if let Some(c) = count(i) {
                out.undo.push(Op::IncrBy(cur, -1, ttl));
                let others: u64 = (i + 1..i + 1 + older).map(value).sum();
                out.over |= u64::try_from(c).unwrap_or(0).saturating_add(others) > n;
            }
        }
        out
    }

    /// Gives back counts of a refused request, off the request path.
    fn undo(&self, undo: Vec<Op>) {
        if undo.is_empty() {
            return;
        }
        let store = self.store.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // One round trip; a failure only leaves counts to expire with their TTLs.
        rt.spawn(async move {
            let _ = store.batch(&undo).await;
        });
    }

    /// A call is over: release its concurrency slot, once, whichever replica sees the end.
    fn release(&self, req: &Message) {
        let Some(call_id) = req.call_id() else {
            return;
        };
        let now_ms = self.clock.now_ms();
        let jobs: Vec<Release> = self
            .throttles
            .iter()
            .filter(|t| t.counts_calls)
            .map(|t| {
                t.buckets.release(
                    self.dialog_key(t, call_id),
                    keys::throttle_calls(&self.prefix, &t.cfg.name),
                    now_ms,
                )
            })
            .collect();
        if !jobs.is_empty() {
            self.releaser.send(jobs);
        }
    }
}

impl Stage for ThrottleStage {
    fn name(&self) -> &'static str {
        "throttle"
    }

    fn check<'a>(
        &'a self,
        req: &'a Message,
        cx: &'a RequestContext,
        _admission: &'a mut Admission,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let new_call = cx.method == Method::Invite && !cx.in_dialog;
            let token = req.method_token();
            let now_ms = self.clock.now_ms();
            let mut jobs = Vec::new();
            for t in &self.throttles {
                let counted = t.cfg.methods.iter().any(|m| m.as_bytes() == token);
                if !counted && !new_call {
                    continue;
                }
                match self.tenant(t, req) {
                    Tenant::Exempt => {}
                    Tenant::Reject => {
                        return Verdict::Reply(Refusal::new(403, "Tenant Required"));
                    }
                    Tenant::Counted(seg, limit) => jobs.push((t, seg, limit, counted)),
                }
            }
            if jobs.is_empty() {
                return Verdict::Continue;
            }
            let mut ops = Vec::new();
            let plans: Vec<Plan> = jobs
                .iter()
                .map(|(t, seg, limit, counted)| {
                    self.plan(t, seg, limit, req, *counted, new_call, now_ms, &mut ops)
                })
                .collect();
            // One round trip for the whole decision. A store that does not answer lets the
            // request through (the fallback store answers locally instead).
            let results = if ops.is_empty() {
                Vec::new()
            } else {
                self.store.batch_owned(ops).await.unwrap_or_default()
            };
            let outcomes: Vec<Outcome> = plans
                .into_iter()
                .map(|p| Self::evaluate(p, &results))
                .collect();
            let refused = jobs
                .iter()
                .zip(&outcomes)
                .find(|(_, o)| o.over)
                .map(|((t, ..), _)| *t);
            let Some(t) = refused else {
                return Verdict::Continue;
            };
            self.undo(outcomes.into_iter().flat_map(|o| o.undo).collect());
            let mut r = Refusal::new(t.cfg.response.code, reason(t.cfg.response.code));
            if t.cfg.response.retry_after_secs > 0 {
                r = r.with_header("Retry-After", t.retry_after.clone());
            }
            Verdict::Reply(r)
        })
    }

    fn on_final(&self, req: &Message, cx: &RequestContext, code: u16) {
        if cx.method == Method::Invite && !cx.in_dialog && !(200..300).contains(&code) {
            self.release(req);
        }
    }

    fn on_dialog_end(&self, req: &Message, _cx: &RequestContext) {
        self.release(req);
    }
}

/// The reason phrase of a throttle answer.
fn reason(code: u16) -> &'static str {
    match code {
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        486 => "Busy Here",
        480 => "Temporarily Unavailable",
        403 => "Forbidden",
        _ => "Rate Limited",
    }
}

#[cfg(test)]
mod tests;
