//! Discovery against kube's `Client` over `tower_test::mock::pair`: the test plays the API
//! server, answering the watcher's list and watch requests with scripted EndpointSlices, and
//! asserts the destinations the dispatcher selects from after each event.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use kubesbc_crds::config::{DestinationConfig, DispatcherConfig, DispatcherSetConfig, Transport};
use kubesbc_crds::policy::ServiceSource;
use serde_json::{Value, json};
use tower_test::mock::Handle;

use super::watch::Discovery;
use super::*;
use crate::dispatch::SelectKey;

const STATIC: &str = "sip:127.0.0.1:5999";

fn config() -> DispatcherConfig {
    DispatcherConfig {
        dialog_timeout_secs: kubesbc_crds::policy::default_dialog_timeout_secs(),
        default_set: 1,
        sets: vec![DispatcherSetConfig {
            id: 1,
            algorithm: Default::default(),
            destinations: vec![DestinationConfig {
                uri: STATIC.into(),
                ..Default::default()
            }],
            service: Some(ServiceSource {
                namespace: Some("voip".into()),
                name: "asterisk".into(),
                port: "sip".into(),
                transport: Transport::Tcp,
            }),
            probing: Default::default(),
            failover: Default::default(),
        }],
    }
}

/// An EndpointSlice of `asterisk` with `(address, ready, terminating)` endpoints on port 5060.
fn slice(name: &str, endpoints: &[(&str, bool, bool)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(a, ready, term)| {
            json!({"addresses": [a], "conditions": {"ready": ready, "serving": ready, "terminating": term}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "voip", "resourceVersion": "1",
                     "labels": {"kubernetes.io/service-name": "asterisk"}},
        "addressType": "IPv4",
        "ports": [{"name": "sip", "port": 5060, "protocol": "TCP"}],
        "endpoints": eps
    })
}

fn uri(ip: &str) -> String {
    format!("sip:{ip}:5060;transport=tcp")
}

/// The URIs of set 1 that requests can be sent to right now.
fn selectable(d: &Dispatcher) -> BTreeSet<String> {
    let table = d.table();
    let Some(set) = table.set(1) else {
        return BTreeSet::new();
    };
    set.destinations()
        .iter()
        .filter(|d| d.is_up())
        .map(|d| d.uri.clone())
        .collect()
}

fn expected(ips: &[&str]) -> BTreeSet<String> {
    ips.iter()
        .map(|ip| uri(ip))
        .chain([STATIC.to_owned()])
        .collect()
}

async fn wait_for(d: &Dispatcher, want: &BTreeSet<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if selectable(d) == *want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dispatcher set 1 is {:?}, expected {want:?}",
            selectable(d)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Api {
    handle: Handle<Request<Body>, Response<Body>>,
}

impl Api {
    /// Waits for the next request; returns whether it is a watch (else a list), after
    /// checking it is about the asterisk Service's slices.
    async fn next(&mut self) -> (bool, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), self.handle.next_request())
            .await
            .expect("the watcher asks within 10 s")
            .expect("a request");
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        assert_eq!(
            path,
            "/apis/discovery.k8s.io/v1/namespaces/voip/endpointslices"
        );
        assert!(
            query.contains("labelSelector=kubernetes.io%2Fservice-name%3Dasterisk"),
            "{query}"
        );
        (query.contains("watch=true"), send)
    }

    async fn list(&mut self, items: Vec<Value>) {
        let (watch, send) = self.next().await;
        assert!(!watch, "expected a list");
        let body = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                          "metadata": {"resourceVersion": "10"}, "items": items});
        send.send_response(ok(serde_json::to_vec(&body).unwrap_or_default()));
    }

    /// Answers the next watch with `events` (`(type, object)`); the stream then ends and the
    /// watcher watches again.
    async fn watch(&mut self, events: &[(&str, Value)]) {
        let (watch, send) = self.next().await;
        assert!(watch, "expected a watch");
        let mut body = Vec::new();
        for (t, o) in events {
            body.extend(serde_json::to_vec(&json!({"type": t, "object": o})).unwrap_or_default());
            body.push(b'\n');
        }
        send.send_response(ok(body));
    }
}

fn ok(body: Vec<u8>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn endpoints_added_terminating_removed_and_a_watch_error_keeps_the_set() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let mut api = Api { handle };
    let client = Client::new(service, "default");
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(LiveMetrics::new(&registry).unwrap());
    let dispatcher = Arc::new(Dispatcher::new(&config()).unwrap());
    let live = Arc::new(LiveDispatch::new(
        dispatcher.clone(),
        config(),
        metrics.clone(),
        "default",
    ));
    let applier = tokio::spawn(live.clone().run());
    let discovery = Discovery::with_client(live.clone(), metrics.clone(), client);
    discovery.sync().await;
    assert_eq!(
        selectable(&dispatcher),
        expected(&[]),
        "static only at first"
    );
    assert_eq!(live.generation(1), 1);

    // The first listing: one ready endpoint, one not ready yet.
    api.list(vec![slice(
        "asterisk-a",
        &[("10.0.0.1", true, false), ("10.0.0.9", false, false)],
    )])
    .await;
    wait_for(&dispatcher, &expected(&["10.0.0.1"])).await;
    let g1 = live.generation(1);
    assert_eq!(g1, 2);

    // A second slice appears.
    api.watch(&[("ADDED", slice("asterisk-b", &[("10.0.0.2", true, false)]))])
        .await;
    wait_for(&dispatcher, &expected(&["10.0.0.1", "10.0.0.2"])).await;

    // 10.0.0.1 terminates: no new calls for it. 10.0.0.9 became ready.
    api.watch(&[(
        "MODIFIED",
        slice(
            "asterisk-a",
            &[("10.0.0.1", false, true), ("10.0.0.9", true, false)],
        ),
    )])
    .await;
    wait_for(&dispatcher, &expected(&["10.0.0.2", "10.0.0.9"])).await;
    // New calls go only to the remaining ones.
    for _ in 0..6 {
        let s = dispatcher.select(1, &SelectKey::default(), &[]).unwrap();
        assert_ne!(s.dest.uri, uri("10.0.0.1"));
    }

    // Slice b is deleted.
    api.watch(&[("DELETED", slice("asterisk-b", &[("10.0.0.2", true, false)]))])
        .await;
    wait_for(&dispatcher, &expected(&["10.0.0.9"])).await;
    let before_error = live.generation(1);

    // The API fails: the set stays as it was, and the error is counted.
    let (_, send) = api.next().await;
    send.send_response(
        Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from(
                br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd down","reason":"InternalError","code":500}"#.to_vec(),
            ))
            .unwrap(),
    );
    // The watcher retries after its backoff; the set is unchanged meanwhile.
    let (watch, send) = api.next().await;
    assert_eq!(selectable(&dispatcher), expected(&["10.0.0.9"]));
    assert_eq!(live.generation(1), before_error);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(
            "sbc_discovery_watch_errors_total{source=\"endpointslices/voip/asterisk\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("sbc_dispatcher_set_generation{set=\"1\"} 5"),
        "{text}"
    );
    // The retry sees a new endpoint: it is applied.
    let body = if watch {
        serde_json::to_vec(
            &json!({"type": "ADDED", "object": slice("asterisk-c", &[("10.0.0.3", true, false)])}),
        )
        .unwrap_or_default()
    } else {
        serde_json::to_vec(&json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": "20"},
            "items": [slice("asterisk-a", &[("10.0.0.9", true, false)]), slice("asterisk-c", &[("10.0.0.3", true, false)])]}))
        .unwrap_or_default()
    };
    send.send_response(ok(body));
    wait_for(&dispatcher, &expected(&["10.0.0.3", "10.0.0.9"])).await;

    discovery.stop();
    applier.abort();
}

#[tokio::test]
async fn static_config_change_keeps_discovered_endpoints() {
    let registry = prometheus::Registry::new();
    let metrics = Arc::new(LiveMetrics::new(&registry).unwrap());
    let dispatcher = Arc::new(Dispatcher::new(&config()).unwrap());
    let live = LiveDispatch::new(dispatcher.clone(), config(), metrics, "default");
    let key = ServiceKey {
        namespace: "voip".into(),
        name: "asterisk".into(),
    };
    let s: EndpointSlice =
        serde_json::from_value(slice("asterisk-a", &[("10.0.0.1", true, false)])).unwrap();
    live.apply_slice(&key, s);
    live.apply().unwrap();
    assert_eq!(selectable(&dispatcher), expected(&["10.0.0.1"]));

    // A new static destination: discovered ones are merged in again.
    let mut cfg = config();
    cfg.sets[0].destinations.push(DestinationConfig {
        uri: "sip:127.0.0.1:5998".into(),
        ..Default::default()
    });
    live.set_config(cfg).unwrap();
    let mut want = expected(&["10.0.0.1"]);
    want.insert("sip:127.0.0.1:5998".into());
    assert_eq!(selectable(&dispatcher), want);

    // A configuration the dispatcher cannot build changes nothing. (A host that does not
    // resolve is no longer such a configuration: it is kept, marked down, and re-resolved.)
    let mut bad = config();
    bad.sets[0].destinations[0].uri = "http://127.0.0.1:5060".into();
    assert!(live.set_config(bad).is_err());
    assert_eq!(selectable(&dispatcher), want);

    // Without the Service reference the discovered endpoints go.
    let mut plain = config();
    plain.sets[0].service = None;
    live.set_config(plain).unwrap();
    assert_eq!(selectable(&dispatcher), expected(&[]));
}
