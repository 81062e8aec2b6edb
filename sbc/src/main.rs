//! The `sbc` binary: runs the proxy, or `sbc ctl ...` to ask a running one.

/// mimalloc: the policy path allocates many small, short-lived keys and futures, where glibc's
/// malloc spent ~15 % of the proxy's CPU (perf, docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sbc::admin::{self, AdminServer, AdminState, Health, ctl};
use sbc::config::{self, Algorithm, SbcConfig};
use sbc::discovery::LiveDispatch;
use sbc::discovery::watch::{ApiSource, Discovery};
use sbc::dispatch::Dispatcher;
use sbc::guard::{Guard, GuardMetrics};
use sbc::media::stage::MediaMetrics;
use sbc::pipeline::Pipeline;
use sbc::relay::Relay;
use sbc::reload::{Overrides, Reloader};
use sbc::store::{Coalescing, FallbackStore, MemoryStore, RedisStore, Store, StoreMetrics};
use sbc::telemetry::{self, LiveMetrics, Metrics};

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
    /// YAML configuration file (the schema the operator renders into the ConfigMap); watched
    /// for changes.
    #[arg(long, conflicts_with = "configmap")]
    config: Option<PathBuf>,
    /// Read and watch the configuration from ConfigMap `NAMESPACE/NAME` (key `sbc.yaml`)
    /// through the Kubernetes API.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    configmap: Option<String>,
    /// Kubeconfig file for the Kubernetes API (default: KUBECONFIG, ~/.kube/config, or the
    /// pod's service account).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
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
    /// Bind the admin endpoint to this IP only, keeping the configured port (the operator
    /// passes the pod IP in hostNetwork mode, so the endpoint is not on every node interface).
    #[arg(long, value_name = "IP")]
    admin_ip: Option<std::net::IpAddr>,
    /// Host[:port] written into Via and Record-Route instead of the bound address.
    #[arg(long)]
    advertise: Option<String>,
    /// Seconds SIGTERM waits for open transactions.
    #[arg(long)]
    drain_grace_secs: Option<u64>,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// PEM certificate chain of the tls/wss listeners (with --tls-key); replaces `tls`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle: tls/wss clients must present a certificate it signed (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// PEM CA bundle TLS backends are verified against (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    backend_ca: Option<PathBuf>,
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
        Some(Command::Check { config }) => match config::load_file(&config).and_then(|c| {
            // Certificates are loaded as startup would load them.
            sbc::transport::tls::check(&c).map_err(config::LoadError::Tls)?;
            Ok(c)
        }) {
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
            let overrides = match overrides(&cli.run) {
                Ok(o) => o,
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
            let (cfg, source) = match rt.block_on(load(&cli.run, &overrides)) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let api = ApiSource {
                kubeconfig: cli.run.kubeconfig.clone(),
            };
            match rt.block_on(run(cfg, source, overrides, api, workers)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Where the configuration comes from, and what `run` watches.
enum Source {
    /// A file, with the content loaded.
    File(PathBuf, Vec<u8>),
    /// A ConfigMap, with the client that read it and the text loaded.
    ConfigMap {
        client: kube::Client,
        namespace: String,
        name: String,
        text: String,
    },
    /// Command-line flags only.
    Flags,
}

/// The command-line settings that win over every version of the configuration.
fn overrides(a: &RunArgs) -> anyhow::Result<Overrides> {
    let listeners = a
        .listen
        .iter()
        .map(|s| config::parse_listen(s))
        .collect::<Result<Vec<_>, _>>()?;
    let dispatcher = match &a.dispatcher_list {
        Some(path) => {
            let algorithm = Algorithm::from_name(&a.algorithm)
                .with_context(|| format!("--algorithm {:?}: unknown algorithm", a.algorithm))?;
            let mut sets = sbc::dispatch::list::parse_file(path)?;
            for s in &mut sets {
                s.algorithm = algorithm;
            }
            Some(sbc::dispatch::list::dispatcher_config(sets))
        }
        None => None,
    };
    Ok(Overrides {
        listeners,
        dispatcher,
        probe_interval_ms: a.probe_interval_ms,
        reply_timeout_ms: a.reply_timeout_ms,
        admin: a.admin,
        admin_ip: a.admin_ip,
        advertise: a.advertise.clone(),
        drain_grace_secs: a.drain_grace_secs,
        tls: a
            .tls_cert
            .as_ref()
            .zip(a.tls_key.as_ref())
            .map(|(c, k)| config::TlsConfig {
                cert_file: c.display().to_string(),
                key_file: k.display().to_string(),
                client_ca_file: a.tls_client_ca.as_ref().map(|f| f.display().to_string()),
            }),
        backend_ca_file: a.backend_ca.as_ref().map(|f| f.display().to_string()),
    })
}

/// Loads the first configuration version from the file, the ConfigMap or the flags.
async fn load(a: &RunArgs, ov: &Overrides) -> anyhow::Result<(SbcConfig, Source)> {
    let (mut cfg, source) = if let Some(path) = &a.config {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| config::LoadError::Read {
            file: file.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let c = SbcConfig::from_yaml(&text)
            .map_err(|source| config::LoadError::Invalid { file, source })?;
        (c, Source::File(path.clone(), bytes))
    } else if let Some(cm) = &a.configmap {
        let (namespace, name) = cm
            .split_once('/')
            .filter(|(ns, n)| !ns.is_empty() && !n.is_empty())
            .with_context(|| format!("--configmap {cm:?}: expected NAMESPACE/NAME"))?;
        let api = ApiSource {
            kubeconfig: a.kubeconfig.clone(),
        };
        let client = api.client().await?;
        let text = sbc::reload::read_configmap(client.clone(), namespace, name).await?;
        let c = SbcConfig::from_yaml(&text).map_err(|source| config::LoadError::Invalid {
            file: format!("configmap/{cm}"),
            source,
        })?;
        let source = Source::ConfigMap {
            client,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            text,
        };
        (c, source)
    } else {
        (config::from_listeners(ov.listeners.clone())?, Source::Flags)
    };
    ov.apply(&mut cfg);
    cfg.validate().map_err(config::LoadError::Flags)?;
    config::check_routing(&cfg).map_err(config::LoadError::Flags)?;
    cfg.read_secret_files().map_err(config::LoadError::Flags)?;
    sbc::transport::tls::check(&cfg).map_err(config::LoadError::Tls)?;
    Ok((cfg, source))
}

async fn run(
    cfg: SbcConfig,
    source: Source,
    overrides: Overrides,
    api: ApiSource,
    workers: usize,
) -> anyhow::Result<()> {
    let dispatcher = Arc::new(Dispatcher::new(&cfg.dispatcher)?);
    let grace = Duration::from_secs(cfg.drain.grace_period_secs);
    let admin_addr = cfg.admin.address;
    let admin_ip = overrides.admin_ip;
    let metrics = Arc::new(Metrics::new()?);
    let relay = Relay::new(cfg.clone(), dispatcher.clone(), metrics.clone());
    let store = build_store(&cfg, &metrics)?;
    // The store and the stages' metrics live as long as the process; the stages themselves are
    // rebuilt from every accepted configuration version.
    let build_pipeline = {
        let (store, d) = (store.clone(), dispatcher.clone());
        let guard_metrics = GuardMetrics::new(metrics.registry())?;
        let auth_metrics = metrics.auth().clone();
        let clock = sbc::throttle::Clock::new();
        move |c: &SbcConfig| {
            let d = d.clone();
            let guard = Guard::new(&c.access_lists, store.clone())
                .with_trusted(Arc::new(move |ip| is_destination(&d, ip)))
                .with_metrics(guard_metrics.clone())
                .with_scanners(&c.scanners)
                .with_register_auth(sbc::auth::authenticates(c, "REGISTER"))
                .with_own_hosts(sbc::guard::own_hosts(c))
                .start();
            // The guard runs first; auth and throttle follow it.
            let mut stages: Vec<Arc<dyn sbc::pipeline::Stage>> = vec![Arc::new(guard)];
            stages.extend(policy_stages(c, &store, clock, &auth_metrics));
            Pipeline::new(stages)
        }
    };
    relay.set_pipeline(build_pipeline(&cfg));
    let call_load = Arc::new(sbc::dispatch::load::CallLoad::start(
        dispatcher.clone(),
        store.clone(),
        sbc::throttle::Clock::new(),
        cfg.dispatcher.dialog_timeout_secs,
    ));
    relay.set_call_load(call_load.clone());
    if let Some(m) = &cfg.media {
        let anchor = sbc::media::Anchor::start(m).await?;
        let stage =
            sbc::media::stage::MediaStage::new(anchor, MediaMetrics::new(metrics.registry())?);
        let d = dispatcher.clone();
        let stage = stage.with_webrtc_destinations(Arc::new(move |a| d.is_webrtc(a)));
        tracing::info!(
            rtpengines = m.rtpengine.len(),
            "media anchoring through rtpengine"
        );
        relay.set_media(Some(Arc::new(stage)));
    }
    let transports = relay.start(workers).await?;
    for (t, a) in transports.local_addrs() {
        tracing::info!("listening on {t}:{a}");
    }
    tracing::info!(
        store = if cfg.store.is_some() {
            "redis"
        } else {
            "memory"
        },
        "shared state store"
    );
    tls_server_names(&transports, &cfg).await;
    let observe = sbc::observe::wire(
        &cfg,
        &metrics,
        &dispatcher,
        &transports,
        cfg.store.is_some().then(|| store.clone()),
        Some(relay.call_id_map()),
    )?;
    let reloader = live_sources(&cfg, source, overrides, api, &relay, &metrics).await?;
    let r = relay.clone();
    reloader.on_change(Box::new(move |c| r.set_pipeline(build_pipeline(c))));
    reloader.on_change(Box::new(move |c| {
        call_load.set_timeout(c.dispatcher.dialog_timeout_secs);
    }));
    let t = transports.clone();
    reloader.on_change(Box::new(move |c| {
        t.set_tls(c.tls.as_ref(), c.backend_tls.as_ref());
        let (t, c) = (t.clone(), c.clone());
        tokio::spawn(async move { tls_server_names(&t, &c).await });
    }));
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
        observe,
    };
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let server = AdminServer::bind(admin_addr).await?;
    tracing::info!("admin endpoint on http://{}", server.local_addr());
    // With --admin-ip (the pod IP under hostNetwork) the endpoint leaves the other
    // interfaces alone but keeps loopback, where `sbc ctl` inside the pod reaches it and
    // where lifting a ban is accepted. Best effort: another process may hold that port.
    let loopback = admin_ip
        .map(|ip| {
            let lo = if ip.is_ipv6() {
                std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            } else {
                std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
            };
            std::net::SocketAddr::new(lo, server.local_addr().port())
        })
        .filter(|lo| Some(lo.ip()) != admin_ip);
    let local_task = match loopback {
        Some(lo) => match AdminServer::bind(lo).await {
            Ok(local) => Some(tokio::spawn(local.run(state.clone(), shutdown_rx.clone()))),
            Err(e) => {
                tracing::warn!(error = %e, "admin endpoint not on loopback: sbc ctl needs --admin");
                None
            }
        },
        None => None,
    };
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
    if let Some(t) = local_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    drop(reloader);
    tracing::info!("stopped");
    Ok(())
}

/// Tells the transports which host name each TLS backend's certificate must carry (resolving
/// the destinations' names off the runtime's threads).
async fn tls_server_names(t: &Arc<sbc::transport::Transports>, cfg: &SbcConfig) {
    let d = cfg.dispatcher.clone();
    if let Ok(names) =
        tokio::task::spawn_blocking(move || sbc::transport::tls::server_names(&d)).await
    {
        t.set_tls_server_names(names);
    }
}

/// The auth and throttle stages of the configuration, in pipeline order (after the guard).
fn policy_stages(
    cfg: &SbcConfig,
    store: &Arc<dyn sbc::store::Store>,
    clock: sbc::throttle::Clock,
    auth_metrics: &sbc::auth::AuthMetrics,
) -> Vec<Arc<dyn sbc::pipeline::Stage>> {
    // The shared store applies the cluster's key prefix itself.
    let prefix = "";
    let mut stages: Vec<Arc<dyn sbc::pipeline::Stage>> = Vec::new();
    if let Some(auth) = &cfg.auth {
        stages.push(Arc::new(
            sbc::auth::AuthStage::new(auth.clone(), store.clone(), prefix, clock)
                .with_metrics(auth_metrics.clone())
                .with_register_flood(
                    cfg.access_lists
                        .iter()
                        .find_map(|l| l.register_flood.clone()),
                ),
        ));
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
    let (url, field) = match &sc.url_file {
        Some(f) => (
            std::fs::read_to_string(f)
                .with_context(|| format!("store.urlFile {f}"))?
                .trim()
                .to_owned(),
            "urlFile",
        ),
        None => (sc.url.clone(), "url"),
    };
    let target = sbc::store::RedisTarget::from_config(sc, &url, field)?;
    let redis = RedisStore::connect(&target, prefix, timeout, metrics.registry())?;
    let store_metrics = StoreMetrics::new(metrics.registry())?;
    let shared = Arc::new(FallbackStore::new(Arc::new(redis), timeout, store_metrics));
    // Decisions needed at the same moment share a round trip.
    Ok(Arc::new(Coalescing::new(shared)))
}

/// Whether `source` is one of the dispatcher's destinations (trusted by the guard): same IP,
/// and over UDP the same port too (a backend sends from the socket it listens on; over a
/// stream its source port may be any), as Kamailio's `ds_is_from_list` compares them.
fn is_destination(d: &Dispatcher, source: std::net::SocketAddr) -> bool {
    let ip = source.ip().to_canonical();
    d.table().sets().iter().any(|s| {
        s.destinations().iter().any(|x| {
            x.target.addr.ip().to_canonical() == ip
                && (x.target.transport != sbc::config::Transport::Udp
                    || x.target.addr.port() == source.port())
        })
    })
}

/// Starts discovery and the configuration watch, and says which sources are in use.
async fn live_sources(
    cfg: &SbcConfig,
    source: Source,
    overrides: Overrides,
    api: ApiSource,
    relay: &Arc<Relay>,
    metrics: &Metrics,
) -> anyhow::Result<Arc<Reloader>> {
    let dispatcher = relay.dispatcher();
    let live_metrics = &Arc::new(LiveMetrics::new(metrics.registry())?);
    let client = match &source {
        Source::ConfigMap { client, .. } => Some(client.clone()),
        _ => None,
    };
    let namespace = client
        .as_ref()
        .map_or_else(sbc::discovery::watch::own_namespace, |c| {
            c.default_namespace().to_owned()
        });
    let live = Arc::new(LiveDispatch::new(
        dispatcher.clone(),
        cfg.dispatcher.clone(),
        live_metrics.clone(),
        &namespace,
    ));
    tokio::spawn(live.clone().run());
    let d = dispatcher.clone();
    LiveMetrics::register_set_states(
        metrics.registry(),
        Arc::new(move || sbc::discovery::set_state_samples(&d)),
    )?;
    let services = live.services_of(&cfg.dispatcher);
    let discovery = Arc::new(match client {
        Some(c) => Discovery::with_client(live.clone(), live_metrics.clone(), c),
        None => Discovery::new(live.clone(), live_metrics.clone(), api),
    });
    if services.is_empty() {
        tracing::info!(
            sets = cfg.dispatcher.sets.len(),
            "dispatcher sources: static destinations only (no Service reference, no Kubernetes API for discovery)"
        );
    } else {
        let names: Vec<String> = services.keys().map(ToString::to_string).collect();
        tracing::info!(
            sets = cfg.dispatcher.sets.len(),
            services = ?names,
            "dispatcher sources: static destinations plus the EndpointSlices of Services, through the Kubernetes API"
        );
    }
    discovery.sync().await;
    tokio::spawn(discovery.clone().retry());
    let reloader = Arc::new(Reloader::new(
        Arc::new(cfg.clone()),
        relay.clone(),
        live,
        discovery,
        live_metrics.clone(),
        overrides,
    ));
    match source {
        Source::File(path, content) => {
            tracing::info!(file = %path.display(), "configuration source: file, watched (read every 500 ms)");
            tokio::spawn(reloader.clone().watch_file(path, content));
        }
        Source::ConfigMap {
            client,
            namespace,
            name,
            text,
        } => {
            tracing::info!(configmap = %format!("{namespace}/{name}"), "configuration source: ConfigMap key sbc.yaml, watched through the Kubernetes API");
            tokio::spawn(
                reloader
                    .clone()
                    .watch_configmap(client, namespace, name, text),
            );
        }
        Source::Flags => {
            tracing::info!("configuration source: command-line flags only, not watched");
        }
    }
    Ok(reloader)
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
