//! `kubesbc-operator`: reconciles SbcClusters into sbc fleets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kubesbc_operator::controller::{self, Context};
use kubesbc_operator::leader::LeaderElector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    let ctx = Arc::new(Context::new(client.clone(), &registry)?);
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

/// Serves `/metrics` (Prometheus text) and anything else as `/healthz` (`ok`).
async fn serve_metrics(listener: tokio::net::TcpListener, registry: prometheus::Registry) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            // The request line is all we need; 1 KiB bounds what a client can make us hold.
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let head = buf.get(..n).unwrap_or_default();
            let body = if head.starts_with(b"GET /metrics") {
                let mut out = Vec::new();
                let encoder = prometheus::TextEncoder::new();
                if prometheus::Encoder::encode(&encoder, &registry.gather(), &mut out).is_err() {
                    out.clear();
                }
                out
            } else {
                b"ok\n".to_vec()
            };
            let header = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(header.as_bytes()).await;
            let _ = stream.write_all(&body).await;
        });
    }
}
