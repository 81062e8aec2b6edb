//! One reconcile of one cluster: render, claim, apply, observe the destinations, write status.

use super::*;

/// How soon a cluster holding back its ConfigMap for a rollout looks again.
pub const RETRY_ROLLOUT: Duration = Duration::from_secs(5);

pub(super) async fn reconcile_cluster(
    cluster: &SbcCluster,
    ctx: &Context,
) -> Result<Action, Error> {
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
    if let Some(np) = &rendered.network_policy {
        apply::<NetworkPolicy>(client, &ns, np).await?;
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
pub(super) fn set_destinations_kept(ds: &DispatcherSet) -> serde_json::Value {
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
