//! The guard, throttle, media and TLS sections of the sbc configuration (`sbc.yaml`).
//!
//! They live beside [`crate::config`] because the CRDs share most of these types directly:
//! an AccessList's flood limits, a TenantThrottle's per-tenant limits and a DispatcherSet's
//! Service source are the very structs the sbc reads. Only what refers to a Secret differs
//! (the CRD names the Secret, the rendered config carries the value).

use std::collections::BTreeMap;
use std::net::IpAddr;

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

/// A header name with its required value (resolved from a Secret by the operator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValue {
    /// Header name.
    pub name: String,
    /// Required value.
    pub value: String,
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
}

/// Media anchoring through rtpengine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MediaConfig {
    /// rtpengine ng control addresses, `host:port` (UDP).
    pub rtpengine: Vec<String>,
}

/// Certificate and key of the tls/wss listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain file.
    pub cert_file: String,
    /// PEM private key file.
    pub key_file: String,
}

/// Whether `s` is an IPv4/IPv6 CIDR (`10.0.0.0/8`) or a bare address.
pub fn is_cidr(s: &str) -> bool {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len {
        None => true,
        Some(l) => l.parse::<u8>().is_ok_and(|l| l <= max),
    }
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
}
