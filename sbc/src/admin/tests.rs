use super::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::sync::watch;

use super::routes::forbidden_write;

pub(crate) fn sample_sets() -> Vec<SetSnapshot> {
    vec![SetSnapshot {
        id: 1,
        algorithm: "round-robin".into(),
        destinations: vec![
            DestinationSnapshot {
                uri: "sip:127.0.0.1:5080".into(),
                flags: "AP".into(),
                priority: 0,
                attrs: "weight=50;duid=a".into(),
                state: DestinationState::Active,
                active_calls: 2,
                description: None,
                target: "udp:127.0.0.1:5080".into(),
                counters: None,
            },
            DestinationSnapshot {
                uri: "sip:127.0.0.1:5082;transport=tcp".into(),
                flags: "IP".into(),
                priority: 5,
                attrs: String::new(),
                state: DestinationState::Inactive,
                active_calls: 0,
                description: Some("backup".into()),
                target: "tcp:127.0.0.1:5082".into(),
                counters: Some(DestinationCounters {
                    requests: 7,
                    failures: 3,
                    probe_failures: 2,
                    probe_successes: 0,
                }),
            },
        ],
    }]
}

/// A running admin server on an ephemeral loopback port, stopped on drop.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub up: Arc<AtomicBool>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    pub task: Option<tokio::task::JoinHandle<Result<(), AdminError>>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

pub(crate) async fn start(sets: Vec<SetSnapshot>) -> TestServer {
    start_with(sets, None).await
}

pub(crate) async fn start_with(
    sets: Vec<SetSnapshot>,
    store: Option<Arc<dyn Store>>,
) -> TestServer {
    let up = Arc::new(AtomicBool::new(true));
    let u = up.clone();
    let health = Arc::new(Health::new(Arc::new(move || u.load(Ordering::SeqCst))));
    let metrics = Arc::new(Metrics::new().unwrap());
    let state = AdminState {
        metrics: metrics.clone(),
        health: health.clone(),
        dispatcher: Arc::new(move || sets.clone()),
        store,
        observe: None,
    };
    let server = AdminServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(server.run(state, rx));
    TestServer {
        addr,
        up,
        health,
        metrics,
        stop,
        task: Some(task),
    }
}

/// A raw blocking HTTP/1.1 exchange; returns status and body.
fn get(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

fn req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

async fn get_async(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = req(path);
    tokio::task::spawn_blocking(move || get(addr, &r))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_listeners_draining_and_destinations() {
    let srv = start(sample_sets()).await;
    assert_eq!(get_async(srv.addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        get_async(srv.addr, "/readyz").await,
        (503, "not ready: listeners not bound\n".into())
    );
    srv.health.set_listeners_bound(true);
    assert_eq!(
        get_async(srv.addr, "/readyz").await,
        (200, "ready\n".into())
    );
    // Every backend down: still ready (the pod stays in the Service and answers 503),
    // and the body says why calls fail.
    srv.up.store(false, Ordering::SeqCst);
    assert_eq!(
        get_async(srv.addr, "/readyz").await,
        (200, "ready (no destination up: new calls get 503)\n".into())
    );
    srv.up.store(true, Ordering::SeqCst);
    srv.health.set_draining(true);
    assert_eq!(
        get_async(srv.addr, "/readyz").await,
        (503, "not ready: draining\n".into())
    );
    // Liveness is unaffected by draining.
    assert_eq!(get_async(srv.addr, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_metrics_dispatcher_bans_and_refuses_the_rest() {
    let srv = start(sample_sets()).await;
    srv.metrics.request_received(crate::sip::Method::Invite);
    let (status, body) = get_async(srv.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("sbc_requests_received_total{method=\"INVITE\"} 1\n"));

    let (status, body) = get_async(srv.addr, "/dispatcher").await;
    assert_eq!(status, 200);
    let snap: DispatcherSnapshot = serde_json::from_str(&body).unwrap();
    assert_eq!(snap.sets, sample_sets());
    assert!(body.contains("\"flags\":\"IP\""), "{body}");
    assert!(body.contains("\"state\":\"inactive\""), "{body}");

    assert_eq!(get_async(srv.addr, "/bans").await, (200, "[]".into()));
    assert_eq!(get_async(srv.addr, "/nope").await.0, 404);
    let addr = srv.addr;
    let (status, _) = tokio::task::spawn_blocking(move || {
        get(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 405);
}

fn raw(addr: SocketAddr, request: String) -> (u16, String) {
    get(addr, &request)
}

async fn send(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || raw(addr, r))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_are_listed_and_lifted() {
    let store: Arc<dyn Store> = Arc::new(crate::store::MemoryStore::new(100));
    for ip in ["192.0.2.7", "2001:db8::1"] {
        store
            .set_ex(
                &format!("ban:{{{ip}}}"),
                Bytes::from_static(b"flood"),
                Duration::from_secs(300),
            )
            .await
            .unwrap();
    }
    let srv = start_with(Vec::new(), Some(store.clone())).await;
    let (status, body) = get_async(srv.addr, "/bans").await;
    assert_eq!(status, 200);
    let bans: Vec<BanEntry> = serde_json::from_str(&body).unwrap();
    assert_eq!(bans.len(), 2, "{body}");
    assert_eq!(bans[0].ip, "192.0.2.7");
    assert_eq!(bans[0].reason, "flood");
    assert!((299..=300).contains(&bans[0].remaining_secs), "{body}");
    assert!(body.contains("\"remainingSecs\""), "{body}");

    assert_eq!(send(srv.addr, "DELETE", "/bans/192.0.2.7").await.0, 200);
    assert_eq!(send(srv.addr, "DELETE", "/bans/192.0.2.7").await.0, 404);
    assert_eq!(
        send(srv.addr, "POST", "/bans/remove?ip=2001:db8::1")
            .await
            .0,
        200
    );
    assert_eq!(send(srv.addr, "DELETE", "/bans/not-an-ip").await.0, 400);
    assert_eq!(send(srv.addr, "PUT", "/bans/192.0.2.7").await.0, 405);
    assert_eq!(get_async(srv.addr, "/bans").await, (200, "[]".into()));
    assert!(store.get("ban:{192.0.2.7}").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let srv = start(Vec::new()).await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let addr = srv.addr;
    let status = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server may close before everything is written; that is a refusal too.
        let _ = s.write_all(big.as_bytes());
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).get(9..12).map(str::to_string)
    })
    .await
    .unwrap();
    assert_ne!(status.as_deref(), Some("200"));
    // The server keeps serving.
    assert_eq!(get_async(srv.addr, "/healthz").await.0, 200);
}

#[test]
fn writes_are_admitted_from_loopback_only() {
    let pod: std::net::IpAddr = "10.244.1.7".parse().unwrap();
    let node: std::net::IpAddr = "2001:db8::7".parse().unwrap();
    for peer in [pod, node] {
        assert!(admits(&Method::GET, peer));
        assert!(admits(&Method::HEAD, peer));
        assert!(!admits(&Method::DELETE, peer), "{peer}");
        assert!(!admits(&Method::POST, peer), "{peer}");
    }
    for peer in ["127.0.0.1", "::1"] {
        assert!(admits(&Method::DELETE, peer.parse().unwrap()));
    }
    let r = forbidden_write();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_then_shutdown_stops_the_server() {
    let mut srv = start(Vec::new()).await;
    let addr = srv.addr;
    // Two requests on one connection.
    let both = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf.matches("HTTP/1.1 200 OK").count()
    })
    .await
    .unwrap();
    assert_eq!(both, 2);

    let task = srv.task.take().unwrap();
    srv.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn bind_failure_names_the_address() {
    let a = AdminServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let err = AdminServer::bind(a.local_addr()).await.unwrap_err();
    assert!(err.to_string().contains(&a.local_addr().to_string()));
}
