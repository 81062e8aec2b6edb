//! TenantThrottle: rate and concurrency limits per tenant, keyed by a header.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::{
    MissingTenant, TenantLimit, ThrottleResponse, default_dialog_timeout_secs,
    default_tenant_header, default_throttle_methods,
};
use crate::status::CommonStatus;

/// Per-tenant limits shared by every sbc replica.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubesbc.io",
    version = "v1alpha1",
    kind = "TenantThrottle",
    namespaced,
    status = "CommonStatus",
    shortname = "tt",
    category = "kubesbc",
    doc = "Rate and concurrency limits per tenant, answered with 429 + Retry-After.",
    printcolumn = r#"{"name":"Header","type":"string","jsonPath":".spec.header"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TenantThrottleSpec {
    /// Header holding the tenant id.
    #[serde(default = "default_tenant_header")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub header: String,
    /// Limits per tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantLimit>,
    /// Limits of tenants not listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<TenantLimit>,
    /// SIP methods counted.
    #[serde(default = "default_throttle_methods")]
    #[schemars(length(min = 1, max = 16), inner(regex(pattern = "^[A-Z]{1,32}$")))]
    pub methods: Vec<String>,
    /// The answer when a limit is exceeded (429 + Retry-After: 1 by default).
    #[serde(default)]
    pub response: ThrottleResponse,
    /// What happens to a request without the tenant header (or with an unusable value):
    /// `allow` (not throttled), `default` (throttled together as one tenant with the
    /// `default` limits; the default) or `reject` (refused with 403).
    #[serde(default)]
    pub missing_tenant: MissingTenant,
    /// Seconds after which a call still counted as open is forgotten (its BYE was lost), so
    /// `concurrentCalls` capacity cannot leak for ever. Default 14400 (4 hours); set it above
    /// your longest call.
    #[serde(default = "default_dialog_timeout_secs")]
    #[schemars(range(min = 60, max = 604800))]
    pub dialog_timeout_secs: u32,
}
