//! The HTTP admin endpoint and the `sbc ctl` client.
//!
//! Routes (GET or HEAD unless said otherwise; request bodies are ignored):
//! - `/metrics`: Prometheus text of [`Metrics`].
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 when the sbc itself can take calls: its listeners are bound (so its
//!   configuration loaded) and it is not draining; otherwise 503 with a one-line reason. The
//!   backends do not count: with every destination down the pods stay in the Service and
//!   callers get a SIP 503 instead of a timeout (the body says so). The store does not count
//!   either: without Redis a pod falls back to its local state.
//! - `/dispatcher`: JSON [`DispatcherSnapshot`] (what `kamcmd dispatcher.list` shows).
//! - `/dialogs`, `/registrations`: JSON lists of the calls up now and of the registrations
//!   that passed through this sbc ([`crate::observe`]); 404 without an `observability`
//!   section.
//! - `/bans`: JSON list of active source bans ([`BanEntry`]: ip, reason, remainingSecs);
//!   `[]` without a store.
//! - `DELETE /bans/{ip}` (or `POST /bans/remove?ip=...`): lifts a ban; 404 when none. Write
//!   requests are accepted from loopback clients only (`sbc ctl` run in the pod, e.g. with
//!   `kubectl exec`), so whoever reaches the port over the network (or, with `hostNetwork`,
//!   the node's interfaces) can read but never lift a ban; others get 403.

pub mod ctl;
mod listing;

pub use listing::{any_destination_up, destination_samples, dispatcher_listing};

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

pub use crate::guard::BanEntry;
use crate::store::Store;
use crate::telemetry::{METRICS_CONTENT_TYPE, Metrics};

/// Failures of the admin server.
#[derive(Debug, Error)]
pub enum AdminError {
    /// The admin address could not be bound (in use, or not a local address).
    #[error("cannot bind the admin endpoint on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Connections served at once; more are closed at once (the endpoint is for probes, scrapes
/// and operators, not for traffic).
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown is signalled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A destination's state, as Kamailio's dispatcher names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationState {
    /// Up: receives traffic.
    Active,
    /// Down (probes failing): receives no traffic.
    Inactive,
    /// Switched off by configuration or an operator: receives no traffic and is not probed.
    Disabled,
    /// Being tried again after failures (Kamailio's trying state): still receives traffic.
    Trying,
}

impl DestinationState {
    /// Kamailio's two flag letters, as `kamcmd dispatcher.list` prints them: the state
    /// (`A`ctive, `I`nactive, `D`isabled, `T`rying) then `P` when probed, else `X`.
    pub fn flags(self, probing: bool) -> String {
        let state = match self {
            DestinationState::Active => 'A',
            DestinationState::Inactive => 'I',
            DestinationState::Disabled => 'D',
            DestinationState::Trying => 'T',
        };
        let mut s = String::with_capacity(2);
        s.push(state);
        s.push(if probing { 'P' } else { 'X' });
        s
    }

    /// The name used in JSON and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationState::Active => "active",
            DestinationState::Inactive => "inactive",
            DestinationState::Disabled => "disabled",
            DestinationState::Trying => "trying",
        }
    }
}

/// OPTIONS probe latency of a destination, in milliseconds (Kamailio's LATENCY block).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySnapshot {
    /// Average round-trip time.
    pub avg_ms: f64,
    /// Standard deviation of the round-trip time.
    pub std_ms: f64,
    /// Estimated (smoothed) round-trip time.
    pub est_ms: f64,
    /// Largest round-trip time seen.
    pub max_ms: f64,
    /// Probes that timed out.
    pub timeouts: u64,
}

/// Traffic counters of a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationCounters {
    /// Requests sent to the destination.
    pub requests: u64,
    /// Requests that failed there (timeout, 408, 5xx) and moved on.
    pub failures: u64,
}

/// One destination of a set, as listed by `/dispatcher`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DestinationSnapshot {
    /// SIP URI of the destination.
    pub uri: String,
    /// Kamailio's flag letters (`AP`, `IP`, `DX`...): see [`DestinationState::flags`].
    pub flags: String,
    /// Priority of the destination.
    pub priority: i32,
    /// The attributes, as written in `dispatcher.list` (`weight=50;duid=a`).
    #[serde(default)]
    pub attrs: String,
    /// State of the destination.
    pub state: DestinationState,
    /// Calls in progress through this destination.
    #[serde(default)]
    pub active_calls: u64,
    /// Free text from the configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Probe latency, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySnapshot>,
    /// Traffic counters, when kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<DestinationCounters>,
}

/// One dispatcher set, as listed by `/dispatcher`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetSnapshot {
    /// The set id.
    pub id: u32,
    /// The algorithm's name (`round-robin`, `hash-callid`...).
    pub algorithm: String,
    /// The destinations, in the set's order.
    #[serde(default)]
    pub destinations: Vec<DestinationSnapshot>,
}

/// The body of `GET /dispatcher`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DispatcherSnapshot {
    /// Every set, by id.
    #[serde(default)]
    pub sets: Vec<SetSnapshot>,
}

/// Produces the dispatcher listing on demand (called per `/dispatcher` request).
pub type SnapshotProvider = Arc<dyn Fn() -> Vec<SetSnapshot> + Send + Sync>;

/// Answers "is at least one destination up?" for readiness.
pub type UpCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// Why the sbc is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The SIP listeners are not bound yet.
    ListenersNotBound,
    /// SIGTERM was received: the sbc is draining.
    Draining,
    /// No dispatcher destination is up. Not a readiness failure (see [`Health::readiness`]):
    /// kept for callers that report it.
    NoDestinationUp,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotReady::ListenersNotBound => "listeners not bound",
            NotReady::Draining => "draining",
            NotReady::NoDestinationUp => "no destination up",
        })
    }
}

/// Liveness and readiness of the process, updated by the binary as it starts and drains.
pub struct Health {
    listeners_bound: AtomicBool,
    draining: AtomicBool,
    any_destination_up: UpCheck,
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("listeners_bound", &self.listeners_bound)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl Health {
    /// Starts not ready (listeners unbound, not draining); `any_destination_up` is asked on
    /// every readiness check.
    pub fn new(any_destination_up: UpCheck) -> Health {
        Health {
            listeners_bound: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            any_destination_up,
        }
    }

    /// Records that every SIP listener is bound (or no longer is).
    pub fn set_listeners_bound(&self, bound: bool) {
        self.listeners_bound.store(bound, Ordering::Release);
    }

    /// Records that the sbc is draining: readiness goes false for good.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Release);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Ready, or the first reason why not: the sbc's own state only. No destination up is
    /// not a reason: a pod that leaves the Service then makes callers time out, where a ready
    /// one answers 503 with Retry-After.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if !self.listeners_bound.load(Ordering::Acquire) {
            Err(NotReady::ListenersNotBound)
        } else if self.is_draining() {
            Err(NotReady::Draining)
        } else {
            Ok(())
        }
    }

    /// Whether a dispatcher destination is up (reported in `/readyz`'s body).
    pub fn any_destination_up(&self) -> bool {
        (self.any_destination_up)()
    }
}

/// What the admin endpoint serves.
#[derive(Clone)]
pub struct AdminState {
    /// The metrics rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Readiness for `/readyz`.
    pub health: Arc<Health>,
    /// The listing served by `/dispatcher`.
    pub dispatcher: SnapshotProvider,
    /// The store holding the bans listed and lifted by `/bans`.
    pub store: Option<Arc<dyn Store>>,
    /// The dialog and registration tables of `/dialogs` and `/registrations` (None without
    /// an `observability` section).
    pub observe: Option<Arc<crate::observe::ObserveView>>,
}

type Resp = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json<T: Serialize>(value: &T) -> Resp {
    match serde_json::to_vec(value) {
        Ok(body) => text(StatusCode::OK, "application/json", body),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("cannot encode: {e}\n"),
        ),
    }
}

/// Answers one request. Pure with respect to the connection: routing only looks at the method
/// and the path.
pub fn respond(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => match state.metrics.render() {
            Ok(body) => text(StatusCode::OK, METRICS_CONTENT_TYPE, body),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n")),
        },
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => match state.health.readiness() {
            Ok(()) if !state.health.any_destination_up() => text(
                StatusCode::OK,
                PLAIN,
                "ready (no destination up: new calls get 503)\n",
            ),
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {why}\n"),
            ),
        },
        "/dispatcher" => json(&DispatcherSnapshot {
            sets: (state.dispatcher)(),
        }),
        "/dialogs" | "/registrations" => match &state.observe {
            Some(v) if path == "/dialogs" => json(&v.dialogs()),
            Some(v) => json(&v.registrations()),
            None => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "dialog and registration tracking is off: add an observability section to the configuration\n",
            ),
        },
        // Served by `respond_async`, which can wait for the store.
        "/bans" => text(StatusCode::OK, "application/json", "[]"),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}

/// Answers `/bans` requests, which need the store; everything else goes to [`respond`].
pub async fn respond_async(state: &AdminState, method: &Method, uri: &hyper::Uri) -> Resp {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let path = uri.path();
    let target = if let Some(ip) = path.strip_prefix("/bans/") {
        (method == Method::DELETE && ip != "remove").then_some(ip)
    } else if path == "/bans/remove" || path == "/bans/remove/" {
        None
    } else {
        return respond(state, method, path);
    };
    let ip = match (target, method) {
        (Some(ip), _) => Some(ip.to_owned()),
        (None, &Method::POST) if path.starts_with("/bans/remove") => uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("ip="))
                .map(str::to_owned)
        }),
        _ => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                PLAIN,
                "method not allowed\n",
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("DELETE, POST"));
            return r;
        }
    };
    let Some(ip) = ip else {
        return text(StatusCode::BAD_REQUEST, PLAIN, "missing ip\n");
    };
    // `[` and `]` around an IPv6 address are accepted, and percent-encoded colons.
    let raw = ip.replace("%3A", ":").replace("%3a", ":");
    let Ok(addr) = raw
        .trim_matches(|c| c == '[' || c == ']')
        .parse::<std::net::IpAddr>()
    else {
        return text(
            StatusCode::BAD_REQUEST,
            PLAIN,
            format!(
                "{:?} is not an IP address\n",
                raw.chars().take(64).collect::<String>()
            ),
        );
    };
    let Some(store) = &state.store else {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("{addr} is not banned\n"),
        );
    };
    match crate::guard::remove_ban(store.as_ref(), addr).await {
        Ok(true) => text(StatusCode::OK, PLAIN, format!("ban of {addr} lifted\n")),
        Ok(false) => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("{addr} is not banned\n"),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{e}\n")),
    }
}

/// Whether a request with `method` from `peer` may be served: reads from anyone, writes
/// (lifting a ban) from loopback only.
pub fn admits(method: &Method, peer: std::net::IpAddr) -> bool {
    let read_only = method == Method::GET || method == Method::HEAD;
    read_only || peer.is_loopback()
}

/// The answer to a write request from a client that is not on loopback.
fn forbidden_write() -> Resp {
    text(
        StatusCode::FORBIDDEN,
        "text/plain; charset=utf-8",
        "write requests are accepted from loopback only: run `sbc ctl` in the pod (kubectl exec)\n",
    )
}

async fn list_bans(state: &AdminState) -> Resp {
    let Some(store) = &state.store else {
        return text(StatusCode::OK, "application/json", "[]");
    };
    match crate::guard::list_bans(store.as_ref()).await {
        Ok(bans) => json(&bans),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            format!("{e}\n"),
        ),
    }
}

/// A bound admin endpoint, not yet serving. Binding first lets the caller learn the port
/// when it asked for port 0.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl AdminServer {
    /// Binds the admin address.
    pub async fn bind(addr: SocketAddr) -> Result<AdminServer, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(AdminServer {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` turns true (or its sender is dropped), then gives open
    /// connections a few seconds to finish their current request.
    pub async fn run(
        self,
        state: AdminState,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AdminError> {
        let state = Arc::new(state);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(16 * 1024)
            .max_header_size(8 * 1024)
            .keep_alive(true);
        let builder = Arc::new(builder);
        tracing::info!(address = %self.local_addr, "admin endpoint listening");

        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let accepted = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                accepted = self.listener.accept() => accepted,
                // Reap finished connection tasks so the set stays small.
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "admin connection refused: too many open");
                continue;
            };
            let state = state.clone();
            let builder = builder.clone();
            let mut stop = shutdown.clone();
            conns.spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (method, uri) = (req.method(), req.uri());
                        let resp = if !admits(method, peer.ip()) {
                            forbidden_write()
                        } else if uri.path() == "/bans"
                            && (method == Method::GET || method == Method::HEAD)
                        {
                            list_bans(&state).await
                        } else {
                            respond_async(&state, method, uri).await
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(%peer, error = %e, "admin connection error");
                        }
                    }
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }

        drop(self.listener);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            conns.abort_all();
        }
        tracing::info!("admin endpoint stopped");
        Ok(())
    }
}

/// Binds `addr` and serves the admin endpoint until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AdminError> {
    AdminServer::bind(addr).await?.run(state, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicBool;

    pub(crate) fn sample_sets() -> Vec<SetSnapshot> {
        vec![SetSnapshot {
            id: 1,
            algorithm: "round-robin".into(),
            destinations: vec![
                DestinationSnapshot {
                    uri: "sip:127.0.0.1:5080".into(),
                    flags: DestinationState::Active.flags(true),
                    priority: 0,
                    attrs: "weight=50;duid=a".into(),
                    state: DestinationState::Active,
                    active_calls: 2,
                    description: None,
                    latency: None,
                    counters: None,
                },
                DestinationSnapshot {
                    uri: "sip:127.0.0.1:5082;transport=tcp".into(),
                    flags: DestinationState::Inactive.flags(true),
                    priority: 5,
                    attrs: String::new(),
                    state: DestinationState::Inactive,
                    active_calls: 0,
                    description: Some("backup".into()),
                    latency: Some(LatencySnapshot {
                        avg_ms: 1.5,
                        std_ms: 0.25,
                        est_ms: 1.25,
                        max_ms: 4.0,
                        timeouts: 3,
                    }),
                    counters: None,
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
                    &format!("ban:{ip}"),
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
        assert!(store.get("ban:192.0.2.7").await.unwrap().is_none());
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

    #[test]
    fn flags_match_kamcmd() {
        assert_eq!(DestinationState::Active.flags(true), "AP");
        assert_eq!(DestinationState::Inactive.flags(true), "IP");
        assert_eq!(DestinationState::Disabled.flags(false), "DX");
        assert_eq!(DestinationState::Trying.flags(false), "TX");
    }
}
