//! Live configuration: a new version of `sbc.yaml` (the mounted file, or the ConfigMap read
//! through the API) is validated, then put in force without a restart.
//!
//! An invalid version is refused with a log line naming the field, counted in
//! `sbc_config_reloads_total{result="refused"}`, and the version in force stays. A valid one
//! replaces the relay's configuration and the dispatcher sets (merged again with the
//! discovered endpoints), restarts the Service watchers it needs, and is handed to every
//! [`Reloader::on_change`] hook (policy stages rebuild themselves there). Listeners are bound
//! once: a changed listener list is logged as needing a restart and not applied.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::config::{ConfigError, DispatcherConfig, SbcConfig};
use crate::discovery::LiveDispatch;
use crate::discovery::watch::Discovery;
use crate::relay::Relay;
use crate::telemetry::LiveMetrics;

/// How often the configuration file is read for changes. A mounted ConfigMap changes by a
/// symlink swap, so the content is compared, not the modification time.
pub const FILE_POLL: Duration = Duration::from_millis(500);

/// The largest configuration file read (a ConfigMap holds at most 1 MiB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The ConfigMap key holding the configuration.
pub const CONFIGMAP_KEY: &str = "sbc.yaml";

/// A consumer of configuration changes, called with each accepted version.
pub type Hook = Box<dyn Fn(&SbcConfig) + Send + Sync>;

/// Why a configuration version was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The document is invalid; the error names the field.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// The dispatcher sets cannot be built (a destination does not resolve).
    #[error("{0}")]
    Dispatcher(#[from] crate::dispatch::DispatchError),
    /// The ConfigMap has no `sbc.yaml` key.
    #[error("no {CONFIGMAP_KEY:?} key")]
    MissingKey,
    /// The ConfigMap could not be read.
    #[error("{0}")]
    Api(String),
    /// A certificate, key or CA file the version names cannot be used.
    #[error("{0}")]
    Tls(#[from] crate::transport::TlsError),
}

/// Settings given on the command line, which win over every version of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`: replaces the listeners.
    pub listeners: Vec<crate::config::Listener>,
    /// `--dispatcher-list`: replaces the dispatcher sets.
    pub dispatcher: Option<DispatcherConfig>,
    /// `--probe-interval-ms` for every set.
    pub probe_interval_ms: Option<u64>,
    /// `--reply-timeout-ms` for every set.
    pub reply_timeout_ms: Option<u64>,
    /// `--admin`.
    pub admin: Option<std::net::SocketAddr>,
    /// `--admin-ip`: the admin endpoint's IP (the port stays); wins over `--admin`'s.
    pub admin_ip: Option<std::net::IpAddr>,
    /// `--advertise` for every listener.
    pub advertise: Option<String>,
    /// `--drain-grace-secs`.
    pub drain_grace_secs: Option<u64>,
    /// `--tls-cert`, `--tls-key` and `--tls-client-ca`: replaces the `tls` section.
    pub tls: Option<crate::config::TlsConfig>,
    /// `--backend-ca`: replaces `backendTls.caFile`.
    pub backend_ca_file: Option<String>,
}

impl Overrides {
    /// Applies the overrides to a configuration (then validate it again).
    pub fn apply(&self, cfg: &mut SbcConfig) {
        if !self.listeners.is_empty() {
            cfg.listeners = self.listeners.clone();
        }
        if let Some(d) = &self.dispatcher {
            cfg.dispatcher = d.clone();
        }
        for s in &mut cfg.dispatcher.sets {
            if let Some(ms) = self.probe_interval_ms {
                s.probing.interval_ms = ms;
                s.probing.timeout_ms = s.probing.timeout_ms.min(ms);
            }
            if let Some(ms) = self.reply_timeout_ms {
                s.failover.reply_timeout_ms = ms;
            }
        }
        if let Some(admin) = self.admin {
            cfg.admin.address = admin;
        }
        if let Some(ip) = self.admin_ip {
            cfg.admin.address.set_ip(ip);
        }
        if let Some(adv) = &self.advertise {
            for l in &mut cfg.listeners {
                l.advertise = Some(adv.clone());
            }
        }
        if let Some(g) = self.drain_grace_secs {
            cfg.drain.grace_period_secs = g;
        }
        if let Some(t) = &self.tls {
            cfg.tls = Some(t.clone());
        }
        if let Some(ca) = &self.backend_ca_file {
            cfg.backend_tls.get_or_insert_with(Default::default).ca_file = Some(ca.clone());
        }
    }
}

/// Puts new configuration versions in force; see the module doc.
pub struct Reloader {
    relay: Arc<Relay>,
    live: Arc<LiveDispatch>,
    discovery: Arc<Discovery>,
    metrics: Arc<LiveMetrics>,
    overrides: Overrides,
    current: Mutex<Arc<SbcConfig>>,
    hooks: Mutex<Vec<Hook>>,
    /// One version at a time.
    applying: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for an sbc started with `config` (overrides applied).
    pub fn new(
        config: Arc<SbcConfig>,
        relay: Arc<Relay>,
        live: Arc<LiveDispatch>,
        discovery: Arc<Discovery>,
        metrics: Arc<LiveMetrics>,
        overrides: Overrides,
    ) -> Reloader {
        Reloader {
            relay,
            live,
            discovery,
            metrics,
            overrides,
            current: Mutex::new(config),
            hooks: Mutex::new(Vec::new()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    /// Calls `hook` with every configuration version accepted from now on.
    pub fn on_change(&self, hook: Hook) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(hook);
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<SbcConfig> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Validates `text` (a whole `sbc.yaml`) from `origin` and puts it in force, or refuses
    /// it and keeps the version in force. Logs and counts either way.
    pub async fn apply_text(&self, text: &str, origin: &str) -> Result<(), ReloadError> {
        let result = self.try_apply(text).await;
        match &result {
            Ok(()) => self.metrics.reload(true),
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(
                    source = origin,
                    error = %e,
                    "configuration refused: {e}; the configuration in force stays"
                );
            }
        }
        result
    }

    async fn try_apply(&self, text: &str) -> Result<(), ReloadError> {
        let _one = self.applying.lock().await;
        let mut cfg = SbcConfig::from_yaml(text)?;
        self.overrides.apply(&mut cfg);
        cfg.validate()?;
        crate::config::check_routing(&cfg)?;
        cfg.read_secret_files()?;
        crate::transport::tls::check(&cfg)?;
        let old = self.current();
        if cfg == *old {
            tracing::info!("configuration unchanged");
            return Ok(());
        }
        if cfg.listeners != old.listeners {
            tracing::warn!(
                "configuration: the listeners changed; that needs a restart, the bound sockets stay"
            );
            // Keep describing what is bound.
            cfg.listeners = old.listeners.clone();
        }
        if cfg.observability != old.observability {
            tracing::warn!(
                "configuration: observability changed; that needs a restart, the HEP collectors and record sinks in force stay"
            );
            cfg.observability = old.observability.clone();
        }
        if cfg.media != old.media {
            tracing::warn!(
                "configuration: media changed; that needs a restart, the rtpengines and profiles in force stay"
            );
            cfg.media = old.media.clone();
        }
        if cfg.admin.address != old.admin.address {
            tracing::warn!(
                "configuration: admin.address changed; that needs a restart, the admin endpoint stays where it is"
            );
            cfg.admin.address = old.admin.address;
        }
        if cfg.dispatcher != old.dispatcher {
            let live = self.live.clone();
            let dispatcher = cfg.dispatcher.clone();
            tokio::task::spawn_blocking(move || live.set_config(dispatcher))
                .await
                .map_err(|e| ReloadError::Api(e.to_string()))??;
            self.discovery.sync().await;
        }
        self.relay.set_config(cfg.clone());
        let cfg = Arc::new(cfg);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = cfg.clone();
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(&cfg);
        }
        tracing::info!(
            sets = cfg.dispatcher.sets.len(),
            access_lists = cfg.access_lists.len(),
            throttles = cfg.throttles.len(),
            "configuration reloaded"
        );
        Ok(())
    }

    /// Reads `path` every [`FILE_POLL`] and applies each new content. `initial` is the
    /// content in force. Runs until the task is dropped.
    pub async fn watch_file(self: Arc<Self>, path: PathBuf, initial: Vec<u8>) {
        let origin = path.display().to_string();
        let mut last = initial;
        let mut unreadable = false;
        let mut tick = tokio::time::interval(FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match read_bounded(&path).await {
                Ok(bytes) => {
                    unreadable = false;
                    if bytes == last {
                        continue;
                    }
                    tracing::info!(file = %origin, "configuration file changed");
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    // Remember even a refused version: it is not retried until it changes.
                    last = bytes;
                    let _ = self.apply_text(&text, &origin).await;
                }
                Err(e) => {
                    if !unreadable {
                        tracing::warn!(file = %origin, error = %e, "configuration file unreadable; the configuration in force stays");
                    }
                    unreadable = true;
                }
            }
        }
    }

    /// Watches ConfigMap `namespace/name` and applies each new `sbc.yaml`. `initial` is the
    /// text in force. Runs until the task is dropped.
    pub async fn watch_configmap(
        self: Arc<Self>,
        client: Client,
        namespace: String,
        name: String,
        initial: String,
    ) {
        let origin = format!("configmap/{namespace}/{name}");
        let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        let mut last = initial;
        let mut failing = false;
        while let Some(event) = stream.next().await {
            let cm = match event {
                Ok(Event::Apply(cm) | Event::InitApply(cm)) => cm,
                Ok(Event::Delete(_)) => {
                    tracing::warn!(source = %origin, "ConfigMap deleted; the configuration in force stays");
                    continue;
                }
                Ok(Event::Init | Event::InitDone) => continue,
                Err(e) => {
                    self.metrics.watch_error(&origin);
                    if !failing {
                        tracing::error!(source = %origin, error = %e, "ConfigMap watch failed; the configuration in force stays, retrying");
                    }
                    failing = true;
                    continue;
                }
            };
            failing = false;
            let Some(text) = cm.data.as_ref().and_then(|d| d.get(CONFIGMAP_KEY)) else {
                self.metrics.reload(false);
                tracing::error!(source = %origin, "configuration refused: {}; the configuration in force stays", ReloadError::MissingKey);
                continue;
            };
            if *text == last {
                continue;
            }
            last = text.clone();
            tracing::info!(source = %origin, "ConfigMap changed");
            let _ = self.apply_text(text, &origin).await;
        }
    }
}

/// Reads at most [`MAX_FILE_BYTES`] of `path`; a longer file is an error.
async fn read_bounded(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let f = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).await?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(bytes)
}

/// Reads `sbc.yaml` of ConfigMap `namespace/name` once (at startup).
pub async fn read_configmap(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<String, ReloadError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let cm = api
        .get(name)
        .await
        .map_err(|e| ReloadError::Api(format!("ConfigMap {namespace}/{name}: {e}")))?;
    cm.data
        .and_then(|mut d| d.remove(CONFIGMAP_KEY))
        .ok_or(ReloadError::MissingKey)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::discovery::watch::ApiSource;
    use crate::dispatch::Dispatcher;
    use crate::telemetry::Metrics;

    const V1: &str = "listeners:\n- transport: udp\n  address: 127.0.0.1:5060\ndispatcher:\n  sets:\n  - id: 1\n    destinations:\n    - uri: sip:127.0.0.1:5080\n";

    fn reloader() -> (Arc<Reloader>, Arc<Dispatcher>, prometheus::Registry) {
        let cfg = SbcConfig::from_yaml(V1).unwrap();
        let dispatcher = Arc::new(Dispatcher::new(&cfg.dispatcher).unwrap());
        let metrics = Arc::new(Metrics::new().unwrap());
        let registry = prometheus::Registry::new();
        let lm = Arc::new(LiveMetrics::new(&registry).unwrap());
        let relay = Relay::new(cfg.clone(), dispatcher.clone(), metrics);
        let live = Arc::new(LiveDispatch::new(
            dispatcher.clone(),
            cfg.dispatcher.clone(),
            lm.clone(),
            "default",
        ));
        let discovery = Arc::new(Discovery::new(
            live.clone(),
            lm.clone(),
            ApiSource::default(),
        ));
        let r = Reloader::new(
            Arc::new(cfg),
            relay,
            live,
            discovery,
            lm,
            Overrides::default(),
        );
        (Arc::new(r), dispatcher, registry)
    }

    fn uris(d: &Dispatcher) -> Vec<String> {
        let mut v: Vec<String> = d.snapshot()[0]
            .destinations
            .iter()
            .map(|x| x.uri.clone())
            .collect();
        v.sort();
        v
    }

    fn reloads(registry: &prometheus::Registry, result: &str) -> String {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        let series = format!("sbc_config_reloads_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_default()
            .to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn valid_versions_apply_invalid_ones_are_refused_by_field() {
        let (r, d, registry) = reloader();
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        r.on_change(Box::new(move |c| {
            s.store(c.dispatcher.sets[0].destinations.len(), Ordering::SeqCst)
        }));

        let v2 = format!("{V1}    - uri: sip:127.0.0.1:5081\n");
        r.apply_text(&v2, "test").await.unwrap();
        assert_eq!(uris(&d), ["sip:127.0.0.1:5080", "sip:127.0.0.1:5081"]);
        assert_eq!(
            seen.load(Ordering::SeqCst),
            2,
            "the hook saw the new version"
        );

        let bad = v2.replace("id: 1\n", "id: 1\n    algorithm: roundrobin\n");
        let err = r.apply_text(&bad, "test").await.unwrap_err().to_string();
        assert!(err.starts_with("dispatcher.sets[0].algorithm:"), "{err}");
        assert_eq!(uris(&d), ["sip:127.0.0.1:5080", "sip:127.0.0.1:5081"]);
        assert_eq!(r.current().dispatcher.sets[0].destinations.len(), 2);
        assert_eq!(reloads(&registry, "accepted"), "1");
        assert_eq!(reloads(&registry, "refused"), "1");

        // New listeners are not bound: the ones in force stay described.
        let moved = v2.replace("127.0.0.1:5060", "127.0.0.1:5070");
        r.apply_text(&moved, "test").await.unwrap();
        assert_eq!(r.current().listeners[0].address.port(), 5060);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewritten_file_is_picked_up() {
        let (r, d, _registry) = reloader();
        let dir = std::env::temp_dir().join(format!("sbc-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sbc.yaml");
        std::fs::write(&file, V1).unwrap();
        let task = tokio::spawn(r.clone().watch_file(file.clone(), V1.as_bytes().to_vec()));
        // A symlink-swap style rewrite: a new file renamed over the old one.
        let tmp = dir.join("sbc.yaml.new");
        std::fs::write(&tmp, V1.replace("5080", "5090")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while uris(&d) != ["sip:127.0.0.1:5090"] {
            assert!(std::time::Instant::now() < deadline, "{:?}", uris(&d));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn configmap(text: Option<&str>) -> serde_json::Value {
        let mut cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "edge-config", "namespace": "voip", "resourceVersion": "5"}});
        if let Some(t) = text {
            cm["data"] = serde_json::json!({ CONFIGMAP_KEY: t });
        }
        cm
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn configmap_versions_through_the_api() {
        use http::{Request, Response};
        use kube::client::Body;
        let (r, d, registry) = reloader();
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "voip");
        let task = tokio::spawn(r.clone().watch_configmap(
            client,
            "voip".into(),
            "edge-config".into(),
            V1.into(),
        ));
        let v2 = format!("{V1}    - uri: sip:127.0.0.1:5081\n");
        let bad = v2.replace("uri: sip:127.0.0.1:5081", "uri: http://x");
        let mut next = async || {
            let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(req.uri().path(), "/api/v1/namespaces/voip/configmaps");
            let q = req.uri().query().unwrap_or_default().to_owned();
            assert!(
                q.contains("fieldSelector=metadata.name%3Dedge-config"),
                "{q}"
            );
            (q.contains("watch=true"), send)
        };
        let reply = |send: tower_test::mock::SendResponse<Response<Body>>, v: serde_json::Value| {
            send.send_response(Response::new(Body::from(serde_json::to_vec(&v).unwrap())))
        };
        // The listing carries a new version: applied.
        let (watch, send) = next().await;
        assert!(!watch);
        reply(
            send,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMapList",
            "metadata": {"resourceVersion": "5"}, "items": [configmap(Some(&v2))]}),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while uris(&d).len() != 2 {
            assert!(std::time::Instant::now() < deadline, "{:?}", uris(&d));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // An invalid version and one without the key are refused; the version in force stays.
        let (watch, send) = next().await;
        assert!(watch);
        let mut body = serde_json::to_vec(
            &serde_json::json!({"type": "MODIFIED", "object": configmap(Some(&bad))}),
        )
        .unwrap();
        body.push(b'\n');
        body.extend(
            serde_json::to_vec(&serde_json::json!({"type": "MODIFIED", "object": configmap(None)}))
                .unwrap(),
        );
        send.send_response(Response::new(Body::from(body)));
        let (watch, _send) = next().await;
        assert!(watch, "the watch goes on");
        assert_eq!(reloads(&registry, "refused"), "2");
        assert_eq!(reloads(&registry, "accepted"), "1");
        assert_eq!(uris(&d), ["sip:127.0.0.1:5080", "sip:127.0.0.1:5081"]);
        task.abort();
    }
}
