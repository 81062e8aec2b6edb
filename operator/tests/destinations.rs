//! "Destinations up / total": the aggregation of the pods' `/dispatcher` views, the real HTTP
//! probe against small loopback servers, and the controller writing the counts into the
//! SbcCluster and DispatcherSet status (kube's `Client` over `tower_test::mock::pair`, with a
//! fake probe in place of the pods).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Resource;
use kube::runtime::controller::Action;
use kubesbc_crds::SbcCluster;
use kubesbc_operator::controller;
use kubesbc_operator::destinations::{
    self, Count, DestinationProbe, HttpProbe, PodView, ProbeError,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::{Sent, World, example};

fn view(sets: &[(u32, &[(&str, bool)])]) -> PodView {
    PodView {
        sets: sets
            .iter()
            .map(|(id, ds)| {
                (
                    *id,
                    ds.iter().map(|(u, up)| ((*u).to_owned(), *up)).collect(),
                )
            })
            .collect(),
    }
}

// ---- aggregation -------------------------------------------------------------------------

#[test]
fn the_dispatcher_json_is_read_by_state_and_unknown_fields_are_ignored() {
    let body = br#"{"sets": [{"id": 1, "algorithm": "round-robin", "extra": true, "destinations": [
        {"uri": "sip:a", "flags": "AP", "priority": 0, "state": "active", "latency": {"avg_ms": 1.0}},
        {"uri": "sip:b", "flags": "TP", "priority": 0, "state": "trying"},
        {"uri": "sip:c", "flags": "IP", "priority": 0, "state": "inactive"},
        {"uri": "sip:d", "flags": "DX", "priority": 0, "state": "disabled"},
        {"uri": "sip:a", "flags": "IP", "priority": 1, "state": "inactive"}]},
        {"id": 7, "algorithm": "weight"}]}"#;
    let v = PodView::from_json(body).expect("parses");
    // `trying` still takes traffic; a URI listed twice counts once, usable only if both are.
    assert_eq!(
        v,
        view(&[
            (
                1,
                &[
                    ("sip:a", false),
                    ("sip:b", true),
                    ("sip:c", false),
                    ("sip:d", false)
                ]
            ),
            (7, &[])
        ])
    );
    assert!(PodView::from_json(b"<html>").is_err());
    assert!(PodView::from_json(br#"{"sets": [{"id": -1}]}"#).is_err());
}

#[test]
fn up_counts_destinations_usable_on_every_pod_and_total_is_the_largest_listing() {
    let a = view(&[
        (1, &[("sip:x", true), ("sip:y", true), ("sip:z", true)]),
        (2, &[("sip:p", true)]),
    ]);
    // Pod b sees y down and has not yet learnt z (a change still propagating).
    let b = view(&[
        (1, &[("sip:x", true), ("sip:y", false)]),
        (2, &[("sip:p", true)]),
    ]);
    let per_set = destinations::aggregate(&[a.clone(), b.clone()]);
    assert_eq!(per_set[&1], Count { up: 1, total: 3 });
    assert_eq!(per_set[&2], Count { up: 1, total: 1 });
    // The order of the answers does not matter.
    assert_eq!(destinations::aggregate(&[b, a.clone()]), per_set);
    // One pod: its own view.
    assert_eq!(
        destinations::aggregate(std::slice::from_ref(&a))[&1],
        Count { up: 3, total: 3 }
    );
    // A set one pod does not run: up on none, total from the pod that has it.
    let c = view(&[(1, &[("sip:x", true)])]);
    assert_eq!(
        destinations::aggregate(&[a, c])[&2],
        Count { up: 0, total: 1 }
    );
    assert!(destinations::aggregate(&[]).is_empty());
}

#[test]
fn a_cluster_sums_only_its_own_sets() {
    let per_set = BTreeMap::from([
        (1, Count { up: 1, total: 2 }),
        (2, Count { up: 3, total: 3 }),
        (9, Count { up: 5, total: 5 }),
    ]);
    assert_eq!(
        destinations::sum(&per_set, [1, 2, 4]),
        Count { up: 4, total: 5 }
    );
    assert_eq!(destinations::sum(&per_set, []), Count::default());
}

// ---- the real HTTP probe, against loopback servers ----------------------------------------

/// A one-connection server on 127.0.0.1 answering with `reply` (or never, when `None`).
async fn serve_once(reply: Option<Vec<u8>>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        let _ = sock.read(&mut buf).await;
        match reply {
            Some(r) => {
                let _ = sock.write_all(&r).await;
                let _ = sock.shutdown().await;
            }
            // Hold the connection open without answering until the client gives up.
            None => {
                let _ = sock.read(&mut buf).await;
            }
        }
    });
    addr
}

fn http_reply(status: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test]
async fn the_http_probe_reads_the_dispatcher_json() {
    let body = br#"{"sets":[{"id":3,"algorithm":"hash-callid","destinations":[{"uri":"sip:a","flags":"AP","priority":0,"state":"active"}]}]}"#;
    let addr = serve_once(Some(http_reply("200 OK", body))).await;
    let v = HttpProbe.probe(addr).await.expect("a view");
    assert_eq!(v, view(&[(3, &[("sip:a", true)])]));
}

#[tokio::test]
async fn the_http_probe_refuses_errors_silence_and_oversized_bodies() {
    let addr = serve_once(Some(http_reply("503 Service Unavailable", b"{}"))).await;
    assert!(matches!(
        HttpProbe.probe(addr).await,
        Err(ProbeError::Status(s)) if s == 503
    ));

    let addr = serve_once(None).await;
    let r = tokio::time::timeout(Duration::from_secs(5), HttpProbe.probe(addr))
        .await
        .expect("the probe gives up by itself");
    assert!(matches!(r, Err(ProbeError::Timeout(_))), "{r:?}");

    let big = vec![b' '; destinations::MAX_BODY + 1];
    let addr = serve_once(Some(http_reply("200 OK", &big))).await;
    assert!(matches!(
        HttpProbe.probe(addr).await,
        Err(ProbeError::Body(_))
    ));

    // Nothing listening.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    assert!(matches!(
        HttpProbe.probe(addr).await,
        Err(ProbeError::Connect(_))
    ));
}

// ---- the controller ----------------------------------------------------------------------

/// Answers from a fixed view per pod address; records who was asked.
#[derive(Default)]
struct FakeProbe {
    views: BTreeMap<SocketAddr, PodView>,
    asked: Mutex<Vec<SocketAddr>>,
}

impl DestinationProbe for FakeProbe {
    fn probe(&self, admin: SocketAddr) -> BoxFuture<'_, Result<PodView, ProbeError>> {
        self.asked.lock().expect("asked").push(admin);
        let r = self
            .views
            .get(&admin)
            .cloned()
            .ok_or(ProbeError::Timeout(Duration::from_secs(1)));
        Box::pin(async move { r })
    }
}

/// The example world with four sbc pods, of which two run.
fn standard() -> World {
    let mut w = World::standard();
    w.pod("edge-a", "Running", "127.0.0.2", false);
    w.pod("edge-b", "Running", "127.0.0.3", false);
    w.pod("edge-c", "Pending", "127.0.0.4", false);
    w.pod("edge-d", "Running", "127.0.0.5", true);
    w
}

/// One reconciliation of the `edge` cluster as `world` holds it, with `probe` in place of
/// the pods.
async fn reconcile(world: World, probe: Arc<FakeProbe>) -> (Vec<Sent>, Action) {
    let cluster: SbcCluster = serde_json::from_value(
        world.objects["/apis/kubesbc.io/v1alpha1/namespaces/voip/sbcclusters/edge"].clone(),
    )
    .expect("cluster");
    let (sent, result) = support::reconcile(world, cluster, Some(probe)).await;
    (sent, result.expect("reconcile succeeds"))
}

fn status_patches(sent: &[Sent]) -> BTreeMap<String, Value> {
    sent.iter()
        .filter(|s| s.method == "PATCH" && s.path.ends_with("/status"))
        .map(|s| (s.path.clone(), s.body["status"].clone()))
        .collect()
}

const CLUSTER: &str = "/apis/kubesbc.io/v1alpha1/namespaces/voip/sbcclusters/edge/status";
const ASTERISK: &str = "/apis/kubesbc.io/v1alpha1/namespaces/voip/dispatchersets/asterisk/status";
const CARRIERS: &str = "/apis/kubesbc.io/v1alpha1/namespaces/voip/dispatchersets/carriers/status";

fn ready_message(status: &Value) -> String {
    status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned()
}

fn admin(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), 9090)
}

/// Pod a sees everything up; pod b sees one Asterisk pod and carrier b down.
fn two_pods() -> FakeProbe {
    let a = view(&[
        (
            1,
            &[("sip:10.1.0.5:5060", true), ("sip:10.1.0.6:5060", true)],
        ),
        (2, &[("sip:carrier-a", true), ("sip:carrier-b", true)]),
    ]);
    let b = view(&[
        (
            1,
            &[("sip:10.1.0.5:5060", true), ("sip:10.1.0.6:5060", false)],
        ),
        (2, &[("sip:carrier-a", true), ("sip:carrier-b", false)]),
    ]);
    FakeProbe {
        views: BTreeMap::from([(admin("127.0.0.2"), a), (admin("127.0.0.3"), b)]),
        ..FakeProbe::default()
    }
}

#[tokio::test]
async fn the_cluster_and_its_sets_show_destinations_up_as_every_running_pod_sees_them() {
    let probe = Arc::new(two_pods());
    let (sent, action) = reconcile(standard(), probe.clone()).await;
    assert_eq!(action, Action::requeue(controller::STATUS_RESYNC));

    // Only running pods that are not going away are asked, on the admin port.
    let mut asked = probe.asked.lock().expect("asked").clone();
    asked.sort();
    assert_eq!(asked, [admin("127.0.0.2"), admin("127.0.0.3")]);

    let st = status_patches(&sent);
    let cluster = &st[CLUSTER];
    assert_eq!(
        (&cluster["destinationsUp"], &cluster["destinationsTotal"]),
        (&json!(2), &json!(4))
    );
    assert_eq!(
        ready_message(cluster),
        "2/2 replicas ready; 2/4 destinations up (as seen by 2/2 sbc pods)"
    );
    for set in [ASTERISK, CARRIERS] {
        assert_eq!(
            (&st[set]["destinationsUp"], &st[set]["destinationsTotal"]),
            (&json!(1), &json!(2)),
            "{set}"
        );
    }
}

#[tokio::test]
async fn with_no_pod_answering_the_counts_are_absent_and_the_ready_message_says_why() {
    let (sent, _) = reconcile(standard(), Arc::new(FakeProbe::default())).await;
    let st = status_patches(&sent);
    let cluster = &st[CLUSTER];
    assert!(cluster.get("destinationsUp").is_none(), "{cluster}");
    assert!(cluster.get("destinationsTotal").is_none(), "{cluster}");
    assert_eq!(
        ready_message(cluster),
        "2/2 replicas ready; destinations unknown: none of 2 sbc pods answered GET /dispatcher"
    );
    assert!(st[CARRIERS].get("destinationsUp").is_none());

    let mut world = standard();
    world.objects.retain(|k, _| !k.contains("/pods/"));
    let (sent, _) = reconcile(world, Arc::new(FakeProbe::default())).await;
    assert_eq!(
        ready_message(&status_patches(&sent)[CLUSTER]),
        "2/2 replicas ready; destinations unknown: no running sbc pod"
    );
}

#[tokio::test]
async fn status_is_written_again_only_when_the_pods_see_something_new() {
    let (sent, _) = reconcile(standard(), Arc::new(two_pods())).await;
    // The API now holds what was written.
    let mut world = standard();
    for (path, status) in status_patches(&sent) {
        if let Some(obj) = world.objects.get_mut(path.trim_end_matches("/status")) {
            obj["status"] = status;
        }
    }
    let (sent, _) = reconcile(world.clone(), Arc::new(two_pods())).await;
    assert!(
        status_patches(&sent).is_empty(),
        "nothing moved, yet status was written: {:?}",
        status_patches(&sent).keys()
    );

    // Pod b sees carrier b again: the cluster and that set change, the other set does not.
    let mut probe = two_pods();
    if let Some(v) = probe.views.get_mut(&admin("127.0.0.3"))
        && let Some(s) = v.sets.get_mut(&2)
    {
        s.insert("sip:carrier-b".into(), true);
    }
    let (sent, _) = reconcile(world, Arc::new(probe)).await;
    let st = status_patches(&sent);
    assert_eq!(
        st.keys().map(String::as_str).collect::<Vec<_>>(),
        [CARRIERS, CLUSTER]
    );
    assert_eq!(st[CLUSTER]["destinationsUp"], 3);
    assert_eq!(st[CARRIERS]["destinationsUp"], 2);
}

#[tokio::test]
async fn a_set_shared_by_two_clusters_shows_the_first_clusters_view() {
    let mut world = standard();
    // "alpha" sorts before "edge" and selects the same sets: it owns their status, and edge
    // leaves what alpha wrote alone instead of overwriting it with its own pods' view.
    let mut alpha: SbcCluster = example("sbccluster.yaml");
    alpha.meta_mut().name = Some("alpha".into());
    world.put(&alpha);
    let carriers = "/apis/kubesbc.io/v1alpha1/namespaces/voip/dispatchersets/carriers";
    if let Some(obj) = world.objects.get_mut(carriers) {
        obj["status"] = json!({"destinationsUp": 5, "destinationsTotal": 6});
    }
    let (sent, _) = reconcile(world, Arc::new(two_pods())).await;
    let st = status_patches(&sent);
    assert!(!st.contains_key(CARRIERS), "{:?}", st.keys());
    assert!(!st.contains_key(ASTERISK), "{:?}", st.keys());
    // The cluster's own counts are its own pods' view.
    assert_eq!(st[CLUSTER]["destinationsUp"], 2);
}
