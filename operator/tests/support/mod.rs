//! The fake API server the controller tests share: kube's `Client` over
//! `tower_test::mock::pair`, answering from a set of objects and recording every request (the
//! pattern of kube-rs controller-rs `fixtures.rs`).

#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster, TenantThrottle};
use kubesbc_operator::controller::{self, Context};
use kubesbc_operator::destinations::DestinationProbe;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

pub fn example<T: serde::de::DeserializeOwned + kube::Resource>(file: &str) -> T {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example exists");
    let mut obj: T = serde_saphyr::from_str(&text).expect("example parses");
    obj.meta_mut().namespace = Some("voip".into());
    obj.meta_mut().uid = Some(format!("uid-{file}"));
    obj.meta_mut().generation = Some(3);
    obj.meta_mut().resource_version = Some("1".into());
    obj
}

pub fn value<T: serde::Serialize + Resource<DynamicType = ()>>(obj: &T) -> Value {
    let mut v = serde_json::to_value(obj).expect("json");
    v["apiVersion"] = json!(T::api_version(&()));
    v["kind"] = json!(T::kind(&()));
    v
}

/// Objects the fake API server knows, by URL path.
#[derive(Default, Clone)]
pub struct World {
    pub objects: BTreeMap<String, Value>,
}

impl World {
    pub fn put<T: serde::Serialize + Resource<DynamicType = ()>>(&mut self, obj: &T) {
        let url = T::url_path(&(), obj.meta().namespace.as_deref());
        let name = obj.meta().name.clone().unwrap_or_default();
        self.objects.insert(format!("{url}/{name}"), value(obj));
    }

    /// The example cluster, its two sets, a throttle and an access list, with the Secret and
    /// backend Service they refer to.
    pub fn standard() -> World {
        let mut w = World::default();
        w.put(&example::<SbcCluster>("sbccluster.yaml"));
        w.put(&example::<DispatcherSet>("dispatcherset.yaml"));
        w.put(&example::<DispatcherSet>("dispatcherset-static.yaml"));
        w.put(&example::<TenantThrottle>("tenantthrottle.yaml"));
        w.put(&example::<AccessList>("accesslist.yaml"));
        w.objects.insert(
            "/api/v1/namespaces/voip/secrets/company-signature".into(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "company-signature", "namespace": "voip"},
                   "data": {"signature": "czNjcmV0"}}),
        );
        w.objects.insert(
            "/api/v1/namespaces/voip/services/asterisk".into(),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "asterisk", "namespace": "voip"},
                   "spec": {"ports": [{"name": "sip", "port": 5060, "protocol": "UDP"}]}}),
        );
        w
    }

    /// An sbc pod of the example cluster.
    pub fn pod(&mut self, name: &str, phase: &str, ip: &str, deleting: bool) {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "voip",
                         "labels": {"app.kubernetes.io/name": "kubesbc", "app.kubernetes.io/instance": "edge"}},
            "status": {"phase": phase, "podIP": ip}});
        if deleting {
            pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        self.objects
            .insert(format!("/api/v1/namespaces/voip/pods/{name}"), pod);
    }

    /// Answers one request.
    pub fn answer(&self, sent: &Sent) -> (StatusCode, Value) {
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "NotFound", "code": 404, "message": "not found"});
        match sent.method.as_str() {
            "GET" => {
                if let Some(obj) = self.objects.get(&sent.path) {
                    return (StatusCode::OK, obj.clone());
                }
                let prefix = format!("{}/", sent.path);
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .collect();
                if items.is_empty() && !sent.path.starts_with("/apis/kubesbc.io") {
                    return (StatusCode::NOT_FOUND, not_found);
                }
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "PATCH" if sent.path.ends_with("/status") => {
                let base = sent.path.trim_end_matches("/status");
                let mut obj = self.objects.get(base).cloned().unwrap_or(json!({}));
                obj["status"] = sent.body["status"].clone();
                (StatusCode::OK, obj)
            }
            "PATCH" => {
                let mut obj = sent.body.clone();
                if sent.path.contains("/deployments/") {
                    obj["status"] = json!({"replicas": 2, "readyReplicas": 2});
                }
                (StatusCode::OK, obj)
            }
            "POST" => (StatusCode::CREATED, sent.body.clone()),
            "DELETE" if self.objects.contains_key(&sent.path) => (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            ),
            _ => (StatusCode::METHOD_NOT_ALLOWED, not_found),
        }
    }
}

/// Runs one reconciliation of `cluster` against `world`, with `probe` in place of the pods when
/// given; returns what was sent and the result.
pub async fn reconcile(
    world: World,
    cluster: SbcCluster,
    probe: Option<Arc<dyn DestinationProbe>>,
) -> (
    Vec<Sent>,
    Result<kube::runtime::controller::Action, controller::Error>,
) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    let server = tokio::spawn(async move {
        while let Some((req, reply)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let s = Sent {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                query: parts.uri.query().unwrap_or_default().to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, answer) = world.answer(&s);
            log.lock().expect("log").push(s);
            let resp = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response");
            reply.send_response(resp);
        }
    });
    let client = Client::new(service, "default");
    let registry = prometheus::Registry::new();
    let mut ctx = Context::new(client, &registry).expect("metrics");
    if let Some(p) = probe {
        ctx = ctx.with_probe(p);
    }
    let ctx = Arc::new(ctx);
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        controller::reconcile(Arc::new(cluster), ctx),
    )
    .await
    .expect("reconcile finishes within 5 s");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("fake API server stops")
        .expect("fake API server did not panic");
    let sent = sent.lock().expect("log").clone();
    (sent, result)
}
