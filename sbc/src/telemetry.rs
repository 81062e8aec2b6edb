//! Prometheus metrics of the sbc and the tracing setup of the binary.
//!
//! [`Metrics`] is created once and shared in an `Arc`. Every labelled series the hot path
//! touches is resolved when `Metrics` is built and kept in a fixed array, so counting a message
//! is an index and an atomic add: no map lookup, no allocation, no lock.

use std::sync::{Arc, Mutex};

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use thiserror::Error;

use crate::config::Transport;
use crate::sip::Method;

/// Failures while building the metrics or the logger.
#[derive(Debug, Error)]
pub enum TelemetryError {
    /// A metric could not be registered (a name clash: a programming error).
    #[error("metric registration failed: {0}")]
    Prometheus(#[from] prometheus::Error),
    /// The metrics could not be rendered as text.
    #[error("metrics could not be rendered: {0}")]
    Encode(String),
    /// A global tracing subscriber was already installed.
    #[error("logging already initialised: {0}")]
    Tracing(String),
}

/// Why a message could not be parsed or failed the sanity checks. A small fixed set, so that
/// the label values are bounded and each has a pre-resolved counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// Not SIP at all (binary garbage, an HTTP request, a truncated start line).
    NotSip,
    /// The request or status line is malformed.
    StartLine,
    /// A header line is malformed.
    Header,
    /// A mandatory header (Via, From, To, Call-ID, CSeq, Max-Forwards) is missing.
    MissingHeader,
    /// Content-Length is missing on a stream, unparsable, or larger than the message.
    ContentLength,
    /// The message is larger than the configured limit.
    TooLarge,
    /// The SIP version is not 2.0.
    Version,
    /// The Request-URI scheme is not supported.
    UriScheme,
}

impl ParseErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ParseErrorKind; 8] = [
        ParseErrorKind::NotSip,
        ParseErrorKind::StartLine,
        ParseErrorKind::Header,
        ParseErrorKind::MissingHeader,
        ParseErrorKind::ContentLength,
        ParseErrorKind::TooLarge,
        ParseErrorKind::Version,
        ParseErrorKind::UriScheme,
    ];

    /// The value of the `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            ParseErrorKind::NotSip => "not_sip",
            ParseErrorKind::StartLine => "start_line",
            ParseErrorKind::Header => "header",
            ParseErrorKind::MissingHeader => "missing_header",
            ParseErrorKind::ContentLength => "content_length",
            ParseErrorKind::TooLarge => "too_large",
            ParseErrorKind::Version => "version",
            ParseErrorKind::UriScheme => "uri_scheme",
        }
    }
}

/// A failure that is the sbc's own fault (a bug or a broken invariant), for the `error` label
/// of `sbc_internal_errors_total`: the caller got 500, or the step was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InternalError {
    /// A request we relayed could not be read back to write its CANCEL or ACK.
    OwnRequestUnreadable,
}

impl InternalError {
    /// Every error, in label order.
    pub const ALL: [InternalError; 1] = [InternalError::OwnRequestUnreadable];

    /// The value of the `error` label.
    pub fn label(self) -> &'static str {
        match self {
            InternalError::OwnRequestUnreadable => "own_request_unreadable",
        }
    }
}

/// Why a message was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// It could not be parsed well enough to answer.
    Unparsable,
    /// A response or an ACK that matches no transaction and cannot be routed statelessly.
    Stray,
    /// Larger than the message size limit.
    TooLarge,
    /// Refused by a connection or rate limit.
    Limit,
    /// Sending failed (unreachable destination, closed connection).
    SendFailed,
    /// An internal queue was full.
    QueueFull,
    /// A WebSocket connection broke RFC 6455 (closed with its close code).
    WsProtocol,
    /// An HTTP request to a ws/wss port was not upgraded (no `sip` subprotocol, path, Origin).
    WsUpgradeRefused,
    /// A TLS handshake (tls or wss) failed or timed out.
    TlsHandshake,
    /// A message for a WebSocket client whose connection is gone (ws cannot open one).
    WsNoConnection,
    /// A WebSocket connection's send queue was full.
    WsQueueFull,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 11] = [
        DropReason::Unparsable,
        DropReason::Stray,
        DropReason::TooLarge,
        DropReason::Limit,
        DropReason::SendFailed,
        DropReason::QueueFull,
        DropReason::WsProtocol,
        DropReason::WsUpgradeRefused,
        DropReason::TlsHandshake,
        DropReason::WsNoConnection,
        DropReason::WsQueueFull,
    ];

    /// The value of the `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Unparsable => "unparsable",
            DropReason::Stray => "stray",
            DropReason::TooLarge => "too_large",
            DropReason::Limit => "limit",
            DropReason::SendFailed => "send_failed",
            DropReason::QueueFull => "queue_full",
            DropReason::WsProtocol => "ws_protocol",
            DropReason::WsUpgradeRefused => "ws_upgrade_refused",
            DropReason::TlsHandshake => "tls_handshake",
            DropReason::WsNoConnection => "ws_no_connection",
            DropReason::WsQueueFull => "ws_queue_full",
        }
    }
}

/// Who produced a response the sbc sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseOrigin {
    /// Generated by the sbc itself (100 Trying, 400, 503, the answer to OPTIONS to itself).
    Local,
    /// Received from a destination and relayed upstream.
    Relayed,
}

impl ResponseOrigin {
    /// The value of the `origin` label.
    pub fn label(self) -> &'static str {
        match self {
            ResponseOrigin::Local => "local",
            ResponseOrigin::Relayed => "relayed",
        }
    }

    fn index(self) -> usize {
        match self {
            ResponseOrigin::Local => 0,
            ResponseOrigin::Relayed => 1,
        }
    }
}

/// Server (towards the caller) or client (towards a destination) transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    /// A server transaction, created for a received request.
    Server,
    /// A client transaction, created for a request sent to a destination.
    Client,
}

/// Direction of traffic on a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received by the sbc.
    In,
    /// Sent by the sbc.
    Out,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::In => 0,
            Direction::Out => 1,
        }
    }
}

/// The response codes that get their own `code` label value; every other code is `other`.
pub const COMMON_CODES: [u16; 18] = [
    100, 180, 183, 200, 401, 403, 404, 407, 408, 429, 481, 482, 483, 486, 487, 500, 503, 603,
];

/// Index of `code` in [`COMMON_CODES`], or `COMMON_CODES.len()` for "other". A `match` the
/// compiler turns into a jump table: no search.
fn code_index(code: u16) -> usize {
    match code {
        100 => 0,
        180 => 1,
        183 => 2,
        200 => 3,
        401 => 4,
        403 => 5,
        404 => 6,
        407 => 7,
        408 => 8,
        429 => 9,
        481 => 10,
        482 => 11,
        483 => 12,
        486 => 13,
        487 => 14,
        500 => 15,
        503 => 16,
        603 => 17,
        _ => COMMON_CODES.len(),
    }
}

const CLASS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];
const TRANSPORTS: [Transport; 5] = [
    Transport::Udp,
    Transport::Tcp,
    Transport::Tls,
    Transport::Ws,
    Transport::Wss,
];

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Ws => 3,
        Transport::Wss => 4,
    }
}

/// The state of one dispatcher destination, as the `sbc_dispatcher_destination_*` gauges show
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

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, TelemetryError> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(v.clone()))?;
    Ok(v)
}

fn gauge_vec(
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

/// Installs the global tracing subscriber of the binary: compact one-line logs on stderr,
/// filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() -> Result<(), TelemetryError> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .try_init()
        .map_err(|e| TelemetryError::Tracing(e.to_string()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, series: &str) -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .map(|l| l[series.len() + 1..].to_string())
    }

    #[test]
    fn renders_counts_of_a_call() {
        let m = Metrics::new().unwrap();
        m.request_received(Method::Invite);
        m.request_received(Method::Invite);
        m.request_received(Method::Ack);
        m.request_received(Method::Other);
        m.response_sent(ResponseOrigin::Local, 100);
        m.response_sent(ResponseOrigin::Relayed, 180);
        m.response_sent(ResponseOrigin::Relayed, 200);
        m.response_sent(ResponseOrigin::Relayed, 488);
        m.response_sent(ResponseOrigin::Local, 503);
        m.call_relayed();
        m.failover();
        let text = m.render().unwrap();
        let v = |s: &str| line_value(&text, s);
        assert_eq!(
            v("sbc_requests_received_total{method=\"INVITE\"}"),
            Some("2".into())
        );
        assert_eq!(
            v("sbc_requests_received_total{method=\"ACK\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_requests_received_total{method=\"OTHER\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_requests_received_total{method=\"BYE\"}"),
            Some("0".into())
        );
        assert_eq!(
            v("sbc_responses_by_class_total{class=\"1xx\",origin=\"relayed\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_responses_by_class_total{class=\"4xx\",origin=\"relayed\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_responses_by_class_total{class=\"5xx\",origin=\"local\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_responses_by_code_total{code=\"other\",origin=\"relayed\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_responses_by_code_total{code=\"200\",origin=\"relayed\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_responses_by_code_total{code=\"503\",origin=\"local\"}"),
            Some("1".into())
        );
        assert_eq!(v("sbc_calls_relayed_total"), Some("1".into()));
        assert_eq!(v("sbc_failovers_total"), Some("1".into()));
    }

    #[test]
    fn out_of_range_codes_count_as_other_without_class() {
        let m = Metrics::new().unwrap();
        m.response_sent(ResponseOrigin::Local, 0);
        m.response_sent(ResponseOrigin::Local, 999);
        m.response_sent(ResponseOrigin::Local, 65535);
        let text = m.render().unwrap();
        assert_eq!(
            line_value(
                &text,
                "sbc_responses_by_code_total{code=\"other\",origin=\"local\"}"
            ),
            Some("3".into())
        );
        for class in CLASS_LABELS {
            let series =
                format!("sbc_responses_by_class_total{{class=\"{class}\",origin=\"local\"}}");
            assert_eq!(line_value(&text, &series), Some("0".into()), "{series}");
        }
    }

    #[test]
    fn gauges_errors_drops_and_transport_counters() {
        let m = Metrics::new().unwrap();
        m.transaction_started(TransactionKind::Server);
        m.transaction_started(TransactionKind::Server);
        m.transaction_started(TransactionKind::Client);
        m.transaction_ended(TransactionKind::Server);
        m.parse_error(ParseErrorKind::ContentLength);
        m.dropped(DropReason::Unparsable);
        m.transport_message(Transport::Udp, Direction::In, 500);
        m.transport_message(Transport::Udp, Direction::In, 300);
        m.transport_message(Transport::Tcp, Direction::Out, 42);
        m.connection_opened(Transport::Tcp);
        let text = m.render().unwrap();
        let v = |s: &str| line_value(&text, s);
        assert_eq!(
            v("sbc_transactions_active{kind=\"server\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_transactions_active{kind=\"client\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_parse_errors_total{kind=\"content_length\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_parse_errors_total{kind=\"not_sip\"}"),
            Some("0".into())
        );
        assert_eq!(
            v("sbc_messages_dropped_total{reason=\"unparsable\"}"),
            Some("1".into())
        );
        assert_eq!(
            v("sbc_transport_bytes_total{direction=\"in\",transport=\"udp\"}"),
            Some("800".into())
        );
        assert_eq!(
            v("sbc_transport_messages_total{direction=\"in\",transport=\"udp\"}"),
            Some("2".into())
        );
        assert_eq!(
            v("sbc_transport_bytes_total{direction=\"out\",transport=\"tcp\"}"),
            Some("42".into())
        );
        assert_eq!(
            v("sbc_connections_open{transport=\"tcp\"}"),
            Some("1".into())
        );
    }

    #[test]
    fn dispatcher_gauges_follow_the_source_at_scrape_time() {
        let m = Metrics::new().unwrap();
        let state = Arc::new(Mutex::new(vec![
            (1u32, "sip:127.0.0.1:5080".to_string(), true, 3u64),
            (1, "sip:127.0.0.1:5082".to_string(), false, 0),
        ]));
        let s = state.clone();
        m.set_destination_source(Arc::new(move || s.lock().unwrap().clone()));
        let text = m.render().unwrap();
        let up_a = "sbc_dispatcher_destination_up{set=\"1\",uri=\"sip:127.0.0.1:5080\"}";
        let up_b = "sbc_dispatcher_destination_up{set=\"1\",uri=\"sip:127.0.0.1:5082\"}";
        let calls_a =
            "sbc_dispatcher_destination_active_calls{set=\"1\",uri=\"sip:127.0.0.1:5080\"}";
        assert_eq!(line_value(&text, up_a), Some("1".into()));
        assert_eq!(line_value(&text, up_b), Some("0".into()));
        assert_eq!(line_value(&text, calls_a), Some("3".into()));

        // The second destination is removed and the first goes down.
        *state.lock().unwrap() = vec![(1, "sip:127.0.0.1:5080".to_string(), false, 0)];
        let text = m.render().unwrap();
        assert_eq!(line_value(&text, up_a), Some("0".into()));
        assert_eq!(line_value(&text, up_b), None);
    }

    #[test]
    fn two_instances_do_not_clash() {
        // Each Metrics has its own registry, so tests and embedders can build several.
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.failover();
        assert!(b.render().unwrap().contains("sbc_failovers_total 0"));
    }
}
