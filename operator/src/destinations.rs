//! What the sbc pods see of their destinations: the operator asks every running sbc pod of a
//! cluster for `GET /dispatcher` on its admin port and folds the answers into the "destinations
//! up / total" of the SbcCluster and of each DispatcherSet.
//!
//! The rule (documented in docs/kubernetes.md): per set, `total` is the largest number of
//! destinations any answering pod lists (pods differ while a change propagates), and `up` is
//! the number of destinations that *every* answering pod lists as usable (`active` or
//! `trying`, the states that take traffic). One pod seeing a backend down therefore shows as
//! degraded. Destinations are counted by URI.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use kubesbc_crds::listing::DispatcherSnapshot;
use tokio::net::TcpStream;

/// Time one pod has to answer `GET /dispatcher` (connect, headers and body).
pub const POD_TIMEOUT: Duration = Duration::from_secs(1);
/// Time all pods of a cluster have, together: a reconcile never waits longer on probes.
pub const OBSERVE_DEADLINE: Duration = Duration::from_secs(3);
/// Pods asked at once.
pub const CONCURRENCY: usize = 16;
/// Largest `/dispatcher` body read (thousands of destinations fit); a larger answer is refused
/// rather than buffered.
pub const MAX_BODY: usize = 4 << 20;
/// Most destinations counted per set of one pod (the CRD allows 256 static ones plus the
/// Service's endpoints); more are ignored, so a broken answer cannot make us allocate much.
const MAX_DESTINATIONS_PER_SET: usize = 4096;

/// Why a pod's view could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No TCP connection (refused, unreachable).
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// No complete answer within [`POD_TIMEOUT`].
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer other than 200.
    #[error("answered {0}")]
    Status(StatusCode),
    /// The body was larger than [`MAX_BODY`] or broke off.
    #[error("body: {0}")]
    Body(String),
    /// The body is not the `/dispatcher` JSON.
    #[error("not the /dispatcher JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One pod's view: set id -> destination URI -> usable (takes traffic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    /// The sets the pod runs, by id.
    pub sets: BTreeMap<u32, BTreeMap<String, bool>>,
}

impl PodView {
    /// Parses the body of `GET /dispatcher`. A destination listed twice in a set counts once,
    /// and is usable only if every listing of it is.
    pub fn from_json(body: &[u8]) -> Result<PodView, ProbeError> {
        // The sbc's own listing type: unknown fields and states are tolerated.
        let listing: DispatcherSnapshot = serde_json::from_slice(body)?;
        let mut sets: BTreeMap<u32, BTreeMap<String, bool>> = BTreeMap::new();
        for set in listing.sets {
            let dests = sets.entry(set.id).or_default();
            for d in set.destinations {
                // `trying` still takes traffic (Kamailio's meaning); inactive and disabled do not.
                let usable = d.state.takes_traffic();
                if dests.len() >= MAX_DESTINATIONS_PER_SET && !dests.contains_key(&d.uri) {
                    continue;
                }
                let e = dests.entry(d.uri).or_insert(true);
                *e = *e && usable;
            }
        }
        Ok(PodView { sets })
    }
}

/// Destinations of one set (or of a whole cluster) as the pods see them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Usable on every answering pod.
    pub up: u32,
    /// Listed by the pod listing the most.
    pub total: u32,
}

impl Count {
    /// `up` for a status field (the CRD uses int32).
    pub fn up_i32(self) -> i32 {
        i32::try_from(self.up).unwrap_or(i32::MAX)
    }

    /// `total` for a status field.
    pub fn total_i32(self) -> i32 {
        i32::try_from(self.total).unwrap_or(i32::MAX)
    }
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Folds the views of the answering pods into a count per set id (see the module doc for the
/// rule). No views: an empty map.
pub fn aggregate(views: &[PodView]) -> BTreeMap<u32, Count> {
    let ids: BTreeSet<u32> = views.iter().flat_map(|v| v.sets.keys().copied()).collect();
    ids.into_iter()
        .map(|id| {
            let total = views
                .iter()
                .map(|v| v.sets.get(&id).map_or(0, BTreeMap::len))
                .max()
                .unwrap_or(0);
            // A destination every pod lists as usable is also in the first pod's listing, so
            // checking the first pod's URIs is enough.
            let up = views
                .first()
                .and_then(|v| v.sets.get(&id))
                .map_or(0, |first| {
                    first
                        .keys()
                        .filter(|uri| {
                            views
                                .iter()
                                .all(|v| v.sets.get(&id).and_then(|s| s.get(*uri)) == Some(&true))
                        })
                        .count()
                });
            (
                id,
                Count {
                    up: count_u32(up),
                    total: count_u32(total),
                },
            )
        })
        .collect()
}

/// The sum over `ids` (a cluster's sets); a set no pod reported adds nothing.
pub fn sum(per_set: &BTreeMap<u32, Count>, ids: impl IntoIterator<Item = u32>) -> Count {
    ids.into_iter()
        .filter_map(|id| per_set.get(&id))
        .fold(Count::default(), |acc, c| Count {
            up: acc.up.saturating_add(c.up),
            total: acc.total.saturating_add(c.total),
        })
}

/// Asks one sbc admin endpoint for its dispatcher view. A trait so the controller tests can
/// answer without sockets.
pub trait DestinationProbe: Send + Sync {
    /// The view of the pod whose admin endpoint is `admin`.
    fn probe(&self, admin: SocketAddr) -> BoxFuture<'_, Result<PodView, ProbeError>>;
}

/// The real probe: HTTP/1.1 `GET /dispatcher` over a fresh TCP connection, bounded by
/// [`POD_TIMEOUT`] and [`MAX_BODY`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpProbe;

impl DestinationProbe for HttpProbe {
    fn probe(&self, admin: SocketAddr) -> BoxFuture<'_, Result<PodView, ProbeError>> {
        Box::pin(async move {
            match tokio::time::timeout(POD_TIMEOUT, fetch(admin)).await {
                Ok(r) => r.and_then(|body| PodView::from_json(&body)),
                Err(_) => Err(ProbeError::Timeout(POD_TIMEOUT)),
            }
        })
    }
}

async fn fetch(admin: SocketAddr) -> Result<Bytes, ProbeError> {
    let stream = TcpStream::connect(admin)
        .await
        .map_err(ProbeError::Connect)?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    let req = Request::get("/dispatcher")
        .header(hyper::header::HOST, admin.to_string())
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Body(e.to_string()))?;
    let exchange = async move {
        let resp = sender.send_request(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(ProbeError::Status(resp.status()));
        }
        Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| ProbeError::Body(e.to_string()))
    };
    // The connection is driven here, not spawned: when the timeout drops this future, the
    // socket goes with it.
    tokio::pin!(conn);
    tokio::pin!(exchange);
    tokio::select! {
        r = &mut exchange => r,
        c = &mut conn => {
            c?;
            exchange.await
        }
    }
}

/// What a cluster's pods reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    /// Pods asked.
    pub asked: usize,
    /// Pods that answered with a view.
    pub answered: usize,
    /// The aggregate of their views, by set id (empty when none answered).
    pub sets: BTreeMap<u32, Count>,
}

/// Asks every address (at most [`CONCURRENCY`] at once, all within [`OBSERVE_DEADLINE`]) and
/// aggregates the answers. Pods that fail or are too slow are left out and logged.
pub async fn observe(probe: &dyn DestinationProbe, admins: &[SocketAddr]) -> Observation {
    let mut views = Vec::with_capacity(admins.len());
    let mut answers = futures::stream::iter(admins.iter().copied())
        .map(|addr| async move { (addr, probe.probe(addr).await) })
        .buffer_unordered(CONCURRENCY);
    let deadline = tokio::time::sleep(OBSERVE_DEADLINE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = answers.next() => match next {
                Some((_, Ok(view))) => views.push(view),
                Some((addr, Err(e))) => {
                    tracing::debug!(pod = %addr, error = %e, "no /dispatcher view");
                }
                None => break,
            },
            () = &mut deadline => {
                tracing::debug!(asked = admins.len(), answered = views.len(), "probe deadline");
                break;
            }
        }
    }
    Observation {
        asked: admins.len(),
        answered: views.len(),
        sets: aggregate(&views),
    }
}

/// The admin endpoints of a cluster's sbc pods: pods matching `selector` in `ns` that run, have
/// an IP and are not being deleted. Readiness is not required: an sbc with no destination up
/// is not ready, and that is exactly what the count must show.
pub async fn pod_admins(
    client: &Client,
    ns: &str,
    selector: &BTreeMap<String, String>,
    port: u16,
) -> Result<Vec<SocketAddr>, kube::Error> {
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&labels))
        .await?;
    let mut out: Vec<SocketAddr> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            if st.phase.as_deref() != Some("Running") {
                return None;
            }
            let ip: IpAddr = st.pod_ip.as_deref()?.parse().ok()?;
            Some(SocketAddr::new(ip, port))
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}
