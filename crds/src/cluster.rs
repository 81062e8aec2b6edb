//! SbcCluster: a fleet of sbc pods, its listeners and Services, and the selectors choosing
//! which DispatcherSets, TenantThrottles and AccessLists apply to it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{DrainConfig, Limits, RelayConfig, Transport};
use crate::policy::{
    AuthFailureBlock, Challenge, DigestAlgorithm, default_auth_methods, default_credentials_key,
    default_digest_algorithms, default_nonce_lifetime_secs,
};
use crate::status::SecretKeyRef;

/// Image of the sbc pods when the spec does not name one.
pub const DEFAULT_IMAGE: &str = "ghcr.io/kubesbc/sbc:0.1.0";

/// A fleet of sbc pods.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubesbc.io",
    version = "v1alpha1",
    kind = "SbcCluster",
    namespaced,
    status = "SbcClusterStatus",
    shortname = "sbc",
    category = "kubesbc",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    doc = "A fleet of kubesbc SIP proxies and what they listen on.",
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Destinations Up","type":"integer","jsonPath":".status.destinationsUp"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.replicas) && has(self.autoscaling))", "message": "set spec.replicas or spec.autoscaling, not both"},
    {"rule": "has(self.tls) || !self.listeners.exists(l, l.transport == 'tls' || l.transport == 'wss')", "message": "tls and wss listeners need spec.tls"},
    {"rule": "self.listeners.all(a, self.listeners.exists_one(b, b.transport == a.transport && b.port == a.port))", "message": "spec.listeners: a transport and port pair is listed twice"},
    {"rule": "!(has(self.hostNetwork) && self.hostNetwork && has(self.autoscaling))", "message": "spec.autoscaling cannot be used with spec.hostNetwork: host-network pods run as a DaemonSet, one per node"},
    {"rule": "!(has(self.hostNetwork) && self.hostNetwork && has(self.replicas))", "message": "spec.replicas cannot be used with spec.hostNetwork: host-network pods run as a DaemonSet, one per node"},
    {"rule": "!has(self.autoscaling) || (has(self.resources) && has(self.resources.requests) && 'cpu' in self.resources.requests)", "message": "spec.autoscaling needs spec.resources.requests.cpu: the HPA scales on CPU utilisation of the requests"}
]))]
pub struct SbcClusterSpec {
    /// Number of sbc pods (when `autoscaling` is not set). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: Option<i32>,
    /// Scale on CPU between `minReplicas` and `maxReplicas` (an HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// Container image of the sbc. Absent: the operator's default (chart value `sbcImage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// SIP listeners; each becomes a container port and a Service port.
    #[schemars(length(min = 1, max = 16))]
    pub listeners: Vec<ListenerSpec>,
    /// The Service in front of the SIP listeners.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Run the pods on the nodes' network as a DaemonSet (one pod on every node), so UDP
    /// replies leave from the address the client sent to. Excludes `replicas` and
    /// `autoscaling`: the number of nodes decides.
    #[serde(default)]
    pub host_network: bool,
    /// Certificate for tls and wss listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Redis for shared state. Absent: state is in memory per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// rtpengine ng control addresses (`host:port`), rendered into the sbc config's `media`
    /// section (defaults for timeouts, profiles and `whenUnreachable: reject`): calls are
    /// anchored through them, the engine picked per Call-ID. A bad or repeated address is
    /// refused (`Accepted=False`, reason `InvalidMedia`, naming the entry). Empty: media is
    /// not anchored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(regex(pattern = r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$"))
    )]
    pub rtpengine: Vec<String>,
    /// Digest authentication (RFC 7616 / RFC 2617) of initial requests. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Resources of the sbc container. Absent: requests of 100m CPU and 128Mi memory and a
    /// 512Mi memory limit. `autoscaling` needs `requests.cpu` set here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pod placement and metadata of the sbc pods.
    #[serde(default, flatten)]
    pub placement: Placement,
    /// DispatcherSets (in this namespace) used by this cluster. Absent: none; `{}`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatcher_set_selector: Option<LabelSelector>,
    /// TenantThrottles (in this namespace) used by this cluster. Absent: none; `{}`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_throttle_selector: Option<LabelSelector>,
    /// AccessLists (in this namespace) used by this cluster. Absent: none; `{}`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_list_selector: Option<LabelSelector>,
    /// Set id initial requests go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub default_set: Option<u32>,
    /// Seconds an answered call keeps counting against its destination's `maxload` and the
    /// `call-load` algorithm when no BYE is seen, on every replica (sbc.yaml
    /// `dispatcher.dialogTimeoutSecs`). Absent: 4 hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 604800))]
    pub dialog_timeout_secs: Option<u32>,
    /// Routing rules: which selected DispatcherSet (by set id) or fixed target an initial
    /// request goes to, first match wins; no match: `defaultSet`. Rendered into sbc.yaml
    /// `routing`; a rule naming a set id no selected DispatcherSet has is refused
    /// (`Accepted=False`, reason `InvalidRouting`).
    #[serde(
        default,
        skip_serializing_if = "crate::routing::RoutingConfig::is_empty"
    )]
    pub routing: crate::routing::RoutingConfig,
    /// Port of the admin endpoint (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub admin_port: Option<u16>,
    /// Draining on SIGTERM; also sets the pods' `terminationGracePeriodSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainConfig>,
    /// Size and connection limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Transaction timers, the border (`inside`) and topology hiding (`topology`; its
    /// keys come from `topologyKeySecretRef`, not `keyFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayConfig>,
    /// Secret key holding the keys that encrypt and authenticate topology hiding's hidden
    /// values (one a line, at least 16 characters; the first seals, every one opens),
    /// mounted into every pod so any replica restores what another hid. Required with
    /// `relay.topology.hide`. The same keys sign flow tokens, so a request for a TCP, TLS or
    /// WebSocket client's connection that reaches another replica is forwarded to the one
    /// holding it (with `hide: false` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_key_secret_ref: Option<SecretKeyRef>,
    /// HEPv3 to Homer, CDRs and registration events (the sbc.yaml `observability` section,
    /// rendered as is; the records' Redis stream defaults to `spec.redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<crate::observe::ObservabilityConfig>,
}

/// Where the sbc pods run and what they carry; every field goes to the pod template as is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Node labels a node must have to run an sbc pod.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the sbc pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,
    /// Node and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread. Absent: across nodes (`kubernetes.io/hostname`, maxSkew 1,
    /// ScheduleAnyway), so one node going down takes as few pods as possible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// Extra labels of the pods (the operator's own labels win on a clash).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations of the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Secrets to pull the image with. Absent: the operator's default (chart value
    /// `sbcImage.pullSecrets`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
}

/// CPU-based autoscaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"}
]))]
pub struct Autoscaling {
    /// Fewest pods.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) to aim for.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// Image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when absent.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// One SIP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.path) || self.transport == 'ws' || self.transport == 'wss'", "message": "only ws and wss listeners take a path"},
    {"rule": "!has(self.allowedOrigins) || self.transport == 'ws' || self.transport == 'wss'", "message": "only ws and wss listeners take allowedOrigins"}
]))]
pub struct ListenerSpec {
    /// Transport.
    pub transport: Transport,
    /// Port, inside the pod and on the Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Fixed node port for NodePort/LoadBalancer Services (30000-32767). Absent: assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
    /// Host (and port) written into Via/Record-Route/Contact: the Service's external IP or
    /// a public name. Absent: the pod's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 261), regex(pattern = r"^[^\s;]+$"))]
    pub advertise: Option<String>,
    /// ws/wss only: the HTTP path the WebSocket upgrade must ask for (`/ws`). Absent: any
    /// path, as Kamailio accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[^\s?]*$"))]
    pub path: Option<String>,
    /// ws/wss only: the `Origin` values a browser may upgrade from
    /// (`https://app.example.com`). Empty: any origin, and requests without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_origins: Vec<String>,
}

/// The SIP Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations, e.g. for a cloud UDP load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `Local` keeps the client's source address (needed by AccessLists and flood limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
}

/// Kubernetes Service type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    /// Inside the cluster only.
    #[default]
    ClusterIP,
    /// On every node's port.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// `externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrafficPolicy {
    /// Spread over all nodes (source address lost).
    Cluster,
    /// Only to pods on the receiving node (source address kept).
    Local,
}

/// TLS certificate from a `kubernetes.io/tls` Secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret with `tls.crt` and `tls.key`.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// Redis connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Secret key holding the `redis://` URL (it may carry a password).
    pub url_secret_ref: SecretKeyRef,
    /// Key prefix; absent: `<namespace>/<name>:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_prefix: Option<String>,
    /// Milliseconds to wait for Redis before a pod falls back to its local state. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 60000))]
    pub timeout_ms: Option<u64>,
    /// How the URL's hosts are used: `single` (one server, the default), `sentinel` (the
    /// hosts are Redis Sentinels, comma-separated: `redis://:pw@s1:26379,s2:26379/0`) or
    /// `cluster` (seed nodes of a Redis Cluster, database 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::store::StoreMode>,
    /// Sentinel settings: required with `mode: sentinel`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<crate::store::SentinelConfig>,
}

/// Digest authentication by the sbc, against the credential hashes in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.methods) || self.methods.all(m, m.matches('^[A-Z]{1,32}$'))", "message": "spec.auth.methods: keys must be upper-case SIP methods such as INVITE"}
]))]
pub struct AuthSpec {
    /// Realm of the challenges. Absent: the host of each request's From URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = "^[!#-~]+$"))]
    pub realm: Option<String>,
    /// Methods that must authenticate (initial requests only) and how each is challenged:
    /// `proxy` (407) or `www` (401). Default: INVITE proxy, REGISTER www.
    #[serde(default = "default_auth_methods")]
    #[schemars(extend("minProperties" = 1, "maxProperties" = 32))]
    pub methods: BTreeMap<String, Challenge>,
    /// Source CIDRs that need no authentication (trunks, the backends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), inner(regex(pattern = crate::access::CIDR)))]
    pub trusted_sources: Vec<String>,
    /// Secret key holding the key that signs nonces (at least 16 characters), shared by
    /// every pod so any of them accepts a challenge another issued.
    pub nonce_secret_ref: SecretKeyRef,
    /// Seconds a nonce stays valid; an older one is challenged again with `stale=true`.
    #[serde(default = "default_nonce_lifetime_secs")]
    #[schemars(range(min = 5, max = 86400))]
    pub nonce_lifetime_secs: u32,
    /// Digest algorithms offered, in order of preference. Default: SHA-256, MD5.
    #[serde(default = "default_digest_algorithms")]
    #[schemars(length(min = 1, max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub algorithms: Vec<DigestAlgorithm>,
    /// Where the credential hashes (`username`, `domain`, `ha1`, `ha1b`, `ha1sha256`) are read
    /// in Redis: a key template with `{user}` (the digest username) and optionally `{domain}`
    /// (the realm), used as written, without the cluster's key prefix. Default
    /// `subscriber:{user}`, the layout of Kamailio setups.
    #[serde(default = "default_credentials_key")]
    #[schemars(length(min = 6, max = 256), regex(pattern = r"\{user\}"))]
    pub credentials_key: String,
    /// Block a user after repeated failed attempts. Absent: no blocking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_block: Option<AuthFailureBlock>,
}

/// Status of an SbcCluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SbcClusterStatus {
    /// `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the config rendered) and `Ready` (all replicas ready).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pods the Deployment has.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Destinations answering probes, over all sets (reported by the sbc pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations_up: Option<i32>,
    /// Destinations over all selected sets, as the sbc pods report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destinations_total: Option<i32>,
    /// Hash of the rendered `sbc.yaml` now in the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Label selector of the pods, for the `scale` subresource (`kubectl scale`, HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}
