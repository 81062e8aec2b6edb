//! The `sbc` binary: runs the proxy, or `sbc ctl ...` to ask a running one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sbc::admin::{self, AdminServer, AdminState, Health, ctl};
use sbc::config::{self, Algorithm, SbcConfig};
use sbc::dispatch::Dispatcher;
use sbc::guard::{Guard, GuardMetrics};
use sbc::pipeline::Pipeline;
use sbc::relay::Relay;
use sbc::store::{FallbackStore, MemoryStore, RedisStore, Store, StoreMetrics};
use sbc::telemetry::{self, Metrics};

/// kubesbc: a SIP session border controller.
#[derive(Parser)]
#[command(name = "sbc", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a running sbc through its admin endpoint (like kamcmd).
    Ctl(ctl::CtlArgs),
    /// Validate a configuration file and print it as the sbc will use it.
    Check {
        /// The YAML configuration file.
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// YAML configuration file (the schema the operator renders into the ConfigMap).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A listener, `transport:ip:port` (repeatable); replaces the file's listeners.
    #[arg(long = "listen", value_name = "TRANSPORT:IP:PORT")]
    listen: Vec<String>,
    /// A Kamailio dispatcher.list; replaces the file's dispatcher sets.
    #[arg(long, value_name = "FILE")]
    dispatcher_list: Option<PathBuf>,
    /// Algorithm for sets read from --dispatcher-list (name or Kamailio number).
    #[arg(long, default_value = "round-robin")]
    algorithm: String,
    /// Milliseconds between OPTIONS probes (every set).
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Milliseconds to wait for a destination's first reply before failing over (every set).
    #[arg(long)]
    reply_timeout_ms: Option<u64>,
    /// Admin endpoint address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long = "admin", id = "admin_address", value_name = "IP:PORT")]
    admin: Option<std::net::SocketAddr>,
    /// Host[:port] written into Via and Record-Route instead of the bound address.
    #[arg(long)]
    advertise: Option<String>,
    /// Seconds SIGTERM waits for open transactions.
    #[arg(long)]
    drain_grace_secs: Option<u64>,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Ctl(args)) => match ctl::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sbc ctl: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Check { config }) => match config::load_file(&config) {
            Ok(c) => {
                print!("{}", c.to_yaml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        None => {
            let _ = telemetry::init_tracing();
            let cfg = match build_config(&cli.run) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let workers = cli
                .run
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(run(cfg, workers)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn build_config(a: &RunArgs) -> anyhow::Result<SbcConfig> {
    let listeners = a
        .listen
        .iter()
        .map(|s| config::parse_listen(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cfg = match &a.config {
        Some(path) => {
            let mut c = config::load_file(path)?;
            if !listeners.is_empty() {
                c.listeners = listeners;
            }
            c
        }
        None => config::from_listeners(listeners)?,
    };
    if let Some(path) = &a.dispatcher_list {
        let algorithm = Algorithm::from_name(&a.algorithm)
            .with_context(|| format!("--algorithm {:?}: unknown algorithm", a.algorithm))?;
        let mut sets = sbc::dispatch::list::parse_file(path)?;
        for s in &mut sets {
            s.algorithm = algorithm;
        }
        cfg.dispatcher = sbc::dispatch::list::dispatcher_config(sets);
    }
    for s in &mut cfg.dispatcher.sets {
        if let Some(ms) = a.probe_interval_ms {
            s.probing.interval_ms = ms;
            s.probing.timeout_ms = s.probing.timeout_ms.min(ms);
        }
        if let Some(ms) = a.reply_timeout_ms {
            s.failover.reply_timeout_ms = ms;
        }
    }
    if let Some(admin) = a.admin {
        cfg.admin.address = admin;
    }
    if let Some(adv) = &a.advertise {
        for l in &mut cfg.listeners {
            l.advertise = Some(adv.clone());
        }
    }
    if let Some(g) = a.drain_grace_secs {
        cfg.drain.grace_period_secs = g;
    }
    cfg.validate().map_err(config::LoadError::Flags)?;
    Ok(cfg)
}

async fn run(cfg: SbcConfig, workers: usize) -> anyhow::Result<()> {
    let dispatcher = Arc::new(Dispatcher::new(&cfg.dispatcher)?);
    let grace = Duration::from_secs(cfg.drain.grace_period_secs);
    let admin_addr = cfg.admin.address;
    let metrics = Arc::new(Metrics::new()?);
    let relay = Relay::new(cfg.clone(), dispatcher.clone(), metrics.clone());
    let store = build_store(&cfg, &metrics)?;
    let d = dispatcher.clone();
    let guard = Guard::new(&cfg.access_lists, store.clone())
        .with_trusted(Arc::new(move |ip| is_destination(&d, ip)))
        .with_metrics(GuardMetrics::new(metrics.registry())?);
    // The guard runs first; auth and throttle follow it.
    let mut stages: Vec<Arc<dyn sbc::pipeline::Stage>> = vec![Arc::new(guard)];
    stages.extend(policy_stages(&cfg, &store));
    relay.set_pipeline(Pipeline::new(stages));
    let transports = relay.start(workers).await?;
    for (t, a) in transports.local_addrs() {
        tracing::info!("listening on {t}:{a}");
    }
    tracing::info!(
        sets = cfg.dispatcher.sets.len(),
        store = if cfg.store.is_some() {
            "redis"
        } else {
            "memory"
        },
        "sources: static configuration, no Kubernetes API"
    );

    let d = dispatcher.clone();
    let health = Arc::new(Health::new(Arc::new(move || admin::any_destination_up(&d))));
    health.set_listeners_bound(true);
    let d = dispatcher.clone();
    metrics.set_destination_source(Arc::new(move || admin::destination_samples(&d)));
    let d = dispatcher.clone();
    let state = AdminState {
        metrics: metrics.clone(),
        health: health.clone(),
        dispatcher: Arc::new(move || admin::dispatcher_listing(&d)),
        store: Some(store.clone()),
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = AdminServer::bind(admin_addr).await?;
    tracing::info!("admin endpoint on http://{}", server.local_addr());
    let admin_task = tokio::spawn(server.run(state, shutdown_rx.clone()));
    let pinger: Arc<dyn sbc::dispatch::probe::Pinger> = relay.clone();
    tokio::spawn(sbc::dispatch::probe::run(
        dispatcher.clone(),
        pinger,
        shutdown_rx,
    ));

    wait_for_signal().await;
    tracing::info!("SIGTERM: draining (new calls get 503), waiting up to {grace:?}");
    health.set_draining(true);
    relay.drain();
    let deadline = Instant::now() + grace;
    while relay.pending_transactions() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = relay.pending_transactions();
    if left > 0 {
        tracing::warn!(left, "grace period over, exiting with transactions open");
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// The auth and throttle stages of the configuration, in pipeline order (after the guard).
fn policy_stages(
    cfg: &SbcConfig,
    store: &Arc<dyn sbc::store::Store>,
) -> Vec<Arc<dyn sbc::pipeline::Stage>> {
    // The shared store applies the cluster's key prefix itself.
    let prefix = "";
    let clock = sbc::throttle::Clock::new();
    let mut stages: Vec<Arc<dyn sbc::pipeline::Stage>> = Vec::new();
    if let Some(auth) = &cfg.auth {
        stages.push(Arc::new(sbc::auth::AuthStage::new(
            auth.clone(),
            store.clone(),
            prefix,
            clock,
        )));
    }
    if !cfg.throttles.is_empty() {
        stages.push(Arc::new(sbc::throttle::ThrottleStage::new(
            &cfg.throttles,
            store.clone(),
            prefix,
            clock,
        )));
    }
    stages
}

/// The shared store: Redis behind a local fallback when configured, else memory only.
fn build_store(cfg: &SbcConfig, metrics: &Metrics) -> anyhow::Result<Arc<dyn Store>> {
    let Some(sc) = &cfg.store else {
        return Ok(Arc::new(MemoryStore::default()));
    };
    let timeout = Duration::from_millis(sc.timeout_ms.max(1));
    let prefix = sc.key_prefix.as_deref().unwrap_or("kubesbc:");
    // The operator mounts the full URL (password included) from a Secret.
    let url = match &sc.url_file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("store.urlFile {f}"))?
            .trim()
            .to_owned(),
        None => sc.url.clone(),
    };
    let redis = RedisStore::new(&url, prefix, timeout, metrics.registry())?;
    let store_metrics = StoreMetrics::new(metrics.registry())?;
    Ok(Arc::new(FallbackStore::new(
        Arc::new(redis),
        timeout,
        store_metrics,
    )))
}

/// Whether `ip` is one of the dispatcher's destinations (trusted by the guard).
fn is_destination(d: &Dispatcher, ip: std::net::IpAddr) -> bool {
    d.table().sets().iter().any(|s| {
        s.destinations()
            .iter()
            .any(|x| x.target.addr.ip().to_canonical() == ip)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling: run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
