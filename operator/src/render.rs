//! The renderer: an SbcCluster and the resources it selects -> the sbc configuration and the
//! Kubernetes objects that run it. Pure: everything it needs is passed in, nothing is fetched.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Service, ServiceAccount};
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDefaults {
    /// Image when `spec.image` is absent; absent here: [`kubesbc_crds::cluster::DEFAULT_IMAGE`].
    pub image: Option<String>,
    /// `imagePullPolicy` when `spec.imagePullPolicy` is absent.
    pub pull_policy: Option<String>,
    /// `imagePullSecrets` when `spec.imagePullSecrets` is empty.
    pub pull_secrets: Vec<String>,
}

impl PodDefaults {
    /// Reads `KUBESBC_SBC_IMAGE`, `KUBESBC_SBC_IMAGE_PULL_POLICY` and
    /// `KUBESBC_SBC_IMAGE_PULL_SECRETS` (comma-separated names); empty values count as unset.
    pub fn from_env() -> PodDefaults {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        PodDefaults {
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
        }
    }
}

/// A hash of a Secret's data (keys and values, in key order): what decides whether the pods
/// mounting it restart.
pub fn secret_data_hash<'a>(data: impl IntoIterator<Item = (&'a String, &'a [u8])>) -> String {
    let mut text = Vec::new();
    for (k, v) in data {
        text.extend_from_slice(k.as_bytes());
        text.push(0);
        text.extend_from_slice(&(v.len() as u64).to_le_bytes());
        text.extend_from_slice(v);
    }
    fnv1a(&text)
}

/// Pod template annotation carrying a hash of the data of every Secret the sbc pods mount, so
/// a rotation rolls the pods: the sbc reads the Redis URL when it starts, and the nonce key
/// and required header values when it loads a configuration, and the kubelet refreshes a
/// mounted Secret only about once a minute, so a new pod is the one way the new value is
/// certain to be read.
pub const STARTUP_SECRETS: &str = "kubesbc.io/startup-secrets";

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
}

/// The object running a cluster's pods.
#[derive(Debug, Clone)]
pub enum Workload {
    /// `replicas` pods (or as many as the HPA says), spread by the scheduler.
    Deployment(Box<Deployment>),
    /// With `hostNetwork`: one pod on every node.
    DaemonSet(Box<DaemonSet>),
}

impl Workload {
    /// The pod template's spec.
    pub fn pod_spec(&self) -> Option<&PodSpec> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref()?.template.spec.as_ref(),
            Workload::DaemonSet(d) => d.spec.as_ref()?.template.spec.as_ref(),
        }
    }

    /// The labels the workload selects its pods by.
    pub fn selector(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref()?.selector.match_labels.as_ref(),
            Workload::DaemonSet(d) => d.spec.as_ref()?.selector.match_labels.as_ref(),
        }
    }

    /// The counts of the workload as the API server returned it (after apply).
    pub fn counts(&self) -> ReplicaCounts {
        match self {
            Workload::Deployment(d) => deployment_counts(d),
            Workload::DaemonSet(d) => daemon_set_counts(d),
        }
    }
}

/// Pods of a cluster's workload, for its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Pods wanted: the Deployment's replicas, or the nodes the DaemonSet should run on.
    pub desired: i32,
    /// Pods there are (`status.replicas` / `status.currentNumberScheduled`).
    pub current: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods running the current template (`updatedReplicas` / `updatedNumberScheduled`).
    pub updated: i32,
    /// The workload controller has seen the current spec (`status.observedGeneration` is
    /// at least `metadata.generation`).
    pub observed: bool,
}

impl ReplicaCounts {
    /// The rollout is over and every wanted pod is ready (and at least one is wanted): the
    /// controller saw the current spec, every pod runs the current template, no old pod is
    /// left, and all are ready.
    pub fn all_ready(&self) -> bool {
        self.desired > 0
            && self.observed
            && self.updated >= self.desired
            && self.current <= self.desired
            && self.ready >= self.desired
    }
}

fn observed(generation: Option<i64>, seen: Option<i64>) -> bool {
    match generation {
        None => true,
        Some(g) => seen.is_some_and(|s| s >= g),
    }
}

/// Counts of a Deployment as the API server returned it.
pub fn deployment_counts(d: &Deployment) -> ReplicaCounts {
    let st = d.status.as_ref();
    ReplicaCounts {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        current: st.and_then(|s| s.replicas).unwrap_or(0),
        ready: st.and_then(|s| s.ready_replicas).unwrap_or(0),
        updated: st.and_then(|s| s.updated_replicas).unwrap_or(0),
        observed: observed(
            d.metadata.generation,
            st.and_then(|s| s.observed_generation),
        ),
    }
}

/// Counts of a DaemonSet as the API server returned it: one pod per eligible node.
pub fn daemon_set_counts(d: &DaemonSet) -> ReplicaCounts {
    let st = d.status.as_ref();
    ReplicaCounts {
        desired: st.map_or(0, |s| s.desired_number_scheduled),
        current: st.map_or(0, |s| s.current_number_scheduled),
        ready: st.map_or(0, |s| s.number_ready),
        updated: st.and_then(|s| s.updated_number_scheduled).unwrap_or(0),
        observed: observed(
            d.metadata.generation,
            st.and_then(|s| s.observed_generation),
        ),
    }
}

/// Whether `selector` (absent: match nothing) matches `labels`.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else {
        return false;
    };
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
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

/// FNV-1a 64: a stable hash of the rendered config without pulling in a crypto crate.
pub fn fnv1a(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Where the Secret `name` is mounted in sbc pods.
pub fn secret_dir(name: &str) -> String {
    format!("{SECRETS_DIR}/{name}")
}

/// Checks that Secret `name` (in `obj`'s namespace) has `key`; returns the file the pods
/// read it from.
fn secret_file<K: Resource<DynamicType = ()>>(
    obj: &K,
    lookups: &Lookups,
    field: &str,
    name: &str,
    key: &str,
) -> Result<String, RenderError> {
    let ns = obj.namespace().unwrap_or_default();
    let keys = lookups
        .secrets
        .get(&(ns.clone(), name.to_owned()))
        .ok_or_else(|| {
            err(
                obj,
                "SecretNotFound",
                format!("{field}.name"),
                format!("Secret {ns}/{name} does not exist"),
            )
        })?;
    if !keys.contains(key) {
        return Err(err(
            obj,
            "SecretKeyNotFound",
            format!("{field}.key"),
            format!("Secret {ns}/{name} has no key {key:?}"),
        ));
    }
    Ok(format!("{}/{key}", secret_dir(name)))
}

/// `redis://user:pass@host/0` -> `redis://host/0`: what may be shown in a ConfigMap.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::new();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// The Secrets (in the cluster's namespace) a cluster's rendered config refers to and its
/// pods mount: the Redis URL, the nonce key of `auth` and the required-header values of the
/// selected AccessLists. A change to any of them re-renders the cluster.
pub fn mounted_secrets<'a>(
    cluster: &SbcCluster,
    access_lists: impl IntoIterator<Item = &'a AccessList>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = access_lists
        .into_iter()
        .flat_map(|a| a.spec.rules.iter())
        .flat_map(|r| r.required_headers.iter())
        .map(|h| h.secret_key_ref.name.clone())
        .collect();
    if let Some(r) = &cluster.spec.redis {
        out.insert(r.url_secret_ref.name.clone());
    }
    if let Some(a) = &cluster.spec.auth {
        out.insert(a.nonce_secret_ref.name.clone());
    }
    out
}

/// The hash for [`STARTUP_SECRETS`]: the data hashes of the Secrets `names` (in the
/// cluster's namespace); empty when the pods mount none.
pub fn startup_secrets_hash(
    cluster: &SbcCluster,
    names: &BTreeSet<String>,
    lookups: &Lookups,
) -> String {
    if names.is_empty() {
        return String::new();
    }
    let ns = cluster.namespace().unwrap_or_default();
    let mut text = String::new();
    for name in names {
        let hash = lookups
            .secret_hashes
            .get(&(ns.clone(), name.clone()))
            .map_or("", String::as_str);
        text.push_str(name);
        text.push('=');
        text.push_str(hash);
        text.push('\n');
    }
    fnv1a(text.as_bytes())
}

/// Renders one DispatcherSet into a config set, checking its Service reference.
pub fn render_set(
    ds: &DispatcherSet,
    lookups: &Lookups,
) -> Result<DispatcherSetConfig, RenderError> {
    let spec = &ds.spec;
    let service = match &spec.destinations.service {
        None => None,
        Some(s) => {
            let own = ds.namespace().unwrap_or_default();
            let ns = s.namespace.clone().unwrap_or_else(|| own.clone());
            // The sbc pods' Role is in the cluster's namespace: they could not watch another
            // namespace's EndpointSlices, and one namespace must not make the operator read
            // Services of another.
            if ns != own {
                return Err(err(
                    ds,
                    "CrossNamespaceService",
                    "spec.destinations.service.namespace",
                    format!(
                        "Service {ns}/{} is in another namespace: a DispatcherSet may only name Services in its own namespace ({own})",
                        s.name
                    ),
                ));
            }
            let ports = lookups
                .services
                .get(&(ns.clone(), s.name.clone()))
                .ok_or_else(|| {
                    err(
                        ds,
                        "ServiceNotFound",
                        "spec.destinations.service.name",
                        format!("Service {ns}/{} does not exist", s.name),
                    )
                })?;
            if !ports.contains(&s.port) {
                return Err(err(
                    ds,
                    "ServicePortNotFound",
                    "spec.destinations.service.port",
                    format!(
                        "Service {ns}/{} has no port named {:?} (it has: {})",
                        s.name,
                        s.port,
                        ports.join(", ")
                    ),
                ));
            }
            Some(ServiceSource {
                namespace: Some(ns),
                ..s.clone()
            })
        }
    };
    let set = DispatcherSetConfig {
        id: spec.set_id,
        algorithm: spec.algorithm,
        destinations: spec.destinations.static_.clone().unwrap_or_default(),
        service,
        probing: spec.probing.clone(),
        failover: spec.failover.clone(),
    };
    set.validate("spec").map_err(|e| match e {
        kubesbc_crds::config::ConfigError::Field { path, message } => err(
            ds,
            "InvalidDispatcherSet",
            path.replacen("spec.destinations[", "spec.destinations.static[", 1),
            message,
        ),
        other => internal(ds, "spec", other),
    })?;
    Ok(set)
}

/// Renders one AccessList, resolving the Secrets of its required headers.
pub fn render_access_list(
    acl: &AccessList,
    lookups: &Lookups,
) -> Result<AccessListConfig, RenderError> {
    let mut rules = Vec::with_capacity(acl.spec.rules.len());
    for (i, r) in acl.spec.rules.iter().enumerate() {
        let mut required = Vec::with_capacity(r.required_headers.len());
        for (j, h) in r.required_headers.iter().enumerate() {
            let field = format!("spec.rules[{i}].requiredHeaders[{j}].secretKeyRef");
            let file = secret_file(
                acl,
                lookups,
                &field,
                &h.secret_key_ref.name,
                &h.secret_key_ref.key,
            )?;
            required.push(HeaderValue {
                name: h.name.clone(),
                value: None,
                value_file: Some(file),
            });
        }
        rules.push(AccessRule {
            action: r.action,
            sources: r.sources.clone(),
            user_agents: r.user_agents.clone(),
            from_domains: r.from_domains.clone(),
            required_headers: required,
            methods: r.methods.clone(),
            response_code: r.response_code(),
        });
    }
    let out = AccessListConfig {
        name: format!("{}/{}", acl.namespace().unwrap_or_default(), acl.name_any()),
        rules,
        default_action: acl.spec.default_action,
        flood: acl.spec.flood.clone(),
        register_flood: acl.spec.register_flood.clone(),
        trusted: acl.spec.trusted.clone(),
        drop_scanners: acl.spec.drop_scanners,
        ban_response_code: acl.spec.ban_response_code,
    };
    out.validate("spec").map_err(|e| match e {
        kubesbc_crds::config::ConfigError::Field { path, message } => {
            err(acl, "InvalidAccessList", path, message)
        }
        other => internal(acl, "spec", other),
    })?;
    Ok(out)
}

/// Renders one TenantThrottle.
pub fn render_throttle(tt: &TenantThrottle) -> Result<ThrottleConfig, RenderError> {
    let s = &tt.spec;
    let out = ThrottleConfig {
        name: format!("{}/{}", tt.namespace().unwrap_or_default(), tt.name_any()),
        header: s.header.clone(),
        tenants: s.tenants.clone(),
        default: s.default.clone(),
        methods: s.methods.clone(),
        response: s.response.clone(),
        missing_tenant: s.missing_tenant,
        dialog_timeout_secs: s.dialog_timeout_secs,
    };
    out.validate("spec").map_err(|e| match e {
        kubesbc_crds::config::ConfigError::Field { path, message } => {
            err(tt, "InvalidTenantThrottle", path, message)
        }
        other => internal(tt, "spec", other),
    })?;
    Ok(out)
}

/// What a listener without `advertise` advertises: the LoadBalancer Service's address, once
/// the cloud gave it one (an IPv6 address in brackets, as SIP writes it).
fn load_balancer_advertise(cluster: &SbcCluster, lookups: &Lookups) -> Option<String> {
    if cluster.spec.service.type_ != kubesbc_crds::cluster::ServiceType::LoadBalancer {
        return None;
    }
    let host = lookups.load_balancer.as_deref()?.trim();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ';') {
        return None;
    }
    Some(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    })
}

/// The first address in a Service's `status.loadBalancer.ingress` (IP, else hostname).
pub fn load_balancer_address(svc: &Service) -> Option<String> {
    let ingress = svc
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
}

/// Name of the ServiceAccount, Role and RoleBinding of a cluster's pods: suffixed, so that a
/// cluster named `default` never touches the namespace's `default` ServiceAccount.
pub fn pod_identity(cluster: &SbcCluster) -> String {
    format!("{}-sbc", cluster.name_any())
}

/// The label selector of a cluster's pods, as the `scale` subresource reports it.
pub fn pod_selector_string(cluster: &SbcCluster) -> String {
    pod_selector(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

mod erased_json {
    /// Object-safe `serde_json::to_value`, so one closure converts fields of any type.
    pub trait ToJson {
        fn to_json(&self) -> Result<serde_json::Value, serde_json::Error>;
    }

    impl<T: serde::Serialize> ToJson for T {
        fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
            serde_json::to_value(self)
        }
    }
}

/// Resources of the sbc container when the spec sets none.
pub fn default_resources() -> serde_json::Value {
    json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
}

/// Renders the sbc configuration of a cluster (validated with [`SbcConfig::validate`]).
pub fn render_config(inputs: Inputs<'_>) -> Result<SbcConfig, RenderError> {
    let cluster = inputs.cluster;
    let spec = &cluster.spec;
    // The name becomes Service names (`<name>-admin`, DNS-1035 labels of at most 63
    // characters) and a label value.
    let name = cluster.name_any();
    let dns1035 = name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !dns1035 {
        return Err(err(
            cluster,
            "InvalidName",
            "metadata.name",
            format!(
                "{name:?} must be at most {MAX_NAME} lower-case letters, digits and '-', starting with a letter (it names Services)"
            ),
        ));
    }
    let listeners = spec
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let port = u16::try_from(l.port).map_err(|_| {
                err(
                    cluster,
                    "InvalidListener",
                    format!("spec.listeners[{i}].port"),
                    format!("{} is not a port", l.port),
                )
            })?;
            Ok(Listener {
                transport: l.transport,
                address: std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                advertise: l
                    .advertise
                    .clone()
                    .or_else(|| load_balancer_advertise(cluster, inputs.lookups)),
                path: l.path.clone(),
                allowed_origins: l.allowed_origins.clone(),
            })
        })
        .collect::<Result<Vec<_>, RenderError>>()?;

    // Sets in set-id order so the rendered document (and its hash) is stable.
    let mut sets: Vec<(&DispatcherSet, DispatcherSetConfig)> = Vec::new();
    for ds in inputs.dispatcher_sets {
        let set = render_set(ds, inputs.lookups)?;
        if let Some((other, _)) = sets.iter().find(|(_, s)| s.id == set.id) {
            let (first, second) = if other.name_any() <= ds.name_any() {
                (*other, ds)
            } else {
                (ds, *other)
            };
            return Err(err(
                second,
                "DuplicateSetId",
                "spec.setId",
                format!("set id {} is also used by {}", set.id, id(first)),
            ));
        }
        sets.push((ds, set));
    }
    sets.sort_by_key(|(_, s)| s.id);
    let sets: Vec<DispatcherSetConfig> = sets.into_iter().map(|(_, s)| s).collect();
    let default_set = spec
        .default_set
        .or_else(|| sets.iter().map(|s| s.id).find(|id| *id == 1))
        .or_else(|| sets.first().map(|s| s.id))
        .unwrap_or(1);
    if !sets.is_empty() && !sets.iter().any(|s| s.id == default_set) {
        return Err(err(
            cluster,
            "DefaultSetNotFound",
            "spec.defaultSet",
            format!("no selected DispatcherSet has set id {default_set}"),
        ));
    }

    let mut access_lists: Vec<AccessListConfig> = inputs
        .access_lists
        .iter()
        .map(|a| render_access_list(a, inputs.lookups))
        .collect::<Result<_, _>>()?;
    access_lists.sort_by(|a, b| a.name.cmp(&b.name));
    let mut throttles: Vec<ThrottleConfig> = inputs
        .throttles
        .iter()
        .map(render_throttle)
        .collect::<Result<_, _>>()?;
    throttles.sort_by(|a, b| a.name.cmp(&b.name));

    let store = match &spec.redis {
        None => None,
        Some(r) => {
            let url_file = secret_file(
                cluster,
                inputs.lookups,
                "spec.redis.urlSecretRef",
                &r.url_secret_ref.name,
                &r.url_secret_ref.key,
            )?;
            let prefix = r.key_prefix.clone().unwrap_or_else(|| {
                format!(
                    "{}/{}:",
                    cluster.namespace().unwrap_or_default(),
                    cluster.name_any()
                )
            });
            // The full URL stays in the Secret (the pods read `urlFile`); the ConfigMap shows
            // where it points, without the password.
            let url = inputs
                .lookups
                .redis_url
                .as_deref()
                .map(|u| without_password(u.trim()))
                .unwrap_or_default();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(err(
                    cluster,
                    "InvalidRedisUrl",
                    "spec.redis.urlSecretRef",
                    format!(
                        "key {:?} of Secret {} does not hold a redis:// or rediss:// URL",
                        r.url_secret_ref.key, r.url_secret_ref.name
                    ),
                ));
            }
            let mut store: StoreConfig = serde_json::from_value(json!({"url": url}))
                .map_err(|e| internal(cluster, "spec.redis", e))?;
            store.url_file = Some(url_file);
            store.key_prefix = Some(prefix);
            if let Some(t) = r.timeout_ms {
                store.timeout_ms = t;
            }
            Some(store)
        }
    };
    let auth = match &spec.auth {
        None => None,
        Some(a) => {
            // The key stays in its Secret: the pods read `nonceSecretFile`.
            let key_file = secret_file(
                cluster,
                inputs.lookups,
                "spec.auth.nonceSecretRef",
                &a.nonce_secret_ref.name,
                &a.nonce_secret_ref.key,
            )?;
            Some(AuthConfig {
                realm: a.realm.clone(),
                methods: a.methods.clone(),
                trusted_sources: a.trusted_sources.clone(),
                nonce_secret: String::new(),
                nonce_secret_file: Some(key_file),
                nonce_lifetime_secs: a.nonce_lifetime_secs,
                algorithms: a.algorithms.clone(),
                subscriber_prefix: default_subscriber_prefix(),
                credentials_key: a.credentials_key.clone(),
                failure_block: a.failure_block.clone(),
                check_identity: true,
            })
        }
    };
    if !spec.rtpengine.is_empty() {
        // The sbc refuses a media section until its call path anchors media: rendering one
        // would crash-loop every pod, so the resource is refused here, naming the field.
        return Err(err(
            cluster,
            "NotImplemented",
            "spec.rtpengine",
            "media anchoring through rtpengine is not wired into the sbc's call path yet; \
             remove spec.rtpengine"
                .to_owned(),
        ));
    }
    let admin_port = spec.admin_port.unwrap_or(DEFAULT_ADMIN_PORT);
    let config = SbcConfig {
        listeners,
        dispatcher: DispatcherConfig { default_set, sets },
        admin: AdminConfig {
            address: std::net::SocketAddr::from(([0, 0, 0, 0], admin_port)),
        },
        limits: spec.limits.clone().unwrap_or_default(),
        relay: spec.relay.clone().unwrap_or_default(),
        drain: spec.drain.clone().unwrap_or_default(),
        store,
        access_lists,
        throttles,
        auth,
        media: None,
        tls: spec.tls.as_ref().map(|_| TlsConfig {
            cert_file: format!("{TLS_DIR}/tls.crt"),
            key_file: format!("{TLS_DIR}/tls.key"),
            ..TlsConfig::default()
        }),
        scanners: Default::default(),
        backend_tls: None,
    };
    config.validate().map_err(|e| {
        let (field, message) = match e {
            kubesbc_crds::config::ConfigError::Field { path, message } => (path, message),
            other => ("sbc.yaml".to_owned(), other.to_string()),
        };
        err(
            cluster,
            "InvalidConfig",
            format!("sbc.yaml {field}"),
            message,
        )
    })?;
    Ok(config)
}

/// Renders the configuration and every object the cluster owns.
pub fn render(inputs: Inputs<'_>) -> Result<Rendered, RenderError> {
    let cluster = inputs.cluster;
    if cluster.spec.host_network && cluster.spec.autoscaling.is_some() {
        // The CRD's CEL rule refuses this; an object stored before that rule is refused here.
        return Err(err(
            cluster,
            "InvalidSpec",
            "spec.autoscaling",
            "cannot be used with spec.hostNetwork: host-network pods run as a DaemonSet, one per node",
        ));
    }
    let config = render_config(inputs)?;
    let yaml = config.to_yaml();
    let config_hash = fnv1a(yaml.as_bytes());
    let owner = cluster.controller_owner_ref(&()).ok_or_else(|| {
        err(
            cluster,
            "RenderFailed",
            "metadata.uid",
            "the SbcCluster has no uid yet",
        )
    })?;
    let objects = Objects {
        cluster,
        owner,
        labels: labels(cluster),
        ns: cluster.namespace().unwrap_or_default(),
        name: cluster.name_any(),
    };
    Ok(Rendered {
        config_map: objects.config_map(&yaml, &config_hash)?,
        workload: objects.workload(
            &config,
            &mounted_secrets(cluster, inputs.access_lists),
            &startup_secrets_hash(
                cluster,
                &mounted_secrets(cluster, inputs.access_lists),
                inputs.lookups,
            ),
            &inputs.lookups.defaults,
        )?,
        services: objects.services()?,
        admin_service: objects.admin_service(&config)?,
        service_account: objects.typed(json!({}), "ServiceAccount", &pod_identity(cluster))?,
        role: objects.role()?,
        role_binding: objects.role_binding()?,
        pdb: if cluster.spec.host_network {
            None
        } else {
            Some(objects.pdb()?)
        },
        hpa: objects.hpa()?,
        config,
        config_hash,
    })
}

struct Objects<'a> {
    cluster: &'a SbcCluster,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    ns: String,
    name: String,
}

impl Objects<'_> {
    fn meta(&self, name: &str) -> serde_json::Value {
        json!({
            "name": name,
            "namespace": self.ns,
            "labels": self.labels,
            "ownerReferences": [self.owner],
        })
    }

    /// Builds a typed object from JSON so that a typo fails the tests instead of the API call.
    fn typed<T: serde::de::DeserializeOwned + Resource<DynamicType = ()>>(
        &self,
        mut body: serde_json::Value,
        what: &str,
        name: &str,
    ) -> Result<T, RenderError> {
        if let Some(map) = body.as_object_mut() {
            map.insert("apiVersion".into(), T::api_version(&()).into());
            map.insert("kind".into(), T::kind(&()).into());
            map.insert("metadata".into(), self.meta(name));
        }
        serde_json::from_value(body).map_err(|e| internal(self.cluster, what, e))
    }

    fn config_map(&self, yaml: &str, hash: &str) -> Result<ConfigMap, RenderError> {
        let mut cm: ConfigMap = self.typed(
            json!({"data": {CONFIG_KEY: yaml}}),
            "ConfigMap",
            &config_map_name(self.cluster),
        )?;
        cm.metadata.annotations = Some(BTreeMap::from([(
            "kubesbc.io/config-hash".to_owned(),
            hash.to_owned(),
        )]));
        Ok(cm)
    }

    fn workload(
        &self,
        config: &SbcConfig,
        secrets: &BTreeSet<String>,
        startup_secrets: &str,
        defaults: &PodDefaults,
    ) -> Result<Workload, RenderError> {
        let spec = &self.cluster.spec;
        let template_meta = self.template_meta(startup_secrets);
        let admin_port = i32::from(config.admin.address.port());
        let mut ports: Vec<serde_json::Value> = spec
            .listeners
            .iter()
            .map(|l| {
                json!({
                    "name": port_name(l.transport, l.port),
                    "containerPort": l.port,
                    "protocol": protocol(l.transport),
                })
            })
            .collect();
        ports.push(json!({"name": "admin", "containerPort": admin_port, "protocol": "TCP"}));
        let low_port = spec.listeners.iter().any(|l| l.port < 1024) || admin_port < 1024;
        let mut caps = json!({"drop": ["ALL"]});
        if low_port {
            caps["add"] = json!(["NET_BIND_SERVICE"]);
        }
        let mut mounts = vec![json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true})];
        let mut volumes = vec![json!({
            "name": "config",
            "configMap": {"name": config_map_name(self.cluster)},
        })];
        for (i, name) in secrets.iter().enumerate() {
            // Volume names must be DNS labels; Secret names may be longer, so number them.
            let volume = format!("secret-{i}");
            mounts.push(json!({"name": volume, "mountPath": secret_dir(name), "readOnly": true}));
            volumes.push(
                json!({"name": volume, "secret": {"secretName": name, "defaultMode": 0o440}}),
            );
        }
        if let Some(tls) = &spec.tls {
            mounts.push(json!({"name": "tls", "mountPath": TLS_DIR, "readOnly": true}));
            volumes.push(json!({"name": "tls", "secret": {"secretName": tls.secret_name}}));
        }
        let mut container = json!({
            "name": "sbc",
            "image": spec.image.clone().or_else(|| defaults.image.clone()).unwrap_or_else(|| kubesbc_crds::cluster::DEFAULT_IMAGE.to_owned()),
            // The sbc watches its ConfigMap through the API, so a change takes effect within a
            // second; the kubelet refreshes a mounted one only about once a minute.
            "args": ["--configmap", format!("$(POD_NAMESPACE)/{}", config_map_name(self.cluster))],
            "env": [
                {"name": "KUBESBC_CONFIGMAP", "value": config_map_name(self.cluster)},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            ],
            "ports": ports,
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 2},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10, "failureThreshold": 3},
            "volumeMounts": mounts,
            "securityContext": {
                "runAsNonRoot": true,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": caps,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
        });
        if let Some(policy) = spec
            .image_pull_policy
            .map(|p| p.as_str().to_owned())
            .or_else(|| defaults.pull_policy.clone())
        {
            container["imagePullPolicy"] = json!(policy);
        }
        container["resources"] = match &spec.resources {
            Some(res) => serde_json::to_value(res)
                .map_err(|e| internal(self.cluster, "spec.resources", e))?,
            None => default_resources(),
        };
        // Calls can last hours: the pod gets the drain grace period plus time to exit.
        let grace = config.drain.grace_period_secs.saturating_add(5);
        let mut pod = json!({
            "serviceAccountName": pod_identity(self.cluster),
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
            "containers": [container],
            "volumes": volumes,
        });
        self.place(&mut pod, defaults)?;
        if spec.host_network {
            pod["hostNetwork"] = json!(true);
            // Without it a host-network pod resolves with the node's resolv.conf and cannot
            // reach the API server or Redis by their Service names.
            pod["dnsPolicy"] = json!("ClusterFirstWithHostNet");
            // One pod per node; a surge pod could not bind the SIP ports its predecessor
            // holds on the node's network, so a rollout replaces them one node at a time.
            let body = json!({
                "spec": {
                    "selector": {"matchLabels": pod_selector(self.cluster)},
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
                    "template": {"metadata": template_meta, "spec": pod},
                }
            });
            return self
                .typed(body, "DaemonSet", &self.name)
                .map(|d| Workload::DaemonSet(Box::new(d)));
        }
        let mut body = json!({
            "spec": {
                "selector": {"matchLabels": pod_selector(self.cluster)},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {"metadata": template_meta, "spec": pod},
            }
        });
        // With autoscaling the HPA owns the replica count; leaving it out keeps SSA from
        // fighting it.
        if spec.autoscaling.is_none() {
            body["spec"]["replicas"] = json!(spec.replicas.unwrap_or(2));
        }
        self.typed(body, "Deployment", &self.name)
            .map(|d| Workload::Deployment(Box::new(d)))
    }

    /// Labels (the cluster's win over `podLabels`) and annotations of the pod template.
    fn template_meta(&self, startup_secrets: &str) -> serde_json::Value {
        let placement = &self.cluster.spec.placement;
        let mut labels = placement.pod_labels.clone();
        labels.extend(self.labels.clone());
        let mut annotations = placement.pod_annotations.clone();
        if !startup_secrets.is_empty() {
            annotations.insert(STARTUP_SECRETS.to_owned(), startup_secrets.to_owned());
        }
        if annotations.is_empty() {
            json!({"labels": labels})
        } else {
            json!({"labels": labels, "annotations": annotations})
        }
    }

    /// The placement fields of the spec, and the default spread across nodes.
    fn place(
        &self,
        pod: &mut serde_json::Value,
        defaults: &PodDefaults,
    ) -> Result<(), RenderError> {
        let p = &self.cluster.spec.placement;
        let cluster = self.cluster;
        let to = |v: &dyn erased_json::ToJson, field: &str| {
            v.to_json().map_err(|e| internal(cluster, field, e))
        };
        if !p.node_selector.is_empty() {
            pod["nodeSelector"] = to(&p.node_selector, "spec.nodeSelector")?;
        }
        if !p.tolerations.is_empty() {
            pod["tolerations"] = to(&p.tolerations, "spec.tolerations")?;
        }
        if let Some(a) = &p.affinity {
            pod["affinity"] = to(a, "spec.affinity")?;
        }
        if let Some(c) = &p.priority_class_name {
            pod["priorityClassName"] = json!(c);
        }
        let secrets: Vec<serde_json::Value> = if p.image_pull_secrets.is_empty() {
            defaults
                .pull_secrets
                .iter()
                .map(|n| json!({"name": n}))
                .collect()
        } else {
            p.image_pull_secrets
                .iter()
                .map(|r| json!({"name": r.name}))
                .collect()
        };
        if !secrets.is_empty() {
            pod["imagePullSecrets"] = json!(secrets);
        }
        // A DaemonSet already runs one pod per node.
        if !self.cluster.spec.host_network {
            pod["topologySpreadConstraints"] = if p.topology_spread_constraints.is_empty() {
                json!([{
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": pod_selector(self.cluster)},
                }])
            } else {
                to(
                    &p.topology_spread_constraints,
                    "spec.topologySpreadConstraints",
                )?
            };
        }
        Ok(())
    }

    fn services(&self) -> Result<Vec<Service>, RenderError> {
        let spec = &self.cluster.spec;
        let exposed = spec.service.type_ != kubesbc_crds::cluster::ServiceType::ClusterIP;
        let port = |l: &kubesbc_crds::cluster::ListenerSpec| {
            let mut p = json!({
                "name": port_name(l.transport, l.port),
                "port": l.port,
                "targetPort": port_name(l.transport, l.port),
                "protocol": protocol(l.transport),
            });
            if let Some(np) = l.node_port.filter(|_| exposed) {
                p["nodePort"] = json!(np);
            }
            p
        };
        // One Service for UDP and TCP alike: a mixed-protocol LoadBalancer (GA since
        // Kubernetes 1.26) gives both one address, which SIP needs (a client reaching the sbc
        // over UDP is told, in Record-Route, to come back over TCP to the same host).
        let groups: Vec<(String, Vec<serde_json::Value>)> =
            vec![(self.name.clone(), spec.listeners.iter().map(port).collect())];
        groups
            .into_iter()
            .map(|(name, ports)| {
                let mut svc_spec = json!({
                    "type": spec.service.type_.as_str(),
                    "selector": pod_selector(self.cluster),
                    "ports": ports,
                });
                if let Some(p) = spec.service.external_traffic_policy
                    && spec.service.type_ != kubesbc_crds::cluster::ServiceType::ClusterIP
                {
                    svc_spec["externalTrafficPolicy"] = json!(match p {
                        kubesbc_crds::cluster::TrafficPolicy::Cluster => "Cluster",
                        kubesbc_crds::cluster::TrafficPolicy::Local => "Local",
                    });
                }
                let mut svc: Service = self.typed(json!({"spec": svc_spec}), "Service", &name)?;
                if !spec.service.annotations.is_empty() {
                    svc.metadata.annotations = Some(spec.service.annotations.clone());
                }
                Ok(svc)
            })
            .collect()
    }

    fn admin_service(&self, config: &SbcConfig) -> Result<Service, RenderError> {
        self.typed(
            json!({"spec": {
                "type": "ClusterIP",
                "selector": pod_selector(self.cluster),
                "ports": [{"name": "admin", "port": config.admin.address.port(), "targetPort": "admin", "protocol": "TCP"}],
            }}),
            "Service",
            &format!("{}-admin", self.name),
        )
    }

    fn role(&self) -> Result<Role, RenderError> {
        self.typed(
            json!({"rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [config_map_name(self.cluster)], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["services"], "verbs": ["get"]},
            ]}),
            "Role",
            &pod_identity(self.cluster),
        )
    }

    fn role_binding(&self) -> Result<RoleBinding, RenderError> {
        self.typed(
            json!({
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": pod_identity(self.cluster)},
                "subjects": [{"kind": "ServiceAccount", "name": pod_identity(self.cluster), "namespace": self.ns}],
            }),
            "RoleBinding",
            &pod_identity(self.cluster),
        )
    }

    fn pdb(&self) -> Result<PodDisruptionBudget, RenderError> {
        self.typed(
            // AlwaysAllow: a pod that is not ready (every backend down, or stuck) can still be
            // evicted, so a node drain is never blocked by the budget of a broken pod.
            json!({"spec": {
                "maxUnavailable": 1,
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
                "selector": {"matchLabels": pod_selector(self.cluster)},
            }}),
            "PodDisruptionBudget",
            &self.name,
        )
    }

    fn hpa(&self) -> Result<Option<HorizontalPodAutoscaler>, RenderError> {
        // A DaemonSet runs one pod per node: nothing to scale.
        let Some(a) = &self.cluster.spec.autoscaling else {
            return Ok(None);
        };
        if self.cluster.spec.host_network {
            return Ok(None);
        }
        self.typed(
            json!({"spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
                "minReplicas": a.min_replicas,
                "maxReplicas": a.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.target_cpu_utilization}}}],
                // Calls last long and a removed pod drains them: scale down slowly, one pod
                // at a time.
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]}},
            }}),
            "HorizontalPodAutoscaler",
            &self.name,
        )
        .map(Some)
    }
}
