//! The guard, throttle, media and TLS sections of the sbc configuration (`sbc.yaml`).
//!
//! They live beside [`crate::config`] because the CRDs share most of these types directly:
//! an AccessList's flood limits, a TenantThrottle's per-tenant limits and a DispatcherSet's
//! Service source are the very structs the sbc reads. Only what refers to a Secret differs
//! (the CRD names the Secret, the rendered config carries the value).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Transport};

/// Destinations of a dispatcher set taken from a Kubernetes Service: the sbc watches the
/// Service's EndpointSlices and keeps the set in step with its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSource {
    /// Namespace of the Service. Absent in a DispatcherSet: the DispatcherSet's namespace
    /// (the operator always writes it into the rendered config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// Name of the Service.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Name of the Service port SIP is sent to (`sip`, `sip-udp`, ...).
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub port: String,
    /// Transport used towards the endpoints.
    #[serde(default = "default_transport")]
    pub transport: Transport,
}

fn default_transport() -> Transport {
    Transport::Udp
}

/// What a matching access rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccessAction {
    /// Let the request through (later rules are not consulted).
    #[default]
    Allow,
    /// Answer with the rule's response code.
    Deny,
}

/// Pike-like flood detection per source IP: more than `requests` in `windowSecs` bans the
/// source for `banSecs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FloodLimit {
    /// Requests allowed per window.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests: u32,
    /// Length of the window in seconds.
    #[serde(default = "default_window_secs")]
    #[schemars(range(min = 1, max = 3600))]
    pub window_secs: u32,
    /// Seconds a flooding source stays banned.
    #[serde(default = "default_ban_secs")]
    #[schemars(range(min = 1, max = 86400))]
    pub ban_secs: u32,
}

fn default_window_secs() -> u32 {
    2
}
fn default_ban_secs() -> u32 {
    300
}

/// One access rule of the rendered config. A rule matches a request when every criterion it
/// lists matches (an empty list matches anything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    /// What happens to a matching request.
    pub action: AccessAction,
    /// Source CIDRs (`10.0.0.0/8`, `2001:db8::/32`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Case-insensitive substrings of the User-Agent (`friendly-scanner`, `sipvicious`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_agents: Vec<String>,
    /// Domains of the From URI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from_domains: Vec<String>,
    /// Headers a request must carry with exactly this value; the rule matches a request that
    /// lacks one of them or carries another value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_headers: Vec<HeaderValue>,
    /// SIP methods the rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Response code of a deny.
    #[serde(default = "default_deny_code")]
    pub response_code: u16,
}

/// A header name with its required value: given inline, or in a file (the operator mounts
/// the Secret it names there, so the value never sits in the ConfigMap). Exactly one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    /// Header name.
    pub name: String,
    /// Required value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// File holding the required value (trailing newlines are not part of it); re-read when
    /// it changes, so a rotated Secret takes effect without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_file: Option<String>,
}

/// Default response code of a deny rule.
pub fn default_deny_code() -> u16 {
    403
}

/// One AccessList as the sbc applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessListConfig {
    /// `namespace/name` of the AccessList it came from, for logs and metrics.
    pub name: String,
    /// Rules in order; the first match decides.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
    /// What happens when no rule matches.
    #[serde(default)]
    pub default_action: AccessAction,
    /// Flood detection per source IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodLimit>,
    /// REGISTER flood detection per user (To URI): `requests` REGISTERs per window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_flood: Option<FloodLimit>,
    /// Source CIDRs exempt from flood detection and bans (besides the dispatcher's
    /// destinations, which always are).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted: Vec<String>,
    /// Deny rules that match by User-Agent (scanners) drop the request without an answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_scanners: bool,
    /// Response code for requests from a banned source; absent: no answer (like pike).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_response_code: Option<u16>,
}

/// Limits for one tenant. An absent limit is not enforced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.burst) || (has(self.requestsPerSecond) && self.burst >= self.requestsPerSecond)",
     "message": "burst needs requestsPerSecond and must be at least requestsPerSecond"}
]))]
pub struct TenantLimit {
    /// Requests per second (token bucket rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: Option<u32>,
    /// Bucket size for `requestsPerSecond`; absent: equal to the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<u32>,
    /// New calls (initial INVITEs) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub calls_per_second: Option<u32>,
    /// Calls open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000000))]
    pub concurrent_calls: Option<u32>,
}

/// The answer to a throttled request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleResponse {
    /// Response code.
    #[serde(default = "default_throttle_code")]
    #[schemars(range(min = 400, max = 699))]
    pub code: u16,
    /// Retry-After seconds; 0: no Retry-After header.
    #[serde(default = "default_retry_after_secs")]
    #[schemars(range(min = 0, max = 86400))]
    pub retry_after_secs: u32,
}

impl Default for ThrottleResponse {
    fn default() -> Self {
        ThrottleResponse {
            code: default_throttle_code(),
            retry_after_secs: default_retry_after_secs(),
        }
    }
}

fn default_throttle_code() -> u16 {
    429
}
fn default_retry_after_secs() -> u32 {
    1
}

/// Default tenant header.
pub fn default_tenant_header() -> String {
    "X-Tenant-ID".to_owned()
}

/// Default counted methods.
pub fn default_throttle_methods() -> Vec<String> {
    vec!["INVITE".to_owned()]
}

/// One TenantThrottle as the sbc applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleConfig {
    /// `namespace/name` of the TenantThrottle it came from.
    pub name: String,
    /// Header holding the tenant id.
    #[serde(default = "default_tenant_header")]
    pub header: String,
    /// Limits per tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantLimit>,
    /// Limits of tenants not listed (and of requests without the header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<TenantLimit>,
    /// Methods counted.
    #[serde(default = "default_throttle_methods")]
    pub methods: Vec<String>,
    /// The answer when a limit is exceeded.
    #[serde(default)]
    pub response: ThrottleResponse,
    /// What happens to a request without the tenant header (or with an unusable value).
    #[serde(default)]
    pub missing_tenant: MissingTenant,
    /// Seconds after which a call still counted as open is forgotten (a lost BYE), so
    /// `concurrentCalls` capacity cannot leak for ever.
    #[serde(default = "default_dialog_timeout_secs")]
    #[schemars(range(min = 60, max = 604800))]
    pub dialog_timeout_secs: u32,
}

/// The policy for requests that carry no tenant header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MissingTenant {
    /// Not throttled at all.
    Allow,
    /// Throttled together, as one tenant with the `default` limits.
    #[default]
    Default,
    /// Refused with 403.
    Reject,
}

/// Default of [`ThrottleConfig::dialog_timeout_secs`]: 4 hours.
pub fn default_dialog_timeout_secs() -> u32 {
    4 * 3600
}

/// How a method is challenged by the auth stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Challenge {
    /// Registrar style: 401 with WWW-Authenticate, answered in Authorization.
    Www,
    /// Proxy style: 407 with Proxy-Authenticate, answered in Proxy-Authorization.
    Proxy,
}

/// A digest algorithm (RFC 7616 / RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DigestAlgorithm {
    /// MD5 (RFC 2617), against the `ha1` (or `ha1b`) credential.
    #[serde(rename = "MD5")]
    Md5,
    /// SHA-256 (RFC 7616), against the `ha1sha256` credential.
    #[serde(rename = "SHA-256")]
    Sha256,
}

/// Blocking a user after repeated failed authentications (the seeds' `auth_block_list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthFailureBlock {
    /// Failed attempts allowed per window; the next one blocks the user.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_failures: u32,
    /// Length of the window in seconds.
    #[serde(default = "default_failure_window_secs")]
    #[schemars(range(min = 1, max = 86400))]
    pub window_secs: u32,
    /// Seconds a user stays blocked (answered 403 Blocked).
    #[serde(default = "default_ban_secs")]
    #[schemars(range(min = 1, max = 86400))]
    pub block_secs: u32,
}

fn default_failure_window_secs() -> u32 {
    60
}

/// Digest authentication (RFC 7616 / RFC 2617 / RFC 8760) by the auth stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// The realm of the challenges; absent: the host of the request's From URI (as
    /// Kamailio's `auth_challenge("$fd")`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// Methods that must authenticate (initial requests only) and how each is challenged.
    #[serde(default = "default_auth_methods")]
    pub methods: BTreeMap<String, Challenge>,
    /// Source CIDRs that need no authentication (trunks, the backends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_sources: Vec<String>,
    /// Key signing the nonces, shared by every replica so any of them accepts a challenge
    /// another issued. At least 16 characters. Give this or `nonceSecretFile`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce_secret: String,
    /// File holding the nonce key (trailing newlines are not part of it): the operator mounts
    /// it from a Secret so the key never sits in the ConfigMap. Read when a configuration
    /// version is loaded ([`crate::config::SbcConfig::read_secret_files`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce_secret_file: Option<String>,
    /// Seconds a nonce stays valid; an older one is answered with `stale=true`.
    #[serde(default = "default_nonce_lifetime_secs")]
    #[schemars(range(min = 5, max = 86400))]
    pub nonce_lifetime_secs: u32,
    /// Algorithms offered, in order of preference (one challenge header each).
    #[serde(default = "default_digest_algorithms")]
    pub algorithms: Vec<DigestAlgorithm>,
    /// Superseded by `credentialsKey`: a value other than `subscriber:` (with
    /// `credentialsKey` left at its default) reads the credentials at `<prefix>{user}`.
    #[serde(default = "default_subscriber_prefix")]
    pub subscriber_prefix: String,
    /// Where the credential hashes (`username`, `domain`, `ha1`, `ha1b`, `ha1sha256`) are
    /// read in the store: a key template with `{user}` (the digest username) and optionally
    /// `{domain}` (the realm). Used exactly as written, without the cluster's store key
    /// prefix, so hashes provisioned by the seeds' tooling (`subscriber:5001`) are read as is.
    #[serde(default = "default_credentials_key")]
    #[schemars(length(min = 6, max = 256))]
    pub credentials_key: String,
    /// Blocking users after failed attempts; absent: no blocking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_block: Option<AuthFailureBlock>,
    /// The user part of the From URI (and of the To URI for REGISTER) must be the digest
    /// username, as Kamailio's `auth_check(..., "1")`: an authenticated user cannot call as
    /// someone else. `false` allows any identity (a PBX that authenticates as one trunk user
    /// for all its extensions).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub check_identity: bool,
}

fn yes() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}

/// Default of [`AuthConfig::methods`]: INVITE challenged proxy style, REGISTER registrar style.
pub fn default_auth_methods() -> BTreeMap<String, Challenge> {
    BTreeMap::from([
        ("INVITE".to_owned(), Challenge::Proxy),
        ("REGISTER".to_owned(), Challenge::Www),
    ])
}
/// Default of [`AuthConfig::nonce_lifetime_secs`].
pub fn default_nonce_lifetime_secs() -> u32 {
    300
}
/// Default of [`AuthConfig::algorithms`]: SHA-256 first, then MD5.
pub fn default_digest_algorithms() -> Vec<DigestAlgorithm> {
    vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5]
}
/// Default of [`AuthConfig::subscriber_prefix`].
pub fn default_subscriber_prefix() -> String {
    "subscriber:".to_owned()
}
/// Default of [`AuthConfig::credentials_key`]: the seeds' Kamailio layout.
pub const DEFAULT_CREDENTIALS_KEY: &str = "subscriber:{user}";
pub fn default_credentials_key() -> String {
    DEFAULT_CREDENTIALS_KEY.to_owned()
}

/// One piece of a credentials key template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart<'a> {
    /// Text used as written.
    Text(&'a str),
    /// The digest username.
    User,
    /// The realm.
    Domain,
}

/// Splits a credentials key template into its parts; Err names what is wrong.
pub fn parse_key_template(t: &str) -> Result<Vec<KeyPart<'_>>, String> {
    if t.len() > 256 {
        return Err("longer than 256 characters".to_owned());
    }
    if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("{c:?} is not allowed (printable ASCII, no spaces)"));
    }
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("unmatched \"}\"".to_owned());
        }
        if open > 0 {
            parts.push(KeyPart::Text(&rest[..open]));
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed \"{\"")?;
        parts.push(match &after[..close] {
            "user" => KeyPart::User,
            "domain" => KeyPart::Domain,
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}}, expected {{user}} or {{domain}}"
                ));
            }
        });
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(KeyPart::Text(rest));
    }
    if !parts.contains(&KeyPart::User) {
        return Err("must contain {user}".to_owned());
    }
    Ok(parts)
}

impl AuthConfig {
    /// The credentials key template in force: `credentialsKey`, or `<subscriberPrefix>{user}`
    /// when only the older `subscriberPrefix` was changed.
    pub fn credentials_template(&self) -> std::borrow::Cow<'_, str> {
        if self.credentials_key == DEFAULT_CREDENTIALS_KEY
            && self.subscriber_prefix != default_subscriber_prefix()
        {
            std::borrow::Cow::Owned(format!("{}{{user}}", self.subscriber_prefix))
        } else {
            std::borrow::Cow::Borrowed(&self.credentials_key)
        }
    }

    /// Validates the auth section; `path` is where it sits in the document.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.credentials_key != DEFAULT_CREDENTIALS_KEY
            && self.subscriber_prefix != default_subscriber_prefix()
        {
            return Err(field(
                format!("{path}.subscriberPrefix"),
                "set either credentialsKey or the older subscriberPrefix, not both".to_owned(),
            ));
        }
        let which = if self.credentials_key == DEFAULT_CREDENTIALS_KEY
            && self.subscriber_prefix != default_subscriber_prefix()
        {
            "subscriberPrefix"
        } else {
            "credentialsKey"
        };
        if let Err(e) = parse_key_template(&self.credentials_template()) {
            return Err(field(format!("{path}.{which}"), e));
        }
        if let Some(r) = &self.realm
            && (r.is_empty() || r.contains(|c: char| !c.is_ascii_graphic() || c == '"'))
        {
            return Err(field(
                format!("{path}.realm"),
                format!("{r:?} is not a realm (printable, no quotes)"),
            ));
        }
        for m in self.methods.keys() {
            if !is_method(m) {
                return Err(field(
                    format!("{path}.methods.{m}"),
                    format!("{m:?} is not an upper-case SIP method"),
                ));
            }
        }
        for (i, c) in self.trusted_sources.iter().enumerate() {
            if !is_cidr(c) {
                return Err(field(
                    format!("{path}.trustedSources[{i}]"),
                    format!("{c:?} is not a CIDR"),
                ));
            }
        }
        match (&self.nonce_secret_file, self.nonce_secret.is_empty()) {
            (Some(_), false) => {
                return Err(field(
                    format!("{path}.nonceSecret"),
                    "give exactly one of nonceSecret and nonceSecretFile".to_owned(),
                ));
            }
            (Some(f), true) if f.is_empty() => {
                return Err(field(
                    format!("{path}.nonceSecretFile"),
                    "must name a file".to_owned(),
                ));
            }
            // The file's content is checked when it is read.
            (Some(_), true) => {}
            (None, _) if self.nonce_secret.len() < 16 => {
                return Err(field(
                    format!("{path}.nonceSecret"),
                    "must be at least 16 characters".to_owned(),
                ));
            }
            (None, _) => {}
        }
        if !(5..=86400).contains(&self.nonce_lifetime_secs) {
            return Err(field(
                format!("{path}.nonceLifetimeSecs"),
                format!("{} is out of range 5..=86400", self.nonce_lifetime_secs),
            ));
        }
        if self.algorithms.is_empty() {
            return Err(field(
                format!("{path}.algorithms"),
                "at least one algorithm is required".to_owned(),
            ));
        }
        if let Some(b) = &self.failure_block
            && (b.max_failures == 0 || b.window_secs == 0 || b.block_secs == 0)
        {
            return Err(field(
                format!("{path}.failureBlock"),
                "maxFailures, windowSecs and blockSecs must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Reads the nonce key from `nonce_secret_file` into `nonce_secret`; `path` is where the
/// section sits in the document.
pub(crate) fn read_nonce_secret(auth: &mut AuthConfig, path: &str) -> Result<(), ConfigError> {
    let Some(file) = &auth.nonce_secret_file else {
        return Ok(());
    };
    let p = format!("{path}.nonceSecretFile");
    let mut key =
        std::fs::read_to_string(file).map_err(|e| field(p.clone(), format!("{file}: {e}")))?;
    while key.ends_with(['\n', '\r']) {
        key.pop();
    }
    if key.len() < 16 {
        return Err(field(
            p,
            format!("{file}: the key must be at least 16 characters"),
        ));
    }
    auth.nonce_secret = key;
    Ok(())
}

/// Media anchoring through rtpengine.
///
/// The sbc has the rtpengine client (`sbc::media`) but does not call it from the call path
/// yet, so it refuses a configuration with this section rather than ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MediaConfig {
    /// rtpengine ng control addresses, `host:port` (UDP).
    pub rtpengine: Vec<String>,
    /// Milliseconds to wait for rtpengine's reply to one request (with retransmissions)
    /// before the engine counts as down for it.
    #[serde(default = "default_ng_timeout_ms")]
    pub timeout_ms: u64,
    /// Milliseconds before the first retransmission of an unanswered request; doubled after
    /// each one until `timeoutMs`.
    #[serde(default = "default_ng_retransmit_ms")]
    pub retransmit_ms: u64,
    /// Milliseconds between `ping` health checks of every rtpengine.
    #[serde(default = "default_ng_ping_interval_ms")]
    pub ping_interval_ms: u64,
    /// What a call gets when no rtpengine is reachable.
    #[serde(default)]
    pub when_unreachable: MediaUnreachable,
    /// Retry-After of the 503 when `whenUnreachable` is `reject`.
    #[serde(default = "default_media_retry_after_secs")]
    pub retry_after_secs: u32,
    /// Options added for legs that are WebRTC (ws/wss transport, or flagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webrtc: Option<MediaProfileConfig>,
    /// Options added for plain RTP legs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plain: Option<MediaProfileConfig>,
}

impl Default for MediaConfig {
    fn default() -> MediaConfig {
        MediaConfig {
            rtpengine: Vec::new(),
            timeout_ms: default_ng_timeout_ms(),
            retransmit_ms: default_ng_retransmit_ms(),
            ping_interval_ms: default_ng_ping_interval_ms(),
            when_unreachable: MediaUnreachable::default(),
            retry_after_secs: default_media_retry_after_secs(),
            webrtc: None,
            plain: None,
        }
    }
}

fn default_ng_timeout_ms() -> u64 {
    2000
}

fn default_ng_retransmit_ms() -> u64 {
    500
}

fn default_ng_ping_interval_ms() -> u64 {
    2000
}

fn default_media_retry_after_secs() -> u32 {
    5
}

/// What a call gets when no rtpengine is reachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MediaUnreachable {
    /// 503 with Retry-After: the caller (or its proxy) retries elsewhere.
    #[default]
    Reject,
    /// Forward the SDP untouched: the call goes through without anchoring (and a NATed or
    /// WebRTC peer may have no audio).
    PassThrough,
}

/// Per-direction rtpengine options, on top of the built-in profile (WebRTC: RTP/SAVPF,
/// ICE=force, DTLS, rtcp-mux; plain: RTP/AVP, ICE=remove).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MediaProfileConfig {
    /// rtpengine's `codec` options, passed through.
    #[serde(default)]
    pub codec: MediaCodecConfig,
    /// Extra entries of rtpengine's `flags` list (`trust-address`, ...), passed through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
}

/// rtpengine's `codec` dictionary: codec names (`PCMU`, `opus`, `all` for strip).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MediaCodecConfig {
    /// Codecs removed from the SDP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strip: Vec<String>,
    /// Codecs kept or re-added after a strip.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offer: Vec<String>,
    /// Codecs added and transcoded to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transcode: Vec<String>,
    /// Codecs hidden from the peer but still accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
}

impl MediaConfig {
    /// Checks addresses, timers and option tokens; `path` is where the section sits.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.rtpengine.is_empty() {
            return Err(field(
                format!("{path}.rtpengine"),
                "at least one rtpengine address is required".into(),
            ));
        }
        for (i, a) in self.rtpengine.iter().enumerate() {
            let ok = a.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(field(
                    format!("{path}.rtpengine[{i}]"),
                    format!("{a:?} is not host:port"),
                ));
            }
            if self.rtpengine[..i].contains(a) {
                return Err(field(
                    format!("{path}.rtpengine[{i}]"),
                    format!("{a:?} is listed twice"),
                ));
            }
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(field(
                format!("{path}.timeoutMs"),
                format!("{} is out of range 10..=60000", self.timeout_ms),
            ));
        }
        if self.retransmit_ms == 0 || self.retransmit_ms > self.timeout_ms {
            return Err(field(
                format!("{path}.retransmitMs"),
                format!(
                    "{} must be positive and at most timeoutMs",
                    self.retransmit_ms
                ),
            ));
        }
        if self.ping_interval_ms < 100 {
            return Err(field(
                format!("{path}.pingIntervalMs"),
                format!("{} is below the minimum of 100", self.ping_interval_ms),
            ));
        }
        if self.retry_after_secs > 86_400 {
            return Err(field(
                format!("{path}.retryAfterSecs"),
                format!("{} is above the maximum of 86400", self.retry_after_secs),
            ));
        }
        for (name, p) in [("webrtc", &self.webrtc), ("plain", &self.plain)] {
            let Some(p) = p else { continue };
            let pp = format!("{path}.{name}");
            let c = &p.codec;
            for (key, list) in [
                ("codec.strip", &c.strip),
                ("codec.offer", &c.offer),
                ("codec.transcode", &c.transcode),
                ("codec.mask", &c.mask),
                ("flags", &p.flags),
            ] {
                for (j, t) in list.iter().enumerate() {
                    if t.is_empty()
                        || t.len() > 64
                        || !t.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
                    {
                        return Err(field(
                            format!("{pp}.{key}[{j}]"),
                            format!("{t:?} is not a token (1 to 64 visible characters)"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Certificate and key of the tls/wss listeners. The sbc re-reads the files when they change
/// (a rotated Secret) without dropping open connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain file.
    pub cert_file: String,
    /// PEM private key file.
    pub key_file: String,
    /// PEM bundle of the CAs that sign client certificates. Set: every tls/wss client must
    /// present a certificate signed by one of them (mutual TLS). Absent: no client
    /// certificate is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<String>,
}

/// TLS towards backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// PEM bundle of the CAs a backend's certificate must chain to. Absent: the system's
    /// trusted roots (`/etc/ssl/certs`, or `SSL_CERT_FILE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM certificate chain presented to backends that ask for one (with `keyFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key of `certFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// Whether `s` is an IPv4/IPv6 CIDR (`10.0.0.0/8`) or a bare address.
pub fn is_cidr(s: &str) -> bool {
    crate::cidr::Cidr::parse(s).is_some()
}

/// Whether `m` looks like a SIP method token (`INVITE`).
pub fn is_method(m: &str) -> bool {
    !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase())
}

fn check_methods(path: &str, methods: &[String]) -> Result<(), ConfigError> {
    for (i, m) in methods.iter().enumerate() {
        if !is_method(m) {
            return Err(ConfigError::Field {
                path: format!("{path}[{i}]"),
                message: format!("{m:?} is not an upper-case SIP method"),
            });
        }
    }
    Ok(())
}

fn field(path: String, message: String) -> ConfigError {
    ConfigError::Field { path, message }
}

impl AccessListConfig {
    /// Validates one access list; `path` is where it sits in the document.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        for (i, r) in self.rules.iter().enumerate() {
            let rp = format!("{path}.rules[{i}]");
            for (j, c) in r.sources.iter().enumerate() {
                if !is_cidr(c) {
                    return Err(field(
                        format!("{rp}.sources[{j}]"),
                        format!("{c:?} is not a CIDR"),
                    ));
                }
            }
            check_methods(&format!("{rp}.methods"), &r.methods)?;
            for (j, h) in r.required_headers.iter().enumerate() {
                if h.value.is_some() == h.value_file.is_some() {
                    return Err(field(
                        format!("{rp}.requiredHeaders[{j}]"),
                        "give exactly one of value and valueFile".to_owned(),
                    ));
                }
            }
            if !(400..=699).contains(&r.response_code) {
                return Err(field(
                    format!("{rp}.responseCode"),
                    format!("{} is out of range 400..=699", r.response_code),
                ));
            }
        }
        for (j, c) in self.trusted.iter().enumerate() {
            if !is_cidr(c) {
                return Err(field(
                    format!("{path}.trusted[{j}]"),
                    format!("{c:?} is not a CIDR"),
                ));
            }
        }
        if let Some(code) = self.ban_response_code
            && !(400..=699).contains(&code)
        {
            return Err(field(
                format!("{path}.banResponseCode"),
                format!("{code} is out of range 400..=699"),
            ));
        }
        for (name, f) in [
            ("flood", &self.flood),
            ("registerFlood", &self.register_flood),
        ] {
            if let Some(f) = f
                && (f.requests == 0 || f.window_secs == 0)
            {
                return Err(field(
                    format!("{path}.{name}"),
                    "requests and windowSecs must be positive".to_owned(),
                ));
            }
        }
        Ok(())
    }
}

impl ThrottleConfig {
    /// Validates one throttle; `path` is where it sits in the document.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.header.is_empty() || self.header.contains(|c: char| !c.is_ascii_graphic()) {
            return Err(field(
                format!("{path}.header"),
                format!("{:?} is not a header name", self.header),
            ));
        }
        check_methods(&format!("{path}.methods"), &self.methods)?;
        if self.dialog_timeout_secs < 60 {
            return Err(field(
                format!("{path}.dialogTimeoutSecs"),
                format!("{} is below the minimum of 60", self.dialog_timeout_secs),
            ));
        }
        if !(400..=699).contains(&self.response.code) {
            return Err(field(
                format!("{path}.response.code"),
                format!("{} is out of range 400..=699", self.response.code),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(is_cidr("10.0.0.0/8"));
        assert!(is_cidr("2001:db8::/32"));
        assert!(is_cidr("192.0.2.1"));
        assert!(!is_cidr("10.0.0.0/33"));
        assert!(!is_cidr("example.com/8"));
    }

    #[test]
    fn a_required_header_has_a_value_or_a_value_file() {
        let doc = r#"
listeners: [{transport: udp, address: "127.0.0.1:5060"}]
accessLists:
  - name: ns/acl
    rules:
      - action: deny
        requiredHeaders: [{name: X-Sig, value: a, valueFile: /x}]
"#;
        assert_eq!(
            crate::config::SbcConfig::from_yaml(doc)
                .unwrap_err()
                .to_string(),
            "accessLists[0].rules[0].requiredHeaders[0]: give exactly one of value and valueFile"
        );
        let ok = doc.replace(", valueFile: /x", "");
        assert!(crate::config::SbcConfig::from_yaml(&ok).is_ok());
    }

    #[test]
    fn credentials_key_defaults_to_the_seeds_layout_and_is_checked() {
        let doc = "listeners: [{transport: udp, address: \"127.0.0.1:5060\"}]\n\
auth: {nonceSecret: 0123456789abcdef}\n";
        let cfg = crate::config::SbcConfig::from_yaml(doc).unwrap();
        let auth = cfg.auth.unwrap();
        assert_eq!(auth.credentials_template(), "subscriber:{user}");
        let with = |extra: &str| {
            let d = doc.replace("abcdef}", &format!("abcdef, {extra}}}"));
            crate::config::SbcConfig::from_yaml(&d).map_err(|e| e.to_string())
        };
        let ok = with("credentialsKey: \"sub:{domain}:{user}\"").unwrap();
        assert_eq!(
            parse_key_template(&ok.auth.unwrap().credentials_template()).unwrap(),
            [
                KeyPart::Text("sub:"),
                KeyPart::Domain,
                KeyPart::Text(":"),
                KeyPart::User
            ]
        );
        let legacy = with("subscriberPrefix: \"users:\"").unwrap();
        assert_eq!(legacy.auth.unwrap().credentials_template(), "users:{user}");
        for (extra, err) in [
            (
                "credentialsKey: \"subscriber:{usr}\"",
                "auth.credentialsKey: unknown placeholder {usr}, expected {user} or {domain}",
            ),
            (
                "credentialsKey: \"subscriber:{domain}\"",
                "auth.credentialsKey: must contain {user}",
            ),
            (
                "credentialsKey: \"sub:{user\"",
                "auth.credentialsKey: unclosed \"{\"",
            ),
            (
                "credentialsKey: \"sub {user}\"",
                "auth.credentialsKey: ' ' is not allowed (printable ASCII, no spaces)",
            ),
            (
                "credentialsKey: \"s:{user}\", subscriberPrefix: \"x:\"",
                "auth.subscriberPrefix: set either credentialsKey or the older subscriberPrefix, \
not both",
            ),
        ] {
            assert_eq!(with(extra).unwrap_err(), err, "{extra}");
        }
    }

    #[test]
    fn bad_rule_names_the_field() {
        let acl = AccessListConfig {
            name: "ns/acl".into(),
            rules: vec![AccessRule {
                action: AccessAction::Deny,
                sources: vec!["10.0.0.0/8".into(), "nope".into()],
                user_agents: vec![],
                from_domains: vec![],
                required_headers: vec![],
                methods: vec![],
                response_code: 403,
            }],
            default_action: AccessAction::Allow,
            flood: None,
            register_flood: None,
            trusted: vec![],
            drop_scanners: false,
            ban_response_code: None,
        };
        assert_eq!(
            acl.validate("accessLists[0]").unwrap_err().to_string(),
            "accessLists[0].rules[0].sources[1]: \"nope\" is not a CIDR"
        );
    }

    #[test]
    fn media_section_defaults_and_field_errors() {
        let m: MediaConfig = serde_json::from_value(serde_json::json!({
            "rtpengine": ["127.0.0.1:2223", "rtpengine.media:2223"]
        }))
        .unwrap();
        assert_eq!(m.timeout_ms, 2000);
        assert_eq!(m.retransmit_ms, 500);
        assert_eq!(m.ping_interval_ms, 2000);
        assert_eq!(m.when_unreachable, MediaUnreachable::Reject);
        assert_eq!(m.retry_after_secs, 5);
        assert!(m.validate("media").is_ok());
        let p: MediaConfig = serde_json::from_value(serde_json::json!({
            "rtpengine": ["[::1]:2223"], "whenUnreachable": "passThrough",
            "plain": {"codec": {"transcode": ["PCMA"]}, "flags": ["trust-address"]}
        }))
        .unwrap();
        assert!(p.validate("media").is_ok());
        assert_eq!(p.when_unreachable, MediaUnreachable::PassThrough);
        let bad = |f: fn(&mut MediaConfig)| {
            let mut c = m.clone();
            f(&mut c);
            c.validate("media").unwrap_err().to_string()
        };
        assert_eq!(
            bad(|c| c.rtpengine.clear()),
            "media.rtpengine: at least one rtpengine address is required"
        );
        assert_eq!(
            bad(|c| c.rtpengine[1] = "rtpengine".into()),
            "media.rtpengine[1]: \"rtpengine\" is not host:port"
        );
        assert_eq!(
            bad(|c| c.rtpengine[1] = "127.0.0.1:2223".into()),
            "media.rtpengine[1]: \"127.0.0.1:2223\" is listed twice"
        );
        assert_eq!(
            bad(|c| c.timeout_ms = 0),
            "media.timeoutMs: 0 is out of range 10..=60000"
        );
        assert_eq!(
            bad(|c| c.retransmit_ms = 5000),
            "media.retransmitMs: 5000 must be positive and at most timeoutMs"
        );
        assert_eq!(
            bad(|c| c.ping_interval_ms = 10),
            "media.pingIntervalMs: 10 is below the minimum of 100"
        );
        assert_eq!(
            bad(|c| {
                c.webrtc = Some(MediaProfileConfig {
                    codec: MediaCodecConfig {
                        strip: vec!["a b".into()],
                        ..MediaCodecConfig::default()
                    },
                    flags: Vec::new(),
                })
            }),
            "media.webrtc.codec.strip[0]: \"a b\" is not a token (1 to 64 visible characters)"
        );
    }
}
