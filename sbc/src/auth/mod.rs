//! The auth stage (DESIGN.md step 4): digest authentication of REGISTER and initial INVITE
//! (RFC 7616, RFC 2617, RFC 8760) against ha1 credentials in the store.
//!
//! Per request at most one store round trip decides: the user's block, the credentials hash
//! and the nonce-count record are asked for together. Nonces are signed with the secret all
//! replicas share (see [`digest::NonceKey`]), so a challenge from one replica is answered at
//! any other. Each `(nonce, nc)` pair is accepted once; since a nonce is only valid for its
//! lifetime and the record lives as long, a replayed request is refused for as long as its
//! nonce could be used. Failed attempts count toward the user's block
//! (`{prefix}regblock:{user}`, shared with the guard's REGISTER-flood block).

pub mod cidr;
pub mod digest;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kubesbc_crds::policy::{AuthConfig, Challenge, DigestAlgorithm};

use crate::pipeline::{Admission, BoxFuture, Refusal, RequestContext, Stage, Verdict};
use crate::sip::uri::{Uri, name_addr_uri};
use crate::sip::{HeaderName, Message};
use crate::store::Store;
use crate::throttle::Clock;
use cidr::Cidr;
use digest::{NonceKey, NonceState};

/// Longest username accepted (it becomes part of store keys).
const MAX_USERNAME: usize = 128;

/// The digest authentication stage.
pub struct AuthStage {
    cfg: AuthConfig,
    methods: Vec<(Vec<u8>, Challenge)>,
    trusted: Vec<Cidr>,
    key: NonceKey,
    store: Arc<dyn Store>,
    prefix: String,
    clock: Clock,
}

impl std::fmt::Debug for AuthStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStage")
            .field("realm", &self.cfg.realm)
            .field("methods", &self.cfg.methods)
            .finish_non_exhaustive()
    }
}

/// Why a request with credentials did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Wrong password, unknown user, wrong URI: counts toward the user's block.
    Counted,
    /// Unusable credentials (no qop, unknown nonce, replay): challenge again, not counted.
    Silent,
    /// An expired nonce of ours: challenge with `stale=true`.
    Stale,
}

impl AuthStage {
    /// A stage for the `auth` section; `prefix` is the store key prefix of the cluster.
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
        AuthStage {
            cfg,
            methods,
            trusted,
            key,
            store,
            prefix: prefix.to_owned(),
            clock,
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

    fn key(&self, kind: &str, rest: &[&str]) -> String {
        let mut k = String::with_capacity(self.prefix.len() + kind.len() + 64);
        k.push_str(&self.prefix);
        k.push_str(kind);
        for (i, r) in rest.iter().enumerate() {
            if i > 0 {
                k.push(':');
            }
            k.push_str(r);
        }
        k
    }

    async fn decide(&self, req: &Message, kind: Challenge, admission: &mut Admission) -> Verdict {
        let Some(realm) = self.realm(req) else {
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
            return self.challenge(kind, realm, false);
        };
        let now = self.clock.now_secs();
        let failure = match self.verify(req, &c, now).await {
            Ok(()) => {
                admission.strip.push(header);
                return Verdict::Continue;
            }
            Err(Err(status)) => return status,
            Err(Ok(f)) => f,
        };
        match failure {
            Failure::Stale => self.challenge(kind, realm, true),
            Failure::Silent => self.challenge(kind, realm, false),
            Failure::Counted => {
                // `verify` only counts usernames that are valid key material.
                let user = std::str::from_utf8(c.username).unwrap_or("");
                if self.count_failure(user).await {
                    tracing::info!(user, "auth: too many failures, user blocked");
                    Verdict::Reply(Refusal::new(403, "Blocked"))
                } else {
                    self.challenge(kind, realm, false)
                }
            }
        }
    }

    /// Checks credentials. `Err(Ok(failure))`: challenge again; `Err(Err(verdict))`: answer
    /// with that verdict (blocked user, store down).
    async fn verify(
        &self,
        req: &Message,
        c: &digest::Credentials<'_>,
        now: u64,
    ) -> Result<(), Result<Failure, Verdict>> {
        let Some((alg, sess)) = digest::algorithm(c.algorithm) else {
            return Err(Ok(Failure::Silent));
        };
        if !self.cfg.algorithms.contains(&alg) {
            return Err(Ok(Failure::Silent));
        }
        let (Some(qop), Some(nc), Some(cnonce)) = (c.qop, c.nc, c.cnonce) else {
            return Err(Ok(Failure::Silent));
        };
        if !qop.eq_ignore_ascii_case(b"auth")
            || nc.len() != 8
            || !nc.iter().all(u8::is_ascii_hexdigit)
            || cnonce.is_empty()
        {
            return Err(Ok(Failure::Silent));
        }
        match self.key.check(c.nonce, now) {
            NonceState::Valid => {}
            NonceState::Stale => return Err(Ok(Failure::Stale)),
            NonceState::Invalid => return Err(Ok(Failure::Silent)),
        }
        let Some(user) = std::str::from_utf8(c.username).ok().filter(|u| {
            u.len() <= MAX_USERNAME && u.bytes().all(|b| b.is_ascii_graphic() || b >= 0x80)
        }) else {
            return Err(Ok(Failure::Silent));
        };
        // Nonce and nc are hex, checked above: safe as key material.
        let nonce = std::str::from_utf8(c.nonce).unwrap_or("");
        let nc_text = std::str::from_utf8(nc).unwrap_or("");
        let block_key = self.key("regblock:", &[user]);
        let mut sub_key = String::with_capacity(self.cfg.subscriber_prefix.len() + user.len());
        sub_key.push_str(&self.cfg.subscriber_prefix);
        sub_key.push_str(user);
        let nc_key = self.key("authnc:", &[nonce, nc_text]);
        let nc_ttl = Duration::from_secs(u64::from(self.cfg.nonce_lifetime_secs) + 60);
        // One round trip: the three commands go out together.
        let (blocked, sub, seen) = futures::join!(
            self.store.get(&block_key),
            self.store.hash_get_all(&sub_key),
            self.store.incr_window(&nc_key, nc_ttl),
        );
        let (blocked, sub, seen) = match (blocked, sub, seen) {
            (Ok(b), Ok(s), Ok(n)) => (b, s, n),
            (b, s, n) => {
                let e = b.err().or(s.err()).or(n.err());
                tracing::warn!(error = ?e, "auth: store unavailable");
                return Err(Err(Verdict::Reply(
                    Refusal::new(503, "Authentication Unavailable").with_header("Retry-After", "5"),
                )));
            }
        };
        if blocked.is_some() {
            return Err(Err(Verdict::Reply(Refusal::new(403, "Blocked"))));
        }
        if c.uri != req.request_uri() {
            return Err(Ok(Failure::Counted));
        }
        let field = |name: &str| {
            sub.iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v): &(String, Bytes)| v.clone())
        };
        let candidates: [Option<Bytes>; 2] = match alg {
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
            return Err(Ok(Failure::Counted));
        }
        if seen > 1 {
            tracing::info!(user, nc = nc_text, "auth: nonce count replayed");
            return Err(Ok(Failure::Silent));
        }
        Ok(())
    }

    /// Counts a failed attempt; true when the user is now blocked.
    async fn count_failure(&self, user: &str) -> bool {
        let Some(b) = &self.cfg.failure_block else {
            return false;
        };
        let fail_key = self.key("authfail:", &[user]);
        let n = match self
            .store
            .incr_window(&fail_key, Duration::from_secs(u64::from(b.window_secs)))
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "auth: cannot count a failure");
                return false;
            }
        };
        if n <= u64::from(b.max_failures) {
            return false;
        }
        let block_key = self.key("regblock:", &[user]);
        if let Err(e) = self
            .store
            .set_ex(
                &block_key,
                Bytes::from_static(b"1"),
                Duration::from_secs(u64::from(b.block_secs)),
            )
            .await
        {
            tracing::warn!(error = %e, "auth: cannot block a user");
        }
        let _ = self.store.del(&fail_key).await;
        true
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
                return Verdict::Continue;
            }
            self.decide(req, kind, admission).await
        })
    }
}

#[cfg(test)]
mod tests;
