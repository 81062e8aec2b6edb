//! The auth stage's metrics: `sbc_auth_total{method,result}`,
//! `sbc_auth_store_round_trips_total{op}` and `sbc_auth_users_blocked_total`.

use std::sync::{Arc, OnceLock};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::sip::Method;

/// What happened to one request the auth stage looked at (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// No credentials for our realm: challenged.
    Challenged,
    /// Credentials verified: relayed (without them).
    Accepted,
    /// Wrong response or URI (a wrong password): challenged again, counted as a failure.
    Rejected,
    /// An expired nonce of ours: challenged with `stale=true`.
    Stale,
    /// A nonce count not above the highest seen for its nonce: challenged again, counted.
    Replayed,
    /// No credentials stored for the username: challenged again, counted.
    UnknownUser,
    /// The user is blocked (failed attempts or REGISTER flood): 403 Blocked.
    Blocked,
    /// Unusable credentials (no qop=auth, bad nc, unknown algorithm, bad username) or an
    /// unusable From: challenged again (400 for the From), not counted.
    Malformed,
    /// A nonce we did not issue (forged, or signed with another secret: check that every
    /// replica has the same `nonceSecret`): challenged again, not counted.
    BadNonce,
    /// The store did not answer: 503.
    Unavailable,
    /// A trusted source: not challenged.
    Exempt,
}

impl AuthResult {
    /// Every result, in label order.
    pub const ALL: [AuthResult; 11] = [
        AuthResult::Challenged,
        AuthResult::Accepted,
        AuthResult::Rejected,
        AuthResult::Stale,
        AuthResult::Replayed,
        AuthResult::UnknownUser,
        AuthResult::Blocked,
        AuthResult::Malformed,
        AuthResult::BadNonce,
        AuthResult::Unavailable,
        AuthResult::Exempt,
    ];

    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Challenged => "challenged",
            AuthResult::Accepted => "accepted",
            AuthResult::Rejected => "rejected",
            AuthResult::Stale => "stale",
            AuthResult::Replayed => "replayed",
            AuthResult::UnknownUser => "unknown_user",
            AuthResult::Blocked => "blocked",
            AuthResult::Malformed => "malformed",
            AuthResult::BadNonce => "bad_nonce",
            AuthResult::Unavailable => "unavailable",
            AuthResult::Exempt => "exempt",
        }
    }
}

/// Why the auth stage went to the store (the `op` label of the round trips).
#[derive(Debug, Clone, Copy)]
pub enum AuthTrip {
    /// The one round trip verifying credentials: block, credentials and nonce count.
    Verify = 0,
    /// Counting a failed attempt (and blocking the source when over the limit).
    CountFailure = 1,
    /// Counting an authenticated user's REGISTER (`registerFlood`).
    RegisterFlood = 2,
}

const TRIPS: [&str; 3] = ["verify", "count_failure", "register_flood"];

type Series = [[OnceLock<IntCounter>; AuthResult::ALL.len()]; Method::ALL.len()];

/// The auth metrics. Registered once per process (see [`crate::telemetry::Metrics::auth`])
/// and shared by the stages built from every configuration version; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    total: IntCounterVec,
    /// Resolved on first use, so only methods and results that happened are exported, and
    /// after that a request costs one atomic increment.
    series: Arc<Series>,
    trips: [IntCounter; TRIPS.len()],
    blocked: IntCounter,
}

impl AuthMetrics {
    /// Registers the metrics on `registry`.
    pub fn new(registry: &Registry) -> Result<AuthMetrics, prometheus::Error> {
        let total = IntCounterVec::new(
            Opts::new(
                "sbc_auth_total",
                "Requests decided by the auth stage, by method and result",
            ),
            &["method", "result"],
        )?;
        registry.register(Box::new(total.clone()))?;
        let trips = IntCounterVec::new(
            Opts::new(
                "sbc_auth_store_round_trips_total",
                "Store round trips made by the auth stage, by purpose",
            ),
            &["op"],
        )?;
        registry.register(Box::new(trips.clone()))?;
        let blocked = IntCounter::new(
            "sbc_auth_users_blocked_total",
            "Users blocked by this replica after too many failed authentications",
        )?;
        registry.register(Box::new(blocked.clone()))?;
        Ok(AuthMetrics {
            total,
            series: Arc::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| OnceLock::new())
            })),
            trips: TRIPS.map(|t| trips.with_label_values(&[t])),
            blocked,
        })
    }

    /// Counts one request's result.
    pub fn result(&self, method: Method, result: AuthResult) {
        let m = method as usize;
        // Both enums are declared in the order of their ALL arrays.
        let r = result as usize;
        if let Some(slot) = self.series.get(m).and_then(|row| row.get(r)) {
            slot.get_or_init(|| {
                self.total
                    .with_label_values(&[method.as_str(), result.label()])
            })
            .inc();
        }
    }

    /// Counts one store round trip.
    pub fn trip(&self, trip: AuthTrip) {
        self.trips[trip as usize].inc();
    }

    /// Counts a user blocked.
    pub fn user_blocked(&self) {
        self.blocked.inc();
    }
}
