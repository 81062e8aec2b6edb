//! The Kubernetes side of discovery: a client from the kubeconfig or the pod's service
//! account, and one EndpointSlice watcher per referenced Service.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::task::AbortHandle;

use super::{LiveDispatch, ServiceKey};
use crate::telemetry::LiveMetrics;

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file given could not be read.
    #[error("kubeconfig {file}: {reason}")]
    Kubeconfig {
        /// The file.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// No kubeconfig and not inside a cluster.
    #[error(
        "no Kubernetes API: no kubeconfig (KUBECONFIG, ~/.kube/config) and not in a cluster ({0})"
    )]
    NotFound(String),
    /// The client could not be built from the configuration.
    #[error("Kubernetes client: {0}")]
    Build(String),
}

/// Where the Kubernetes API is: an explicit kubeconfig file, or inferred (`KUBECONFIG`,
/// `~/.kube/config`, then the in-cluster service account).
#[derive(Debug, Clone, Default)]
pub struct ApiSource {
    /// An explicit kubeconfig file (`--kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
}

impl ApiSource {
    /// Makes a client. Does not contact the API server: an unreachable server shows up as
    /// watch errors.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let config = match &self.kubeconfig {
            Some(path) => from_file(path).await?,
            None => kube::Config::infer()
                .await
                .map_err(|e| ClientError::NotFound(e.to_string()))?,
        };
        Client::try_from(config).map_err(|e| ClientError::Build(e.to_string()))
    }
}

async fn from_file(path: &Path) -> Result<kube::Config, ClientError> {
    let err = |reason: String| ClientError::Kubeconfig {
        file: path.display().to_string(),
        reason,
    };
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))
}

/// The namespace of this pod (service account), else `default`: where a Service reference
/// without a namespace points.
pub fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// Watches the EndpointSlices of `service` (label `kubernetes.io/service-name`) and feeds
/// them to `live`. A full listing replaces the known slices only when complete; an error is
/// logged and counted, and the last known slices stay while the watcher retries with
/// backoff. Runs until aborted.
pub async fn watch_service(
    client: Client,
    service: ServiceKey,
    live: Arc<LiveDispatch>,
    metrics: Arc<LiveMetrics>,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &service.namespace);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", service.name));
    let source = format!("endpointslices/{service}");
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listing: Option<BTreeMap<String, EndpointSlice>> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(ev) => {
                if failing {
                    tracing::info!(service = %service, "EndpointSlice watch is back");
                    failing = false;
                }
                match ev {
                    Event::Init => listing = Some(BTreeMap::new()),
                    Event::InitApply(s) => {
                        if let Some(l) = listing.as_mut() {
                            l.insert(s.metadata.name.clone().unwrap_or_default(), s);
                        }
                    }
                    Event::InitDone => {
                        // Only a listing seen from its start replaces what is known.
                        let Some(slices) = listing.take() else {
                            continue;
                        };
                        tracing::info!(
                            service = %service,
                            slices = slices.len(),
                            "EndpointSlices listed"
                        );
                        live.replace_slices(&service, slices);
                    }
                    Event::Apply(s) => live.apply_slice(&service, s),
                    Event::Delete(s) => live.delete_slice(&service, &s),
                }
            }
            Err(e) => {
                metrics.watch_error(&source);
                // A listing cut short is not a complete picture: drop it, keep the last one.
                listing = None;
                if !failing {
                    tracing::error!(
                        service = %service,
                        error = %e,
                        "EndpointSlice watch failed; the last known endpoints stay, retrying"
                    );
                } else {
                    tracing::debug!(service = %service, error = %e, "EndpointSlice watch still failing");
                }
                failing = true;
            }
        }
    }
}

/// Runs one watcher per Service the dispatcher configuration references, starting and
/// stopping them as the configuration changes.
pub struct Discovery {
    live: Arc<LiveDispatch>,
    metrics: Arc<LiveMetrics>,
    api: ApiSource,
    client: tokio::sync::Mutex<Option<Client>>,
    watchers: Mutex<BTreeMap<ServiceKey, AbortHandle>>,
    /// Whether the missing API was already reported (retries then log at debug).
    reported: std::sync::atomic::AtomicBool,
    /// One sync at a time, so a Service never gets two watchers.
    syncing: tokio::sync::Mutex<()>,
}

/// How often Services that could not be watched (no API) are tried again.
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl Discovery {
    /// Discovery for `live`, reaching the API through `api` when a Service is referenced.
    pub fn new(live: Arc<LiveDispatch>, metrics: Arc<LiveMetrics>, api: ApiSource) -> Discovery {
        Discovery {
            live,
            metrics,
            api,
            client: tokio::sync::Mutex::new(None),
            watchers: Mutex::new(BTreeMap::new()),
            reported: std::sync::atomic::AtomicBool::new(false),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    /// Discovery with an already made client (tests, or a client shared with the ConfigMap
    /// watch).
    pub fn with_client(
        live: Arc<LiveDispatch>,
        metrics: Arc<LiveMetrics>,
        client: Client,
    ) -> Discovery {
        let d = Discovery::new(live, metrics, ApiSource::default());
        d.client.try_lock().map(|mut c| *c = Some(client)).ok();
        d
    }

    /// The client, made on first use.
    pub async fn client(&self) -> Result<Client, ClientError> {
        let mut c = self.client.lock().await;
        if let Some(client) = c.as_ref() {
            return Ok(client.clone());
        }
        let client = self.api.client().await?;
        *c = Some(client.clone());
        Ok(client)
    }

    /// The Services being watched.
    pub fn watched(&self) -> Vec<ServiceKey> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceKey, AbortHandle>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watchers for newly referenced Services and stops those no longer referenced.
    /// Without a reachable API configuration, logs which sets keep only their static
    /// destinations.
    pub async fn sync(&self) {
        let _one = self.syncing.lock().await;
        let wanted = self.live.services_of(&self.live.config());
        let stale: Vec<ServiceKey> = self
            .lock()
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for k in stale {
            if let Some(h) = self.lock().remove(&k) {
                h.abort();
                self.metrics.discovered(&k.to_string(), None);
                tracing::info!(service = %k, "stopped watching EndpointSlices");
            }
        }
        let new: Vec<(ServiceKey, Vec<u32>)> = {
            let w = self.lock();
            wanted
                .into_iter()
                .filter(|(k, _)| !w.contains_key(k))
                .collect()
        };
        if new.is_empty() {
            return;
        }
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                let first = !self
                    .reported
                    .swap(true, std::sync::atomic::Ordering::Relaxed);
                for (k, sets) in &new {
                    if first {
                        tracing::error!(
                            service = %k,
                            sets = ?sets,
                            error = %e,
                            "cannot watch the Service's EndpointSlices; its sets serve only their static destinations (retrying every {RETRY:?})"
                        );
                    } else {
                        tracing::debug!(service = %k, error = %e, "still no Kubernetes API");
                    }
                }
                return;
            }
        };
        self.reported
            .store(false, std::sync::atomic::Ordering::Relaxed);
        for (k, sets) in new {
            tracing::info!(service = %k, sets = ?sets, "watching EndpointSlices");
            let task = tokio::spawn(watch_service(
                client.clone(),
                k.clone(),
                self.live.clone(),
                self.metrics.clone(),
            ));
            self.lock().insert(k, task.abort_handle());
        }
    }

    /// Calls [`Discovery::sync`] every [`RETRY`], so Services that could not be watched
    /// (no API yet) are picked up when it appears. Runs until the task is dropped.
    pub async fn retry(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RETRY);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.sync().await;
        }
    }

    /// Stops every watcher.
    pub fn stop(&self) {
        for (_, h) in std::mem::take(&mut *self.lock()) {
            h.abort();
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop();
    }
}
