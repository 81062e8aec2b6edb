//! Routing rules: which dispatcher set (or fixed target) an initial request goes to.
//!
//! The same types are the sbc.yaml `routing` section and SbcCluster `spec.routing`. Rules are
//! tried in order and the first whose every condition matches decides; no match sends the
//! request to `dispatcher.defaultSet`. See docs/config.md, "Routing rules".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, check_sip_uri};
use crate::policy::{is_cidr, is_method};

/// The routing section: an ordered list of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoutingConfig {
    /// Rules in order; the first that matches decides. Empty: every initial request goes to
    /// the default set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub rules: Vec<RouteRule>,
}

/// One rule: conditions (all that are given must match; a list matches when any of its
/// entries does) and one action (`set` or `target`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.set) != has(self.target)", "message": "a routing rule takes exactly one of set and target"}
]))]
pub struct RouteRule {
    /// A name for logs and listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub name: Option<String>,
    /// Source CIDRs (`10.0.0.0/8`, `2001:db8::/32`, a bare address).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(regex(pattern = crate::access::CIDR)))]
    pub sources: Vec<String>,
    /// The source address is a destination of this dispatcher set right now (the PBX
    /// calling out). Compared by IP address: port and transport are ignored (Kamailio's
    /// `ds_is_from_list` with mode 3), since a PBX sends over TCP from any port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub from_set: Option<u32>,
    /// Prefixes of the Request-URI's user part (`"00"`, `"+44"`); a `tel:` URI's number counts
    /// as the user part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    pub uri_user_prefixes: Vec<String>,
    /// Hosts of the Request-URI (case-insensitive, exact: `carrier.example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub uri_domains: Vec<String>,
    /// A header's value (the first header of that name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    /// SIP methods (`INVITE`, `MESSAGE`); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub methods: Vec<String>,
    /// Action: the dispatcher set to send to; failover stays within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub set: Option<u32>,
    /// Action: a fixed next hop, an IP-literal SIP URI (`sip:10.0.0.9:5060;transport=tcp`).
    /// No failover: a fixed target is one hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 5, max = 1024))]
    pub target: Option<String>,
}

/// A header condition: the header's value equals `value`, or starts with `prefix` (exactly
/// one). Case-sensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.value) != has(self.prefix)", "message": "a header condition takes exactly one of value and prefix"}
]))]
pub struct HeaderMatch {
    /// Header name (case-insensitive), `X-Tenant-ID`.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9.!%*_+`'~-]+$")
    )]
    pub name: String,
    /// The value it must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub value: Option<String>,
    /// A prefix the value must start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub prefix: Option<String>,
}

impl RoutingConfig {
    /// Whether there is no rule (then the section is not written out).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Validates the rules; `path` is where the section sits (`routing`, `spec.routing`) and
    /// `sets` the dispatcher set ids a rule may name.
    pub fn validate(&self, path: &str, sets: &[u32]) -> Result<(), ConfigError> {
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(&format!("{path}.rules[{i}]"), sets)?;
        }
        Ok(())
    }
}

fn field(path: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        path,
        message: message.into(),
    }
}

fn known(id: u32, sets: &[u32]) -> Result<(), String> {
    if sets.contains(&id) {
        return Ok(());
    }
    let list: Vec<String> = sets.iter().map(u32::to_string).collect();
    Err(if list.is_empty() {
        format!("set {id} is not in the dispatcher (it has no set)")
    } else {
        format!(
            "set {id} is not in the dispatcher (its sets: {})",
            list.join(", ")
        )
    })
}

impl RouteRule {
    /// Whether the rule names at least one condition.
    pub fn has_condition(&self) -> bool {
        !self.sources.is_empty()
            || self.from_set.is_some()
            || !self.uri_user_prefixes.is_empty()
            || !self.uri_domains.is_empty()
            || self.header.is_some()
            || !self.methods.is_empty()
    }

    fn validate(&self, p: &str, sets: &[u32]) -> Result<(), ConfigError> {
        if !self.has_condition() {
            return Err(field(
                p.to_owned(),
                "a rule needs a condition (sources, fromSet, uriUserPrefixes, uriDomains, header or methods); \
                 requests no rule matches already go to dispatcher.defaultSet",
            ));
        }
        match (self.set, &self.target) {
            (None, None) => {
                return Err(field(p.to_owned(), "a rule needs an action: set or target"));
            }
            (Some(_), Some(_)) => {
                return Err(field(
                    format!("{p}.target"),
                    "give exactly one of set and target",
                ));
            }
            (Some(id), None) => known(id, sets).map_err(|m| field(format!("{p}.set"), m))?,
            (None, Some(t)) => {
                check_sip_uri(t).map_err(|m| field(format!("{p}.target"), m))?;
                if !is_ip_uri(t) {
                    return Err(field(
                        format!("{p}.target"),
                        format!("{t:?} must name an IP address (no DNS on the call path)"),
                    ));
                }
            }
        }
        if let Some(id) = self.from_set {
            known(id, sets).map_err(|m| field(format!("{p}.fromSet"), m))?;
        }
        if let Some(n) = &self.name
            && (n.is_empty() || n.len() > 64)
        {
            return Err(field(format!("{p}.name"), "1 to 64 characters"));
        }
        for (j, c) in self.sources.iter().enumerate() {
            if !is_cidr(c) {
                return Err(field(
                    format!("{p}.sources[{j}]"),
                    format!("{c:?} is not a CIDR"),
                ));
            }
        }
        for (j, u) in self.uri_user_prefixes.iter().enumerate() {
            if u.is_empty() || u.contains(|c: char| c.is_whitespace() || "@;?:<>".contains(c)) {
                return Err(field(
                    format!("{p}.uriUserPrefixes[{j}]"),
                    format!("{u:?} is not the start of a URI user part"),
                ));
            }
        }
        for (j, d) in self.uri_domains.iter().enumerate() {
            if d.is_empty() || d.contains(|c: char| c.is_whitespace() || "@;?<>/".contains(c)) {
                return Err(field(
                    format!("{p}.uriDomains[{j}]"),
                    format!("{d:?} is not a host"),
                ));
            }
        }
        if let Some(h) = &self.header {
            let hp = format!("{p}.header");
            if h.name.is_empty() || !h.name.bytes().all(is_token_byte) {
                return Err(field(
                    format!("{hp}.name"),
                    format!("{:?} is not a header name", h.name),
                ));
            }
            match (&h.value, &h.prefix) {
                (Some(_), None) => {}
                (None, Some(pre)) if !pre.is_empty() => {}
                (None, Some(_)) => return Err(field(format!("{hp}.prefix"), "must not be empty")),
                _ => {
                    return Err(field(hp, "give exactly one of value and prefix"));
                }
            }
        }
        for (j, m) in self.methods.iter().enumerate() {
            if !is_method(m) {
                return Err(field(
                    format!("{p}.methods[{j}]"),
                    format!("{m:?} is not an upper-case SIP method"),
                ));
            }
        }
        Ok(())
    }
}

/// RFC 3261 `token` characters (header names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Whether a `sip:`/`sips:` URI's host is an IP literal.
fn is_ip_uri(uri: &str) -> bool {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .unwrap_or("");
    let hostport = rest.split([';', '?']).next().unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or("");
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6
            .split(']')
            .next()
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let host = hostport.split(':').next().unwrap_or("");
    host.parse::<std::net::Ipv4Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SbcConfig;

    const BASE: &str = r#"
listeners: [{transport: udp, address: "127.0.0.1:5060"}]
dispatcher:
  defaultSet: 1
  sets: [{id: 1}, {id: 2}]
routing:
  rules:
"#;

    fn err(rules: &str) -> String {
        SbcConfig::from_yaml(&format!("{BASE}{rules}"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn good_rules_parse_and_round_trip() {
        let doc = format!(
            "{BASE}    - {{name: pbx-out, fromSet: 1, uriUserPrefixes: [\"00\", \"+\"], set: 2}}\n\
             \x20   - {{sources: [10.0.0.0/8], methods: [INVITE], header: {{name: X-Tenant-ID, prefix: eu-}}, set: 1}}\n\
             \x20   - {{uriDomains: [lab.example.com], target: \"sip:10.1.2.3:5080;transport=tcp\"}}\n"
        );
        let c = SbcConfig::from_yaml(&doc).expect("valid");
        assert_eq!(c.routing.rules.len(), 3);
        assert_eq!(c.routing.rules[0].from_set, Some(1));
        assert_eq!(SbcConfig::from_yaml(&c.to_yaml()).expect("round trip"), c);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "    - {methods: [INVITE], set: 1}\n    - {methods: [INVITE], set: 2}\n    - {methods: [MESSAGE], set: 7}\n",
                "routing.rules[2].set: set 7 is not in the dispatcher (its sets: 1, 2)",
            ),
            (
                "    - {fromSet: 9, set: 2}\n",
                "routing.rules[0].fromSet: set 9 is not in the dispatcher (its sets: 1, 2)",
            ),
            (
                "    - {set: 2}\n",
                "routing.rules[0]: a rule needs a condition (sources, fromSet, uriUserPrefixes, uriDomains, header or methods); requests no rule matches already go to dispatcher.defaultSet",
            ),
            (
                "    - {methods: [INVITE]}\n",
                "routing.rules[0]: a rule needs an action: set or target",
            ),
            (
                "    - {methods: [INVITE], set: 2, target: \"sip:10.0.0.1\"}\n",
                "routing.rules[0].target: give exactly one of set and target",
            ),
            (
                "    - {methods: [INVITE], target: \"sip:pbx.example.com\"}\n",
                "routing.rules[0].target: \"sip:pbx.example.com\" must name an IP address (no DNS on the call path)",
            ),
            (
                "    - {sources: [10.0.0.0/33], set: 2}\n",
                "routing.rules[0].sources[0]: \"10.0.0.0/33\" is not a CIDR",
            ),
            (
                "    - {methods: [invite], set: 2}\n",
                "routing.rules[0].methods[0]: \"invite\" is not an upper-case SIP method",
            ),
            (
                "    - {header: {name: X-Tenant-ID}, set: 2}\n",
                "routing.rules[0].header: give exactly one of value and prefix",
            ),
            (
                "    - {uriUserPrefixes: [\"a@b\"], set: 2}\n",
                "routing.rules[0].uriUserPrefixes[0]: \"a@b\" is not the start of a URI user part",
            ),
        ];
        for (rules, want) in cases {
            assert_eq!(err(rules), want, "{rules}");
        }
        assert!(
            err("    - {method: [INVITE], set: 2}\n")
                .starts_with("routing.rules[0].method: unknown field `method`"),
        );
    }

    #[test]
    fn ip_targets() {
        assert!(is_ip_uri("sip:10.0.0.1:5060;transport=tcp"));
        assert!(is_ip_uri("sips:[2001:db8::1]:5061"));
        assert!(is_ip_uri("sip:bob@192.0.2.1"));
        assert!(!is_ip_uri("sip:pbx.example.com"));
    }
}
