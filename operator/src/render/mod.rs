//! The renderer: an SbcCluster and the resources it selects -> the sbc configuration and the
//! Kubernetes objects that run it. Pure: everything it needs is passed in, nothing is fetched.
//!
//! `config` renders the sbc configuration, `objects` the workload and its companions, `secrets`
//! the mounted Secrets and their hashes, `status` reads replica counts back; the parts share
//! this module's types and imports.

mod config;
mod objects;
mod secrets;
mod status;

pub use config::*;
pub use objects::*;
pub use secrets::*;
pub use status::*;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::{Resource, ResourceExt};
use kubesbc_crds::config::{
    AdminConfig, DispatcherConfig, DispatcherSetConfig, Listener, SbcConfig, StoreConfig, Transport,
};
use kubesbc_crds::policy::{
    AccessListConfig, AccessRule, AuthConfig, HeaderValue, ServiceSource, ThrottleConfig,
    TlsConfig, default_subscriber_prefix,
};
use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster, TenantThrottle};
use serde_json::json;

/// Where the ConfigMap is mounted in sbc pods.
pub const CONFIG_DIR: &str = "/etc/kubesbc/config";
/// Where referenced Secrets are mounted in sbc pods, one directory per Secret.
pub const SECRETS_DIR: &str = "/etc/kubesbc/secrets";
/// Where the TLS Secret is mounted in sbc pods.
pub const TLS_DIR: &str = "/etc/kubesbc/tls";
/// Key of the rendered configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "sbc.yaml";
/// Longest SbcCluster name: `<name>-admin` must stay a 63-character Service name.
pub const MAX_NAME: usize = 57;
/// Default admin port.
pub const DEFAULT_ADMIN_PORT: u16 = 9090;

/// A resource the schema let through but that cannot be put into effect. The message names
/// the offending field of the offending object; the reason goes into the `Accepted` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {message}")]
pub struct RenderError {
    /// CamelCase reason for the condition (`DuplicateSetId`, `SecretNotFound`, ...).
    pub reason: &'static str,
    /// `Kind namespace/name` of the object at fault.
    pub object: String,
    /// Path of the field at fault, `spec.setId`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Secrets and Services the renderer may refer to, already read from the API.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    /// `(namespace, name)` -> the keys of the Secret. Values are never read: the pods get
    /// them from the mounted Secret.
    pub secrets: BTreeMap<(String, String), BTreeSet<String>>,
    /// The Redis URL from `spec.redis.urlSecretRef`, read so the ConfigMap can show it
    /// without its password.
    pub redis_url: Option<String>,
    /// `(namespace, name)` -> the names of the Service's ports.
    pub services: BTreeMap<(String, String), Vec<String>>,
    /// `(namespace, name)` -> a hash of the Secret's data (see [`secret_data_hash`]): the
    /// pods restart when the data of a Secret they mount changes (see [`STARTUP_SECRETS`]),
    /// and only then (a label or annotation change bumps `resourceVersion`, not this).
    pub secret_hashes: BTreeMap<(String, String), String>,
    /// The first address of the cluster's LoadBalancer Service
    /// (`status.loadBalancer.ingress[0]`, IP or hostname), advertised by listeners that set
    /// no `advertise` of their own.
    pub load_balancer: Option<String>,
    /// What the operator was installed with for pods whose spec says nothing.
    pub defaults: PodDefaults,
}

/// Defaults of the sbc pods, from the operator's environment (the chart's `sbcImage` values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodDefaults {
    /// Image when `spec.image` is absent; absent here: [`kubesbc_crds::cluster::DEFAULT_IMAGE`].
    pub image: Option<String>,
    /// `imagePullPolicy` when `spec.imagePullPolicy` is absent.
    pub pull_policy: Option<String>,
    /// `imagePullSecrets` when `spec.imagePullSecrets` is empty.
    pub pull_secrets: Vec<String>,
    /// A NetworkPolicy for every cluster's pods (the chart's `networkPolicy.enabled`).
    pub network_policy: Option<PolicyPeers>,
}

/// Who may reach the sbc pods' admin port (everyone reaches SIP): the operator's pods and
/// Prometheus, from `KUBESBC_NETWORK_POLICY` (JSON with these camelCase fields).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyPeers {
    /// The operator's namespace.
    pub operator_namespace: String,
    /// Labels of the operator's pods.
    pub operator_pod_labels: BTreeMap<String, String>,
    /// Namespaces of the Prometheus that scrapes `/metrics` (a LabelSelector).
    pub prometheus_namespace_selector: LabelSelector,
    /// Its pods (a LabelSelector).
    pub prometheus_pod_selector: LabelSelector,
}

impl PodDefaults {
    /// Reads `KUBESBC_SBC_IMAGE`, `KUBESBC_SBC_IMAGE_PULL_POLICY`,
    /// `KUBESBC_SBC_IMAGE_PULL_SECRETS` (comma-separated names) and `KUBESBC_NETWORK_POLICY`
    /// ([`PolicyPeers`] as JSON); empty values count as unset. A policy that does not parse
    /// is an error naming the variable: the operator does not start without the isolation
    /// it was installed with.
    pub fn from_env() -> Result<PodDefaults, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let network_policy = var("KUBESBC_NETWORK_POLICY")
            .map(|v| {
                serde_json::from_str::<PolicyPeers>(&v)
                    .map_err(|e| format!("KUBESBC_NETWORK_POLICY: {e}"))
            })
            .transpose()?;
        Ok(PodDefaults {
            network_policy,
            image: var("KUBESBC_SBC_IMAGE"),
            pull_policy: var("KUBESBC_SBC_IMAGE_PULL_POLICY"),
            pull_secrets: var("KUBESBC_SBC_IMAGE_PULL_SECRETS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Everything one SbcCluster renders from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The cluster.
    pub cluster: &'a SbcCluster,
    /// DispatcherSets its selector matches.
    pub dispatcher_sets: &'a [DispatcherSet],
    /// TenantThrottles its selector matches.
    pub throttles: &'a [TenantThrottle],
    /// AccessLists its selector matches.
    pub access_lists: &'a [AccessList],
    /// Referenced Secrets and Services.
    pub lookups: &'a Lookups,
}

/// The objects an SbcCluster owns.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The sbc configuration.
    pub config: SbcConfig,
    /// FNV-1a hash of `sbc.yaml`, hex; recorded in the status and the ConfigMap annotations.
    pub config_hash: String,
    /// The ConfigMap holding `sbc.yaml`.
    pub config_map: ConfigMap,
    /// The sbc pods: a Deployment, or a DaemonSet with `hostNetwork`.
    pub workload: Workload,
    /// The SIP Service: one for every listener, UDP and TCP alike (mixed-protocol
    /// LoadBalancers are GA since Kubernetes 1.26), so both share one address.
    pub services: Vec<Service>,
    /// The admin/metrics Service.
    pub admin_service: Service,
    /// Identity of the sbc pods.
    pub service_account: ServiceAccount,
    /// What the sbc pods may read.
    pub role: Role,
    /// Binds the role to the service account.
    pub role_binding: RoleBinding,
    /// Keeps all but one pod up during voluntary disruptions (Deployments only: a DaemonSet's
    /// pods have no scale for `maxUnavailable` to count against).
    pub pdb: Option<PodDisruptionBudget>,
    /// Present when the cluster autoscales.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// SIP from anywhere, the admin port only from the operator and Prometheus; when the
    /// operator was installed with `networkPolicy.enabled`. None with `hostNetwork`:
    /// NetworkPolicies do not apply to pods on the node's network.
    pub network_policy: Option<NetworkPolicy>,
}

fn id<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

fn err<K: Resource<DynamicType = ()>>(
    obj: &K,
    reason: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> RenderError {
    RenderError {
        reason,
        object: id(obj),
        field: field.into(),
        message: message.into(),
    }
}

fn internal<K: Resource<DynamicType = ()>>(
    obj: &K,
    what: &str,
    e: impl std::fmt::Display,
) -> RenderError {
    err(obj, "RenderFailed", what, e.to_string())
}

/// Labels every object of a cluster carries; the first two select its pods.
pub fn labels(cluster: &SbcCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "kubesbc".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.name_any()),
        ("app.kubernetes.io/component".to_owned(), "sbc".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "kubesbc-operator".to_owned(),
        ),
    ])
}

fn pod_selector(cluster: &SbcCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "kubesbc".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.name_any()),
    ])
}

/// Name of the ConfigMap of a cluster.
pub fn config_map_name(cluster: &SbcCluster) -> String {
    format!("{}-config", cluster.name_any())
}

/// Name of a listener's container port (at most 15 characters, as Kubernetes wants).
pub fn port_name(transport: Transport, port: i32) -> String {
    format!("{}-{port}", transport.name())
}

fn protocol(t: Transport) -> &'static str {
    if t == Transport::Udp { "UDP" } else { "TCP" }
}
