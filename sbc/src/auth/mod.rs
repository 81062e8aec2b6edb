//! The auth stage (docs/architecture.md, step 6): digest authentication of REGISTER and
//! initial INVITE (RFC 7616, RFC 2617, RFC 8760) against ha1 credentials in the store.
//!
//! Nonces are signed with the secret all replicas share (see [`digest::NonceKey`]), so a
//! challenge from one replica is answered at any other, and a challenge costs no store
//! access. Checking credentials is one store round trip ([`Store::batch`]): the user's
//! block, the credentials hash (at the configured `credentialsKey`, without the cluster's
//! key prefix) and the nonce count go together.
//!
//! Nonce counts: "highest nc wins" (RFC 7616 section 3.4). The store keeps, per nonce, the
//! highest nc seen and raises it atomically ([`Op::MaxAdvance`]); a request whose nc is not
//! above it is a replay. There is no out-of-order window: UDP retransmissions never reach a
//! stage (the transaction layer absorbs them), and a UA sends its requests on one nonce one
//! after the other, so a refused count only costs the UA a fresh challenge. The record lives
//! as long as its nonce can be valid. Because the count is raised in the same round trip
//! that fetches the credentials, a request with a wrong response also raises it; only a
//! holder of the nonce (the UA it was sent to, or someone reading its traffic) can do that.
//!
//! Blocks are keyed on what the sender cannot borrow from someone else:
//! - failed attempts (wrong response, unknown user, replayed count) are counted per *source
//!   address* (`{prefix}authfail:{ip}`) and block that source (`{prefix}srcblock:{ip}`): one
//!   more round trip, only on failures. Nobody can lock a user out by sending wrong
//!   passwords in their name;
//! - REGISTER floods (the access list's `registerFlood`) are counted per *authenticated*
//!   user, after the credentials verify (`{prefix}regflood:{user}`), and block that user
//!   (`{prefix}regblock:{user}`): only the user's own devices can get them blocked.
//!
//! Identity: with `checkIdentity` (the default) the From user (and the To user of a
//! REGISTER) must be the digest username, as Kamailio's `auth_check(..., "1")`; otherwise
//! `403 Forbidden (From user is not the authenticated user)`.

pub mod digest;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kubesbc_crds::policy::{
    AuthConfig, Challenge, DEFAULT_CREDENTIALS_KEY, DigestAlgorithm, KeyPart, parse_key_template,
};

use crate::cidr::Cidr;
use crate::pipeline::{Admission, BoxFuture, Refusal, RequestContext, Stage, Verdict};
use crate::sip::uri::{Uri, name_addr_uri};
use crate::sip::{HeaderName, Message, Method};
use crate::store::keys;
use crate::store::{FloodHit, FloodOutcome, Op, OpResult, Store};
use crate::throttle::Clock;
use digest::{NonceKey, NonceState};
use kubesbc_crds::policy::FloodLimit;
pub use metrics::{AuthMetrics, AuthResult, AuthTrip};

/// Longest username accepted (it becomes part of store keys).
const MAX_USERNAME: usize = 128;

/// Whether the configuration's auth stage authenticates `method` (for stages that defer to
/// it, such as the guard's REGISTER-flood count).
pub fn authenticates(cfg: &kubesbc_crds::config::SbcConfig, method: &str) -> bool {
    cfg.auth
        .as_ref()
        .is_some_and(|a| a.methods.contains_key(method))
}

/// One piece of the credentials key template, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    User,
    Domain,
}

/// The digest authentication stage.
pub struct AuthStage {
    cfg: AuthConfig,
    methods: Vec<(Vec<u8>, Challenge)>,
    trusted: Vec<Cidr>,
    key: NonceKey,
    credentials_key: Vec<Part>,
    store: Arc<dyn Store>,
    prefix: String,
    clock: Clock,
    metrics: Option<AuthMetrics>,
    register_flood: Option<FloodLimit>,
}

impl std::fmt::Debug for AuthStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStage")
            .field("realm", &self.cfg.realm)
            .field("methods", &self.cfg.methods)
            .finish_non_exhaustive()
    }
}

/// The outcome of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Verified.
    Pass,
    /// Not verified; the result says how it is answered and whether it counts as a failure.
    Fail(AuthResult),
}

impl AuthStage {
    /// A stage for the `auth` section (validated); `prefix` is prepended to the keys the
    /// stage writes (empty when the store applies the cluster's prefix itself).
    pub fn new(cfg: AuthConfig, store: Arc<dyn Store>, prefix: &str, clock: Clock) -> AuthStage {
        let methods = cfg
            .methods
            .iter()
            .map(|(m, c)| (m.as_bytes().to_vec(), *c))
            .collect();
        let trusted = cfg
            .trusted_sources
            .iter()
            .filter_map(|c| Cidr::parse(c))
            .collect();
        let key = NonceKey::new(
            cfg.nonce_secret.as_bytes(),
            u64::from(cfg.nonce_lifetime_secs),
        );
        // Validation refused a bad template; the default keeps an unvalidated one harmless.
        let template = cfg.credentials_template();
        let parts = parse_key_template(&template)
            .or_else(|_| parse_key_template(DEFAULT_CREDENTIALS_KEY))
            .unwrap_or_default();
        let credentials_key = parts
            .into_iter()
            .map(|p| match p {
                KeyPart::Text(t) => Part::Text(t.to_owned()),
                KeyPart::User => Part::User,
                KeyPart::Domain => Part::Domain,
            })
            .collect();
        AuthStage {
            cfg,
            methods,
            trusted,
            key,
            credentials_key,
            store,
            prefix: prefix.to_owned(),
            clock,
            metrics: None,
            register_flood: None,
        }
    }

    /// Counts the REGISTERs of each authenticated user against `limit` (the access list's
    /// `registerFlood`), blocking the user past it.
    pub fn with_register_flood(mut self, limit: Option<FloodLimit>) -> AuthStage {
        self.register_flood = limit;
        self
    }

    /// Counts results and store round trips in `metrics`.
    pub fn with_metrics(mut self, metrics: AuthMetrics) -> AuthStage {
        self.metrics = Some(metrics);
        self
    }

    fn count(&self, method: Method, r: AuthResult) {
        if let Some(m) = &self.metrics {
            m.result(method, r);
        }
    }

    fn trip(&self, t: AuthTrip) {
        if let Some(m) = &self.metrics {
            m.trip(t);
        }
    }

    /// The realm of a request: the configured one or the From URI's host.
    fn realm<'a>(&'a self, req: &'a Message) -> Option<&'a [u8]> {
        if let Some(r) = &self.cfg.realm {
            return Some(r.as_bytes());
        }
        let from = req.header_value(HeaderName::From)?;
        let host = Uri::parse(name_addr_uri(from))?.host;
        (!host.is_empty()
            && host.len() <= 255
            && host.iter().all(|c| c.is_ascii_graphic() && *c != b'"'))
        .then_some(host)
    }

    /// 401/407 with one challenge per configured algorithm and a fresh nonce.
    fn challenge(&self, kind: Challenge, realm: &[u8], stale: bool) -> Verdict {
        let nonce = self.key.issue(self.clock.now_secs(), fastrand::u64(..));
        let (code, reason, header) = match kind {
            Challenge::Www => (401, "Unauthorized", "WWW-Authenticate"),
            Challenge::Proxy => (407, "Proxy Authentication Required", "Proxy-Authenticate"),
        };
        let mut r = Refusal::new(code, reason);
        for alg in &self.cfg.algorithms {
            let mut v = Vec::with_capacity(160 + realm.len());
            v.extend_from_slice(b"Digest realm=\"");
            v.extend_from_slice(realm);
            v.extend_from_slice(b"\", nonce=\"");
            v.extend_from_slice(&nonce);
            v.extend_from_slice(b"\", algorithm=");
            v.extend_from_slice(digest::algorithm_name(*alg).as_bytes());
            v.extend_from_slice(b", qop=\"auth\"");
            if stale {
                v.extend_from_slice(b", stale=true");
            }
            r = r.with_header(header, v);
        }
        Verdict::Reply(r)
    }

    /// A key the stage owns: the prefix, `kind` and `rest`.
    fn key(&self, kind: &str, rest: &str) -> String {
        keys::join(&self.prefix, kind, rest)
    }

    /// The credentials key of `user` in `domain`, as provisioned (no prefix).
    fn credentials_key(&self, user: &str, domain: &str) -> String {
        let mut k = String::with_capacity(64);
        for p in &self.credentials_key {
            k.push_str(match p {
                Part::Text(t) => t,
                Part::User => user,
                Part::Domain => domain,
            });
        }
        k
    }

    async fn decide(
        &self,
        req: &Message,
        method: Method,
        kind: Challenge,
        ip: std::net::IpAddr,
        admission: &mut Admission,
    ) -> Verdict {
        let Some(realm) = self.realm(req) else {
            self.count(method, AuthResult::Malformed);
            return Verdict::Reply(Refusal::new(400, "Bad From URI"));
        };
        let header = match kind {
            Challenge::Www => HeaderName::Authorization,
            Challenge::Proxy => HeaderName::ProxyAuthorization,
        };
        // The credentials meant for our realm (a UA may carry others for later hops).
        let creds = req
            .headers
            .iter()
            .filter(|h| h.name == header)
            .filter_map(|h| digest::parse_credentials(req.slice(h.value)))
            .find(|c| c.realm == realm);
        let Some(c) = creds else {
            self.count(method, AuthResult::Challenged);
            return self.challenge(kind, realm, false);
        };
        let result = match self.verify(req, &c, realm, ip).await {
            Check::Pass => {
                // `verify` only passes usernames that are valid key material.
                let user = std::str::from_utf8(c.username).unwrap_or("");
                if let Some(refusal) = self.identity_mismatch(req, method, c.username) {
                    self.count(method, AuthResult::Rejected);
                    tracing::info!(user, reason = %refusal.reason, "auth: identity mismatch");
                    return Verdict::Reply(refusal);
                }
                if method == Method::Register && self.register_flooded(user).await {
                    self.count(method, AuthResult::Blocked);
                    return Verdict::Reply(Refusal::new(403, "Blocked"));
                }
                self.count(method, AuthResult::Accepted);
                admission.strip.push(header);
                return Verdict::Continue;
            }
            Check::Fail(r) => r,
        };
        self.count(method, result);
        match result {
            AuthResult::Stale => self.challenge(kind, realm, true),
            AuthResult::Blocked => Verdict::Reply(Refusal::new(403, "Blocked")),
            AuthResult::Unavailable => Verdict::Reply(
                Refusal::new(503, "Authentication Unavailable").with_header("Retry-After", "5"),
            ),
            AuthResult::Rejected | AuthResult::UnknownUser | AuthResult::Replayed => {
                if self.count_failure(ip).await {
                    Verdict::Reply(Refusal::new(403, "Blocked"))
                } else {
                    self.challenge(kind, realm, false)
                }
            }
            _ => self.challenge(kind, realm, false),
        }
    }

    /// With `checkIdentity`, the refusal of a request whose From user (or To user, for a
    /// REGISTER) is not the digest username.
    fn identity_mismatch(&self, req: &Message, method: Method, username: &[u8]) -> Option<Refusal> {
        if !self.cfg.check_identity {
            return None;
        }
        let user_of = |name: HeaderName| {
            let v = req.header_value(name)?;
            let user = Uri::parse(name_addr_uri(v))?.user?;
            // User parameters (`;x=y`) and a password part are not part of the name.
            user.split(|c| *c == b';' || *c == b':').next()
        };
        if user_of(HeaderName::From) != Some(username) {
            return Some(Refusal::new(
                403,
                "Forbidden (From user is not the authenticated user)",
            ));
        }
        if method == Method::Register && user_of(HeaderName::To) != Some(username) {
            return Some(Refusal::new(
                403,
                "Forbidden (To user is not the authenticated user)",
            ));
        }
        None
    }

    /// Counts an authenticated user's REGISTER; true when the user is (now) blocked.
    async fn register_flooded(&self, user: &str) -> bool {
        let Some(f) = &self.register_flood else {
            return false;
        };
        let (counter, block) = (
            self.key(keys::REGFLOOD_PREFIX, user),
            self.key(keys::REGBLOCK_PREFIX, user),
        );
        self.trip(AuthTrip::RegisterFlood);
        match crate::guard::register_flood_hit(self.store.as_ref(), f, &counter, &block).await {
            Ok(FloodOutcome::Banned { new, .. }) => {
                if new {
                    tracing::warn!(user, secs = f.ban_secs, "user blocked: REGISTER flood");
                    if let Some(m) = &self.metrics {
                        m.user_blocked();
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

    /// Checks credentials against the store, in one round trip.
    async fn verify(
        &self,
        req: &Message,
        c: &digest::Credentials<'_>,
        realm: &[u8],
        ip: std::net::IpAddr,
    ) -> Check {
        use AuthResult::{BadNonce, Blocked, Malformed, Rejected, Replayed, Stale, UnknownUser};
        let Some((alg, sess)) = digest::algorithm(c.algorithm) else {
            return Check::Fail(Malformed);
        };
        if !self.cfg.algorithms.contains(&alg) {
            return Check::Fail(Malformed);
        }
        let (Some(qop), Some(nc), Some(cnonce)) = (c.qop, c.nc, c.cnonce) else {
            return Check::Fail(Malformed);
        };
        // nc is 8 hex digits (RFC 7616 section 3.4); counting starts at 1.
        let nc_value = std::str::from_utf8(nc)
            .ok()
            .filter(|t| t.len() == 8 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| u32::from_str_radix(t, 16).ok())
            .filter(|n| *n > 0);
        let Some(nc_value) = nc_value else {
            return Check::Fail(Malformed);
        };
        if !qop.eq_ignore_ascii_case(b"auth") || cnonce.is_empty() {
            return Check::Fail(Malformed);
        }
        match self.key.check(c.nonce, self.clock.now_secs()) {
            NonceState::Valid => {}
            NonceState::Stale => return Check::Fail(Stale),
            NonceState::Invalid => return Check::Fail(BadNonce),
        }
        let Some(user) = std::str::from_utf8(c.username).ok().filter(|u| {
            u.len() <= MAX_USERNAME && u.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80)
        }) else {
            return Check::Fail(Malformed);
        };
        // The nonce is ours (checked above), so hex; the realm is printable.
        let nonce = std::str::from_utf8(c.nonce).unwrap_or("");
        let domain = std::str::from_utf8(realm).unwrap_or("");
        // The nc record must outlive every moment its nonce is accepted.
        let nc_ttl =
            Duration::from_secs(u64::from(self.cfg.nonce_lifetime_secs) + digest::MAX_SKEW_SECS);
        let ops = [
            Op::Get(self.key(keys::REGBLOCK_PREFIX, user)),
            Op::HashGetAllUnprefixed(self.credentials_key(user, domain)),
            Op::MaxAdvance(
                self.key(keys::AUTH_NONCE_PREFIX, nonce),
                u64::from(nc_value),
                nc_ttl,
            ),
            Op::Get(self.key(keys::SRCBLOCK_PREFIX, &ip.to_canonical().to_string())),
        ];
        self.trip(AuthTrip::Verify);
        let answers = match self.store.batch(&ops).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "auth: store unavailable");
                return Check::Fail(AuthResult::Unavailable);
            }
        };
        let (blocked, fields, nc_before, source_blocked) = match answers.as_slice() {
            [
                Ok(OpResult::Value(b)),
                Ok(OpResult::Fields(f)),
                Ok(OpResult::Count(n)),
                Ok(OpResult::Value(s)),
            ] => (b.is_some(), f, *n, s.is_some()),
            other => {
                let e = other.iter().find_map(|r| r.as_ref().err());
                tracing::warn!(error = ?e, "auth: store unavailable");
                return Check::Fail(AuthResult::Unavailable);
            }
        };
        // A source blocked for failed attempts gets no further guesses.
        if source_blocked {
            return Check::Fail(Blocked);
        }
        if fields.is_empty() {
            return Check::Fail(UnknownUser);
        }
        if c.uri != req.request_uri() {
            return Check::Fail(Rejected);
        }
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v): &(String, Bytes)| v)
        };
        let candidates = match alg {
            DigestAlgorithm::Md5 => [field("ha1"), field("ha1b")],
            DigestAlgorithm::Sha256 => [field("ha1sha256"), None],
        };
        let method = req.method_token();
        let mut ok = false;
        for ha1 in candidates.iter().flatten() {
            let want = digest::response(alg, sess, ha1, c.nonce, nc, cnonce, method, c.uri);
            ok |= digest::response_matches(&want, c.response);
        }
        if !ok {
            return Check::Fail(Rejected);
        }
        // The user's own block (a REGISTER flood of theirs) applies to requests that prove
        // to be theirs only, so nobody else's requests can reveal or extend it.
        if blocked {
            return Check::Fail(Blocked);
        }
        if nc_before >= i64::from(nc_value) {
            tracing::info!(
                user,
                nc = nc_value,
                highest = nc_before,
                "auth: nonce count replayed"
            );
            return Check::Fail(Replayed);
        }
        Check::Pass
    }

    /// Counts a failed attempt from `ip` in one round trip; true when it blocked the source.
    async fn count_failure(&self, ip: std::net::IpAddr) -> bool {
        let Some(b) = &self.cfg.failure_block else {
            return false;
        };
        let ip = ip.to_canonical().to_string();
        let (counter, block) = (
            self.key(keys::AUTH_FAIL_PREFIX, &ip),
            self.key(keys::SRCBLOCK_PREFIX, &ip),
        );
        let hit = FloodHit {
            counter_key: &counter,
            ban_key: &block,
            limit: u64::from(b.max_failures),
            window: Duration::from_secs(u64::from(b.window_secs)),
            ban_ttl: Duration::from_secs(u64::from(b.block_secs)),
            ban_value: Bytes::from_static(b"auth-failures"),
            hits: 1,
        };
        self.trip(AuthTrip::CountFailure);
        match self.store.flood_hit(hit).await {
            Ok(FloodOutcome::Banned { new, .. }) => {
                if new {
                    tracing::info!(
                        source = %ip,
                        secs = b.block_secs,
                        "auth: too many failures, source blocked"
                    );
                    if let Some(m) = &self.metrics {
                        m.user_blocked();
                    }
                }
                true
            }
            Ok(FloodOutcome::Allowed { .. }) => false,
            Err(e) => {
                tracing::warn!(error = %e, "auth: cannot count a failure");
                false
            }
        }
    }
}

impl Stage for AuthStage {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn check<'a>(
        &'a self,
        req: &'a Message,
        cx: &'a RequestContext,
        admission: &'a mut Admission,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            if cx.in_dialog {
                return Verdict::Continue;
            }
            let token = req.method_token();
            let Some(kind) = self
                .methods
                .iter()
                .find(|(m, _)| m.as_slice() == token)
                .map(|(_, k)| *k)
            else {
                return Verdict::Continue;
            };
            let ip = cx.peer.addr.ip();
            if self.trusted.iter().any(|c| c.contains(ip)) {
                self.count(cx.method, AuthResult::Exempt);
                return Verdict::Continue;
            }
            self.decide(req, cx.method, kind, ip, admission).await
        })
    }
}

#[cfg(test)]
mod tests;
