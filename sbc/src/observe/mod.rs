//! Observability off the call path: HEPv3 to Homer, CDRs, registration events, the dialog and
//! registration tables behind `sbc ctl dialogs/registrations`, and their metrics.
//!
//! The transports hand every message received and sent to [`ObserveTap`], which only queues
//! it (`try_send` into a bounded channel; a full queue is counted in
//! `sbc_observe_dropped_total{stage="queue"}`). One background task wakes at most every
//! [`GATHER`], reads each message's start line, Call-ID and CSeq ([`sniff`]), sends HEP,
//! parses only the messages the trackers act on, and writes the records to the sinks, each of
//! which has a bounded queue of its own.

pub mod cdr;
mod cluster;
pub mod hep;
pub mod metrics;
pub mod registrations;
pub mod sinks;
pub mod sniff;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kubesbc_crds::config::{SbcConfig, Transport};
use kubesbc_crds::observe::{HepConfig, parse_collector};
use prometheus::{IntCounter, Registry};
use tokio::sync::mpsc;

use crate::telemetry::Direction;
use crate::transport::{Peer, Tap, TapEvent};
use cdr::{CdrTracker, DestinationOf, DialogEntry};
use hep::{HepMeta, HepSender, SendOutcome};
use metrics::{ObserveMetrics, Stage};
use registrations::{BindingEntry, RegistrationTracker};
use sinks::{RecordKind, Sinks};
use sniff::Sniff;

/// One observed message as the trackers see it: its bytes and what [`sniff`] read off them.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Received or sent.
    pub direction: Direction,
    /// The other side.
    pub peer: Peer,
    /// When.
    pub at: SystemTime,
    /// The message as it crossed the wire.
    pub data: &'a Bytes,
    /// Its start line and the headers the trackers read.
    pub sniff: &'a Sniff<'a>,
}

/// Bytes from a message as a string, at most 512 bytes of them (records stay bounded).
pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(512)]).into_owned()
}

/// Seconds since the Unix epoch, millisecond precision.
pub(crate) fn unix(t: SystemTime) -> f64 {
    (t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as f64) / 1000.0
}

/// Why observability could not start.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// A metric could not be registered.
    #[error("observability metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A socket towards a HEP collector could not be opened.
    #[error("observability.hep.collectors[{index}]: {source}")]
    Collector {
        /// Which collector.
        index: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Redis sink cannot be used.
    #[error("observability.records.redis: {0}")]
    Redis(String),
}

/// The transports' observer: queues each message for the background task.
pub struct ObserveTap {
    tx: Option<mpsc::Sender<TapEvent>>,
    metrics: Option<ObserveMetrics>,
    tls_failures: IntCounter,
}

impl Tap for ObserveTap {
    fn tap(&self, event: TapEvent) {
        if let Some(tx) = &self.tx
            && tx.try_send(event).is_err()
            && let Some(m) = &self.metrics
        {
            m.dropped(Stage::Queue, 1);
        }
    }

    fn wants_messages(&self) -> bool {
        self.tx.is_some()
    }

    fn tls_handshake_failed(&self) {
        self.tls_failures.inc();
    }
}

struct Trackers {
    cdr: Option<CdrTracker>,
    reg: Option<RegistrationTracker>,
}

/// Read access to the dialog and registration tables (for the admin endpoint).
pub struct ObserveView {
    trackers: Arc<Mutex<Trackers>>,
}

impl ObserveView {
    /// Calls in progress (empty when CDRs are off).
    pub fn dialogs(&self) -> Vec<DialogEntry> {
        let t = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        t.cdr
            .as_ref()
            .map(|c| c.dialogs(SystemTime::now()))
            .unwrap_or_default()
    }

    /// Registrations alive (empty when registration events are off).
    pub fn registrations(&self) -> Vec<BindingEntry> {
        let t = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        t.reg
            .as_ref()
            .map(|r| r.bindings(SystemTime::now()))
            .unwrap_or_default()
    }
}

/// What [`start`] gives back.
pub struct Started {
    /// The observer to put into the transports.
    pub tap: ObserveTap,
    /// The tables, when the `observability` section is there.
    pub view: Option<Arc<ObserveView>>,
}

/// What observability needs from the rest of the sbc.
pub struct Context {
    /// Which dispatcher destination an address is.
    pub destination_of: DestinationOf,
    /// The bound listeners (the local address of messages on connections the sbc opened).
    pub locals: Vec<(Transport, SocketAddr)>,
    /// The shared store (with `store` configured), where the replicas' dialog counts meet.
    pub store: Option<Arc<dyn crate::store::Store>>,
    /// Topology hiding's Call-ID mapping (the relay's), so both sides of a call are one.
    pub call_ids: Option<cdr::CallIdMap>,
}

/// This replica's name: the configured one, else `POD_NAME`, else `HOSTNAME`, else the host
/// name from `/etc/hostname`.
pub fn node_name(cfg: &SbcConfig) -> String {
    if let Some(n) = cfg.observability.as_ref().and_then(|o| o.node.clone()) {
        return n;
    }
    for var in ["POD_NAME", "HOSTNAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
        {
            return v;
        }
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "sbc".to_owned())
}

/// Registers the metrics and starts the background tasks the configuration asks for (none
/// without an `observability` section: then the tap only counts TLS handshake failures).
pub fn start(cfg: &SbcConfig, registry: &Registry, ctx: Context) -> Result<Started, ObserveError> {
    let tls_failures = metrics::tls_failures(registry)?;
    let Some(o) = &cfg.observability else {
        return Ok(Started {
            tap: ObserveTap {
                tx: None,
                metrics: None,
                tls_failures,
            },
            view: None,
        });
    };
    let m = ObserveMetrics::new(registry)?;
    let node = node_name(cfg);
    let hep = match &o.hep {
        Some(h) => Some(Hep::open(h)?),
        None => None,
    };
    let records = o.records.as_ref();
    let max_calls = records.map_or(100_000, |r| r.max_calls);
    let max_call = Duration::from_secs(records.map_or(12 * 3600, |r| r.max_call_secs));
    let store_url = store_url(cfg);
    let sinks = match records {
        Some(r) => {
            let redis = match &r.redis {
                Some(s) => {
                    let url = s.url.clone().or_else(|| store_url.clone()).ok_or_else(|| {
                        ObserveError::Redis("no url, and no store.url to use".to_owned())
                    })?;
                    Some((s, url))
                }
                None => None,
            };
            Some(
                Sinks::start(r.log, redis, r.webhook.as_ref(), m.clone())
                    .map_err(ObserveError::Redis)?,
            )
        }
        None => None,
    };
    // The dialog and registration tables run with the section even without records, so the
    // metrics and `sbc ctl dialogs/registrations` work.
    let tenant_headers = cfg.throttles.iter().map(|t| t.header.clone()).collect();
    let trackers = Arc::new(Mutex::new(Trackers {
        cdr: Some(
            CdrTracker::new(
                max_calls,
                max_call,
                tenant_headers,
                node.clone(),
                ctx.destination_of,
            )
            .with_call_ids(ctx.call_ids),
        ),
        reg: Some(RegistrationTracker::new(max_calls, node.clone())),
    }));
    let (tx, rx) = mpsc::channel(o.queue_size);
    let worker = Worker {
        trackers: trackers.clone(),
        hep,
        sinks,
        cdrs: records.is_some_and(|r| r.cdrs),
        registrations: records.is_some_and(|r| r.registrations),
        metrics: m.clone(),
        node: node.clone(),
        locals: ctx.locals,
    };
    tokio::spawn(worker.run(rx));
    if let Some(store) = ctx.store {
        tokio::spawn(cluster::cluster_dialogs(store, node, m.clone()));
    }
    Ok(Started {
        tap: ObserveTap {
            tx: Some(tx),
            metrics: Some(m),
            tls_failures,
        },
        view: Some(Arc::new(ObserveView { trackers })),
    })
}

/// The store's URL (read from `store.urlFile` when given).
fn store_url(cfg: &SbcConfig) -> Option<String> {
    let s = cfg.store.as_ref()?;
    match &s.url_file {
        Some(f) => std::fs::read_to_string(f).ok().map(|u| u.trim().to_owned()),
        None => Some(s.url.clone()),
    }
}

/// HEP: the collectors and what goes to them.
struct Hep {
    senders: Vec<HepSender>,
    capture_id: u32,
    auth_key: Option<String>,
    sample: u8,
    methods: Vec<Vec<u8>>,
    buf: Vec<u8>,
}

impl Hep {
    fn open(h: &HepConfig) -> Result<Hep, ObserveError> {
        let mut senders = Vec::with_capacity(h.collectors.len());
        for (index, c) in h.collectors.iter().enumerate() {
            // Validated with the configuration.
            let Some(c) = parse_collector(c) else {
                continue;
            };
            senders.push(
                HepSender::open(c).map_err(|source| ObserveError::Collector { index, source })?,
            );
        }
        Ok(Hep {
            senders,
            capture_id: h.capture_id,
            auth_key: h.auth_key.clone(),
            sample: h.sample_percent,
            methods: h.methods.iter().map(|m| m.as_bytes().to_vec()).collect(),
            buf: Vec::with_capacity(2048),
        })
    }

    /// Whether a message with this Call-ID and method is captured.
    fn wants(&self, call_id: &[u8], method: &[u8]) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        self.sample >= 100 || (fnv1a(call_id) % 100) < u64::from(self.sample)
    }
}

fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, c| {
        (h ^ u64::from(*c)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The background task's state.
struct Worker {
    trackers: Arc<Mutex<Trackers>>,
    hep: Option<Hep>,
    sinks: Option<Sinks>,
    cdrs: bool,
    registrations: bool,
    metrics: ObserveMetrics,
    node: String,
    locals: Vec<(Transport, SocketAddr)>,
}

/// Messages taken from the queue at once.
const BATCH: usize = 256;

/// How long the worker lets the queue fill after a partial batch. Waking once per message
/// (some 80,000 a second at 3,000 calls/s) cost more than the work; HEP and records a few
/// milliseconds late cost nothing.
pub const GATHER: Duration = Duration::from_millis(5);

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<TapEvent>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    self.process(&mut batch);
                    if n < BATCH {
                        tokio::time::sleep(GATHER).await;
                    }
                }
                _ = tick.tick() => self.sweep(),
            }
        }
    }

    fn local_of(&self, ev: &TapEvent) -> SocketAddr {
        ev.local
            .or_else(|| {
                let t = match ev.peer.transport {
                    Transport::Wss => Transport::Ws,
                    t => t,
                };
                self.locals.iter().find(|(lt, _)| *lt == t).map(|(_, a)| *a)
            })
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn process(&mut self, batch: &mut Vec<TapEvent>) {
        let mut out: Vec<(RecordKind, String)> = Vec::new();
        let trackers = self.trackers.clone();
        let mut guard = trackers.lock().unwrap_or_else(|e| e.into_inner());
        for ev in batch.drain(..) {
            let sniffed = sniff::sniff(&ev.data);
            if self.hep.is_some() {
                let local = self.local_of(&ev);
                self.send_hep(&ev, local, sniffed.as_ref());
            }
            let Some(sniffed) = sniffed.filter(|s| s.tracked(ev.direction)) else {
                continue;
            };
            let seen = Seen {
                direction: ev.direction,
                peer: ev.peer,
                at: ev.at,
                data: &ev.data,
                sniff: &sniffed,
            };
            let t = &mut *guard;
            if let Some(c) = t.cdr.as_mut() {
                let fx = c.on_message(&seen);
                if let Some(d) = fx.setup {
                    self.metrics.setup.observe(d.as_secs_f64());
                }
                if let Some(cdr) = fx.cdr {
                    self.count_call(&cdr);
                    if self.cdrs
                        && let Ok(j) = serde_json::to_string(&cdr)
                    {
                        out.push((RecordKind::Cdr, j));
                    }
                }
            }
            if let Some(r) = t.reg.as_mut()
                && let Some(e) = r.on_message(&seen)
            {
                self.metrics
                    .registrations
                    .with_label_values(&[e.result])
                    .inc();
                if self.registrations
                    && let Ok(j) = serde_json::to_string(&e)
                {
                    out.push((RecordKind::Registration, j));
                }
            }
        }
        self.gauges(&guard);
        drop(guard);
        if let Some(s) = &self.sinks {
            for (kind, json) in out {
                s.write(kind, json);
            }
        }
    }

    fn count_call(&self, c: &cdr::Cdr) {
        let set = c.set.map(|s| s.to_string()).unwrap_or_default();
        let dest = c.backend.as_deref().unwrap_or("none");
        // Destinations not in the dispatcher (an in-dialog target, a loose route) share one
        // label value, so the series stay bounded by the configuration.
        let dest = if c.set.is_some() || dest == "none" {
            dest
        } else {
            "other"
        };
        self.metrics
            .calls
            .with_label_values(&[&set, dest, c.disposition])
            .inc();
    }

    fn gauges(&self, t: &Trackers) {
        if let Some(c) = &t.cdr {
            self.metrics
                .dialogs
                .set(i64::try_from(c.confirmed()).unwrap_or(i64::MAX));
        }
        if let Some(r) = &t.reg {
            self.metrics
                .bindings
                .set(i64::try_from(r.binding_count()).unwrap_or(i64::MAX));
        }
    }

    fn sweep(&mut self) {
        let now = SystemTime::now();
        let mut out = Vec::new();
        {
            let trackers = self.trackers.clone();
            let mut guard = trackers.lock().unwrap_or_else(|e| e.into_inner());
            let t = &mut *guard;
            let mut overflow = 0;
            if let Some(c) = t.cdr.as_mut() {
                for cdr in c.sweep(now) {
                    self.count_call(&cdr);
                    if self.cdrs
                        && let Ok(j) = serde_json::to_string(&cdr)
                    {
                        out.push(j);
                    }
                }
                overflow += std::mem::take(&mut c.overflow);
            }
            if let Some(r) = t.reg.as_mut() {
                r.sweep(now);
                overflow += std::mem::take(&mut r.overflow);
            }
            self.metrics.dropped(Stage::Tracking, overflow);
            self.gauges(t);
        }
        if let Some(s) = &self.sinks {
            for j in out {
                s.write(RecordKind::Cdr, j);
            }
        }
    }

    fn send_hep(&mut self, ev: &TapEvent, local: SocketAddr, sniffed: Option<&Sniff<'_>>) {
        let Some(hep) = self.hep.as_mut() else {
            return;
        };
        let (call_id, method) = sniffed.map_or((&b""[..], &b""[..]), |s| (s.call_id, s.method()));
        if !hep.wants(call_id, method) {
            return;
        }
        let (src, dst) = match ev.direction {
            Direction::In => (ev.peer.addr, local),
            Direction::Out => (local, ev.peer.addr),
        };
        let meta = HepMeta {
            src,
            dst,
            transport: ev.peer.transport,
            at: ev.at,
            capture_id: hep.capture_id,
            auth_key: hep.auth_key.as_deref(),
            correlation: call_id,
            node: &self.node,
        };
        let mut buf = std::mem::take(&mut hep.buf);
        if hep::encode(&meta, &ev.data, &mut buf) {
            for s in &hep.senders {
                match s.send(&buf) {
                    SendOutcome::Queued => self.metrics.hep_sent.inc(),
                    SendOutcome::Dropped => self.metrics.dropped(Stage::Hep, 1),
                }
            }
        } else {
            self.metrics.dropped(Stage::Hep, 1);
        }
        hep.buf = buf;
    }
}

/// Puts observability in place on a running sbc: the process collector (CPU, memory, open
/// fds), the open-connection gauges, and [`start`]'s tap in the transports. Returns the
/// tables for the admin endpoint.
pub fn wire(
    cfg: &SbcConfig,
    metrics: &Arc<crate::telemetry::Metrics>,
    dispatcher: &Arc<crate::dispatch::Dispatcher>,
    transports: &Arc<crate::transport::Transports>,
    store: Option<Arc<dyn crate::store::Store>>,
    call_ids: Option<cdr::CallIdMap>,
) -> Result<Option<Arc<ObserveView>>, ObserveError> {
    let registry = metrics.registry();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let d = dispatcher.clone();
    let destination_of: DestinationOf = Arc::new(move |addr| {
        let ip = addr.ip().to_canonical();
        d.table().sets().iter().find_map(|s| {
            s.destinations()
                .iter()
                .find(|x| {
                    x.target.addr.ip().to_canonical() == ip && x.target.addr.port() == addr.port()
                })
                .map(|x| (s.id(), x.uri.clone()))
        })
    });
    let started = start(
        cfg,
        registry,
        Context {
            destination_of,
            locals: transports.local_addrs(),
            store,
            call_ids,
        },
    )?;
    transports.set_tap(Some(Box::new(started.tap)));
    let (t, m) = (Arc::downgrade(transports), metrics.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(t) = t.upgrade() else {
                return;
            };
            for (transport, open) in t.open_by_transport() {
                m.set_connections_open(transport, open);
            }
        }
    });
    Ok(started.view)
}
