//! DispatcherSet: one dispatcher set (Kamailio's `setid`) and where its destinations come from.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{Algorithm, DestinationConfig, Failover, Probing};
use crate::policy::ServiceSource;
use crate::status::CommonStatus;

/// A dispatcher set: algorithm, probing, failover and destinations (a Service or static URIs).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubesbc.io",
    version = "v1alpha1",
    kind = "DispatcherSet",
    namespaced,
    status = "DispatcherSetStatus",
    shortname = "dset",
    category = "kubesbc",
    doc = "A dispatcher set: where the sbc sends initial requests and how it spreads them.",
    printcolumn = r#"{"name":"Set","type":"integer","jsonPath":".spec.setId"}"#,
    printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.algorithm"}"#,
    printcolumn = r#"{"name":"Up","type":"integer","jsonPath":".status.destinationsUp"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.destinationsTotal"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DispatcherSetSpec {
    /// The set id, as in `dispatcher.list`; unique among the sets one SbcCluster selects.
    #[schemars(range(min = 0, max = 65535))]
    pub set_id: u32,
    /// How a destination is chosen: a name (`round-robin`, `hash-callid`, `weight`,
    /// `call-load`, ...) or Kamailio's number (`4`).
    #[serde(default)]
    #[schemars(schema_with = "algorithm_schema")]
    pub algorithm: Algorithm,
    /// OPTIONS probing of the destinations.
    #[serde(default)]
    pub probing: Probing,
    /// When a call moves on to the next destination.
    #[serde(default)]
    pub failover: Failover,
    /// Where the destinations come from: exactly one of `service` and `static`.
    pub destinations: Destinations,
}

/// The destinations of a set: a Service the sbc resolves live, or static URIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.service) != has(self.static)", "message": "set exactly one of destinations.service and destinations.static"}
]))]
pub struct Destinations {
    /// A Service whose EndpointSlices give the destinations (namespace defaults to this
    /// resource's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSource>,
    /// Static destinations with Kamailio's weight, priority and attributes.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub static_: Option<Vec<DestinationConfig>>,
}

/// Status of a DispatcherSet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DispatcherSetStatus {
    /// Conditions, observed generation, users.
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Destinations the sbc pods know in this set (static URIs and Service endpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations_total: Option<i32>,
    /// Destinations that answer probes (reported by the sbc pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations_up: Option<i32>,
}

/// The CRD schema of [`Algorithm`]: an int-or-string limited to the known names and numbers.
/// (A structural schema may not put `type` inside `anyOf`, so the enum sits outside.)
fn algorithm_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut values: Vec<serde_json::Value> = Algorithm::ALL
        .iter()
        .map(|a| serde_json::Value::from(a.name()))
        .collect();
    values.extend(
        Algorithm::ALL
            .iter()
            .map(|a| serde_json::Value::from(a.number())),
    );
    schemars::json_schema!({
        "description": "A dispatcher algorithm: its name or Kamailio's number.",
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "enum": values,
        "default": Algorithm::default().name(),
    })
}
