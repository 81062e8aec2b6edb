//! `kubesbc-operator`: reconciles SbcClusters into sbc fleets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kubesbc_operator::controller::{self, Context};
use kubesbc_operator::leader::LeaderElector;

/// The kubesbc operator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kubesbc-system")]
    namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "kubesbc-operator")]
    identity: String,
    /// Skip leader election (a single replica, or local development).
    #[arg(long, env = "NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Name of the leader-election Lease: one per installation, so two releases never take
    /// each other's lease.
    #[arg(long, env = "LEASE_NAME", default_value = "kubesbc-operator")]
    lease_name: String,
    /// Reconcile only the resources of this namespace; empty: every namespace.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let registry = prometheus::Registry::new();
    let defaults = kubesbc_operator::render::PodDefaults::from_env().map_err(anyhow::Error::msg)?;
    let ctx = Arc::new(Context::new(client.clone(), &registry)?.with_defaults(defaults));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tokio::spawn(serve_metrics(listener, registry));

    let watch = Some(args.watch_namespace.trim().to_owned()).filter(|n| !n.is_empty());
    if args.no_leader_election {
        controller::run(ctx, watch).await;
        return Ok(());
    }
    let elector = LeaderElector::new(
        client,
        &args.namespace,
        &args.lease_name,
        &args.identity,
        Duration::from_secs(15),
    );
    tracing::info!(identity = %args.identity, "waiting for leadership");
    elector.acquire().await;
    tracing::info!("leading");
    tokio::select! {
        () = controller::run(ctx, watch) => Ok(()),
        () = elector.keep() => {
            // Exiting lets Kubernetes restart us as a follower; reconciling on would fight
            // the new leader.
            anyhow::bail!("lost the leader lease")
        }
    }
}

/// Serves `/metrics` (Prometheus text) and anything else as `/healthz` (`ok`), on hyper's
/// HTTP/1 server like the sbc's admin endpoint.
async fn serve_metrics(listener: tokio::net::TcpListener, registry: prometheus::Registry) {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::header::{CONTENT_TYPE, HeaderValue};
    use hyper::{Method, Request, Response};
    use hyper_util::rt::{TokioIo, TokioTimer};

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .max_buf_size(16 * 1024)
        .keep_alive(false);
    let builder = Arc::new(builder);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                    let mut out = Vec::new();
                    let encoder = prometheus::TextEncoder::new();
                    if prometheus::Encoder::encode(&encoder, &registry.gather(), &mut out).is_err()
                    {
                        out.clear();
                    }
                    out
                } else {
                    b"ok\n".to_vec()
                };
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                std::future::ready(Ok::<_, std::convert::Infallible>(resp))
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
