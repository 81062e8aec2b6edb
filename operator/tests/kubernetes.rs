//! The operator against what a real API server enforces: the chart's RBAC on every request
//! (the fake in `support/` authorizes like kube-apiserver), names it must not take over,
//! status that one owner writes, rollouts, namespaces, Secrets and addresses.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster};
use kubesbc_operator::controller::{self, Context};
use kubesbc_operator::leader::LeaderElector;
use kubesbc_operator::render::PodDefaults;
use serde_json::{Value, json};
use support::rbac::{self, Authorizer};
use support::{Sent, World, example};

fn patches<'a>(sent: &'a [Sent], path_part: &str) -> Vec<&'a Sent> {
    sent.iter()
        .filter(|s| s.method == "PATCH" && s.path.contains(path_part))
        .collect()
}

fn condition(p: &Sent, type_: &str) -> (String, String, String) {
    let c = p.body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn forbidden(sent: &[Sent]) -> Vec<String> {
    sent.iter()
        .filter(|s| s.forbidden())
        .map(|s| format!("{} {}?{}", s.method, s.path, s.query))
        .collect()
}

fn secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "voip", "resourceVersion": "7"}, "data": data})
}

/// Every cluster shape the operator renders: a LoadBalancer Deployment with the examples, an
/// autoscaled one with Redis, auth and a TLS Secret, and a host-network DaemonSet.
fn every_shape() -> Vec<(String, World, SbcCluster)> {
    let mut out = Vec::new();
    out.push((
        "examples".to_owned(),
        World::standard(),
        example("sbccluster.yaml"),
    ));

    let mut w = World::standard();
    w.objects.insert(
        "/api/v1/namespaces/voip/secrets/redis-url".into(),
        secret("redis-url", json!({"url": "cmVkaXM6Ly9yZWRpczo2Mzc5LzA="})),
    );
    w.objects.insert(
        "/api/v1/namespaces/voip/secrets/sbc-auth".into(),
        secret("sbc-auth", json!({"nonce-key": "MDEyMzQ1Njc4OWFiY2RlZg=="})),
    );
    let host: SbcCluster = example("hostnetwork/sbccluster.yaml");
    let mut auto: SbcCluster = example("sbccluster.yaml");
    auto.spec.replicas = None;
    auto.spec.redis = host.spec.redis.clone();
    auto.spec.auth = host.spec.auth.clone();
    auto.spec.autoscaling = Some(
        serde_json::from_value(json!({"minReplicas": 2, "maxReplicas": 6})).expect("autoscaling"),
    );
    auto.spec.resources =
        Some(serde_json::from_value(json!({"requests": {"cpu": "200m"}})).expect("resources"));
    out.push(("autoscaled with redis and auth".to_owned(), w.clone(), auto));
    out.push(("host network".to_owned(), w, host));
    out
}

#[tokio::test]
async fn the_charts_rbac_permits_every_request_for_every_kind_the_operator_renders() {
    let mut kinds = BTreeSet::new();
    for (shape, world, cluster) in every_shape() {
        // Created from nothing, then reconciled again over what the first pass stored (the
        // update path: every object exists).
        let (sent, result, world) = support::reconcile_in(world, cluster.clone(), None).await;
        assert!(result.is_ok(), "{shape}: {result:?}");
        assert_eq!(forbidden(&sent), Vec::<String>::new(), "{shape}");
        let (again, result, _) = support::reconcile_in(world, cluster, None).await;
        assert!(result.is_ok(), "{shape} (again): {result:?}");
        assert_eq!(forbidden(&again), Vec::<String>::new(), "{shape} (again)");
        for s in sent
            .iter()
            .filter(|s| s.method == "PATCH" && !s.path.ends_with("/status"))
        {
            kinds.insert(s.body["kind"].as_str().unwrap_or_default().to_owned());
        }
    }
    // The walk covered every kind the operator renders.
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "DaemonSet",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(str::to_owned)
        .into_iter()
        .collect::<BTreeSet<_>>()
    );
}

/// What an older spec or operator left: per-protocol Services, an HPA, a DaemonSet and the
/// pods' identity under the cluster's bare name, all owned by the cluster.
fn pruning_world() -> (World, SbcCluster) {
    let cluster: SbcCluster = example("sbccluster.yaml");
    let owner = json!([{"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "name": "edge",
                        "uid": cluster.meta().uid, "controller": true}]);
    let mut world = World::standard();
    for (path, api_version, kind) in [
        ("/api/v1/namespaces/voip/services/edge-udp", "v1", "Service"),
        ("/api/v1/namespaces/voip/services/edge-tcp", "v1", "Service"),
        (
            "/apis/autoscaling/v2/namespaces/voip/horizontalpodautoscalers/edge",
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
        ),
        (
            "/apis/apps/v1/namespaces/voip/daemonsets/edge",
            "apps/v1",
            "DaemonSet",
        ),
        (
            "/api/v1/namespaces/voip/serviceaccounts/edge",
            "v1",
            "ServiceAccount",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/voip/roles/edge",
            "rbac.authorization.k8s.io/v1",
            "Role",
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/namespaces/voip/rolebindings/edge",
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
        ),
    ] {
        let name = path.rsplit('/').next().unwrap_or_default();
        let mut obj = json!({"apiVersion": api_version, "kind": kind,
                             "metadata": {"name": name, "namespace": "voip", "ownerReferences": owner}});
        if kind == "RoleBinding" {
            obj["roleRef"] =
                json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "edge"});
        }
        if kind == "HorizontalPodAutoscaler" {
            obj["spec"] =
                json!({"maxReplicas": 4, "scaleTargetRef": {"kind": "Deployment", "name": "edge"}});
        }
        world.objects.insert(path.into(), obj);
    }
    (world, cluster)
}

/// A cluster switched to hostNetwork, over the Deployment and PDB it had before.
fn host_network_pruning_world() -> (World, SbcCluster) {
    let mut cluster: SbcCluster = example("sbccluster.yaml");
    cluster.spec.host_network = true;
    cluster.spec.replicas = None;
    let owner = json!([{"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "name": "edge",
                        "uid": cluster.meta().uid, "controller": true}]);
    let mut world = World::standard();
    for (path, api_version, kind) in [
        (
            "/apis/apps/v1/namespaces/voip/deployments/edge",
            "apps/v1",
            "Deployment",
        ),
        (
            "/apis/policy/v1/namespaces/voip/poddisruptionbudgets/edge",
            "policy/v1",
            "PodDisruptionBudget",
        ),
    ] {
        world.objects.insert(
            path.into(),
            json!({"apiVersion": api_version, "kind": kind,
                   "metadata": {"name": "edge", "namespace": "voip", "ownerReferences": owner}}),
        );
    }
    (world, cluster)
}

#[tokio::test]
async fn pruning_is_permitted_too() {
    let (world, cluster) = pruning_world();
    let (sent, result) = support::reconcile(world, cluster, None).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(forbidden(&sent), Vec::<String>::new());
    let deleted: BTreeSet<&str> = sent
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(deleted.len(), 7, "{deleted:?}");
}

/// The ClusterRole the chart had before: patch, but no create.
const PATCH_ONLY: &str = r#"
kind: ClusterRole
metadata: {name: old}
rules:
  - {apiGroups: ["kubesbc.io"], resources: ["sbcclusters", "dispatchersets", "tenantthrottles", "accesslists"], verbs: ["get", "list", "watch"]}
  - {apiGroups: ["kubesbc.io"], resources: ["sbcclusters/status", "dispatchersets/status", "tenantthrottles/status", "accesslists/status"], verbs: ["get", "patch"]}
  - {apiGroups: [""], resources: ["configmaps"], verbs: ["get", "list", "watch", "patch"]}
  - {apiGroups: [""], resources: ["services"], verbs: ["get", "list", "watch", "patch", "delete"]}
  - {apiGroups: [""], resources: ["serviceaccounts"], verbs: ["get", "patch"]}
  - {apiGroups: [""], resources: ["secrets"], verbs: ["get", "list", "watch"]}
  - {apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["get", "list", "watch"]}
  - {apiGroups: ["apps"], resources: ["deployments", "daemonsets"], verbs: ["get", "list", "watch", "patch", "delete"]}
  - {apiGroups: ["policy"], resources: ["poddisruptionbudgets"], verbs: ["get", "patch"]}
  - {apiGroups: ["autoscaling"], resources: ["horizontalpodautoscalers"], verbs: ["get", "patch", "delete"]}
  - {apiGroups: ["rbac.authorization.k8s.io"], resources: ["roles", "rolebindings"], verbs: ["get", "patch"]}
  - {apiGroups: ["events.k8s.io"], resources: ["events"], verbs: ["create", "patch"]}
  - {apiGroups: [""], resources: ["pods"], verbs: ["list"]}
---
kind: ClusterRoleBinding
metadata: {name: old}
roleRef: {kind: ClusterRole, name: old}
subjects: [{kind: ServiceAccount, name: kubesbc, namespace: kubesbc-system}]
"#;

#[tokio::test]
async fn an_apply_that_creates_needs_create_and_the_refusal_shows_on_the_cluster() {
    let mut world = World::standard();
    world.authorizer = Authorizer::from_manifests(PATCH_ONLY, "kubesbc");
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    let err = result.expect_err("a 403 is an error");
    assert!(err.to_string().contains("needs create"), "{err}");
    let refused = forbidden(&sent);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].starts_with("PATCH /api/v1/namespaces/voip/configmaps/edge-config?"),
        "{refused:?}"
    );
    // The cluster says why (not only the operator's log) ...
    let status = patches(&sent, "/sbcclusters/edge/status");
    let (ok, reason, message) = condition(status.last().expect("a status"), "Ready");
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "ApiError"));
    assert!(message.contains("forbidden"), "{message}");
    // ... and so does an Event.
    let ev = sent
        .iter()
        .find(|s| s.method == "POST" && s.path.ends_with("/events"))
        .expect("an event");
    assert_eq!(
        (ev.body["type"].as_str(), ev.body["reason"].as_str()),
        (Some("Warning"), Some("ApiError"))
    );
}

#[tokio::test]
async fn the_operator_cannot_grant_what_it_does_not_hold() {
    // Without endpointslices in the operator's own rules, the Role it grants the pods is
    // refused by the escalation check.
    let mut auth = Authorizer::operator();
    for g in &mut auth.grants {
        g.rules
            .retain(|r| !r.resources.contains(&"endpointslices".to_owned()));
    }
    let mut world = World::standard();
    world.authorizer = auth;
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_err());
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.forbidden()).collect();
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].path.ends_with("/roles/edge-sbc"),
        "{:?}",
        refused[0]
    );
}

#[tokio::test]
async fn the_role_granted_to_the_sbc_pods_permits_what_the_sbc_asks_and_no_more() {
    let (sent, result) =
        support::reconcile(World::standard(), example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    let role = &patches(&sent, "/roles/edge-sbc")[0].body;
    let pods = Authorizer::of_role(role);
    // What the sbc's kube clients send (sbc/src/reload.rs, sbc/src/discovery/watch.rs).
    let asks = [
        ("GET", "/api/v1/namespaces/voip/configmaps/edge-config", ""),
        (
            "GET",
            "/api/v1/namespaces/voip/configmaps",
            "fieldSelector=metadata.name%3Dedge-config",
        ),
        (
            "GET",
            "/api/v1/namespaces/voip/configmaps",
            "fieldSelector=metadata.name%3Dedge-config&watch=true",
        ),
        (
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/voip/endpointslices",
            "labelSelector=kubernetes.io%2Fservice-name%3Dasterisk",
        ),
        (
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/voip/endpointslices",
            "labelSelector=kubernetes.io%2Fservice-name%3Dasterisk&watch=true",
        ),
    ];
    for (m, p, q) in asks {
        let a = rbac::attributes(m, p, q).expect("a resource request");
        assert!(pods.allows(&a), "{a}");
    }
    let refused = [
        // Another cluster's configuration, every ConfigMap, another namespace, any write.
        ("GET", "/api/v1/namespaces/voip/configmaps/other-config", ""),
        ("GET", "/api/v1/namespaces/voip/configmaps", "watch=true"),
        (
            "GET",
            "/apis/discovery.k8s.io/v1/namespaces/pbx/endpointslices",
            "watch=true",
        ),
        (
            "PATCH",
            "/api/v1/namespaces/voip/configmaps/edge-config",
            "",
        ),
        (
            "GET",
            "/api/v1/namespaces/voip/secrets/company-signature",
            "",
        ),
    ];
    for (m, p, q) in refused {
        let a = rbac::attributes(m, p, q).expect("a resource request");
        assert!(!pods.allows(&a), "{a}");
    }
}

#[tokio::test]
async fn a_dispatcher_set_naming_another_namespaces_service_is_refused_naming_the_field() {
    let mut world = World::standard();
    let mut ds: DispatcherSet = example("dispatcherset.yaml");
    if let Some(s) = ds.spec.destinations.service.as_mut() {
        s.namespace = Some("pbx".into());
    }
    world.put(&ds);
    world.objects.insert(
        "/api/v1/namespaces/pbx/services/asterisk".into(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "asterisk", "namespace": "pbx"},
               "spec": {"ports": [{"name": "sip", "port": 5060}]}}),
    );
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    // The other namespace is never read.
    assert!(
        !sent.iter().any(|s| s.path.contains("/namespaces/pbx/")),
        "{sent:?}"
    );
    let p = patches(&sent, "/dispatchersets/asterisk/status");
    let (ok, reason, message) = condition(p[0], "Accepted");
    assert_eq!(
        (ok.as_str(), reason.as_str()),
        ("False", "CrossNamespaceService")
    );
    assert!(
        message.starts_with(
            "spec.destinations.service.namespace: Service pbx/asterisk is in another namespace"
        ),
        "{message}"
    );
    assert!(patches(&sent, "/configmaps/").is_empty());
}

#[tokio::test]
async fn a_cluster_never_takes_over_an_object_it_does_not_own() {
    // An SbcCluster named like the backend Service would have hijacked it.
    let mut cluster: SbcCluster = example("sbccluster.yaml");
    cluster.meta_mut().name = Some("asterisk".into());
    let (sent, result) = support::reconcile(World::standard(), cluster, None).await;
    assert!(result.is_ok(), "{result:?}");
    let writes: Vec<_> = sent
        .iter()
        .filter(|s| s.method == "PATCH" && !s.path.ends_with("/status"))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    let status = patches(&sent, "/sbcclusters/asterisk/status");
    let (ok, reason, message) = condition(status[0], "Accepted");
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "NameConflict"));
    assert!(
        message
            .contains("Service voip/asterisk already exists and is not owned by this SbcCluster"),
        "{message}"
    );
}

#[tokio::test]
async fn a_cluster_named_default_leaves_the_default_service_account_alone() {
    let mut world = World::standard();
    world.objects.insert(
        "/api/v1/namespaces/voip/serviceaccounts/default".into(),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "voip"}}),
    );
    let mut cluster: SbcCluster = example("sbccluster.yaml");
    cluster.meta_mut().name = Some("default".into());
    let (sent, result) = support::reconcile(world, cluster, None).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        !sent
            .iter()
            .any(|s| s.method == "PATCH" && s.path.ends_with("/serviceaccounts/default"))
    );
    assert_eq!(patches(&sent, "/serviceaccounts/default-sbc").len(), 1);
    assert!(!sent.iter().any(|s| s.method == "DELETE"));
}

#[tokio::test]
async fn a_shared_resource_has_one_owner_listing_every_user() {
    let mut world = World::standard();
    let edge: SbcCluster = example("sbccluster.yaml");
    let mut other = edge.clone();
    other.meta_mut().name = Some("other".into());
    other.meta_mut().uid = Some("uid-other".into());
    world.put(&edge);
    world.put(&other);
    // The second by name writes no status on the resources it shares ...
    let (sent, result) = support::reconcile(world.clone(), other, None).await;
    assert!(result.is_ok(), "{result:?}");
    for child in ["/dispatchersets/", "/tenantthrottles/", "/accesslists/"] {
        assert!(patches(&sent, child).is_empty(), "{child}");
    }
    // ... the first does, naming both.
    let (sent, result) = support::reconcile(world, edge, None).await;
    assert!(result.is_ok(), "{result:?}");
    let p = patches(&sent, "/dispatchersets/asterisk/status");
    assert_eq!(
        p[0].body["status"]["usedBy"],
        json!(["voip/edge", "voip/other"])
    );
}

#[tokio::test]
async fn a_deselected_resource_stops_saying_it_is_in_effect() {
    let (sent, _, mut world) =
        support::reconcile_in(World::standard(), example("sbccluster.yaml"), None).await;
    let p = patches(&sent, "/accesslists/edge-guard/status");
    assert_eq!(p[0].body["status"]["usedBy"], json!(["voip/edge"]));
    // Its label changes: no cluster selects it now.
    let path = "/apis/kubesbc.io/v1alpha1/namespaces/voip/accesslists/edge-guard";
    let mut acl: AccessList = serde_json::from_value(world.objects[path].clone()).expect("acl");
    acl.meta_mut().labels = Some([("kubesbc.io/cluster".to_owned(), "none".to_owned())].into());
    let mut v = support::value(&acl);
    v["status"] = p[0].body["status"].clone();
    world.objects.insert(path.into(), v);
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    let p = patches(&sent, "/accesslists/edge-guard/status");
    assert_eq!(p.len(), 1);
    let (ok, reason, _) = condition(p[0], "Ready");
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "NotSelected"));
    assert!(p[0].body["status"].get("usedBy").is_none());
    // The config no longer has it.
    let cm = patches(&sent, "/configmaps/edge-config");
    let yaml = cm[0].body["data"]["sbc.yaml"].as_str().expect("yaml");
    assert!(!yaml.contains("edge-guard"), "{yaml}");
}

#[tokio::test]
async fn ready_is_false_in_the_middle_of_a_rollout() {
    let mut world = World::standard();
    // Three pods: two ready old ones and one new one starting.
    world.objects.insert(
        "/apis/apps/v1/namespaces/voip/deployments/edge".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": owned("edge"),
               "status": {"replicas": 3, "readyReplicas": 2, "updatedReplicas": 1}}),
    );
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    let status = patches(&sent, "/sbcclusters/edge/status");
    let (ok, reason, message) = condition(status[0], "Ready");
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "RollingOut"));
    assert!(
        message.starts_with("rollout in progress: 1/2 pods updated"),
        "{message}"
    );
}

/// `kubectl scale` and an HPA count the pods through the scale subresource, which reads
/// `status.replicas` and `status.selector`: the selector must pick the Deployment's pods.
#[tokio::test]
async fn the_scale_subresource_sees_the_pods_through_status_selector() {
    let mut world = World::standard();
    world.objects.insert(
        "/apis/apps/v1/namespaces/voip/deployments/edge".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": owned("edge"),
               "status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}}),
    );
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    let status = &patches(&sent, "/sbcclusters/edge/status")[0].body["status"];
    assert_eq!(status["replicas"], 2, "{status}");
    let selector = status["selector"].as_str().expect("status.selector");
    let dep = &patches(&sent, "/deployments/edge")[0].body;
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert!(!selector.is_empty());
    for pair in selector.split(',') {
        let (k, v) = pair.split_once('=').expect("key=value");
        assert_eq!(
            labels[k], v,
            "{k} of {selector} is not on the pods: {labels}"
        );
    }
    // The same as the Deployment's own selector: no other pods counted.
    let own = dep["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert_eq!(
        own.len(),
        selector.split(',').count(),
        "{own:?} vs {selector}"
    );
}

fn owned(name: &str) -> Value {
    json!({"name": name, "namespace": "voip",
           "ownerReferences": [{"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "name": "edge", "uid": "uid-sbccluster.yaml", "controller": true}]})
}

#[tokio::test]
async fn a_new_header_secret_reaches_the_config_only_once_every_pod_mounts_it() {
    // Running: pods without the signature Secret, a config without the header rule.
    let mut world = World::standard();
    let mut acl: AccessList = example("accesslist.yaml");
    let (without, _) = {
        let mut w = World::standard();
        acl.spec.rules.truncate(2);
        w.put(&acl);
        let (sent, _, w) = support::reconcile_in(w, example("sbccluster.yaml"), None).await;
        (sent, w)
    };
    let cm = patches(&without, "/configmaps/edge-config")[0].body.clone();
    let dep = patches(&without, "/deployments/edge")[0].body.clone();
    let volumes = dep["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(!volumes.contains("company-signature"), "{volumes}");
    world.objects.insert(
        "/api/v1/namespaces/voip/configmaps/edge-config".into(),
        cm.clone(),
    );
    let mut running = dep.clone();
    running["status"] = json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 0});
    world.objects.insert(
        "/apis/apps/v1/namespaces/voip/deployments/edge".into(),
        running,
    );

    // The rule appears: the template rolls, the ConfigMap waits.
    let (sent, result, mut world) =
        support::reconcile_in(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    assert!(
        patches(&sent, "/configmaps/").is_empty(),
        "the ConfigMap waits"
    );
    let dep = patches(&sent, "/deployments/edge");
    assert!(
        dep[0].body["spec"]["template"]["spec"]["volumes"]
            .to_string()
            .contains("company-signature")
    );
    let status = patches(&sent, "/sbcclusters/edge/status");
    let (ok, reason, _) = condition(status[0], "Ready");
    assert_eq!((ok.as_str(), reason.as_str()), ("False", "RollingOut"));

    // The rollout ends: every pod mounts it, the rule goes in.
    let path = "/apis/apps/v1/namespaces/voip/deployments/edge";
    let mut done = world.objects[path].clone();
    done["status"] = json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2});
    world.objects.insert(path.into(), done);
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    let cm = patches(&sent, "/configmaps/edge-config");
    assert_eq!(cm.len(), 1);
    assert!(
        cm[0].body["data"]["sbc.yaml"]
            .as_str()
            .is_some_and(|y| y.contains("company-signature"))
    );
}

fn startup_annotation(sent: &[Sent]) -> Value {
    patches(sent, "/deployments/edge")[0].body["spec"]["template"]["metadata"]["annotations"]
        ["kubesbc.io/startup-secrets"]
        .clone()
}

#[tokio::test]
async fn only_a_change_of_a_secrets_data_rolls_the_pods() {
    let (first, _) = support::reconcile(World::standard(), example("sbccluster.yaml"), None).await;
    // Relabelled: a new resourceVersion, the same data.
    let mut relabelled = World::standard();
    relabelled.objects.insert(
        "/api/v1/namespaces/voip/secrets/company-signature".into(),
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "company-signature", "namespace": "voip", "resourceVersion": "99", "labels": {"team": "voice"}},
               "data": {"signature": "czNjcmV0"}}),
    );
    let (second, _) = support::reconcile(relabelled, example("sbccluster.yaml"), None).await;
    assert!(startup_annotation(&first).is_string());
    assert_eq!(startup_annotation(&first), startup_annotation(&second));
    let mut rotated = World::standard();
    rotated.objects.insert(
        "/api/v1/namespaces/voip/secrets/company-signature".into(),
        secret("company-signature", json!({"signature": "bjN3"})),
    );
    let (third, _) = support::reconcile(rotated, example("sbccluster.yaml"), None).await;
    assert_ne!(startup_annotation(&first), startup_annotation(&third));
}

#[tokio::test]
async fn listeners_advertise_the_load_balancers_address() {
    let mut world = World::standard();
    world.objects.insert(
        "/api/v1/namespaces/voip/services/edge".into(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": owned("edge"),
               "spec": {"type": "LoadBalancer"},
               "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}}),
    );
    let (sent, result) = support::reconcile(world, example("sbccluster.yaml"), None).await;
    assert!(result.is_ok(), "{result:?}");
    let yaml = patches(&sent, "/configmaps/edge-config")[0].body["data"]["sbc.yaml"]
        .as_str()
        .expect("yaml")
        .to_owned();
    let config = kubesbc_crds::config::SbcConfig::from_yaml(&yaml).expect("config");
    for l in &config.listeners {
        assert_eq!(l.advertise.as_deref(), Some("203.0.113.7"), "{yaml}");
    }
    // One Service for UDP and TCP: the one address.
    assert_eq!(patches(&sent, "/services/edge-udp").len(), 0);
    let svc = &patches(&sent, "/services/edge")[0].body;
    let protocols: BTreeSet<&str> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["protocol"].as_str())
        .collect();
    assert_eq!(protocols, BTreeSet::from(["TCP", "UDP"]));
}

/// An operator installed with `networkPolicy.enabled` (what the chart passes it).
fn with_network_policies() -> PodDefaults {
    let peers: kubesbc_operator::render::PolicyPeers = serde_json::from_value(json!({
        "operatorNamespace": "kubesbc-system",
        "operatorPodLabels": {"app.kubernetes.io/name": "kubesbc", "app.kubernetes.io/component": "operator"},
        "prometheusNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "prometheusPodSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }))
    .expect("peers");
    PodDefaults {
        network_policy: Some(peers),
        ..PodDefaults::default()
    }
}

#[tokio::test]
async fn with_network_policies_on_each_cluster_gets_one_the_charts_role_permits() {
    let (sent, result, _) = support::reconcile_with(
        World::standard(),
        example("sbccluster.yaml"),
        None,
        with_network_policies(),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(forbidden(&sent), Vec::<String>::new());
    let np = &patches(&sent, "/networkpolicies/edge")[0].body;
    assert_eq!(
        np["metadata"]["namespace"], "voip",
        "in the cluster's namespace"
    );
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
        "edge"
    );
    let admin = &np["spec"]["ingress"][1];
    assert_eq!(admin["ports"], json!([{"protocol": "TCP", "port": 9090}]));
    assert_eq!(
        admin["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "kubesbc-system"
    );
}

#[tokio::test]
async fn the_charts_image_defaults_reach_the_sbc_pods() {
    let defaults = PodDefaults {
        image: Some("registry.example.com/kubesbc/sbc:1.2.3".into()),
        pull_policy: Some("Always".into()),
        pull_secrets: vec!["regcred".into()],
        network_policy: None,
    };
    let (sent, result, _) = support::reconcile_with(
        World::standard(),
        example("sbccluster.yaml"),
        None,
        defaults,
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    let pod = &patches(&sent, "/deployments/edge")[0].body["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example.com/kubesbc/sbc:1.2.3"
    );
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    // The spec's own image wins.
    let mut cluster: SbcCluster = example("sbccluster.yaml");
    cluster.spec.image = Some("mine:1".into());
    let (sent, _, _) =
        support::reconcile_with(World::standard(), cluster, None, PodDefaults::default()).await;
    let pod = &patches(&sent, "/deployments/edge")[0].body["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "mine:1");
}

/// The resources the operator watches (and lists first): its own kinds, the objects it owns,
/// and Secrets by metadata.
const WATCHED: [&str; 9] = [
    "accesslists",
    "configmaps",
    "daemonsets",
    "deployments",
    "dispatchersets",
    "sbcclusters",
    "secrets",
    "services",
    "tenantthrottles",
];

fn watched(sent: &[Sent]) -> BTreeSet<String> {
    sent.iter()
        .filter_map(|s| rbac::attributes(&s.method, &s.path, &s.query))
        .filter(|a| a.verb == "watch")
        .map(|a| a.resource)
        .collect()
}

/// Runs the whole operator (`controller::run`: every watch, then the reconciliation of the
/// example cluster) against `world` until the cluster's status is written with every watch
/// open; returns what it sent.
async fn run_operator(world: World, namespace: Option<&str>) -> Vec<Sent> {
    let fake = support::Fake::start(world);
    let registry = prometheus::Registry::new();
    let ctx = Arc::new(Context::new(fake.client.clone(), &registry).expect("metrics"));
    let run = tokio::spawn(controller::run(ctx, namespace.map(str::to_owned)));
    let want: BTreeSet<String> = WATCHED.map(str::to_owned).into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sent = fake.sent();
        let status = sent
            .iter()
            .any(|s| s.method == "PATCH" && s.path.ends_with("/sbcclusters/edge/status"));
        if status && watched(&sent) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not reconcile with every watch open in 10 s: watches {:?}, refused {:?}",
            watched(&sent),
            forbidden(&sent)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run.abort();
    fake.sent()
}

#[tokio::test]
async fn the_whole_operator_runs_on_the_charts_rbac_cluster_wide_and_in_one_namespace() {
    // Every namespace: the ClusterRole.
    let sent = run_operator(World::standard(), None).await;
    assert_eq!(forbidden(&sent), Vec::<String>::new());
    let cluster_wide: BTreeSet<String> = sent
        .iter()
        .filter_map(|s| rbac::attributes(&s.method, &s.path, &s.query))
        .filter(|a| a.namespace.is_none() && a.verb == "watch")
        .map(|a| a.resource)
        .collect();
    assert_eq!(cluster_wide.len(), WATCHED.len(), "{cluster_wide:?}");

    // watchNamespace=voip: the chart renders Roles only, and the operator never asks for
    // anything outside the namespace (a cluster-wide list or watch would be refused).
    let mut world = World::standard();
    world.authorizer = Authorizer::operator_watching_voip();
    let sent = run_operator(world, Some("voip")).await;
    assert_eq!(forbidden(&sent), Vec::<String>::new());
    let elsewhere: Vec<String> = sent
        .iter()
        .flat_map(|s| s.checked.iter())
        .filter(|a| a.namespace.as_deref() != Some("voip"))
        .map(ToString::to_string)
        .collect();
    assert_eq!(elsewhere, Vec::<String>::new());

    // The same run on the ClusterRole's grants but restricted to another namespace's Role
    // is refused: the namespaced rendering really is what allows it.
    let mut world = World::standard();
    world.authorizer = Authorizer::operator_watching_voip();
    for g in &mut world.authorizer.grants {
        if g.namespace.as_deref() == Some("voip") {
            g.namespace = Some("pbx".into());
        }
    }
    let fake = support::Fake::start(world);
    let registry = prometheus::Registry::new();
    let ctx = Arc::new(Context::new(fake.client.clone(), &registry).expect("metrics"));
    let run = tokio::spawn(controller::run(ctx, Some("voip".to_owned())));
    let refused = wait_for_refusal(&fake).await;
    run.abort();
    assert!(
        refused,
        "a Role in another namespace allowed the operator's watches"
    );
}

async fn wait_for_refusal(fake: &support::Fake) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if fake.sent().iter().any(Sent::forbidden) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// (API group, resource, verb) of each permission.
fn triples<'a>(attrs: impl IntoIterator<Item = &'a rbac::Attributes>) -> BTreeSet<String> {
    attrs
        .into_iter()
        .map(|a| {
            let res = match &a.subresource {
                Some(s) => format!("{}/{s}", a.resource),
                None => a.resource.clone(),
            };
            let group = if a.group.is_empty() { "core" } else { &a.group };
            format!("{group} {res} {}", a.verb)
        })
        .collect()
}

#[tokio::test]
async fn the_charts_rules_grant_exactly_what_the_operator_uses_both_ways() {
    let mut used: Vec<rbac::Attributes> = Vec::new();
    let mut take = |sent: &[Sent], what: &str| {
        assert_eq!(forbidden(sent), Vec::<String>::new(), "{what}");
        used.extend(sent.iter().flat_map(|s| s.checked.iter().cloned()));
    };
    // The whole operator, both ways.
    take(&run_operator(World::standard(), None).await, "operator run");
    let mut world = World::standard();
    world.authorizer = Authorizer::operator_watching_voip();
    take(
        &run_operator(world, Some("voip")).await,
        "operator run in voip",
    );
    // Every shape, created and updated; pruning.
    for (shape, world, cluster) in every_shape() {
        let (sent, _, world) = support::reconcile_in(world, cluster.clone(), None).await;
        take(&sent, &shape);
        let (sent, _, _) = support::reconcile_in(world, cluster, None).await;
        take(&sent, &shape);
    }
    for (world, cluster) in [pruning_world(), host_network_pruning_world()] {
        let (sent, _) = support::reconcile(world, cluster, None).await;
        assert!(
            sent.iter().any(|s| s.method == "DELETE"),
            "something pruned"
        );
        take(&sent, "pruning");
    }
    // NetworkPolicies: created, updated, and deleted once the installation turns them off.
    let cluster: SbcCluster = example("sbccluster.yaml");
    let (sent, _, world) = support::reconcile_with(
        World::standard(),
        cluster.clone(),
        None,
        with_network_policies(),
    )
    .await;
    take(&sent, "network policy created");
    let (sent, _, world) =
        support::reconcile_with(world, cluster.clone(), None, with_network_policies()).await;
    take(&sent, "network policy updated");
    let (sent, _, _) = support::reconcile_with(world, cluster, None, PodDefaults::default()).await;
    assert!(
        sent.iter()
            .any(|s| s.method == "DELETE" && s.path.ends_with("/networkpolicies/edge")),
        "the policy goes when policies are off"
    );
    take(&sent, "network policy pruned");
    // Leader election: create the Lease, then renew it.
    let fake = support::Fake::start(World::default());
    let elector = LeaderElector::new(
        fake.client.clone(),
        "kubesbc-system",
        "kubesbc",
        "me",
        Duration::from_secs(15),
    );
    assert!(elector.try_lead().await.expect("lead"), "acquired");
    assert!(elector.try_lead().await.expect("renew"), "renewed");
    drop(elector);
    let (sent, _) = fake.stop().await;
    take(&sent, "leader election");
    // An Event published twice: kube's Recorder patches the repeat into a series.
    let fake = support::Fake::start(World::standard());
    let recorder = Recorder::new(
        fake.client.clone(),
        Reporter {
            controller: controller::MANAGER.into(),
            instance: None,
        },
    );
    let cluster: SbcCluster = example("sbccluster.yaml");
    let ev = Event {
        type_: EventType::Warning,
        reason: "ApiError".into(),
        note: Some("refused".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    for _ in 0..2 {
        recorder
            .publish(&ev, &cluster.object_ref(&()))
            .await
            .expect("published");
    }
    drop(recorder);
    let (sent, _) = fake.stop().await;
    take(&sent, "events");

    let used = triples(&used);
    for file in [
        "../manifests/kubesbc.yaml",
        "tests/fixtures/kubesbc-watch-voip.yaml",
    ] {
        let text = rbac::rendered(file);
        let granted: Vec<rbac::Attributes> = rbac::roles_in(&text)
            .into_iter()
            .flat_map(|(_, ns, rules)| rbac::expand(ns.as_deref(), &rules))
            .collect();
        let granted = triples(&granted);
        let unused: Vec<&String> = granted.difference(&used).collect();
        let missing: Vec<&String> = used.difference(&granted).collect();
        assert!(
            unused.is_empty() && missing.is_empty(),
            "{file}: granted but never used: {unused:?}; used but not granted: {missing:?}"
        );
    }
}
