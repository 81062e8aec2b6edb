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
use crate::render::{self, Inputs, Lookups, RenderError};

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
        })
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

async fn selected<K>(
    client: &Client,
    ns: &str,
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    if selector.is_none() {
        return Ok(Vec::new());
    }
    let list = Api::<K>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let mut items: Vec<K> = list
        .items
        .into_iter()
        .filter(|o| render::selects(selector, o.labels()))
        .collect();
    items.sort_by_key(|o| o.name_any());
    Ok(items)
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
            // Only the keys: the values reach the pods through the mounted Secret.
            let keys = s
                .data
                .unwrap_or_default()
                .into_keys()
                .chain(s.string_data.unwrap_or_default().into_keys())
                .collect();
            if let Some(v) = s.metadata.resource_version.clone() {
                out.secret_versions.insert((ns.to_owned(), name.clone()), v);
            }
            out.secrets.insert((ns.to_owned(), name), keys);
        }
    }
    for ds in sets {
        if let Some(src) = &ds.spec.destinations.service {
            let sns = src.namespace.clone().unwrap_or_else(|| ns.to_owned());
            let key = (sns.clone(), src.name.clone());
            if out.services.contains_key(&key) {
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

/// Writes `Accepted` and `Ready` on a selected resource through its status subresource;
/// `accepted` is the `namespace/name` of the cluster using it, or why it was refused.
async fn child_status<K>(
    client: &Client,
    obj: &K,
    accepted: Result<&str, &RenderError>,
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
    let conds = match accepted {
        Ok(cluster) => [
            condition(
                &previous,
                ACCEPTED,
                true,
                "Accepted",
                "rendered into the sbc configuration".into(),
                generation,
                now,
            ),
            condition(
                &previous,
                READY,
                true,
                "InEffect",
                format!("in the sbc.yaml of SbcCluster {cluster}"),
                generation,
                now,
            ),
        ],
        Err(e) => [
            condition(
                &previous,
                ACCEPTED,
                false,
                e.reason,
                format!("{}: {}", e.field, e.message),
                generation,
                now,
            ),
            condition(
                &previous,
                READY,
                false,
                "NotAccepted",
                "not in effect: see the Accepted condition".into(),
                generation,
                now,
            ),
        ],
    };
    let mut status = json!({"observedGeneration": generation, "conditions": conds});
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

/// Deletes what an earlier spec rendered and this one does not: the HPA once autoscaling is
/// off, and the SIP Services of the other layout (`<name>` vs `<name>-udp`/`<name>-tcp`).
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
    let uid = cluster.meta().uid.as_deref();
    let owned = obj
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid);
    if !owned {
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

/// Reconciles one SbcCluster.
pub async fn reconcile(cluster: Arc<SbcCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let ns = cluster
        .namespace()
        .ok_or_else(|| Error::NoNamespace(cluster.name_any()))?;
    let client = &ctx.client;
    let spec = &cluster.spec;
    let sets: Vec<DispatcherSet> =
        selected(client, &ns, spec.dispatcher_set_selector.as_ref()).await?;
    let throttles: Vec<TenantThrottle> =
        selected(client, &ns, spec.tenant_throttle_selector.as_ref()).await?;
    let acls: Vec<AccessList> = selected(client, &ns, spec.access_list_selector.as_ref()).await?;
    let lookups = lookups(client, &ns, &cluster, &sets, &acls).await?;
    let inputs = Inputs {
        cluster: &cluster,
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

    let rendered = match render::render(inputs) {
        Ok(r) => r,
        Err(e) => {
            // The last good ConfigMap stays: nothing is applied, only the status says why.
            tracing::warn!(cluster = %cluster.name_any(), error = %e, "configuration refused");
            ctx.metrics.rejected.with_label_values(&[e.reason]).inc();
            let mut conds = vec![condition(
                &previous,
                ACCEPTED,
                false,
                e.reason,
                e.to_string(),
                generation,
                now,
            )];
            // The last good config keeps running: carry over what describes it, since an
            // apply that leaves a field out removes it.
            conds.extend(previous.iter().filter(|c| c.type_ == READY).cloned());
            let old = cluster.status.clone().unwrap_or_default();
            let mut st = json!({
                "observedGeneration": generation,
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
            let status =
                json!({"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "status": st});
            api.patch_status(&cluster.name_any(), &pp, &Patch::Apply(&status))
                .await?;
            for ds in sets.iter().filter(|o| object_id(*o) == e.object) {
                child_status(client, ds, Err(&e), json!({})).await?;
            }
            for tt in throttles.iter().filter(|o| object_id(*o) == e.object) {
                child_status(client, tt, Err(&e), json!({})).await?;
            }
            for acl in acls.iter().filter(|o| object_id(*o) == e.object) {
                child_status(client, acl, Err(&e), json!({})).await?;
            }
            publish(&ctx, &cluster, EventType::Warning, e.reason, e.to_string()).await;
            return Ok(Action::requeue(RETRY_INVALID));
        }
    };

    apply::<ConfigMap>(client, &ns, &rendered.config_map).await?;
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
    for svc in &rendered.services {
        apply::<Service>(client, &ns, svc).await?;
    }
    apply::<Service>(client, &ns, &rendered.admin_service).await?;
    apply::<PodDisruptionBudget>(client, &ns, &rendered.pdb).await?;
    if let Some(hpa) = &rendered.hpa {
        apply::<HorizontalPodAutoscaler>(client, &ns, hpa).await?;
    }
    prune(&ctx, &cluster, &ns, &rendered).await?;

    let (desired, ready) = (counts.desired, counts.ready);
    let is_ready = counts.all_ready();
    let observed = observe_destinations(&ctx, &ns, &rendered).await;
    let cluster_count = cluster_destinations(&observed, &rendered);
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
        condition(
            &previous,
            READY,
            is_ready,
            if is_ready {
                "ReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            format!(
                "{ready}/{desired} replicas ready; {}",
                destinations_message(&observed, cluster_count)
            ),
            generation,
            now,
        ),
    ];
    let mut st = json!({
        "observedGeneration": generation,
        "conditions": conds,
        "replicas": counts.current,
        "readyReplicas": ready,
        "configHash": rendered.config_hash,
    });
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
    let cluster_id = format!("{ns}/{}", cluster.name_any());
    let owners = set_reporters(client, &ns, &sets).await?;
    for ds in &sets {
        let extra = set_destinations(
            ds,
            &observed,
            owners.get(&ds.name_any()) == Some(&cluster.name_any()),
        );
        child_status(client, ds, Ok(&cluster_id), extra).await?;
    }
    for tt in &throttles {
        child_status(client, tt, Ok(&cluster_id), json!({})).await?;
    }
    for acl in &acls {
        child_status(client, acl, Ok(&cluster_id), json!({})).await?;
    }
    let old_hash = cluster
        .status
        .as_ref()
        .and_then(|s| s.config_hash.as_deref());
    if old_hash != Some(rendered.config_hash.as_str()) {
        publish(
            &ctx,
            &cluster,
            EventType::Normal,
            "ConfigRendered",
            format!(
                "ConfigMap {} now holds sbc.yaml {}",
                render::config_map_name(&cluster),
                rendered.config_hash
            ),
        )
        .await;
    }
    Ok(Action::requeue(STATUS_RESYNC))
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

/// For each of `sets` (by name), the SbcCluster that reports its destinations: of the clusters
/// in `ns` selecting it, the first by name. A set shared by clusters thus shows one cluster's
/// view instead of flipping between them.
async fn set_reporters(
    client: &Client,
    ns: &str,
    sets: &[DispatcherSet],
) -> Result<std::collections::BTreeMap<String, String>, Error> {
    if sets.is_empty() {
        return Ok(Default::default());
    }
    let mut clusters = Api::<SbcCluster>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    clusters.sort_by_key(|c| c.name_any());
    Ok(sets
        .iter()
        .filter_map(|ds| {
            clusters
                .iter()
                .find(|c| render::selects(c.spec.dispatcher_set_selector.as_ref(), ds.labels()))
                .map(|c| (ds.name_any(), c.name_any()))
        })
        .collect())
}

/// The `destinationsUp`/`destinationsTotal` a DispatcherSet's status gets from this cluster:
/// the pods' view of its set when this cluster reports it (see [`set_reporters`]) and a pod
/// listed the set; what the status already holds when another cluster reports it (an apply
/// without the fields would remove them); nothing otherwise.
fn set_destinations(
    ds: &DispatcherSet,
    observed: &Observation,
    reporter: bool,
) -> serde_json::Value {
    if !reporter {
        let old = ds.status.as_ref();
        let mut extra = json!({});
        if let Some(t) = old.and_then(|s| s.destinations_total) {
            extra["destinationsTotal"] = json!(t);
        }
        if let Some(u) = old.and_then(|s| s.destinations_up) {
            extra["destinationsUp"] = json!(u);
        }
        return extra;
    }
    match observed.sets.get(&ds.spec.set_id) {
        Some(c) => json!({"destinationsUp": c.up_i32(), "destinationsTotal": c.total_i32()}),
        None => json!({}),
    }
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
pub async fn run(ctx: Arc<Context>) {
    use futures::StreamExt;
    use kube::core::PartialObjectMeta;
    use kube::runtime::{Controller, WatchStreamExt, watcher};

    let client = ctx.client.clone();
    let wc = watcher::Config::default();
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=kubesbc-operator");
    let controller = Controller::new(Api::<SbcCluster>::all(client.clone()), wc.clone());
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
        watcher(Api::<DispatcherSet>::all(client.clone()), wc.clone()).default_backoff(),
    )
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    let sets_task = tokio::spawn(sets_reflector);
    // And of the AccessLists, for mapping Secret changes to clusters.
    let (acls, acls_writer) = kube::runtime::reflector::store::<AccessList>();
    let acls_reflector = kube::runtime::reflector(
        acls_writer,
        watcher(Api::<AccessList>::all(client.clone()), wc.clone()).default_backoff(),
    )
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    let acls_task = tokio::spawn(acls_reflector);

    controller
        // Only our own ConfigMaps, Deployments and DaemonSets: watching every one would
        // cost memory for nothing.
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<DaemonSet>::all(client.clone()), owned)
        .watches(
            Api::<DispatcherSet>::all(client.clone()),
            wc.clone(),
            move |o| {
                clusters_selecting(&s1.state(), &o, |c| c.spec.dispatcher_set_selector.as_ref())
            },
        )
        .watches(
            Api::<TenantThrottle>::all(client.clone()),
            wc.clone(),
            move |o| {
                clusters_selecting(&s2.state(), &o, |c| {
                    c.spec.tenant_throttle_selector.as_ref()
                })
            },
        )
        .watches(
            Api::<AccessList>::all(client.clone()),
            wc.clone(),
            move |o| clusters_selecting(&s3.state(), &o, |c| c.spec.access_list_selector.as_ref()),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            wc.clone(),
            move |svc| clusters_using_service(&s4.state(), &sets.state(), &svc),
        )
        // Secrets by metadata only (an `Api<PartialObjectMeta<_>>` asks the API server for
        // PartialObjectMetadata): the operator learns that a Secret appeared, changed or went
        // away without receiving, let alone keeping, every Secret's data in the cluster.
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client),
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
