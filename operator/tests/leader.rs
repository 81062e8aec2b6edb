//! Leader election against a mocked API server: which Lease requests the operator sends.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use kubesbc_operator::leader::LeaderElector;
use serde_json::{Value, json};

/// Runs one `try_lead` against a server that answers GET with `lease` (404 when `None`) and
/// writes with `write_code`; returns the result and the (method, path) pairs sent.
async fn round(
    lease: Option<Value>,
    write_code: u16,
) -> (Result<bool, kube::Error>, Vec<(String, String)>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let server = tokio::spawn(async move {
        while let Some((req, reply)) = handle.next_request().await {
            let method = req.method().to_string();
            seen.lock()
                .expect("log")
                .push((method.clone(), req.uri().path().to_owned()));
            let body = req.into_body().collect_bytes().await.expect("body");
            let (code, answer) = match (method.as_str(), &lease) {
                ("GET", Some(l)) => (200, l.clone()),
                ("GET", None) => (
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
                _ if write_code >= 400 => (
                    write_code,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": write_code, "message": "conflict"}),
                ),
                _ => (
                    write_code,
                    serde_json::from_slice(&body).unwrap_or(Value::Null),
                ),
            };
            reply.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                    .expect("response"),
            );
        }
    });
    let elector = LeaderElector::new(
        Client::new(service, "default"),
        "kubesbc-system",
        "kubesbc-operator",
        "me",
        Duration::from_secs(15),
    );
    let result = tokio::time::timeout(Duration::from_secs(5), elector.try_lead())
        .await
        .expect("finishes");
    drop(elector);
    server.await.expect("server");
    let sent = log.lock().expect("log").clone();
    (result, sent)
}

fn lease(holder: &str, renewed: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "kubesbc-operator", "namespace": "kubesbc-system", "resourceVersion": "7"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed}})
}

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kubesbc-system/leases";

#[tokio::test]
async fn a_missing_lease_is_created() {
    let (result, sent) = round(None, 201).await;
    assert!(result.expect("no error"));
    assert_eq!(
        sent,
        [
            ("GET".to_owned(), format!("{PATH}/kubesbc-operator")),
            ("POST".to_owned(), PATH.to_owned())
        ]
    );
}

#[tokio::test]
async fn a_live_lease_of_another_replica_is_left_alone() {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let (result, sent) = round(Some(lease("other", &now)), 200).await;
    assert!(!result.expect("no error"));
    assert_eq!(sent.len(), 1, "only the GET: {sent:?}");
}

#[tokio::test]
async fn an_expired_lease_is_taken_and_losing_the_race_is_not_an_error() {
    let (result, sent) = round(Some(lease("other", "2020-01-01T00:00:00.000000Z")), 200).await;
    assert!(result.expect("no error"));
    assert_eq!(
        sent[1],
        ("PUT".to_owned(), format!("{PATH}/kubesbc-operator"))
    );

    let (result, _) = round(Some(lease("other", "2020-01-01T00:00:00.000000Z")), 409).await;
    assert!(!result.expect("a conflict means another replica won"));
}
