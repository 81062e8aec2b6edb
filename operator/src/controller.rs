//! The SbcCluster controller: gathers what a cluster selects, renders it, applies the result
//! with server-side apply and writes status on the cluster and on the selected resources.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use kubesbc_crds::cluster::SbcClusterStatus;
use kubesbc_crds::status::{ACCEPTED, READY};
use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster, TenantThrottle};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::destinations::{self, Count, DestinationProbe, HttpProbe, Observation};
use crate::render::{self, Inputs, Lookups, PodDefaults, RenderError};

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "kubesbc-operator";
/// How often an accepted cluster is looked at again, so "destinations up" follows what the
/// sbc pods see (status is written only when it changed).
pub const STATUS_RESYNC: Duration = Duration::from_secs(30);
/// How soon a rejected cluster is retried (a missing Secret may appear).
pub const RETRY_INVALID: Duration = Duration::from_secs(60);
/// How soon a cluster is retried after an API error.
pub const RETRY_ERROR: Duration = Duration::from_secs(15);

/// What can go wrong while reconciling (a rejected spec is not an error: it is a status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The SbcCluster has no namespace (it is a namespaced kind, so the API is broken).
    #[error("SbcCluster {0} has no namespace")]
    NoNamespace(String),
}

impl Error {
    /// Short name used as the metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace(_) => "no_namespace",
        }
    }
}

/// Operator metrics (`/metrics`).
#[derive(Clone)]
pub struct Metrics {
    /// Reconciliations started.
    pub reconciliations: IntCounter,
    /// Reconciliations that failed, by error name.
    pub failures: IntCounterVec,
    /// Clusters rejected (Accepted=False), by reason.
    pub rejected: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let reconciliations = IntCounter::new(
            "kubesbc_operator_reconciliations_total",
            "SbcCluster reconciliations started",
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "kubesbc_operator_reconcile_failures_total",
                "SbcCluster reconciliations that failed with an error",
            ),
            &["error"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "kubesbc_operator_rejected_total",
                "SbcCluster renders refused (Accepted=False)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Metrics {
            reconciliations,
            failures,
            rejected,
        })
    }
}

/// Shared by every reconciliation.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Counters.
    pub metrics: Metrics,
    /// Asks sbc pods what they see of their destinations.
    pub probe: Arc<dyn DestinationProbe>,
    /// Image and pull settings of sbc pods whose spec names none (the chart's values).
    pub defaults: PodDefaults,
}

impl Context {
    /// A context with a fresh metrics registry.
    pub fn new(client: Client, registry: &Registry) -> Result<Context, prometheus::Error> {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Ok(Context {
            recorder: Recorder::new(client.clone(), reporter),
            metrics: Metrics::new(registry)?,
            client,
            probe: Arc::new(HttpProbe),
            defaults: PodDefaults::from_env(),
        })
    }

    /// The same context with other pod defaults.
    pub fn with_defaults(self, defaults: PodDefaults) -> Context {
        Context { defaults, ..self }
    }

    /// The same context asking pods through `probe` (tests answer without sockets).
    pub fn with_probe(self, probe: Arc<dyn DestinationProbe>) -> Context {
        Context { probe, ..self }
    }
}

/// The SbcClusters (from `clusters`) whose selector (`pick`) matches `obj`: the clusters to
/// re-render when `obj` changes. Only clusters in `obj`'s namespace can select it.
pub fn clusters_selecting<K: ResourceExt>(
    clusters: &[Arc<SbcCluster>],
    obj: &K,
    pick: fn(&SbcCluster) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<ObjectRef<SbcCluster>> {
    clusters
        .iter()
        .filter(|c| c.namespace() == obj.namespace())
        .filter(|c| render::selects(pick(c), obj.labels()))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The SbcClusters to re-render when the Secret `namespace/name` is created, changed or
/// deleted: those whose rendered config refers to it (`spec.redis.urlSecretRef`,
/// `spec.auth.nonceSecretRef`, and the required headers of the AccessLists they select).
/// `access_lists` may hold AccessLists of any namespace; only the Secret's own namespace
/// counts, since every reference is to a Secret beside the object that names it.
pub fn clusters_using_secret(
    clusters: &[Arc<SbcCluster>],
    access_lists: &[Arc<AccessList>],
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<SbcCluster>> {
    let mut out: Vec<ObjectRef<SbcCluster>> = clusters
        .iter()
        .filter(|c| c.namespace().as_deref() == namespace)
        .filter(|c| {
            let selected = access_lists
                .iter()
                .filter(|a| a.namespace().as_deref() == namespace)
                .filter(|a| render::selects(c.spec.access_list_selector.as_ref(), a.labels()))
                .map(|a| a.as_ref());
            render::mounted_secrets(c, selected).contains(name)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// The SbcClusters to re-render when Service `svc` changes: those selecting a DispatcherSet
/// whose destinations come from it (so a backend Service created after its DispatcherSet, or
/// a renamed port, is picked up at once).
pub fn clusters_using_service(
    clusters: &[Arc<SbcCluster>],
    sets: &[Arc<DispatcherSet>],
    svc: &Service,
) -> Vec<ObjectRef<SbcCluster>> {
    let svc_ns = svc.namespace();
    let users = sets.iter().filter(|ds| {
        ds.spec.destinations.service.as_ref().is_some_and(|src| {
            src.name == svc.name_any() && src.namespace.clone().or_else(|| ds.namespace()) == svc_ns
        })
    });
    let mut out: Vec<ObjectRef<SbcCluster>> = users
        .flat_map(|ds| {
            clusters_selecting(clusters, ds.as_ref(), |c| {
                c.spec.dispatcher_set_selector.as_ref()
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out.dedup();
    out
}

/// The objects of kind `K` in `ns` that `selector` matches, and all of them (those a cluster
/// no longer selects must stop saying they are in effect), each sorted by name.
async fn selected<K>(
    client: &Client,
    ns: &str,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<(Vec<K>, Vec<K>), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let mut all = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    all.sort_by_key(|o| o.name_any());
    let items: Vec<K> = all
        .iter()
        .filter(|o| render::selects(selector, o.labels()))
        .cloned()
        .collect();
    Ok((items, all))
}

async fn lookups(
    client: &Client,
    ns: &str,
    cluster: &SbcCluster,
    sets: &[DispatcherSet],
    acls: &[AccessList],
) -> Result<Lookups, Error> {
    let mut out = Lookups::default();
    let secret_names = render::mounted_secrets(cluster, acls);
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for name in secret_names {
        if let Some(s) = secrets.get_opt(&name).await? {
            let redis = cluster
                .spec
                .redis
                .as_ref()
                .filter(|r| r.url_secret_ref.name == name);
            if let Some(r) = redis {
                out.redis_url = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get(&r.url_secret_ref.key))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned());
            }
            // The rotation hash: of the data, so that a label change rolls nothing.
            let data = s.data.clone().unwrap_or_default();
            out.secret_hashes.insert(
                (ns.to_owned(), name.clone()),
                render::secret_data_hash(data.iter().map(|(k, v)| (k, v.0.as_slice()))),
            );
            // Only the keys: the values reach the pods through the mounted Secret.
            let keys = s
                .data
                .unwrap_or_default()
                .into_keys()
                .chain(s.string_data.unwrap_or_default().into_keys())
                .collect();
            out.secrets.insert((ns.to_owned(), name), keys);
        }
    }
    for ds in sets {
        if let Some(src) = &ds.spec.destinations.service {
            let sns = src.namespace.clone().unwrap_or_else(|| ns.to_owned());
            let key = (sns.clone(), src.name.clone());
            // Another namespace's Service is refused by the renderer, never read.
            if sns != ns || out.services.contains_key(&key) {
                continue;
            }
            let api = Api::<Service>::namespaced(client.clone(), &sns);
            if let Some(svc) = api.get_opt(&src.name).await? {
                let ports = svc
                    .spec
                    .and_then(|s| s.ports)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.name)
                    .collect();
                out.services.insert(key, ports);
            }
        }
    }
    if cluster.spec.service.type_ == kubesbc_crds::cluster::ServiceType::LoadBalancer {
        let own = Api::<Service>::namespaced(client.clone(), ns)
            .get_opt(&cluster.name_any())
            .await?
            .filter(|svc| controlled_by(svc, cluster));
        out.load_balancer = own.as_ref().and_then(render::load_balancer_address);
    }
    Ok(out)
}

/// A condition, keeping the previous transition time when the status did not change.
fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    let pp = PatchParams::apply(MANAGER).force();
    Ok(api.patch(&obj.name_any(), &pp, &Patch::Apply(obj)).await?)
}

/// What a selected resource's status says.
#[derive(Debug, Clone, Copy)]
enum ChildState<'a> {
    /// Rendered into the sbc.yaml of the cluster `namespace/name`.
    InEffect(&'a str),
    /// The cluster refused it.
    Refused(&'a RenderError),
    /// No SbcCluster selects it any more.
    NotSelected,
}

/// Writes `Accepted`, `Ready` and `usedBy` on a selected resource through its status
/// subresource. Only the resource's owner (see [`owner_of`]) calls this, so clusters sharing
/// a resource do not rewrite each other's status.
async fn child_status<K>(
    client: &Client,
    obj: &K,
    state: ChildState<'_>,
    used_by: &[String],
    extra: serde_json::Value,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let previous: Vec<Condition> = serde_json::to_value(obj)
        .ok()
        .and_then(|v| serde_json::from_value(v["status"]["conditions"].clone()).ok())
        .unwrap_or_default();
    let generation = obj.meta().generation;
    let now = Timestamp::now();
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(&previous, type_, ok, reason, message, generation, now)
    };
    let conds = match state {
        ChildState::InEffect(cluster) => [
            cond(
                ACCEPTED,
                true,
                "Accepted",
                "rendered into the sbc configuration".into(),
            ),
            cond(
                READY,
                true,
                "InEffect",
                format!("in the sbc.yaml of SbcCluster {cluster}"),
            ),
        ],
        ChildState::Refused(e) => [
            cond(
                ACCEPTED,
                false,
                e.reason,
                format!("{}: {}", e.field, e.message),
            ),
            cond(
                READY,
                false,
                "NotAccepted",
                "not in effect: see the Accepted condition".into(),
            ),
        ],
        ChildState::NotSelected => [
            cond(
                ACCEPTED,
                false,
                "NotSelected",
                "no SbcCluster in this namespace selects it".into(),
            ),
            cond(
                READY,
                false,
                "NotSelected",
                "not in effect: no SbcCluster selects it".into(),
            ),
        ],
    };
    let mut status = json!({"observedGeneration": generation, "conditions": conds});
    if !used_by.is_empty() {
        status["usedBy"] = json!(used_by);
    }
    if let (Some(st), Some(more)) = (status.as_object_mut(), extra.as_object()) {
        st.extend(more.clone());
    }
    // Requeued every STATUS_RESYNC: write only what moved.
    let current = serde_json::to_value(obj).ok().map(|v| v["status"].clone());
    if current.as_ref() == Some(&status) {
        return Ok(());
    }
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let api = Api::<K>::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let pp = PatchParams::apply(MANAGER).force();
    api.patch_status(&obj.name_any(), &pp, &Patch::Apply(&body))
        .await?;
    Ok(())
}

/// The clusters (`namespace/name`, by name) of `clusters` whose selector (`pick`) matches
/// `labels`; the first is the resource's owner, the one that writes its status.
pub fn users_of(
    clusters: &[SbcCluster],
    labels: &std::collections::BTreeMap<String, String>,
    pick: fn(&SbcCluster) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Vec<String> {
    let mut users: Vec<String> = clusters
        .iter()
        .filter(|c| render::selects(pick(c), labels))
        .map(|c| format!("{}/{}", c.namespace().unwrap_or_default(), c.name_any()))
        .collect();
    users.sort();
    users
}

fn no_extra<K>(_: &K) -> serde_json::Value {
    json!({})
}

/// Whether `me` (`namespace/name`) owns a resource used by `users`.
fn owner_of(users: &[String], me: &str) -> bool {
    users.first().map(String::as_str) == Some(me)
}

/// Whether a resource's status still names `me` as (one of) its users: it was selected
/// before and is not now, so its status must stop saying it is in effect.
fn names_me<K: Serialize>(obj: &K, me: &str) -> bool {
    let Ok(v) = serde_json::to_value(obj) else {
        return false;
    };
    let listed = v["status"]["usedBy"]
        .as_array()
        .is_some_and(|a| a.iter().any(|u| u == me));
    let ready_says = v["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter().any(|c| {
            c["type"] == READY
                && c["status"] == "True"
                && c["message"].as_str().is_some_and(|m| m.ends_with(me))
        })
    });
    listed || ready_says
}

/// Status of the resources of one kind: the selected ones this cluster owns, and those no
/// cluster selects any more that still name it.
#[allow(clippy::too_many_arguments)]
async fn children_status<K>(
    client: &Client,
    me: &str,
    clusters: &[SbcCluster],
    all: &[K],
    selected: &[K],
    pick: fn(&SbcCluster) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    refused: Option<&RenderError>,
    extra: &(dyn Fn(&K) -> serde_json::Value + Sync),
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    for obj in all {
        let users = users_of(clusters, obj.labels(), pick);
        let is_selected = selected.iter().any(|o| o.name_any() == obj.name_any());
        if is_selected {
            let state = match refused {
                Some(e) if e.object == object_id(obj) => ChildState::Refused(e),
                // The cluster refused another object: this one is not in effect anew, and
                // its previous state stays.
                Some(_) => continue,
                None => ChildState::InEffect(me),
            };
            // One writer per resource, its owner: two clusters writing their own view would
            // rewrite its status forever. Another cluster's refusal shows on that cluster's
            // Accepted condition, which names the resource.
            if !owner_of(&users, me) {
                continue;
            }
            child_status(client, obj, state, &users, extra(obj)).await?;
        } else if users.is_empty() && names_me(obj, me) {
            child_status(client, obj, ChildState::NotSelected, &[], json!({})).await?;
        }
    }
    Ok(())
}

fn object_id<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

async fn publish(
    ctx: &Context,
    cluster: &SbcCluster,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    // An Event that cannot be written is not worth failing the reconciliation for.
    if let Err(e) = ctx.recorder.publish(&ev, &cluster.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish event");
    }
}

/// Deletes what an earlier spec (or operator version) rendered and this one does not: the HPA
/// once autoscaling is off, the PDB of a cluster turned DaemonSet, the per-protocol SIP
/// Services of earlier versions (`<name>-udp`/`<name>-tcp`), the pods' identity of its old
/// name.
/// Only objects this cluster controls are deleted, never a user's object of the same name.
async fn prune(
    ctx: &Context,
    cluster: &SbcCluster,
    ns: &str,
    rendered: &render::Rendered,
) -> Result<(), Error> {
    let name = cluster.name_any();
    let keep: Vec<String> = rendered
        .services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let stale_services = [name.clone(), format!("{name}-udp"), format!("{name}-tcp")]
        .into_iter()
        .filter(|n| !keep.contains(n));
    for svc in stale_services {
        delete_if_owned::<Service>(ctx, cluster, ns, &svc).await?;
    }
    if rendered.hpa.is_none() {
        delete_if_owned::<HorizontalPodAutoscaler>(ctx, cluster, ns, &name).await?;
    }
    if rendered.pdb.is_none() {
        delete_if_owned::<PodDisruptionBudget>(ctx, cluster, ns, &name).await?;
    }
    // The pods' identity used to be named like the cluster.
    if render::pod_identity(cluster) != name {
        delete_if_owned::<RoleBinding>(ctx, cluster, ns, &name).await?;
        delete_if_owned::<Role>(ctx, cluster, ns, &name).await?;
        delete_if_owned::<ServiceAccount>(ctx, cluster, ns, &name).await?;
    }
    // hostNetwork switched on or off: the workload of the other kind goes.
    match rendered.workload {
        render::Workload::Deployment(_) => {
            delete_if_owned::<DaemonSet>(ctx, cluster, ns, &name).await?;
        }
        render::Workload::DaemonSet(_) => {
            delete_if_owned::<Deployment>(ctx, cluster, ns, &name).await?;
        }
    }
    Ok(())
}

async fn delete_if_owned<K>(
    ctx: &Context,
    cluster: &SbcCluster,
    ns: &str,
    name: &str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(ctx.client.clone(), ns);
    let Some(obj) = api.get_opt(name).await? else {
        return Ok(());
    };
    if !controlled_by(&obj, cluster) {
        return Ok(());
    }
    match api.delete(name, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    publish(
        ctx,
        cluster,
        EventType::Normal,
        "Pruned",
        format!("deleted {} {ns}/{name}, no longer rendered", K::kind(&())),
    )
    .await;
    Ok(())
}

/// Reconciles one SbcCluster. An API error is also reported on the cluster (a `Ready=False`
/// condition with reason `ApiError` and a Warning Event), so a refused permission or a
/// failing API server shows in `kubectl describe` instead of only in the operator's log.
pub async fn reconcile(cluster: Arc<SbcCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    match reconcile_cluster(&cluster, &ctx).await {
        Ok(action) => Ok(action),
        Err(e) => {
            report_error(&ctx, &cluster, &e).await;
            Err(e)
        }
    }
}

/// Best effort: the status write or the Event may be refused too, and the error is returned
/// (and counted) either way.
async fn report_error(ctx: &Context, cluster: &SbcCluster, e: &Error) {
    let Some(ns) = cluster.namespace() else {
        return;
    };
    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let message = e.to_string();
    let already = previous
        .iter()
        .any(|c| c.type_ == READY && c.reason == "ApiError" && c.message == message);
    if !already {
        let mut conds: Vec<Condition> = previous
            .iter()
            .filter(|c| c.type_ != READY)
            .cloned()
            .collect();
        conds.push(condition(
            &previous,
            READY,
            false,
            "ApiError",
            message.clone(),
            cluster.meta().generation,
            Timestamp::now(),
        ));
        let st = carried_status(cluster, conds);
        let body = json!({"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "status": st});
        let api = Api::<SbcCluster>::namespaced(ctx.client.clone(), &ns);
        let pp = PatchParams::apply(MANAGER).force();
        if let Err(err) = api
            .patch_status(&cluster.name_any(), &pp, &Patch::Apply(&body))
            .await
        {
            tracing::warn!(cluster = %cluster.name_any(), error = %err, "cannot write the error into the status");
        }
    }
    publish(ctx, cluster, EventType::Warning, "ApiError", message).await;
}

/// The cluster's status with `conds`, the other fields as they are (an apply that leaves a
/// field out removes it).
fn carried_status(cluster: &SbcCluster, conds: Vec<Condition>) -> serde_json::Value {
    let old = cluster.status.clone().unwrap_or_default();
    let mut st = json!({
        "observedGeneration": cluster.meta().generation,
        "conditions": conds,
        "replicas": old.replicas,
        "readyReplicas": old.ready_replicas,
    });
    if let Some(h) = &old.config_hash {
        st["configHash"] = json!(h);
    }
    if let Some(t) = old.destinations_total {
        st["destinationsTotal"] = json!(t);
    }
    if let Some(u) = old.destinations_up {
        st["destinationsUp"] = json!(u);
    }
    if let Some(sel) = &old.selector {
        st["selector"] = json!(sel);
    }
    st
}

/// An object of a rendered name: absent, or controlled by this cluster (returned, as it is
/// now). Anything else is somebody else's, and a forced apply would take it over (and garbage
/// collection delete it with the cluster): refused, naming it.
async fn claim<K>(
    client: &Client,
    cluster: &SbcCluster,
    ns: &str,
    name: &str,
) -> Result<Result<Option<K>, RenderError>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let Some(obj) = Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
    else {
        return Ok(Ok(None));
    };
    if controlled_by(&obj, cluster) {
        return Ok(Ok(Some(obj)));
    }
    Ok(Err(RenderError {
        reason: "NameConflict",
        object: object_id(cluster),
        field: "metadata.name".into(),
        message: format!(
            "{} {ns}/{name} already exists and is not owned by this SbcCluster: refusing to take it over (rename the SbcCluster or delete that {})",
            K::kind(&()),
            K::kind(&())
        ),
    }))
}

fn controlled_by<K: Resource>(obj: &K, cluster: &SbcCluster) -> bool {
    let uid = cluster.meta().uid.as_deref();
    obj.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// What the objects of a cluster's rendered names look like before this reconciliation.
#[derive(Default)]
struct Live {
    config_map: Option<ConfigMap>,
    /// The Secrets the running workload's pod template mounts; `None`: no workload yet.
    template_secrets: Option<std::collections::BTreeSet<String>>,
}

/// Claims every rendered name (see [`claim`]); the first conflict refuses the render.
async fn claim_all(
    client: &Client,
    cluster: &SbcCluster,
    ns: &str,
    r: &render::Rendered,
) -> Result<Result<Live, RenderError>, Error> {
    macro_rules! claim {
        ($k:ty, $name:expr) => {
            match claim::<$k>(client, cluster, ns, &$name).await? {
                Ok(obj) => obj,
                Err(e) => return Ok(Err(e)),
            }
        };
    }
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.name.clone().unwrap_or_default()
    };
    let config_map = claim!(ConfigMap, name(&r.config_map.metadata));
    claim!(ServiceAccount, name(&r.service_account.metadata));
    claim!(Role, name(&r.role.metadata));
    claim!(RoleBinding, name(&r.role_binding.metadata));
    let template_secrets = match &r.workload {
        render::Workload::Deployment(d) => claim!(Deployment, name(&d.metadata))
            .and_then(|d| d.spec.and_then(|s| s.template.spec))
            .map(|p| template_secrets(&p)),
        render::Workload::DaemonSet(d) => claim!(DaemonSet, name(&d.metadata))
            .and_then(|d| d.spec.and_then(|s| s.template.spec))
            .map(|p| template_secrets(&p)),
    };
    for svc in r.services.iter().chain([&r.admin_service]) {
        claim!(Service, name(&svc.metadata));
    }
    if let Some(pdb) = &r.pdb {
        claim!(PodDisruptionBudget, name(&pdb.metadata));
    }
    if let Some(hpa) = &r.hpa {
        claim!(HorizontalPodAutoscaler, name(&hpa.metadata));
    }
    Ok(Ok(Live {
        config_map,
        template_secrets,
    }))
}

fn template_secrets(
    pod: &k8s_openapi::api::core::v1::PodSpec,
) -> std::collections::BTreeSet<String> {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect()
}

/// The files required header values are read from in `config`.
fn header_files(config: &kubesbc_crds::config::SbcConfig) -> std::collections::BTreeSet<String> {
    config
        .access_lists
        .iter()
        .flat_map(|a| a.rules.iter())
        .flat_map(|r| r.required_headers.iter())
        .filter_map(|h| h.value_file.clone())
        .collect()
}

/// Refuses a render: writes why on the cluster (and the object at fault), keeps the last
/// good configuration running, publishes a Warning Event.
#[allow(clippy::too_many_arguments)]
async fn refuse(
    ctx: &Context,
    cluster: &SbcCluster,
    e: &RenderError,
    clusters: &[SbcCluster],
    (sets, all_sets): (&[DispatcherSet], &[DispatcherSet]),
    (throttles, all_throttles): (&[TenantThrottle], &[TenantThrottle]),
    (acls, all_acls): (&[AccessList], &[AccessList]),
) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = cluster.namespace().unwrap_or_default();
    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    // The last good ConfigMap stays: nothing is applied, only the status says why.
    tracing::warn!(cluster = %cluster.name_any(), error = %e, "configuration refused");
    ctx.metrics.rejected.with_label_values(&[e.reason]).inc();
    let mut conds = vec![condition(
        &previous,
        ACCEPTED,
        false,
        e.reason,
        e.to_string(),
        cluster.meta().generation,
        Timestamp::now(),
    )];
    // The last good config keeps running: carry over what describes it.
    conds.extend(previous.iter().filter(|c| c.type_ == READY).cloned());
    let st = carried_status(cluster, conds);
    let status = json!({"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "status": st});
    let api = Api::<SbcCluster>::namespaced(client.clone(), &ns);
    let pp = PatchParams::apply(MANAGER).force();
    api.patch_status(&cluster.name_any(), &pp, &Patch::Apply(&status))
        .await?;
    let me = format!("{ns}/{}", cluster.name_any());
    children_status(
        client,
        &me,
        clusters,
        all_sets,
        sets,
        |c| c.spec.dispatcher_set_selector.as_ref(),
        Some(e),
        &|ds: &DispatcherSet| set_destinations_kept(ds),
    )
    .await?;
    children_status(
        client,
        &me,
        clusters,
        all_throttles,
        throttles,
        |c| c.spec.tenant_throttle_selector.as_ref(),
        Some(e),
        &no_extra,
    )
    .await?;
    children_status(
        client,
        &me,
        clusters,
        all_acls,
        acls,
        |c| c.spec.access_list_selector.as_ref(),
        Some(e),
        &no_extra,
    )
    .await?;
    publish(ctx, cluster, EventType::Warning, e.reason, e.to_string()).await;
    Ok(Action::requeue(RETRY_INVALID))
}

/// How soon a cluster holding back its ConfigMap for a rollout looks again.
pub const RETRY_ROLLOUT: Duration = Duration::from_secs(5);

async fn reconcile_cluster(cluster: &SbcCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = cluster
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cluster.name_any()))?;
    let client = &ctx.client;
    let spec = &cluster.spec;
    let (sets, all_sets): (Vec<DispatcherSet>, _) =
        selected(client, &ns, spec.dispatcher_set_selector.as_ref()).await?;
    let (throttles, all_throttles): (Vec<TenantThrottle>, _) =
        selected(client, &ns, spec.tenant_throttle_selector.as_ref()).await?;
    let (acls, all_acls): (Vec<AccessList>, _) =
        selected(client, &ns, spec.access_list_selector.as_ref()).await?;
    let mut clusters = Api::<SbcCluster>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await?
        .items;
    if !clusters.iter().any(|c| c.name_any() == cluster.name_any()) {
        clusters.push(cluster.clone());
    }
    let mut lookups = lookups(client, &ns, cluster, &sets, &acls).await?;
    lookups.defaults = ctx.defaults.clone();
    let inputs = Inputs {
        cluster,
        dispatcher_sets: &sets,
        throttles: &throttles,
        access_lists: &acls,
        lookups: &lookups,
    };
    let previous = cluster
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = cluster.meta().generation;
    let now = Timestamp::now();
    let api = Api::<SbcCluster>::namespaced(client.clone(), &ns);
    let pp = PatchParams::apply(MANAGER).force();

    let refused = |e: RenderError| {
        let clusters = &clusters;
        let (sets, all_sets) = (&sets, &all_sets);
        let (throttles, all_throttles) = (&throttles, &all_throttles);
        let (acls, all_acls) = (&acls, &all_acls);
        async move {
            refuse(
                ctx,
                cluster,
                &e,
                clusters,
                (sets, all_sets),
                (throttles, all_throttles),
                (acls, all_acls),
            )
            .await
        }
    };
    let rendered = match render::render(inputs) {
        Ok(r) => r,
        Err(e) => return refused(e).await,
    };
    let live = match claim_all(client, cluster, &ns, &rendered).await? {
        Ok(l) => l,
        Err(e) => return refused(e).await,
    };

    // A header rule whose Secret the running pods do not mount yet would fail closed (403
    // for every request) on every old pod: the ConfigMap waits until every pod runs a
    // template mounting it. Pods read the ConfigMap through the API, so they take the new
    // configuration as soon as it is applied.
    let live_config = live
        .config_map
        .as_ref()
        .and_then(|cm| cm.data.as_ref()?.get(render::CONFIG_KEY).cloned())
        .and_then(|y| kubesbc_crds::config::SbcConfig::from_yaml(&y).ok());
    let live_files = live_config.as_ref().map(header_files).unwrap_or_default();
    let new_files = header_files(&rendered.config);
    let adds_header_secret = new_files.difference(&live_files).next().is_some();
    let wanted_secrets = rendered
        .workload
        .pod_spec()
        .map(template_secrets)
        .unwrap_or_default();
    let mut hold = adds_header_secret && live.template_secrets.is_some();
    if !hold {
        apply::<ConfigMap>(client, &ns, &rendered.config_map).await?;
    }
    apply::<ServiceAccount>(client, &ns, &rendered.service_account).await?;
    apply::<Role>(client, &ns, &rendered.role).await?;
    apply::<RoleBinding>(client, &ns, &rendered.role_binding).await?;
    let counts = match &rendered.workload {
        render::Workload::Deployment(d) => {
            render::deployment_counts(&apply::<Deployment>(client, &ns, d.as_ref()).await?)
        }
        render::Workload::DaemonSet(d) => {
            render::daemon_set_counts(&apply::<DaemonSet>(client, &ns, d.as_ref()).await?)
        }
    };
    if hold
        && counts.all_ready()
        && live
            .template_secrets
            .as_ref()
            .is_some_and(|have| wanted_secrets.is_subset(have))
    {
        apply::<ConfigMap>(client, &ns, &rendered.config_map).await?;
        hold = false;
    }
    for svc in &rendered.services {
        apply::<Service>(client, &ns, svc).await?;
    }
    apply::<Service>(client, &ns, &rendered.admin_service).await?;
    if let Some(pdb) = &rendered.pdb {
        apply::<PodDisruptionBudget>(client, &ns, pdb).await?;
    }
    if let Some(hpa) = &rendered.hpa {
        apply::<HorizontalPodAutoscaler>(client, &ns, hpa).await?;
    }
    prune(ctx, cluster, &ns, &rendered).await?;

    let (desired, ready) = (counts.desired, counts.ready);
    let is_ready = counts.all_ready() && !hold;
    let observed = observe_destinations(ctx, &ns, &rendered).await;
    let cluster_count = cluster_destinations(&observed, &rendered);
    let config_hash = if hold {
        live.config_map.as_ref().and_then(|cm| {
            cm.metadata
                .annotations
                .as_ref()?
                .get("kubesbc.io/config-hash")
                .cloned()
        })
    } else {
        Some(rendered.config_hash.clone())
    };
    let (reason, message) = if hold {
        (
            "RollingOut",
            format!(
                "sbc.yaml {} waits until every pod mounts the Secrets of its required headers: {}/{desired} pods updated, {ready} ready",
                rendered.config_hash, counts.updated
            ),
        )
    } else if is_ready {
        (
            "ReplicasReady",
            format!(
                "{ready}/{desired} replicas ready; {}",
                destinations_message(&observed, cluster_count)
            ),
        )
    } else if counts.updated < desired || counts.current > desired || !counts.observed {
        (
            "RollingOut",
            format!(
                "rollout in progress: {}/{desired} pods updated, {ready} ready; {}",
                counts.updated,
                destinations_message(&observed, cluster_count)
            ),
        )
    } else {
        (
            "ReplicasNotReady",
            format!(
                "{ready}/{desired} replicas ready; {}",
                destinations_message(&observed, cluster_count)
            ),
        )
    };
    let conds = [
        condition(
            &previous,
            ACCEPTED,
            true,
            "Rendered",
            format!(
                "sbc.yaml {} rendered from {} dispatcher sets, {} throttles, {} access lists",
                rendered.config_hash,
                sets.len(),
                throttles.len(),
                acls.len()
            ),
            generation,
            now,
        ),
        condition(&previous, READY, is_ready, reason, message, generation, now),
    ];
    let mut st = json!({
        "observedGeneration": generation,
        "conditions": conds,
        "replicas": counts.current,
        "readyReplicas": ready,
        "selector": render::pod_selector_string(cluster),
    });
    if let Some(h) = &config_hash {
        st["configHash"] = json!(h);
    }
    // No pod answered: the counts are unknown, not 0 (the Ready message says why).
    if let Some(c) = cluster_count {
        st["destinationsUp"] = json!(c.up_i32());
        st["destinationsTotal"] = json!(c.total_i32());
    }
    // Requeued every STATUS_RESYNC: write only what moved.
    let unchanged = serde_json::from_value::<SbcClusterStatus>(st.clone())
        .is_ok_and(|new| Some(&new) == cluster.status.as_ref());
    if !unchanged {
        let status =
            json!({"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "status": st});
        api.patch_status(&cluster.name_any(), &pp, &Patch::Apply(&status))
            .await?;
    }
    let me = format!("{ns}/{}", cluster.name_any());
    let set_extra = |ds: &DispatcherSet| set_destinations(ds, &observed);
    children_status(
        client,
        &me,
        &clusters,
        &all_sets,
        &sets,
        |c| c.spec.dispatcher_set_selector.as_ref(),
        None,
        &set_extra,
    )
    .await?;
    children_status(
        client,
        &me,
        &clusters,
        &all_throttles,
        &throttles,
        |c| c.spec.tenant_throttle_selector.as_ref(),
        None,
        &no_extra,
    )
    .await?;
    children_status(
        client,
        &me,
        &clusters,
        &all_acls,
        &acls,
        |c| c.spec.access_list_selector.as_ref(),
        None,
        &no_extra,
    )
    .await?;
    let old_hash = cluster
        .status
        .as_ref()
        .and_then(|s| s.config_hash.as_deref());
    if !hold && old_hash != Some(rendered.config_hash.as_str()) {
        publish(
            ctx,
            cluster,
            EventType::Normal,
            "ConfigRendered",
            format!(
                "ConfigMap {} now holds sbc.yaml {}",
                render::config_map_name(cluster),
                rendered.config_hash
            ),
        )
        .await;
    }
    Ok(Action::requeue(if hold {
        RETRY_ROLLOUT
    } else {
        STATUS_RESYNC
    }))
}

/// Asks the cluster's running sbc pods for their `/dispatcher` view. Never an error: a pod
/// list that fails (or no pod) is an observation with nobody asked, which the status shows.
async fn observe_destinations(ctx: &Context, ns: &str, rendered: &render::Rendered) -> Observation {
    // The workload's own selector: exactly the pods it runs.
    let selector = rendered.workload.selector().cloned().unwrap_or_default();
    if selector.is_empty() {
        return Observation::default();
    }
    let port = rendered.config.admin.address.port();
    match destinations::pod_admins(&ctx.client, ns, &selector, port).await {
        Ok(admins) => destinations::observe(ctx.probe.as_ref(), &admins).await,
        Err(e) => {
            tracing::warn!(namespace = ns, error = %e, "cannot list sbc pods");
            Observation::default()
        }
    }
}

/// Up/total over the cluster's rendered sets, or `None` when no pod answered.
fn cluster_destinations(observed: &Observation, rendered: &render::Rendered) -> Option<Count> {
    (observed.answered > 0).then(|| {
        destinations::sum(
            &observed.sets,
            rendered.config.dispatcher.sets.iter().map(|s| s.id),
        )
    })
}

/// The destinations part of the cluster's Ready message.
fn destinations_message(observed: &Observation, count: Option<Count>) -> String {
    match count {
        Some(c) => format!(
            "{}/{} destinations up (as seen by {}/{} sbc pods)",
            c.up, c.total, observed.answered, observed.asked
        ),
        None if observed.asked == 0 => "destinations unknown: no running sbc pod".to_owned(),
        None => format!(
            "destinations unknown: none of {} sbc pods answered GET /dispatcher",
            observed.asked
        ),
    }
}

/// The `destinationsUp`/`destinationsTotal` a DispatcherSet's status gets from its owner:
/// the pods' view of its set when a pod listed it, nothing (unknown) otherwise.
fn set_destinations(ds: &DispatcherSet, observed: &Observation) -> serde_json::Value {
    match observed.sets.get(&ds.spec.set_id) {
        Some(c) => json!({"destinationsUp": c.up_i32(), "destinationsTotal": c.total_i32()}),
        None => json!({}),
    }
}

/// The destination counts a DispatcherSet's status holds now.
fn set_destinations_kept(ds: &DispatcherSet) -> serde_json::Value {
    let old = ds.status.as_ref();
    let mut extra = json!({});
    if let Some(t) = old.and_then(|s| s.destinations_total) {
        extra["destinationsTotal"] = json!(t);
    }
    if let Some(u) = old.and_then(|s| s.destinations_up) {
        extra["destinationsUp"] = json!(u);
    }
    extra
}

/// Counts the failure and retries later; errors never crash the operator.
pub fn error_policy(cluster: Arc<SbcCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(cluster = %cluster.name_any(), error = %error, "reconcile failed");
    ctx.metrics
        .failures
        .with_label_values(&[error.metric_label()])
        .inc();
    Action::requeue(RETRY_ERROR)
}

/// Runs the SbcCluster controller until SIGTERM/Ctrl-C: watches SbcClusters, the objects they
/// own, and DispatcherSets/TenantThrottles/AccessLists mapped to the clusters selecting them.
/// `namespace`: watch only that namespace (two releases of the chart then share a cluster
/// without reconciling each other's resources); `None`: every namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    use futures::StreamExt;
    use kube::core::PartialObjectMeta;
    use kube::runtime::{Controller, WatchStreamExt, watcher};

    let client = ctx.client.clone();
    fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace.as_deref();
    let wc = watcher::Config::default();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=kubesbc-operator");
    let controller = Controller::new(scoped::<SbcCluster>(&client, ns), wc.clone());
    let store = controller.store();
    let (s1, s2, s3, s4, s5) = (
        store.clone(),
        store.clone(),
        store.clone(),
        store.clone(),
        store,
    );
    // A second view of the DispatcherSets, for mapping Service changes to clusters.
    let (sets, sets_writer) = kube::runtime::reflector::store::<DispatcherSet>();
    let sets_reflector = kube::runtime::reflector(
        sets_writer,
        watcher(scoped::<DispatcherSet>(&client, ns), wc.clone()).default_backoff(),
    )
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    let sets_task = tokio::spawn(sets_reflector);
    // And of the AccessLists, for mapping Secret changes to clusters.
    let (acls, acls_writer) = kube::runtime::reflector::store::<AccessList>();
    let acls_reflector = kube::runtime::reflector(
        acls_writer,
        watcher(scoped::<AccessList>(&client, ns), wc.clone()).default_backoff(),
    )
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    let acls_task = tokio::spawn(acls_reflector);

    controller
        // Only our own ConfigMaps, Deployments and DaemonSets: watching every one would
        // cost memory for nothing.
        .owns(scoped::<ConfigMap>(&client, ns), owned.clone())
        .owns(scoped::<Deployment>(&client, ns), owned.clone())
        .owns(scoped::<DaemonSet>(&client, ns), owned.clone())
        // Our own Services: a LoadBalancer's address, once assigned, becomes `advertise`.
        .owns(scoped::<Service>(&client, ns), owned)
        .watches(scoped::<DispatcherSet>(&client, ns), wc.clone(), move |o| {
            clusters_selecting(&s1.state(), &o, |c| c.spec.dispatcher_set_selector.as_ref())
        })
        .watches(
            scoped::<TenantThrottle>(&client, ns),
            wc.clone(),
            move |o| {
                clusters_selecting(&s2.state(), &o, |c| {
                    c.spec.tenant_throttle_selector.as_ref()
                })
            },
        )
        .watches(scoped::<AccessList>(&client, ns), wc.clone(), move |o| {
            clusters_selecting(&s3.state(), &o, |c| c.spec.access_list_selector.as_ref())
        })
        .watches(scoped::<Service>(&client, ns), wc.clone(), move |svc| {
            clusters_using_service(&s4.state(), &sets.state(), &svc)
        })
        // Secrets by metadata only (an `Api<PartialObjectMeta<_>>` asks the API server for
        // PartialObjectMetadata): the operator learns that a Secret appeared, changed or went
        // away without receiving, let alone keeping, every Secret's data in the cluster.
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, ns),
            wc,
            move |s| {
                clusters_using_secret(
                    &s5.state(),
                    &acls.state(),
                    s.namespace().as_deref(),
                    &s.name_any(),
                )
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "controller"),
            }
        })
        .await;
    sets_task.abort();
    acls_task.abort();
}
