//! AccessList: ordered allow/deny rules, flood limits and REGISTER-flood limits.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{AccessAction, FloodLimit, default_deny_code};
use crate::status::{CommonStatus, SecretKeyRef};

/// Who may talk to the sbc at all.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubesbc.io",
    version = "v1alpha1",
    kind = "AccessList",
    namespaced,
    status = "CommonStatus",
    shortname = "acl",
    category = "kubesbc",
    doc = "Ordered allow/deny rules (CIDRs, User-Agents, From domains, required headers) and flood limits.",
    printcolumn = r#"{"name":"Default","type":"string","jsonPath":".spec.defaultAction"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.banResponseCode) || has(self.flood) || has(self.registerFlood)", "message": "banResponseCode needs flood or registerFlood: nothing bans a source otherwise"}
]))]
pub struct AccessListSpec {
    /// Rules in order; the first rule that matches decides.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub rules: Vec<AccessRuleSpec>,
    /// What happens when no rule matches.
    #[serde(default)]
    pub default_action: AccessAction,
    /// Flood detection per source IP (pike): requests per window, then a ban.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodLimit>,
    /// REGISTER flood detection per user (To URI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_flood: Option<FloodLimit>,
    /// Source CIDRs never counted by the flood limits nor banned: trunks, the carriers'
    /// signalling addresses, monitoring. The dispatcher's destinations always are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(regex(pattern = CIDR)))]
    pub trusted: Vec<String>,
    /// Deny rules that match by User-Agent (scanners such as friendly-scanner or sipvicious)
    /// drop the request without an answer, so the scanner learns nothing. Default false:
    /// they are answered with the rule's response code.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop_scanners: bool,
    /// Response code for requests from a banned source. Absent: no answer at all (like
    /// Kamailio's pike), which costs a flooding source the most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 699))]
    pub ban_response_code: Option<u16>,
}

/// An IPv4 or IPv6 address with an optional prefix length (`10.0.0.0/8`, `2001:db8::/32`).
pub(crate) const CIDR: &str = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}(/([0-9]|[12][0-9]|3[0-2]))?|[0-9a-fA-F:]*:[0-9a-fA-F:.]*(/([0-9]{1,2}|1[01][0-9]|12[0-8]))?)$";

/// One rule. It matches a request when every criterion it lists matches; an empty list
/// matches anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.action == 'deny' || !has(self.responseCode)", "message": "responseCode only applies to deny rules"}
]))]
pub struct AccessRuleSpec {
    /// `allow` or `deny`.
    pub action: AccessAction,
    /// Source CIDRs (`10.0.0.0/8`, `2001:db8::/32`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(regex(pattern = CIDR)))]
    pub sources: Vec<String>,
    /// Case-insensitive substrings of the User-Agent (`friendly-scanner`, `sipvicious`,
    /// `sipcli`, `VaxSIPUserAgent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 256)))]
    pub user_agents: Vec<String>,
    /// Domains of the From URI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 253)))]
    pub from_domains: Vec<String>,
    /// Headers a request must carry with the value stored in a Secret; the rule matches a
    /// request that lacks one or carries another value (`X-Company-Signature`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub required_headers: Vec<RequiredHeader>,
    /// SIP methods the rule applies to; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = "^[A-Z]{1,32}$")))]
    pub methods: Vec<String>,
    /// Response code of a deny (403 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 699))]
    pub response_code: Option<u16>,
}

impl AccessRuleSpec {
    /// The response code of this rule, defaulted.
    pub fn response_code(&self) -> u16 {
        self.response_code.unwrap_or_else(default_deny_code)
    }
}

/// A header whose required value comes from a Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequiredHeader {
    /// Header name.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// Where the value is stored.
    pub secret_key_ref: SecretKeyRef,
}
