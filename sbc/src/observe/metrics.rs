//! The metrics of HEP, records, dialogs and registrations (`sbc_observe_*`, `sbc_calls_*`,
//! `sbc_dialogs_*`, `sbc_registrations_*`, `sbc_hep_*`, `sbc_records_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::sinks::RecordKind;

/// Where something observed was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The queue between the transports and the background task was full.
    Queue,
    /// A HEP packet was not handed to a collector (buffer or queue full, too large).
    Hep,
    /// A record did not reach the Redis stream (queue full, Redis down).
    Redis,
    /// A record did not reach the webhook (queue full, every attempt failed).
    Webhook,
    /// A call or REGISTER was not followed: the tables were full.
    Tracking,
}

impl Stage {
    const ALL: [Stage; 5] = [
        Stage::Queue,
        Stage::Hep,
        Stage::Redis,
        Stage::Webhook,
        Stage::Tracking,
    ];

    fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Hep => "hep",
            Stage::Redis => "redis",
            Stage::Webhook => "webhook",
            Stage::Tracking => "tracking",
        }
    }
}

/// The observability metrics; clones share the series.
#[derive(Clone)]
pub struct ObserveMetrics {
    dropped: IntCounterVec,
    written: IntCounterVec,
    /// HEP packets handed to collectors.
    pub hep_sent: IntCounter,
    /// Calls answered and not ended, on this replica.
    pub dialogs: IntGauge,
    /// Calls answered and not ended, summed over the replicas that share the store.
    pub dialogs_cluster: IntGauge,
    /// Calls (attempts and completed calls) by destination, set and disposition.
    pub calls: IntCounterVec,
    /// INVITE received to first 18x/2xx sent back.
    pub setup: Histogram,
    /// REGISTER outcomes by result.
    pub registrations: IntCounterVec,
    /// Bindings that passed through this replica and have not expired.
    pub bindings: IntGauge,
    webhook_batches: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: T,
) -> Result<T, prometheus::Error> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl ObserveMetrics {
    /// Registers every series in `r`.
    pub fn new(r: &Registry) -> Result<ObserveMetrics, prometheus::Error> {
        let dropped = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "sbc_observe_dropped_total",
                    "Messages, HEP packets or records lost off the call path, by stage.",
                ),
                &["stage"],
            )?,
        )?;
        for s in Stage::ALL {
            dropped.with_label_values(&[s.label()]);
        }
        let written = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "sbc_records_written_total",
                    "CDRs and registration events written, by kind and sink.",
                ),
                &["kind", "sink"],
            )?,
        )?;
        let calls = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "sbc_calls_total",
                    "Call attempts and completed calls, by dispatcher set, destination and disposition (counted when the record closes).",
                ),
                &["set", "destination", "disposition"],
            )?,
        )?;
        let registrations = reg(
            r,
            IntCounterVec::new(
                Opts::new(
                    "sbc_registrations_total",
                    "REGISTER outcomes sent back to clients: ok, challenged (401/407), failed.",
                ),
                &["result"],
            )?,
        )?;
        for x in ["ok", "challenged", "failed"] {
            registrations.with_label_values(&[x]);
        }
        Ok(ObserveMetrics {
            dropped,
            written,
            hep_sent: reg(
                r,
                IntCounter::new("sbc_hep_packets_total", "HEP packets handed to collectors.")?,
            )?,
            dialogs: reg(
                r,
                IntGauge::new(
                    "sbc_dialogs_active",
                    "Calls answered and not ended, on this replica.",
                )?,
            )?,
            dialogs_cluster: reg(
                r,
                IntGauge::new(
                    "sbc_dialogs_active_cluster",
                    "Calls answered and not ended, summed over the replicas sharing the store (this replica alone without Redis).",
                )?,
            )?,
            calls,
            setup: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sbc_call_setup_seconds",
                        "Seconds from an initial INVITE received to the first 18x or 2xx sent back.",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ]),
                )?,
            )?,
            registrations,
            bindings: reg(
                r,
                IntGauge::new(
                    "sbc_registrations_active",
                    "Registrations (AoR, contact) that passed through this replica and have not expired.",
                )?,
            )?,
            webhook_batches: reg(
                r,
                IntCounter::new(
                    "sbc_records_webhook_batches_total",
                    "Batches of records the webhook accepted (2xx).",
                )?,
            )?,
        })
    }

    /// `n` things were lost at `stage`.
    pub fn dropped(&self, stage: Stage, n: u64) {
        if n > 0 {
            self.dropped.with_label_values(&[stage.label()]).inc_by(n);
        }
    }

    /// `n` records of `kind` reached `sink`.
    pub fn written(&self, kind: RecordKind, sink: &str, n: u64) {
        if n > 0 {
            self.written
                .with_label_values(&[kind.label(), sink])
                .inc_by(n);
        }
    }

    /// The webhook accepted a batch of `n` records.
    pub fn webhook_batch(&self, n: u64) {
        self.webhook_batches.inc();
        self.written
            .with_label_values(&["record", "webhook"])
            .inc_by(n);
    }
}

/// Counts TLS handshakes that failed or timed out (registered whether or not the
/// `observability` section is there).
pub fn tls_failures(r: &Registry) -> Result<IntCounter, prometheus::Error> {
    reg(
        r,
        IntCounter::new(
            "sbc_tls_handshake_failures_total",
            "TLS handshakes on tls and wss listeners that failed or timed out.",
        )?,
    )
}
