//! kubesbc's custom resources (group `kubesbc.io`) and the sbc configuration they render to.
#![forbid(unsafe_code)]

pub mod access;
pub mod cidr;
pub mod cluster;
pub mod config;
pub mod dispatcher;
pub mod listing;
pub mod observe;
pub mod policy;
pub mod routing;
pub mod status;
pub mod store;
pub mod throttle;

pub use access::{AccessList, AccessListSpec};
pub use cluster::{SbcCluster, SbcClusterSpec, SbcClusterStatus};
pub use dispatcher::{DispatcherSet, DispatcherSetSpec};
pub use status::{CommonStatus, SecretKeyRef};
pub use throttle::{TenantThrottle, TenantThrottleSpec};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every kubesbc resource.
pub const GROUP: &str = "kubesbc.io";

/// Every kubesbc CRD, in a stable order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        SbcCluster::crd(),
        DispatcherSet::crd(),
        TenantThrottle::crd(),
        AccessList::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                && let Ok(mut value) = serde_json::to_value(&*schema)
            {
                fix_int_or_string(&mut value);
                if let Ok(fixed) = serde_json::from_value(value) {
                    *schema = fixed;
                }
            }
        }
    }
    crds
}

/// OpenAPI 3.0 (and so the API server) knows `int32`/`int64` only; schemars writes
/// `uint16`, `uint32`, ... for unsigned fields, which draws "unrecognized format" warnings on
/// every `kubectl apply` of the CRDs. Map them to a signed format with the unsigned bounds.
fn fix_unsigned_format(map: &mut serde_json::Map<String, serde_json::Value>) {
    let (format, max): (&str, Option<u64>) = match map.get("format").and_then(|f| f.as_str()) {
        Some("uint8") => ("int32", Some(u64::from(u8::MAX))),
        Some("uint16") => ("int32", Some(u64::from(u16::MAX))),
        Some("uint32") => ("int64", Some(u64::from(u32::MAX))),
        Some("uint64") | Some("uint") => ("int64", None),
        _ => return,
    };
    map.insert("format".to_owned(), format.into());
    map.entry("minimum").or_insert_with(|| 0.into());
    if let Some(max) = max {
        map.entry("maximum").or_insert_with(|| max.into());
    }
}

/// kube's structural rewriter hoists `type` out of the `anyOf` of an int-or-string field and
/// leaves `anyOf: [{}, {}]`; the API server wants exactly `[{type: integer}, {type: string}]`.
fn fix_int_or_string(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            if map.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true)) {
                map.insert(
                    "anyOf".to_owned(),
                    serde_json::json!([{"type": "integer"}, {"type": "string"}]),
                );
                map.remove("type");
                map.remove("nullable");
            }
            fix_unsigned_format(map);
            map.values_mut().for_each(fix_int_or_string);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(fix_int_or_string),
        _ => {}
    }
}

/// The CRDs as one multi-document YAML stream, exactly what `crdgen` prints.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
