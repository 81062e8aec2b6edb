//! The fake API server the controller tests share: kube's `Client` over
//! `tower_test::mock::pair`, answering from a set of objects and recording every request (the
//! pattern of kube-rs controller-rs `fixtures.rs`).

#![allow(dead_code)] // each test file uses its own part

pub mod rbac;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use kubesbc_crds::{AccessList, DispatcherSet, SbcCluster, TenantThrottle};
use kubesbc_operator::controller::{self, Context};
use kubesbc_operator::destinations::DestinationProbe;
use kubesbc_operator::render::PodDefaults;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Debug, Clone)]
pub struct Sent {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    /// `Content-Type` of the request (`application/apply-patch+yaml` for server-side apply).
    pub content_type: String,
    /// The status code the fake answered.
    pub code: u16,
    /// Every permission the fake's authorizer checked for it (the request's own, `create` for
    /// an apply that creates, and each one a Role it writes grants: the escalation check).
    pub checked: Vec<rbac::Attributes>,
}

impl Sent {
    /// Whether the fake refused this request (RBAC).
    pub fn forbidden(&self) -> bool {
        self.code == 403
    }
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

/// Objects the fake API server knows, by URL path, and whose permissions it enforces.
#[derive(Clone)]
pub struct World {
    pub objects: BTreeMap<String, Value>,
    /// The operator's permissions: by default what the chart grants it.
    pub authorizer: rbac::Authorizer,
}

impl Default for World {
    fn default() -> World {
        World {
            objects: BTreeMap::new(),
            authorizer: rbac::Authorizer::operator(),
        }
    }
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

    /// Authorizes, answers and (for writes) stores one request.
    pub fn serve(&mut self, sent: &Sent) -> (StatusCode, Value) {
        let (code, body, _) = self.serve_checked(sent);
        (code, body)
    }

    /// [`World::serve`], also returning the permissions checked.
    pub fn serve_checked(&mut self, sent: &Sent) -> (StatusCode, Value, Vec<rbac::Attributes>) {
        let mut checked = Vec::new();
        if let Some(refusal) = self.authorize(sent, &mut checked) {
            return (StatusCode::FORBIDDEN, refusal, checked);
        }
        let (code, body) = self.answer(sent);
        if code.is_success() && sent.method == "PATCH" {
            self.objects.insert(
                sent.path.trim_end_matches("/status").to_owned(),
                body.clone(),
            );
        }
        if code.is_success() && sent.method == "PUT" {
            self.objects.insert(sent.path.clone(), body.clone());
        }
        if code.is_success()
            && sent.method == "POST"
            && let Some(name) = body["metadata"]["name"].as_str()
        {
            self.objects
                .insert(format!("{}/{name}", sent.path), body.clone());
        }
        if code.is_success() && sent.method == "DELETE" {
            self.objects.remove(&sent.path);
        }
        (code, body, checked)
    }

    /// What kube-apiserver's RBAC authorizer (and its escalation check) would refuse; every
    /// permission looked at goes into `checked`.
    fn authorize(&self, sent: &Sent, checked: &mut Vec<rbac::Attributes>) -> Option<Value> {
        let a = rbac::attributes(&sent.method, &sent.path, &sent.query)?;
        checked.push(a.clone());
        if !self.authorizer.allows(&a) {
            return Some(rbac::forbidden(&a, "not granted by the operator's roles"));
        }
        let apply = sent.content_type.starts_with("application/apply-patch");
        let base = sent.path.trim_end_matches("/status");
        if apply && a.subresource.is_none() && !self.objects.contains_key(base) {
            // An apply that creates the object is authorized as a create as well.
            let create = rbac::Attributes {
                verb: "create".into(),
                ..a.clone()
            };
            checked.push(create.clone());
            if !self.authorizer.allows(&create) {
                return Some(rbac::forbidden(
                    &create,
                    "an apply that creates needs create",
                ));
            }
        }
        if a.verb == "patch" || a.verb == "create" || a.verb == "update" {
            let ns = a.namespace.as_deref();
            let granted = match (a.group.as_str(), a.resource.as_str()) {
                ("rbac.authorization.k8s.io", "roles") => Some(rbac::rules_of(&sent.body)),
                ("rbac.authorization.k8s.io", "rolebindings") => {
                    let role = sent.body["roleRef"]["name"].as_str().unwrap_or_default();
                    let path = format!(
                        "/apis/rbac.authorization.k8s.io/v1/namespaces/{}/roles/{role}",
                        ns.unwrap_or_default()
                    );
                    let bind = rbac::Attributes {
                        verb: "bind".into(),
                        group: a.group.clone(),
                        resource: "roles".into(),
                        subresource: None,
                        namespace: a.namespace.clone(),
                        name: Some(role.to_owned()),
                    };
                    if self.authorizer.allows(&bind) {
                        checked.push(bind);
                        None
                    } else {
                        // Binding a Role that does not exist grants nothing yet; one that
                        // does must be held in full.
                        self.objects.get(&path).map(rbac::rules_of)
                    }
                }
                _ => None,
            };
            if let Some(rules) = granted {
                checked.extend(rbac::expand(ns, &rules));
                if let Err(missing) = self.authorizer.covers(ns, &rules) {
                    return Some(rbac::forbidden(
                        &a,
                        &format!(
                            "attempting to grant RBAC permissions not currently held: {missing}"
                        ),
                    ));
                }
            }
        }
        None
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
                let asked = rbac::attributes("GET", &sent.path, "");
                let Some(asked) = asked.filter(|a| a.name.is_none()) else {
                    return (StatusCode::NOT_FOUND, not_found);
                };
                // A collection, in one namespace or (no namespace in the path) in all.
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        rbac::attributes("GET", k, "").is_some_and(|o| {
                            o.name.is_some()
                                && o.subresource.is_none()
                                && o.group == asked.group
                                && o.resource == asked.resource
                                && (asked.namespace.is_none() || o.namespace == asked.namespace)
                        })
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            "PATCH" if sent.path.ends_with("/status") => {
                let base = sent.path.trim_end_matches("/status");
                let name = base.rsplit('/').next().unwrap_or_default();
                let mut obj = self.objects.get(base).cloned().unwrap_or_else(|| {
                    json!({"apiVersion": sent.body["apiVersion"], "kind": sent.body["kind"],
                           "metadata": {"name": name}})
                });
                obj["status"] = sent.body["status"].clone();
                (StatusCode::OK, obj)
            }
            "PATCH" => {
                let mut obj = sent.body.clone();
                // The workload's status as the API server has it (a test may stage a
                // rollout), else a finished rollout of 2 pods.
                let stored = self.objects.get(&sent.path).map(|o| o["status"].clone());
                if sent.path.contains("/deployments/") {
                    obj["status"] = match stored {
                        Some(st) if st.is_object() => st,
                        _ => json!({"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}),
                    };
                } else if let Some(st) = stored.filter(Value::is_object) {
                    obj["status"] = st;
                }
                (StatusCode::OK, obj)
            }
            "POST" => (StatusCode::CREATED, sent.body.clone()),
            "PUT" => (StatusCode::OK, sent.body.clone()),
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
    let (sent, result, _) = reconcile_in(world, cluster, probe).await;
    (sent, result)
}

/// What [`reconcile`] does, also returning the world as the requests left it (applied
/// objects stored), so a test can reconcile again.
pub async fn reconcile_in(
    world: World,
    cluster: SbcCluster,
    probe: Option<Arc<dyn DestinationProbe>>,
) -> (
    Vec<Sent>,
    Result<kube::runtime::controller::Action, controller::Error>,
    World,
) {
    reconcile_with(world, cluster, probe, PodDefaults::default()).await
}

/// [`reconcile_in`] with an operator installed with `defaults` (the chart's sbc image values).
pub async fn reconcile_with(
    world: World,
    cluster: SbcCluster,
    probe: Option<Arc<dyn DestinationProbe>>,
    defaults: PodDefaults,
) -> (
    Vec<Sent>,
    Result<kube::runtime::controller::Action, controller::Error>,
    World,
) {
    let mut world = world;
    // The API server holds the cluster being reconciled.
    let cluster_path = format!(
        "{}/{}",
        SbcCluster::url_path(&(), cluster.meta().namespace.as_deref()),
        cluster.meta().name.clone().unwrap_or_default()
    );
    if !world.objects.contains_key(&cluster_path) {
        world.put(&cluster);
    }
    let fake = Fake::start(world);
    let registry = prometheus::Registry::new();
    let mut ctx = Context::new(fake.client.clone(), &registry)
        .expect("metrics")
        .with_defaults(defaults);
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
    let (sent, world) = fake.stop().await;
    (sent, result, world)
}

/// The fake API server, serving [`World`] to the kube `Client` it hands out. A watch request
/// is never answered (a watch with no events), so a controller run against it lists, then
/// waits, as against a quiet cluster.
pub struct Fake {
    /// A client of this server.
    pub client: Client,
    log: Arc<Mutex<Vec<Sent>>>,
    server: tokio::task::JoinHandle<World>,
}

impl Fake {
    /// Starts serving `world`.
    pub fn start(world: World) -> Fake {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let mut world = world;
        let server = tokio::spawn(async move {
            let mut watches = Vec::new();
            while let Some((req, reply)) = handle.next_request().await {
                let (parts, body) = req.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let mut s = Sent {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                    code: 0,
                    checked: Vec::new(),
                };
                let watch = rbac::attributes(&s.method, &s.path, &s.query)
                    .is_some_and(|a| a.verb == "watch");
                let (code, answer, checked) = world.serve_checked(&s);
                s.code = code.as_u16();
                s.checked = checked;
                seen.lock().expect("log").push(s);
                if watch && code.is_success() {
                    watches.push(reply);
                    continue;
                }
                let resp = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("response");
                reply.send_response(resp);
            }
            world
        });
        Fake {
            client: Client::new(service, "default"),
            log,
            server,
        }
    }

    /// What was sent so far.
    pub fn sent(&self) -> Vec<Sent> {
        self.log.lock().expect("log").clone()
    }

    /// Stops the server once every client is dropped; what was sent and the world as the
    /// requests left it.
    pub async fn stop(self) -> (Vec<Sent>, World) {
        let Fake {
            client,
            log,
            server,
        } = self;
        drop(client);
        let world = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("fake API server stops")
            .expect("fake API server did not panic");
        let sent = log.lock().expect("log").clone();
        (sent, world)
    }
}
