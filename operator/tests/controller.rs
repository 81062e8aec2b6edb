//! The controller against kube's `Client` over `tower_test::mock::pair`: a small fake API
//! server answers from a set of objects and records every request, and the tests assert what
//! the operator sent (the pattern of kube-rs controller-rs `fixtures.rs`; the fake lives in
//! `support/`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::{Client, Resource};
use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster};
use kubesbc_operator::controller::{self, Context};
use serde_json::{Value, json};
use support::{Sent, World, example};

/// Runs one reconciliation of `cluster` against `world`; returns what was sent and the result.
async fn reconcile(
    world: World,
    cluster: SbcCluster,
) -> (
    Vec<Sent>,
    Result<kube::runtime::controller::Action, controller::Error>,
) {
    support::reconcile(world, cluster, None).await
}

fn patches<'a>(sent: &'a [Sent], path_part: &str) -> Vec<&'a Sent> {
    sent.iter()
        .filter(|s| s.method == "PATCH" && s.path.contains(path_part))
        .collect()
}

fn accepted(status_patch: &Sent) -> (String, String, String) {
    let c = status_patch.body["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted"))
        .cloned()
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or_default().to_owned(),
        c["reason"].as_str().unwrap_or_default().to_owned(),
        c["message"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn a_new_cluster_gets_its_configmap_deployment_and_status() {
    let cluster: SbcCluster = example("sbccluster.yaml");
    let (sent, result) = reconcile(World::standard(), cluster).await;
    assert!(result.is_ok(), "{result:?}");

    // Every write is a server-side apply by our field manager.
    for p in sent.iter().filter(|s| s.method == "PATCH") {
        assert!(p.query.contains("fieldManager=kubesbc-operator"), "{p:?}");
        assert!(p.query.contains("force=true"), "{p:?}");
    }
    let cm = patches(&sent, "/configmaps/edge-config");
    assert_eq!(cm.len(), 1);
    let yaml = cm[0].body["data"]["sbc.yaml"].as_str().expect("sbc.yaml");
    let config = kubesbc_crds::config::SbcConfig::from_yaml(yaml).expect("valid config");
    assert_eq!(config.dispatcher.sets.len(), 2);
    // The Secret's value never enters the ConfigMap: the pods read the mounted file.
    assert!(!yaml.contains("s3cret"), "{yaml}");
    assert_eq!(
        config.access_lists[0].rules[2].required_headers[0]
            .value_file
            .as_deref(),
        Some("/etc/kubesbc/secrets/company-signature/signature")
    );
    assert_eq!(
        cm[0].body["metadata"]["ownerReferences"][0]["kind"],
        "SbcCluster"
    );

    let dep = patches(&sent, "/deployments/edge");
    assert_eq!(dep.len(), 1);
    assert_eq!(dep[0].body["spec"]["replicas"], 2);
    let container = &dep[0].body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    for kind in [
        "/services/edge",
        "/services/edge-admin",
        "/serviceaccounts/edge-sbc",
        "/roles/edge-sbc",
        "/rolebindings/edge-sbc",
        "/poddisruptionbudgets/edge",
    ] {
        let n = sent
            .iter()
            .filter(|s| s.method == "PATCH" && s.path.ends_with(kind))
            .count();
        assert_eq!(n, 1, "{kind}");
    }
    assert!(patches(&sent, "horizontalpodautoscalers").is_empty());

    let status = patches(&sent, "/sbcclusters/edge/status");
    assert_eq!(status.len(), 1);
    let st = &status[0].body["status"];
    assert_eq!(st["observedGeneration"], 3);
    assert_eq!(st["readyReplicas"], 2);
    // No sbc pod to ask in this world: the counts are unknown, not 0.
    assert!(st.get("destinationsTotal").is_none(), "{st}");
    assert!(st.get("destinationsUp").is_none(), "{st}");
    assert_eq!(accepted(status[0]).0, "True");
    let ready = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("Ready");
    assert_eq!(ready["status"], "True");

    let carriers = patches(&sent, "/dispatchersets/carriers/status");
    assert!(
        carriers[0].body["status"]
            .get("destinationsTotal")
            .is_none()
    );
    // The selected resources are told they took effect.
    for child in [
        "/dispatchersets/asterisk/status",
        "/dispatchersets/carriers/status",
        "/tenantthrottles/tenants/status",
        "/accesslists/edge-guard/status",
    ] {
        let p = patches(&sent, child);
        assert_eq!(p.len(), 1, "{child}");
        assert_eq!(accepted(p[0]).0, "True", "{child}");
        let ready = p[0].body["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned()
            .expect("Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["message"].as_str()),
            (
                Some("True"),
                Some("in the sbc.yaml of SbcCluster voip/edge")
            )
        );
    }
    // And an Event says what happened.
    let ev = sent
        .iter()
        .find(|s| s.method == "POST" && s.path.ends_with("/events"))
        .expect("an event");
    assert_eq!(ev.body["reason"], "ConfigRendered");
    assert_eq!(ev.body["regarding"]["name"], "edge");
}

#[tokio::test]
async fn a_changed_dispatcher_set_rerenders_the_clusters_that_select_it() {
    // The watch mapper sends the change to the cluster selecting the set, not to others.
    let edge: SbcCluster = example("sbccluster.yaml");
    let mut other = edge.clone();
    other.meta_mut().name = Some("other".into());
    other.spec.dispatcher_set_selector = Some(
        serde_json::from_value(json!({"matchLabels": {"kubesbc.io/cluster": "other"}}))
            .expect("selector"),
    );
    let mut changed: DispatcherSet = example("dispatcherset-static.yaml");
    let clusters = vec![Arc::new(edge.clone()), Arc::new(other)];
    let targets = controller::clusters_selecting(&clusters, &changed, |c| {
        c.spec.dispatcher_set_selector.as_ref()
    });
    assert_eq!(
        targets.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        ["edge"]
    );

    // Its reconciliation renders the new destinations into the ConfigMap.
    if let Some(d) = changed.spec.destinations.static_.as_mut() {
        d[0].uri = "sip:carrier-c.example.com:5080".into();
    }
    let mut world = World::standard();
    world.put(&changed);
    let (sent, result) = reconcile(world, edge).await;
    assert!(result.is_ok(), "{result:?}");
    let cm = patches(&sent, "/configmaps/edge-config");
    let yaml = cm[0].body["data"]["sbc.yaml"].as_str().expect("sbc.yaml");
    assert!(yaml.contains("sip:carrier-c.example.com:5080"), "{yaml}");
    assert!(!yaml.contains("carrier-a.example.com"), "{yaml}");
}

#[tokio::test]
async fn an_access_list_with_a_missing_secret_is_not_accepted_and_nothing_is_applied() {
    let mut world = World::standard();
    world
        .objects
        .remove("/api/v1/namespaces/voip/secrets/company-signature");
    let (sent, result) = reconcile(world, example("sbccluster.yaml")).await;
    assert!(
        result.is_ok(),
        "a rejected spec is a status, not an error: {result:?}"
    );

    // The last good ConfigMap and Deployment stay: nothing but status is written.
    let applied: Vec<_> = sent
        .iter()
        .filter(|s| s.method == "PATCH" && !s.path.ends_with("/status"))
        .collect();
    assert!(applied.is_empty(), "{applied:?}");

    let acl = patches(&sent, "/accesslists/edge-guard/status");
    assert_eq!(acl.len(), 1);
    let (status, reason, message) = accepted(acl[0]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretNotFound")
    );
    assert_eq!(
        message,
        "spec.rules[2].requiredHeaders[0].secretKeyRef.name: Secret voip/company-signature does not exist"
    );

    let cluster = patches(&sent, "/sbcclusters/edge/status");
    let (status, _, message) = accepted(cluster[0]);
    assert_eq!(status, "False");
    assert!(
        message.starts_with("AccessList voip/edge-guard: spec.rules[2]"),
        "{message}"
    );
    // Sets that are fine are not marked.
    assert!(patches(&sent, "/dispatchersets/").is_empty());
    let ev = sent
        .iter()
        .find(|s| s.method == "POST")
        .expect("a warning event");
    assert_eq!(
        (ev.body["type"].as_str(), ev.body["reason"].as_str()),
        (Some("Warning"), Some("SecretNotFound"))
    );
}

#[tokio::test]
async fn duplicate_set_ids_mark_the_second_set() {
    let mut world = World::standard();
    let mut dup: DispatcherSet = example("dispatcherset-static.yaml");
    dup.spec.set_id = 1;
    world.put(&dup);
    let (sent, _) = reconcile(world, example("sbccluster.yaml")).await;
    let p = patches(&sent, "/dispatchersets/carriers/status");
    assert_eq!(p.len(), 1);
    let (status, reason, message) = accepted(p[0]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DuplicateSetId")
    );
    assert_eq!(
        message,
        "spec.setId: set id 1 is also used by DispatcherSet voip/asterisk"
    );
    assert!(patches(&sent, "/configmaps/").is_empty());
}

#[tokio::test]
async fn routing_rules_are_rendered_and_an_unknown_set_is_not_accepted() {
    // The example's rules (Asterisk calling out to the carriers) reach the sbc.yaml.
    let (sent, result) = reconcile(World::standard(), example("sbccluster.yaml")).await;
    assert!(result.is_ok(), "{result:?}");
    let cm = patches(&sent, "/configmaps/edge-config");
    let yaml = cm[0].body["data"]["sbc.yaml"].as_str().expect("sbc.yaml");
    let config = kubesbc_crds::config::SbcConfig::from_yaml(yaml).expect("valid config");
    let rules = &config.routing.rules;
    assert_eq!(rules.len(), 2, "{yaml}");
    assert_eq!((rules[0].from_set, rules[0].set), (Some(1), Some(2)));
    assert_eq!((rules[1].from_set, rules[1].set), (Some(2), Some(1)));

    // A rule naming a set no selected DispatcherSet has: Accepted=False naming the field,
    // and nothing but status is written.
    let mut cluster: SbcCluster = example("sbccluster.yaml");
    cluster.spec.routing.rules[1].set = Some(7);
    let (sent, result) = reconcile(World::standard(), cluster).await;
    assert!(result.is_ok(), "a rejected spec is a status: {result:?}");
    let st = patches(&sent, "/sbcclusters/edge/status");
    let (status, reason, message) = accepted(st[0]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidRouting")
    );
    assert_eq!(
        message,
        "SbcCluster voip/edge: spec.routing.rules[1].set: set 7 is not in the dispatcher (its sets: 1, 2)"
    );
    let applied: Vec<_> = sent
        .iter()
        .filter(|s| s.method == "PATCH" && !s.path.ends_with("/status"))
        .collect();
    assert!(applied.is_empty(), "{applied:?}");
}

#[tokio::test]
async fn api_errors_are_returned_for_backoff_and_counted() {
    // An API server that fails every request: reconcile errors (no panic), and error_policy
    // requeues and counts it under the error's name.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        while let Some((_, reply)) = handle.next_request().await {
            let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500, "message": "boom"});
            reply.send_response(
                Response::builder()
                    .status(500)
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response"),
            );
        }
    });
    let registry = prometheus::Registry::new();
    let ctx = Arc::new(Context::new(Client::new(service, "default"), &registry).expect("metrics"));
    let cluster = Arc::new(example::<SbcCluster>("sbccluster.yaml"));
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        controller::reconcile(cluster.clone(), ctx.clone()),
    )
    .await
    .expect("finishes")
    .expect_err("fails");
    assert_eq!(err.metric_label(), "kube");
    let action = controller::error_policy(cluster, &err, ctx.clone());
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(controller::RETRY_ERROR)
    );
    assert_eq!(ctx.metrics.failures.with_label_values(&["kube"]).get(), 1);
    drop(ctx);
    server.await.expect("server");
}

#[tokio::test]
async fn an_access_list_with_a_bad_cidr_is_not_accepted_and_the_cluster_keeps_its_last_state() {
    // "999.1.2.3/8" passes the schema's pattern but is no address: the operator refuses it.
    let mut world = World::standard();
    let mut acl: AccessList = example("accesslist.yaml");
    acl.spec.rules[1].sources = vec!["10.0.0.0/8".into(), "999.1.2.3/8".into()];
    world.put(&acl);
    let mut cluster: SbcCluster = example("sbccluster.yaml");
    cluster.status = Some(serde_json::from_value(json!({
        "replicas": 2, "readyReplicas": 2, "configHash": "00000000deadbeef",
        "conditions": [{"type": "Ready", "status": "True", "reason": "ReplicasReady",
                        "message": "2/2 replicas ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    })).expect("status"));
    let (sent, result) = reconcile(world, cluster).await;
    assert!(result.is_ok(), "{result:?}");
    let p = patches(&sent, "/accesslists/edge-guard/status");
    let (status, reason, message) = accepted(p[0]);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidAccessList")
    );
    assert_eq!(
        message,
        "spec.rules[1].sources[1]: \"999.1.2.3/8\" is not a CIDR"
    );

    // The cluster says why, and still describes the config that keeps running.
    let st = &patches(&sent, "/sbcclusters/edge/status")[0].body["status"];
    assert_eq!(st["configHash"], "00000000deadbeef");
    assert_eq!(st["readyReplicas"], 2);
    let ready = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .expect("Ready kept");
    assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:00Z");
    assert!(patches(&sent, "/configmaps/").is_empty());
}

#[tokio::test]
async fn objects_no_longer_rendered_are_pruned_but_only_our_own() {
    let cluster: SbcCluster = example("sbccluster.yaml");
    let uid = cluster.meta().uid.clone().unwrap_or_default();
    let ours = json!([{"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "name": "edge", "uid": uid, "controller": true}]);
    let mut world = World::standard();
    // An HPA from when the cluster autoscaled, and a per-protocol Service of an earlier
    // operator: both ours. A user's Service that merely has a matching name is not (and is
    // not taken over either: see tests/kubernetes.rs).
    world.objects.insert(
        "/apis/autoscaling/v2/namespaces/voip/horizontalpodautoscalers/edge".into(),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "edge", "namespace": "voip", "ownerReferences": ours},
               "spec": {"maxReplicas": 4, "scaleTargetRef": {"kind": "Deployment", "name": "edge"}}}),
    );
    world.objects.insert(
        "/api/v1/namespaces/voip/services/edge-udp".into(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge-udp", "namespace": "voip", "ownerReferences": ours}}),
    );
    let (sent, result) = reconcile(world, cluster.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    let deleted: Vec<_> = sent
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.clone())
        .collect();
    assert_eq!(
        deleted,
        [
            "/api/v1/namespaces/voip/services/edge-udp",
            "/apis/autoscaling/v2/namespaces/voip/horizontalpodautoscalers/edge",
        ]
    );

    let mut world = World::standard();
    world.objects.insert(
        "/api/v1/namespaces/voip/services/edge".into(),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "edge", "namespace": "voip"}}),
    );
    let (sent, _) = reconcile(world, cluster).await;
    assert!(
        sent.iter().all(|s| s.method != "DELETE"),
        "a Service we do not own was deleted"
    );
}

#[test]
fn a_service_change_reaches_the_clusters_whose_sets_use_it() {
    let edge: SbcCluster = example("sbccluster.yaml");
    let mut other = edge.clone();
    other.meta_mut().name = Some("other".into());
    other.spec.dispatcher_set_selector = Some(
        serde_json::from_value(json!({"matchLabels": {"kubesbc.io/cluster": "other"}}))
            .expect("selector"),
    );
    let clusters = vec![Arc::new(edge), Arc::new(other)];
    let sets = vec![
        Arc::new(example::<DispatcherSet>("dispatcherset.yaml")),
        Arc::new(example::<DispatcherSet>("dispatcherset-static.yaml")),
    ];
    let svc = |ns: &str, name: &str| -> k8s_openapi::api::core::v1::Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}})).expect("svc")
    };
    let names = |refs: Vec<kube::runtime::reflector::ObjectRef<SbcCluster>>| {
        refs.into_iter().map(|r| r.name).collect::<Vec<_>>()
    };
    assert_eq!(
        names(controller::clusters_using_service(
            &clusters,
            &sets,
            &svc("voip", "asterisk")
        )),
        ["edge"]
    );
    assert!(
        controller::clusters_using_service(&clusters, &sets, &svc("voip", "freeswitch")).is_empty()
    );
    assert!(
        controller::clusters_using_service(&clusters, &sets, &svc("other-ns", "asterisk"))
            .is_empty()
    );
}

#[test]
fn a_secret_change_reaches_the_clusters_whose_config_refers_to_it() {
    let secret_ref = |name: &str, key: &str| kubesbc_crds::SecretKeyRef {
        name: name.into(),
        key: key.into(),
    };
    // edge selects the example AccessList (required header from `company-signature`) and
    // takes its Redis URL from `redis-url`; host authenticates with the key in `sbc-auth`
    // and selects no AccessList.
    let mut edge: SbcCluster = example("sbccluster.yaml");
    edge.spec.redis = Some(kubesbc_crds::cluster::RedisSpec {
        url_secret_ref: secret_ref("redis-url", "url"),
        key_prefix: None,
        timeout_ms: None,
        mode: None,
        sentinel: None,
    });
    let mut host: SbcCluster = example("hostnetwork/sbccluster.yaml");
    host.spec.access_list_selector = None;
    host.spec.redis = None;
    let mut elsewhere = edge.clone();
    elsewhere.meta_mut().namespace = Some("other-ns".into());
    let clusters = vec![Arc::new(edge), Arc::new(host), Arc::new(elsewhere)];
    let acls = vec![Arc::new(example::<AccessList>("accesslist.yaml"))];
    let users = |ns: &str, name: &str| {
        controller::clusters_using_secret(&clusters, &acls, Some(ns), name)
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect::<Vec<_>>()
    };
    assert_eq!(users("voip", "company-signature"), ["voip/edge"]);
    assert_eq!(users("voip", "redis-url"), ["voip/edge"]);
    assert_eq!(users("voip", "sbc-auth"), ["voip/edge-host"]);
    // other-ns/edge uses redis-url too, but its own namespace's; the AccessList lives in voip.
    assert_eq!(users("other-ns", "redis-url"), ["other-ns/edge"]);
    assert!(users("other-ns", "company-signature").is_empty());
    assert!(users("voip", "unrelated").is_empty());
}

#[tokio::test]
async fn host_network_applies_a_daemon_set_and_prunes_the_deployment_of_before() {
    let mut cluster: SbcCluster = example("sbccluster.yaml");
    cluster.spec.host_network = true;
    cluster.spec.replicas = None;
    let uid = cluster.meta().uid.clone().unwrap_or_default();
    let ours = json!([{"apiVersion": "kubesbc.io/v1alpha1", "kind": "SbcCluster", "name": "edge", "uid": uid, "controller": true}]);
    let mut world = World::standard();
    // The Deployment from before hostNetwork was switched on.
    world.objects.insert(
        "/apis/apps/v1/namespaces/voip/deployments/edge".into(),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "edge", "namespace": "voip", "ownerReferences": ours}}),
    );
    let (sent, result) = reconcile(world, cluster.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    let ds = patches(&sent, "/apis/apps/v1/namespaces/voip/daemonsets/edge");
    assert_eq!(ds.len(), 1, "one DaemonSet applied");
    assert_eq!(ds[0].body["kind"], "DaemonSet");
    assert_eq!(ds[0].body["spec"]["template"]["spec"]["hostNetwork"], true);
    assert!(
        patches(&sent, "/deployments/").is_empty(),
        "no Deployment applied"
    );
    let deleted: Vec<_> = sent
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(deleted, ["/apis/apps/v1/namespaces/voip/deployments/edge"]);

    // And back: the Deployment is applied, the DaemonSet pruned.
    cluster.spec.host_network = false;
    let mut world = World::standard();
    world.objects.insert(
        "/apis/apps/v1/namespaces/voip/daemonsets/edge".into(),
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
               "metadata": {"name": "edge", "namespace": "voip", "ownerReferences": ours}}),
    );
    let (sent, result) = reconcile(world, cluster).await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(patches(&sent, "/deployments/edge").len(), 1);
    let deleted: Vec<_> = sent
        .iter()
        .filter(|s| s.method == "DELETE")
        .map(|s| s.path.as_str())
        .collect();
    assert_eq!(deleted, ["/apis/apps/v1/namespaces/voip/daemonsets/edge"]);
}
