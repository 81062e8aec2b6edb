//! The hot-path metrics: messages, responses, transactions, transports, dispatcher gauges.

use std::sync::{Arc, Mutex};

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::TelemetryError;
use super::labels::{
    CLASS_LABELS, COMMON_CODES, Direction, DropReason, InternalError, ParseErrorKind,
    ResponseOrigin, TRANSPORTS, TransactionKind, code_index, transport_index,
};
use crate::config::Transport;
use crate::sip::Method;

/// it: `(set id, uri, up, active calls)`.
pub type DestinationSample = (u32, String, bool, u64);

/// Where the dispatcher gauges come from. Called at scrape time only (not on the hot path).
/// Any `Fn() -> Vec<DestinationSample>` closure is a source.
pub trait DestinationSource: Send + Sync {
    /// The current state of every destination of every set.
    fn destinations(&self) -> Vec<DestinationSample>;
}

impl<F> DestinationSource for F
where
    F: Fn() -> Vec<DestinationSample> + Send + Sync,
{
    fn destinations(&self) -> Vec<DestinationSample> {
        self()
    }
}

const NCODES: usize = COMMON_CODES.len() + 1;

/// The sbc's metrics, with their own registry. Build once, share in an `Arc`.
pub struct Metrics {
    registry: Registry,
    requests: [IntCounter; Method::ALL.len()],
    responses_class: [[IntCounter; 6]; 2],
    responses_code: [[IntCounter; NCODES]; 2],
    transactions_server: IntGauge,
    transactions_client: IntGauge,
    parse_errors: [IntCounter; ParseErrorKind::ALL.len()],
    dropped: [IntCounter; DropReason::ALL.len()],
    internal_errors: [IntCounter; InternalError::ALL.len()],
    bytes: [[IntCounter; 2]; TRANSPORTS.len()],
    messages: [[IntCounter; 2]; TRANSPORTS.len()],
    connections: [IntGauge; TRANSPORTS.len()],
    calls_relayed: IntCounter,
    failovers: IntCounter,
    destination_up: IntGaugeVec,
    destination_calls: IntGaugeVec,
    auth: crate::auth::AuthMetrics,
    /// Set once by whoever owns the dispatcher; read at scrape time. The lock also keeps two
    /// concurrent scrapes from interleaving the reset and refill of the gauges.
    destination_source: Mutex<Option<Arc<dyn DestinationSource>>>,
}

/// Resolves one series per label value, in order, into a fixed array.
fn resolve<const N: usize>(
    vec: &IntCounterVec,
    labels: impl Fn(usize) -> Vec<&'static str>,
) -> [IntCounter; N] {
    std::array::from_fn(|i| vec.with_label_values(&labels(i)))
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, TelemetryError> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(v.clone()))?;
    Ok(v)
}

pub(super) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, TelemetryError> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(v.clone()))?;
    Ok(v)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter, TelemetryError> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Registers every metric in a fresh registry and resolves the hot-path series.
    pub fn new() -> Result<Metrics, TelemetryError> {
        let registry = Registry::new();
        let r = &registry;

        let requests = counter_vec(
            r,
            "sbc_requests_received_total",
            "SIP requests received, by method.",
            &["method"],
        )?;
        let requests = resolve(&requests, |i| vec![Method::ALL[i].as_str()]);

        let origins = [ResponseOrigin::Local, ResponseOrigin::Relayed];
        let by_class = counter_vec(
            r,
            "sbc_responses_by_class_total",
            "SIP responses sent, by origin (local or relayed) and class.",
            &["origin", "class"],
        )?;
        let responses_class =
            origins.map(|o| resolve(&by_class, |i| vec![o.label(), CLASS_LABELS[i]]));
        let by_code = counter_vec(
            r,
            "sbc_responses_by_code_total",
            "SIP responses sent, by origin (local or relayed) and code (common codes, else other).",
            &["origin", "code"],
        )?;
        let code_labels: [&'static str; NCODES] = [
            "100", "180", "183", "200", "401", "403", "404", "407", "408", "429", "481", "482",
            "483", "486", "487", "500", "503", "603", "other",
        ];
        let responses_code =
            origins.map(|o| resolve(&by_code, |i| vec![o.label(), code_labels[i]]));

        let tx = gauge_vec(
            r,
            "sbc_transactions_active",
            "SIP transactions in progress, by kind (server or client).",
            &["kind"],
        )?;
        let transactions_server = tx.with_label_values(&["server"]);
        let transactions_client = tx.with_label_values(&["client"]);

        let parse = counter_vec(
            r,
            "sbc_parse_errors_total",
            "Received messages that failed parsing or sanity checks, by kind.",
            &["kind"],
        )?;
        let parse_errors = resolve(&parse, |i| vec![ParseErrorKind::ALL[i].label()]);

        let dropped = counter_vec(
            r,
            "sbc_messages_dropped_total",
            "Messages dropped without an answer, by reason.",
            &["reason"],
        )?;
        let dropped = resolve(&dropped, |i| vec![DropReason::ALL[i].label()]);

        let internal = counter_vec(
            r,
            "sbc_internal_errors_total",
            "Failures that are the sbc's own fault, by error.",
            &["error"],
        )?;
        let internal_errors = resolve(&internal, |i| vec![InternalError::ALL[i].label()]);

        let bytes = counter_vec(
            r,
            "sbc_transport_bytes_total",
            "Bytes received (in) and sent (out), by transport.",
            &["transport", "direction"],
        )?;
        let messages = counter_vec(
            r,
            "sbc_transport_messages_total",
            "Datagrams (udp) or framed SIP messages (stream transports) received and sent.",
            &["transport", "direction"],
        )?;
        let dirs = [Direction::In, Direction::Out];
        let bytes =
            TRANSPORTS.map(|t| dirs.map(|d| bytes.with_label_values(&[t.name(), d.label()])));
        let messages =
            TRANSPORTS.map(|t| dirs.map(|d| messages.with_label_values(&[t.name(), d.label()])));

        let conns = gauge_vec(
            r,
            "sbc_connections_open",
            "Open stream connections (tcp, tls, ws, wss), inbound and outbound.",
            &["transport"],
        )?;
        let connections = TRANSPORTS.map(|t| conns.with_label_values(&[t.name()]));

        let calls_relayed = counter(
            r,
            "sbc_calls_relayed_total",
            "Calls set up through the sbc (2xx to an initial INVITE relayed).",
        )?;
        let failovers = counter(
            r,
            "sbc_failovers_total",
            "Requests retried on the next destination after a failure.",
        )?;
        let destination_up = gauge_vec(
            r,
            "sbc_dispatcher_destination_up",
            "1 when the dispatcher destination is active, 0 when inactive, trying or disabled.",
            &["set", "uri"],
        )?;
        let destination_calls = gauge_vec(
            r,
            "sbc_dispatcher_destination_active_calls",
            "Calls in progress through the dispatcher destination.",
            &["set", "uri"],
        )?;

        let auth = crate::auth::AuthMetrics::new(r)?;

        Ok(Metrics {
            registry,
            requests,
            responses_class,
            responses_code,
            transactions_server,
            transactions_client,
            parse_errors,
            dropped,
            internal_errors,
            bytes,
            messages,
            connections,
            calls_relayed,
            failovers,
            destination_up,
            destination_calls,
            auth,
            destination_source: Mutex::new(None),
        })
    }

    /// The auth stage's metrics (`sbc_auth_*`), shared by the stages of every configuration
    /// version.
    pub fn auth(&self) -> &crate::auth::AuthMetrics {
        &self.auth
    }

    /// The registry, for metrics other modules register themselves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Connects the dispatcher gauges to their source (replacing any earlier one).
    pub fn set_destination_source(&self, source: Arc<dyn DestinationSource>) {
        let mut guard = self
            .destination_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *guard = Some(source);
    }

    /// A request was received.
    #[inline]
    pub fn request_received(&self, method: Method) {
        // `Method::index` is in range by construction; `get` keeps a future variant from panicking.
        if let Some(c) = self.requests.get(method.index()) {
            c.inc();
        }
    }

    /// A response was sent upstream, generated locally or relayed from a destination. Codes
    /// outside 100..=699 are not counted by class.
    #[inline]
    pub fn response_sent(&self, origin: ResponseOrigin, code: u16) {
        let o = origin.index();
        if let Some(c) = self.responses_class[o].get(usize::from(code / 100).wrapping_sub(1)) {
            c.inc();
        }
        self.responses_code[o][code_index(code)].inc();
    }

    /// A transaction was created.
    #[inline]
    pub fn transaction_started(&self, kind: TransactionKind) {
        self.transaction_gauge(kind).inc();
    }

    /// A transaction was terminated (call once per [`Metrics::transaction_started`]).
    #[inline]
    pub fn transaction_ended(&self, kind: TransactionKind) {
        self.transaction_gauge(kind).dec();
    }

    fn transaction_gauge(&self, kind: TransactionKind) -> &IntGauge {
        match kind {
            TransactionKind::Server => &self.transactions_server,
            TransactionKind::Client => &self.transactions_client,
        }
    }

    /// A received message failed parsing or the sanity checks.
    #[inline]
    pub fn parse_error(&self, kind: ParseErrorKind) {
        self.parse_errors[kind as usize].inc();
    }

    /// A failure of the sbc's own.
    pub fn internal_error(&self, e: InternalError) {
        self.internal_errors[e as usize].inc();
    }

    /// A message was dropped without an answer.
    #[inline]
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    /// A datagram or framed message of `bytes` bytes was received or sent.
    #[inline]
    pub fn transport_message(&self, transport: Transport, direction: Direction, bytes: usize) {
        let t = transport_index(transport);
        let d = direction.index();
        self.messages[t][d].inc();
        self.bytes[t][d].inc_by(bytes as u64);
    }

    /// A stream connection was opened.
    #[inline]
    pub fn connection_opened(&self, transport: Transport) {
        self.connections[transport_index(transport)].inc();
    }

    /// A stream connection was closed (call once per [`Metrics::connection_opened`]).
    #[inline]
    pub fn connection_closed(&self, transport: Transport) {
        self.connections[transport_index(transport)].dec();
    }

    /// Sets the open stream connections of a transport (sampled from the transports).
    pub fn set_connections_open(&self, transport: Transport, open: usize) {
        self.connections[transport_index(transport)].set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// A 2xx to an initial INVITE was relayed: a call was set up.
    #[inline]
    pub fn call_relayed(&self) {
        self.calls_relayed.inc();
    }

    /// A request moved on to the next destination.
    #[inline]
    pub fn failover(&self) {
        self.failovers.inc();
    }

    /// Refreshes the dispatcher gauges from their source and renders every metric in the
    /// Prometheus text format.
    pub fn render(&self) -> Result<String, TelemetryError> {
        let guard = self
            .destination_source
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(source) = guard.as_ref() {
            // Reset first: a destination removed from the dispatcher disappears from /metrics.
            self.destination_up.reset();
            self.destination_calls.reset();
            for (set, uri, up, calls) in source.destinations() {
                let set = set.to_string();
                let labels = [set.as_str(), uri.as_str()];
                self.destination_up
                    .with_label_values(&labels)
                    .set(i64::from(up));
                self.destination_calls
                    .with_label_values(&labels)
                    .set(i64::try_from(calls).unwrap_or(i64::MAX));
            }
        }
        let families = self.registry.gather();
        drop(guard);
        let mut out = Vec::with_capacity(16 * 1024);
        prometheus::TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| TelemetryError::Encode(e.to_string()))?;
        String::from_utf8(out).map_err(|e| TelemetryError::Encode(e.to_string()))
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const METRICS_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;
