//! The `observability` section of `sbc.yaml` (and of SbcCluster's spec): HEPv3 to Homer,
//! CDRs and registration events to their sinks. Everything here runs off the call path: a
//! bounded queue between the transports and the background tasks, whose overflow is counted.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Transport};

/// Observability settings. Absent: no HEP, no records (metrics are always on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Name of this replica in HEP (node name), CDRs and events. Default: the `POD_NAME`
    /// environment variable, else the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Messages waiting between the transports and the background tasks; when full, a
    /// message is not observed and `sbc_observe_dropped_total{stage="queue"}` counts it.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
    /// HEPv3 (siptrace) to one or more collectors. Absent: no HEP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hep: Option<HepConfig>,
    /// CDRs and registration events. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<RecordsConfig>,
}

/// HEPv3 capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HepConfig {
    /// Collectors, `udp:IP:PORT` or `tcp:IP:PORT` (Homer's heplify-server listens on 9060).
    pub collectors: Vec<String>,
    /// Capture agent id (Kamailio's `hep_capture_id`).
    #[serde(default = "default_capture_id")]
    pub capture_id: u32,
    /// Authentication key sent in every packet (chunk 0x000e), if the collector wants one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    /// Percentage of calls (by Call-ID hash) whose messages are sent, 0..=100.
    #[serde(default = "default_sample")]
    pub sample_percent: u8,
    /// Only these methods (responses follow their CSeq method). Empty: every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// CDRs and registration events, and where they go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordsConfig {
    /// Write CDRs (one per call attempt and per completed call).
    #[serde(default = "yes")]
    pub cdrs: bool,
    /// Write an event for every REGISTER outcome.
    #[serde(default = "yes")]
    pub registrations: bool,
    /// Write each record as a JSON log line (tracing targets `kubesbc::cdr` and
    /// `kubesbc::registration`).
    #[serde(default = "yes")]
    pub log: bool,
    /// Append each record to a Redis stream. Absent: no stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSink>,
    /// POST records in batches to an HTTP endpoint. Absent: no webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSink>,
    /// Calls followed at once; a call beyond this gets no CDR (counted).
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// An answered call with no BYE after this many seconds is closed with disposition
    /// `expired`.
    #[serde(default = "default_max_call_secs")]
    pub max_call_secs: u64,
}

/// A Redis stream sink (`XADD key MAXLEN ~ N * record JSON`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSink {
    /// `redis://` URL. Default: the store's (`store.url` / `store.urlFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Stream of CDRs.
    #[serde(default = "default_cdr_stream")]
    pub cdr_stream: String,
    /// Stream of registration events.
    #[serde(default = "default_reg_stream")]
    pub registration_stream: String,
    /// Approximate length each stream is trimmed to.
    #[serde(default = "default_max_len")]
    pub max_len: u64,
    /// Records waiting for Redis; beyond this they are dropped (counted).
    #[serde(default = "default_sink_queue")]
    pub queue_size: usize,
}

/// An HTTP webhook sink: POSTs a JSON array of records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSink {
    /// `http://host:port/path` (https is not implemented).
    pub url: String,
    /// Records per POST at most.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Milliseconds a partial batch waits before it is sent.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// Attempts per batch (a 2xx ends them); then the batch is dropped (counted).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Milliseconds per attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Records waiting for the webhook; beyond this they are dropped (counted).
    #[serde(default = "default_sink_queue")]
    pub queue_size: usize,
}

fn yes() -> bool {
    true
}
fn default_queue() -> usize {
    65536
}
fn default_capture_id() -> u32 {
    2001
}
fn default_sample() -> u8 {
    100
}
fn default_max_calls() -> usize {
    100_000
}
fn default_max_call_secs() -> u64 {
    12 * 3600
}
fn default_cdr_stream() -> String {
    "kubesbc:cdr".to_owned()
}
fn default_reg_stream() -> String {
    "kubesbc:registrations".to_owned()
}
fn default_max_len() -> u64 {
    100_000
}
fn default_sink_queue() -> usize {
    10_000
}
fn default_batch() -> usize {
    100
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_attempts() -> u32 {
    3
}
fn default_timeout_ms() -> u64 {
    2000
}

/// A HEP collector address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collector {
    /// udp or tcp.
    pub transport: Transport,
    /// Where it listens.
    pub address: SocketAddr,
}

/// Parses `udp:IP:PORT` / `tcp:IP:PORT`.
pub fn parse_collector(s: &str) -> Option<Collector> {
    let (t, a) = s.split_once(':')?;
    let transport = match t {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        _ => return None,
    };
    Some(Collector {
        transport,
        address: a.parse().ok()?,
    })
}

fn err(path: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        path,
        message: message.into(),
    }
}

impl ObservabilityConfig {
    /// Checks values serde cannot; `path` is where the section sits (`observability`).
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if !(16..=1 << 22).contains(&self.queue_size) {
            return Err(err(
                format!("{path}.queueSize"),
                format!("{} is out of range 16..=4194304", self.queue_size),
            ));
        }
        if let Some(n) = &self.node
            && (n.is_empty() || n.len() > 255)
        {
            return Err(err(format!("{path}.node"), "must be 1 to 255 characters"));
        }
        if let Some(h) = &self.hep {
            let p = format!("{path}.hep");
            if h.collectors.is_empty() {
                return Err(err(
                    format!("{p}.collectors"),
                    "at least one collector is required",
                ));
            }
            for (i, c) in h.collectors.iter().enumerate() {
                if parse_collector(c).is_none() {
                    return Err(err(
                        format!("{p}.collectors[{i}]"),
                        format!("{c:?} is not udp:IP:PORT or tcp:IP:PORT"),
                    ));
                }
            }
            if h.sample_percent > 100 {
                return Err(err(
                    format!("{p}.samplePercent"),
                    format!("{} is out of range 0..=100", h.sample_percent),
                ));
            }
            for (i, m) in h.methods.iter().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(err(
                        format!("{p}.methods[{i}]"),
                        format!("{m:?} is not a SIP method in upper case"),
                    ));
                }
            }
        }
        if let Some(r) = &self.records {
            r.validate(&format!("{path}.records"))?;
        }
        Ok(())
    }
}

impl RecordsConfig {
    fn validate(&self, p: &str) -> Result<(), ConfigError> {
        if !(1..=10_000_000).contains(&self.max_calls) {
            return Err(err(
                format!("{p}.maxCalls"),
                format!("{} is out of range 1..=10000000", self.max_calls),
            ));
        }
        if self.max_call_secs == 0 {
            return Err(err(format!("{p}.maxCallSecs"), "must be positive"));
        }
        if let Some(r) = &self.redis {
            if let Some(u) = &r.url
                && !(u.starts_with("redis://") || u.starts_with("rediss://"))
            {
                return Err(err(format!("{p}.redis.url"), "must be a redis:// URL"));
            }
            if r.cdr_stream.is_empty() || r.registration_stream.is_empty() {
                return Err(err(format!("{p}.redis"), "stream names must not be empty"));
            }
            if !(1..=1_000_000).contains(&r.queue_size) {
                return Err(err(
                    format!("{p}.redis.queueSize"),
                    "out of range 1..=1000000",
                ));
            }
        }
        if let Some(w) = &self.webhook {
            let wp = format!("{p}.webhook");
            if w.url.starts_with("https://") {
                return Err(err(
                    format!("{wp}.url"),
                    "https webhooks are not implemented; use http:// (e.g. a local sidecar)",
                ));
            }
            if webhook_target(&w.url).is_none() {
                return Err(err(
                    format!("{wp}.url"),
                    format!("{:?} is not http://host:port/path", w.url),
                ));
            }
            if !(1..=10_000).contains(&w.batch_size) {
                return Err(err(format!("{wp}.batchSize"), "out of range 1..=10000"));
            }
            if !(1..=10).contains(&w.attempts) {
                return Err(err(format!("{wp}.attempts"), "out of range 1..=10"));
            }
            if w.timeout_ms == 0 || w.flush_ms == 0 {
                return Err(err(wp, "timeoutMs and flushMs must be positive"));
            }
            if !(1..=1_000_000).contains(&w.queue_size) {
                return Err(err(format!("{wp}.queueSize"), "out of range 1..=1000000"));
            }
        }
        Ok(())
    }
}

/// Splits an `http://host[:port]/path` URL into `(host:port, path)`.
pub fn webhook_target(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.is_empty() || auth.contains('@') || path.contains(char::is_whitespace) {
        return None;
    }
    let auth = if auth
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !auth.ends_with(']')
    {
        auth.to_owned()
    } else {
        format!("{auth}:80")
    };
    Some((auth, path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ObservabilityConfig, String> {
        let c: ObservabilityConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate("observability").map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_refusals() {
        let c = parse("hep:\n  collectors: [\"udp:127.0.0.1:9060\"]\nrecords: {}\n").unwrap();
        let h = c.hep.unwrap();
        assert_eq!((h.capture_id, h.sample_percent), (2001, 100));
        let r = c.records.unwrap();
        assert!(r.cdrs && r.registrations && r.log);
        assert!(
            parse("hep:\n  collectors: [\"sctp:127.0.0.1:9060\"]\n")
                .unwrap_err()
                .contains("observability.hep.collectors[0]")
        );
        assert!(
            parse("hep:\n  collectors: []\n")
                .unwrap_err()
                .contains("collectors")
        );
        assert!(parse("bogus: 1\n").unwrap_err().contains("bogus"));
        let e = parse("records:\n  webhook:\n    url: https://x/y\n").unwrap_err();
        assert!(e.contains("observability.records.webhook.url"), "{e}");
        assert!(parse("records:\n  webhook:\n    url: http://127.0.0.1:8/in\n").is_ok());
    }

    #[test]
    fn webhook_urls() {
        assert_eq!(
            webhook_target("http://127.0.0.1:8080/cdr"),
            Some(("127.0.0.1:8080".into(), "/cdr".into()))
        );
        assert_eq!(
            webhook_target("http://hooks.local"),
            Some(("hooks.local:80".into(), "/".into()))
        );
        assert_eq!(webhook_target("ftp://x"), None);
    }
}
