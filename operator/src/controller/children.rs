//! The objects a cluster owns: apply, read back their status, publish, prune.

use super::*;

/// A condition, keeping the previous transition time when the status did not change.
pub(super) fn condition(
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

pub(super) async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
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

pub(super) fn no_extra<K>(_: &K) -> serde_json::Value {
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
pub(super) async fn children_status<K>(
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

pub(super) fn object_id<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

pub(super) async fn publish(
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
pub(super) async fn prune(
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
    if rendered.network_policy.is_none() {
        delete_if_owned::<NetworkPolicy>(ctx, cluster, ns, &name).await?;
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
