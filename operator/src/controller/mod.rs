//! The SbcCluster controller: gathers what a cluster selects, renders it, applies the result
//! with server-side apply and writes status on the cluster and on the selected resources.
//!
//! `select` finds what a cluster selects, `cluster` is one reconcile, `claim` refuses names of
//! somebody else's, `children` applies and reads back the owned objects.

mod children;
mod claim;
mod cluster;
mod select;

use children::*;
use claim::*;
use cluster::*;
pub use select::*;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
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
    /// A context with a fresh metrics registry and no pod defaults ([`Context::with_defaults`]
    /// gives the installation's, read with [`PodDefaults::from_env`]).
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
            defaults: PodDefaults::default(),
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
