//! Claiming rendered names: an object of somebody else's is refused, naming it.

use super::*;

/// An object of a rendered name: absent, or controlled by this cluster (returned, as it is
/// now). Anything else is somebody else's, and a forced apply would take it over (and garbage
/// collection delete it with the cluster): refused, naming it.
pub(super) async fn claim<K>(
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

pub(super) fn controlled_by<K: Resource>(obj: &K, cluster: &SbcCluster) -> bool {
    let uid = cluster.meta().uid.as_deref();
    obj.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// What the objects of a cluster's rendered names look like before this reconciliation.
#[derive(Default)]
pub(super) struct Live {
    pub(super) config_map: Option<ConfigMap>,
    /// The Secrets the running workload's pod template mounts; `None`: no workload yet.
    pub(super) template_secrets: Option<std::collections::BTreeSet<String>>,
}

/// Claims every rendered name (see [`claim`]); the first conflict refuses the render.
pub(super) async fn claim_all(
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
    if let Some(np) = &r.network_policy {
        claim!(NetworkPolicy, name(&np.metadata));
    }
    Ok(Ok(Live {
        config_map,
        template_secrets,
    }))
}

pub(super) fn template_secrets(
    pod: &k8s_openapi::api::core::v1::PodSpec,
) -> std::collections::BTreeSet<String> {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect()
}

/// The files required header values are read from in `config`.
pub(super) fn header_files(
    config: &kubesbc_crds::config::SbcConfig,
) -> std::collections::BTreeSet<String> {
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
pub(super) async fn refuse(
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
