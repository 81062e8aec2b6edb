//! Metrics of live updates: dispatcher set generations, reloads, discovery.

use std::sync::Arc;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::TelemetryError;
use super::metrics::{counter_vec, gauge_vec};

/// A count of destinations of one set in one state, for `sbc_dispatcher_set_destinations`:
/// `(set id, state name, count)`.
pub type SetStateSample = (u32, &'static str, i64);

/// Metrics of live updates: dispatcher set generations from discovery and configuration
/// reloads. Updated off the hot path, at each dispatcher update or reload.
pub struct LiveMetrics {
    generation: IntGaugeVec,
    last_update: prometheus::GaugeVec,
    reloads: IntCounterVec,
    watch_errors: IntCounterVec,
    discovered: IntGaugeVec,
}

impl LiveMetrics {
    /// Registers the live-update metrics in `registry`.
    pub fn new(registry: &Registry) -> Result<LiveMetrics, TelemetryError> {
        let generation = gauge_vec(
            registry,
            "sbc_dispatcher_set_generation",
            "Builds of the dispatcher set since start: bumped each time its destinations or settings change.",
            &["set"],
        )?;
        let last_update = prometheus::GaugeVec::new(
            Opts::new(
                "sbc_dispatcher_last_update_timestamp_seconds",
                "Unix time of the last change applied to the dispatcher set.",
            ),
            &["set"],
        )?;
        registry.register(Box::new(last_update.clone()))?;
        let reloads = counter_vec(
            registry,
            "sbc_config_reloads_total",
            "Configuration versions seen after start, accepted or refused (invalid: the old one stays).",
            &["result"],
        )?;
        for r in ["accepted", "refused"] {
            reloads.with_label_values(&[r]);
        }
        let watch_errors = counter_vec(
            registry,
            "sbc_discovery_watch_errors_total",
            "Errors of a Kubernetes watch (EndpointSlices of a Service, or the ConfigMap); the last known state stays.",
            &["source"],
        )?;
        let discovered = gauge_vec(
            registry,
            "sbc_discovery_endpoints",
            "Endpoints of a Service that take new calls (ready, not terminating), as last seen.",
            &["service"],
        )?;
        Ok(LiveMetrics {
            generation,
            last_update,
            reloads,
            watch_errors,
            discovered,
        })
    }

    /// Set `set` was rebuilt: its generation is now `generation`.
    pub fn set_updated(&self, set: u32, generation: u64) {
        let set = set.to_string();
        self.generation
            .with_label_values(&[set.as_str()])
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_update.with_label_values(&[set.as_str()]).set(now);
    }

    /// Set `set` no longer exists.
    pub fn set_removed(&self, set: u32) {
        let set = set.to_string();
        let _ = self.generation.remove_label_values(&[set.as_str()]);
        let _ = self.last_update.remove_label_values(&[set.as_str()]);
    }

    /// A configuration version was accepted (`true`) or refused.
    pub fn reload(&self, accepted: bool) {
        let r = if accepted { "accepted" } else { "refused" };
        self.reloads.with_label_values(&[r]).inc();
    }

    /// A watch of `source` (`endpointslices/NS/NAME`, `configmap/NS/NAME`) failed.
    pub fn watch_error(&self, source: &str) {
        self.watch_errors.with_label_values(&[source]).inc();
    }

    /// Service `service` (`NS/NAME`) has `n` endpoints taking calls; `None` forgets it.
    pub fn discovered(&self, service: &str, n: Option<usize>) {
        match n {
            Some(n) => self
                .discovered
                .with_label_values(&[service])
                .set(i64::try_from(n).unwrap_or(i64::MAX)),
            None => {
                let _ = self.discovered.remove_label_values(&[service]);
            }
        }
    }

    /// Registers `sbc_dispatcher_set_destinations{set,state}`, computed from `source` at
    /// scrape time.
    pub fn register_set_states(
        registry: &Registry,
        source: Arc<dyn Fn() -> Vec<SetStateSample> + Send + Sync>,
    ) -> Result<(), TelemetryError> {
        let gauges = IntGaugeVec::new(
            Opts::new(
                "sbc_dispatcher_set_destinations",
                "Destinations of the dispatcher set by state (active, trying, inactive, disabled).",
            ),
            &["set", "state"],
        )?;
        registry.register(Box::new(SetStates { gauges, source }))?;
        Ok(())
    }
}

/// The collector behind `sbc_dispatcher_set_destinations`.
struct SetStates {
    gauges: IntGaugeVec,
    source: Arc<dyn Fn() -> Vec<SetStateSample> + Send + Sync>,
}

impl prometheus::core::Collector for SetStates {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauges.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        // Rebuilt at each scrape so a removed set or state disappears.
        self.gauges.reset();
        for (set, state, n) in (self.source)() {
            let set = set.to_string();
            self.gauges.with_label_values(&[set.as_str(), state]).set(n);
        }
        self.gauges.collect()
    }
}
