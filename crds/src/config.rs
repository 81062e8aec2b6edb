//! The sbc configuration schema (`sbc.yaml`).
//!
//! One Rust type serves both sides: the operator renders it from the custom resources into a
//! ConfigMap, and `sbc --config FILE` reads it. Field names are camelCase like the CRDs, so
//! the pieces the CRDs share (algorithm, probing, failover) are literally the same types.
//!
//! [`SbcConfig::from_yaml`] refuses unknown fields and invalid values with the path of the
//! offending field, e.g. `dispatcher.sets[0].algorithm: unknown value "roundrobin", ...`.

use std::fmt;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::store::{SentinelConfig, StoreConfig, StoreMode};

/// An error in a configuration document, naming the field it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The document is not YAML at all.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// A field is unknown, missing or of the wrong type or value.
    #[error("{path}: {message}")]
    Field {
        /// Dotted path of the field, `dispatcher.sets[0].algorithm`; `.` for the document root.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Field {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The whole configuration of one sbc process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SbcConfig {
    /// Sockets the sbc listens on. At least one.
    pub listeners: Vec<Listener>,
    /// Dispatcher sets: where requests that do not belong to a dialog go.
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
    /// Routing rules choosing the dispatcher set (or a fixed target) of an initial request.
    /// Absent: every initial request goes to `dispatcher.defaultSet`.
    #[serde(
        default,
        skip_serializing_if = "crate::routing::RoutingConfig::is_empty"
    )]
    pub routing: crate::routing::RoutingConfig,
    /// The HTTP admin endpoint (`/metrics`, `/healthz`, `/readyz`, `/dispatcher`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Size and connection limits that protect the sbc from its peers.
    #[serde(default)]
    pub limits: Limits,
    /// Transaction timers and proxy behaviour.
    #[serde(default)]
    pub relay: RelayConfig,
    /// What SIGTERM does.
    #[serde(default)]
    pub drain: DrainConfig,
    /// Shared state. Absent: state lives in this process's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
    /// Access lists applied by the guard stage, in order (rendered from AccessList resources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_lists: Vec<crate::policy::AccessListConfig>,
    /// Tenant throttles (rendered from TenantThrottle resources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throttles: Vec<crate::policy::ThrottleConfig>,
    /// Digest authentication by the auth stage. Absent: no authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<crate::policy::AuthConfig>,
    /// Media anchoring. Absent: media passes end to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::policy::MediaConfig>,
    /// Certificate of the tls/wss listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::policy::TlsConfig>,
    /// The guard's built-in defence against known SIP scanners (on by default, even with no
    /// access list).
    #[serde(default, skip_serializing_if = "ScannerDefence::is_default")]
    pub scanners: ScannerDefence,
    /// TLS towards backends (`sips:` and `;transport=tls` destinations): which CAs to trust
    /// and the client certificate to present. Absent: the system's trusted roots, no client
    /// certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<crate::policy::BackendTlsConfig>,
    /// HEPv3 capture, CDRs and registration events. Absent: none of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observability: Option<crate::observe::ObservabilityConfig>,
}

/// The guard's built-in scanner defence: requests whose User-Agent names a known SIP scanner
/// (friendly-scanner, sipvicious, sipcli, VaxSIPUserAgent, ...; the list is in
/// docs/security.md) are dropped or refused. Trusted sources are exempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScannerDefence {
    /// Apply the built-in list. `false` switches the defence off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What a matching request gets: `drop` (no answer: a scanner learns nothing) or
    /// `reject` (`403 Forbidden (scanner)`).
    #[serde(default)]
    pub action: ScannerAction,
}

impl Default for ScannerDefence {
    fn default() -> Self {
        ScannerDefence {
            enabled: true,
            action: ScannerAction::Drop,
        }
    }
}

impl ScannerDefence {
    /// Whether this is the default (on, drop): then it is not written out.
    pub fn is_default(&self) -> bool {
        *self == ScannerDefence::default()
    }
}

/// What the scanner defence does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScannerAction {
    /// No answer.
    #[default]
    Drop,
    /// `403 Forbidden (scanner)`.
    Reject,
}

/// A transport the sbc can listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// SIP over UDP.
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS.
    Tls,
    /// SIP over WebSocket (RFC 7118).
    Ws,
    /// SIP over secure WebSocket (RFC 7118).
    Wss,
}

impl Transport {
    /// The name used in Via headers (`UDP`, `TCP`, `TLS`, `WS`, `WSS`).
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// The lowercase name used in `;transport=` URI parameters and in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Parses a transport name in any case.
    pub fn from_name(s: &str) -> Option<Transport> {
        Some(match s.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return None,
        })
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    /// Transport of this socket.
    pub transport: Transport,
    /// Local address to bind, `IP:PORT`.
    #[schemars(with = "String")]
    pub address: SocketAddr,
    /// Host (and optional port) written into Via, Record-Route and Contact instead of the bound
    /// address: a Service's external IP or a node's public IP. Absent: the bound address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// ws/wss only: the HTTP path the WebSocket upgrade must ask for (`/ws`). Absent: any
    /// path, as Kamailio accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub path: Option<String>,
    /// ws/wss only: the `Origin` values a browser may upgrade from
    /// (`https://app.example.com`). Empty: any origin, and requests without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_origins: Vec<String>,
}

impl Default for Listener {
    fn default() -> Self {
        Listener {
            transport: Transport::Udp,
            address: SocketAddr::from(([0, 0, 0, 0], 5060)),
            advertise: None,
            path: None,
            allowed_origins: Vec::new(),
        }
    }
}

/// The dispatcher: sets of destinations and how requests are spread over them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatcherConfig {
    /// The set initial requests go to.
    #[serde(default = "default_set_id")]
    pub default_set: u32,
    /// The sets, each with a unique id.
    #[serde(default)]
    pub sets: Vec<DispatcherSetConfig>,
    /// Seconds an answered call keeps counting against its destination's `maxload` and the
    /// `call-load` algorithm when no BYE is seen (a lost BYE cannot hold capacity for ever).
    #[serde(default = "crate::policy::default_dialog_timeout_secs")]
    #[schemars(range(min = 60, max = 604800))]
    pub dialog_timeout_secs: u32,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            default_set: default_set_id(),
            sets: Vec::new(),
            dialog_timeout_secs: crate::policy::default_dialog_timeout_secs(),
        }
    }
}

fn default_set_id() -> u32 {
    1
}

/// One dispatcher set (Kamailio's `setid`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DispatcherSetConfig {
    /// The set id, as in `dispatcher.list`.
    pub id: u32,
    /// How a destination is chosen.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// The destinations of the set.
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    /// Destinations resolved live from a Service's EndpointSlices, in addition to
    /// `destinations`. Absent: only the static `destinations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<crate::policy::ServiceSource>,
    /// OPTIONS health probing of the destinations.
    #[serde(default)]
    pub probing: Probing,
    /// When and how often a call moves on to the next destination.
    #[serde(default)]
    pub failover: Failover,
}

/// A dispatcher algorithm. Accepts the name or Kamailio's number (`4` = `round-robin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, JsonSchema)]
#[schemars(with = "AlgorithmSchema")]
pub enum Algorithm {
    /// 0: hash over the Call-ID.
    HashCallId,
    /// 1: hash over the From URI.
    HashFromUri,
    /// 2: hash over the To URI.
    HashToUri,
    /// 3: hash over the Request-URI.
    HashRequestUri,
    /// 4: round robin.
    #[default]
    RoundRobin,
    /// 5: hash over the authentication username.
    HashAuthUsername,
    /// 6: random.
    Random,
    /// 8: the first active destination in priority order.
    Priority,
    /// 9: weighted by `weight`.
    Weight,
    /// 10: call load: fewest active calls, bounded by `maxload`.
    CallLoad,
    /// 11: relative weight (`rweight`) over the active destinations.
    RelativeWeight,
}

/// The schema of [`Algorithm`]: a name or a Kamailio number.
#[derive(JsonSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum AlgorithmSchema {
    /// The algorithm's name.
    Name(AlgorithmName),
    /// Kamailio's algorithm number (0-6, 8-11).
    Number(u8),
}

#[derive(JsonSchema)]
#[allow(dead_code)]
#[serde(rename_all = "kebab-case")]
enum AlgorithmName {
    HashCallid,
    HashFromUri,
    HashToUri,
    HashRuri,
    RoundRobin,
    HashAuthUsername,
    Random,
    Priority,
    Weight,
    CallLoad,
    RelativeWeight,
}

impl Algorithm {
    /// Every algorithm, in Kamailio number order.
    pub const ALL: [Algorithm; 11] = [
        Algorithm::HashCallId,
        Algorithm::HashFromUri,
        Algorithm::HashToUri,
        Algorithm::HashRequestUri,
        Algorithm::RoundRobin,
        Algorithm::HashAuthUsername,
        Algorithm::Random,
        Algorithm::Priority,
        Algorithm::Weight,
        Algorithm::CallLoad,
        Algorithm::RelativeWeight,
    ];

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HashCallId => "hash-callid",
            Algorithm::HashFromUri => "hash-from-uri",
            Algorithm::HashToUri => "hash-to-uri",
            Algorithm::HashRequestUri => "hash-ruri",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::HashAuthUsername => "hash-auth-username",
            Algorithm::Random => "random",
            Algorithm::Priority => "priority",
            Algorithm::Weight => "weight",
            Algorithm::CallLoad => "call-load",
            Algorithm::RelativeWeight => "relative-weight",
        }
    }

    /// Kamailio's number for this algorithm.
    pub fn number(self) -> u8 {
        match self {
            Algorithm::HashCallId => 0,
            Algorithm::HashFromUri => 1,
            Algorithm::HashToUri => 2,
            Algorithm::HashRequestUri => 3,
            Algorithm::RoundRobin => 4,
            Algorithm::HashAuthUsername => 5,
            Algorithm::Random => 6,
            Algorithm::Priority => 8,
            Algorithm::Weight => 9,
            Algorithm::CallLoad => 10,
            Algorithm::RelativeWeight => 11,
        }
    }

    /// The algorithm with Kamailio's number `n`, if we implement it.
    pub fn from_number(n: u64) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| u64::from(a.number()) == n)
    }

    /// The algorithm named `s` (a name, or a number written as text).
    pub fn from_name(s: &str) -> Option<Algorithm> {
        if let Ok(n) = s.parse::<u64>() {
            return Algorithm::from_number(n);
        }
        Algorithm::ALL.into_iter().find(|a| a.name() == s)
    }

    fn expected() -> String {
        let names: Vec<String> = Algorithm::ALL
            .iter()
            .map(|a| format!("\"{}\" ({})", a.name(), a.number()))
            .collect();
        format!("expected one of {}", names.join(", "))
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Algorithm;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an algorithm name or Kamailio number")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Algorithm, E> {
                Algorithm::from_number(n).ok_or_else(|| {
                    E::custom(format!("unknown value {n}, {}", Algorithm::expected()))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Algorithm, E> {
                u64::try_from(n)
                    .ok()
                    .and_then(Algorithm::from_number)
                    .ok_or_else(|| {
                        E::custom(format!("unknown value {n}, {}", Algorithm::expected()))
                    })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Algorithm, E> {
                Algorithm::from_name(s).ok_or_else(|| {
                    E::custom(format!("unknown value {s:?}, {}", Algorithm::expected()))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One destination of a dispatcher set, with Kamailio's flags, priority and attributes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationConfig {
    /// SIP URI of the destination: `sip:10.0.0.5:5060;transport=tcp`.
    #[schemars(regex(pattern = r"^sips?:[^\s<>]+$"), length(max = 1024))]
    pub uri: String,
    /// Kamailio destination flags (1 inactive, 2 probing, 4 disabled, 8 probing always).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub flags: u32,
    /// Priority: higher first for the `priority` algorithm and when listing.
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// Weight for the `weight` algorithm (0..100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<u32>,
    /// Relative weight for the `relative-weight` algorithm (1..100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub rweight: Option<u32>,
    /// Destination unique id (Kamailio's `duid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duid: Option<String>,
    /// Maximum active calls for the `call-load` algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxload: Option<u32>,
    /// Local socket to send from (`proto:ip:port`), as Kamailio's `socket=` attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// From URI for OPTIONS probes to this destination (Kamailio's `ping_from=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_from: Option<String>,
    /// Free text shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A WebRTC endpoint behind plain SIP (a gateway that speaks SIP over UDP or TCP for its
    /// browsers): with a `media` section, media towards it gets the WebRTC profile
    /// (DTLS-SRTP, ICE, rtcp-mux) as a ws or wss leg does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub webrtc: bool,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

/// OPTIONS probing of a set's destinations (Kamailio's `ds_ping_*` settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probing {
    /// Probe at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Milliseconds between two probes of one destination.
    #[serde(default = "default_probe_interval_ms")]
    #[schemars(range(min = 100))]
    pub interval_ms: u64,
    /// Milliseconds to wait for a reply before the probe counts as failed.
    #[serde(default = "default_probe_timeout_ms")]
    #[schemars(range(min = 10))]
    pub timeout_ms: u64,
    /// Consecutive failed probes that take a destination out.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub failure_threshold: u32,
    /// Consecutive successful probes that bring it back.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub success_threshold: u32,
    /// Reply codes that count as a failure although the destination answered
    /// (any other reply counts as alive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_codes: Vec<u16>,
    /// Request-URI user part and From for the probes, Kamailio's `ds_ping_from`.
    #[serde(default = "default_ping_from")]
    pub from: String,
}

impl Default for Probing {
    fn default() -> Self {
        Probing {
            enabled: true,
            interval_ms: default_probe_interval_ms(),
            timeout_ms: default_probe_timeout_ms(),
            failure_threshold: 1,
            success_threshold: 1,
            failure_codes: Vec::new(),
            from: default_ping_from(),
        }
    }
}

fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_probe_interval_ms() -> u64 {
    5000
}
fn default_probe_timeout_ms() -> u64 {
    2000
}
fn default_ping_from() -> String {
    "sip:dispatcher@localhost".to_owned()
}

/// Failover to the next destination of the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Failover {
    /// Reply codes that move the call on: a code (`"503"`) or a class (`"5xx"`).
    /// A transaction timeout always does; a 6xx or the caller's CANCEL never does.
    #[serde(default = "default_failover_codes")]
    pub codes: Vec<String>,
    /// Destinations tried per request at most, the first included.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 16))]
    pub max_attempts: u32,
    /// Milliseconds to wait for any reply from a destination before moving on
    /// (Kamailio's `fr_timer`).
    #[serde(default = "default_reply_timeout_ms")]
    #[schemars(range(min = 100))]
    pub reply_timeout_ms: u64,
    /// Count a request that times out as a failure of its destination (towards
    /// `failureThreshold`). Off: timeouts only move the call on.
    #[serde(default = "yes")]
    pub mark_down_on_timeout: bool,
    /// Failed requests (timeouts, and replies in `codes`) since the destination last answered
    /// a probe that trigger an immediate OPTIONS probe; the probe decides whether it is taken
    /// out. One unanswered request never takes a destination out by itself.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: u32,
    /// When every destination of the set is down, still try them in order ("panic routing")
    /// instead of answering 503 to everyone. Disabled destinations are never tried.
    #[serde(default = "yes")]
    pub panic_routing: bool,
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            codes: default_failover_codes(),
            max_attempts: default_attempts(),
            reply_timeout_ms: default_reply_timeout_ms(),
            mark_down_on_timeout: true,
            failure_threshold: default_failure_threshold(),
            panic_routing: true,
        }
    }
}

impl Failover {
    /// Whether a final reply `code` moves the request on to the next destination.
    pub fn fails_over_on(&self, code: u16) -> bool {
        if code >= 600 {
            return false;
        }
        self.codes.iter().any(|c| code_matches(c, code))
    }
}

fn code_matches(pattern: &str, code: u16) -> bool {
    let p = pattern.as_bytes();
    let c = code.to_string();
    let c = c.as_bytes();
    p.len() == 3
        && c.len() == 3
        && p.iter()
            .zip(c)
            .all(|(p, c)| p.eq_ignore_ascii_case(&b'x') || p == c)
}

fn valid_code_pattern(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() == 3
        && (b'1'..=b'6').contains(&b[0])
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.eq_ignore_ascii_case(&b'x'))
}

fn default_failover_codes() -> Vec<String> {
    vec!["408".to_owned(), "5xx".to_owned()]
}
fn default_attempts() -> u32 {
    3
}
fn default_failure_threshold() -> u32 {
    3
}
fn default_reply_timeout_ms() -> u64 {
    3000
}

/// The admin HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and the `sbc ctl` API.
    #[serde(default = "default_admin_address")]
    #[schemars(with = "String")]
    pub address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: default_admin_address(),
        }
    }
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// Limits that protect the sbc from its peers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Largest SIP message accepted, in bytes (stream and datagram).
    #[serde(default = "default_max_message_bytes")]
    #[schemars(range(min = 1024, max = 65535))]
    pub max_message_bytes: usize,
    /// Open stream connections accepted from one source IP.
    #[serde(default = "default_max_conn_per_source")]
    #[schemars(range(min = 1))]
    pub max_connections_per_source: u32,
    /// Open stream connections in all.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1))]
    pub max_connections: u32,
    /// Seconds a stream connection may stay idle before it is closed.
    #[serde(default = "default_idle_secs")]
    #[schemars(range(min = 1))]
    pub tcp_idle_timeout_secs: u64,
    /// Server transactions open at once; beyond it new requests get 503.
    #[serde(default = "default_max_transactions")]
    #[schemars(range(min = 1))]
    pub max_transactions: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: default_max_message_bytes(),
            max_connections_per_source: default_max_conn_per_source(),
            max_connections: default_max_connections(),
            tcp_idle_timeout_secs: default_idle_secs(),
            max_transactions: default_max_transactions(),
        }
    }
}

fn default_max_message_bytes() -> usize {
    65535
}
fn default_max_conn_per_source() -> u32 {
    256
}
fn default_max_connections() -> u32 {
    16384
}
fn default_idle_secs() -> u64 {
    600
}
fn default_max_transactions() -> usize {
    200_000
}

/// Transaction timers and proxy behaviour (RFC 3261 section 17).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RelayConfig {
    /// T1, the round-trip estimate, in milliseconds.
    #[serde(default = "default_t1_ms")]
    #[schemars(range(min = 50))]
    pub t1_ms: u64,
    /// T2, the cap on non-INVITE retransmission intervals, in milliseconds.
    #[serde(default = "default_t2_ms")]
    #[schemars(range(min = 100))]
    pub t2_ms: u64,
    /// Milliseconds an INVITE may ring (after a provisional reply) before it is cancelled
    /// (Kamailio's `fr_inv_timer`).
    #[serde(default = "default_invite_timeout_ms")]
    #[schemars(range(min = 1000))]
    pub invite_timeout_ms: u64,
    /// Add Record-Route to initial requests so the dialog keeps passing through the sbc.
    #[serde(default = "yes")]
    pub record_route: bool,
    /// NAT detection and Contact fixing for clients behind NAT.
    #[serde(default)]
    pub nat: NatConfig,
    /// The inside of the border: the backends' networks and the shared address the sbc pods
    /// have there. Absent: one address on both sides (docs/topology.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inside: Option<InsideConfig>,
    /// Topology hiding towards outside peers (Kamailio's topoh). Absent: nothing is hidden.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology: Option<TopologyConfig>,
}

/// The inside of the border (issue 13 item 1): requests to these networks get the pod's own
/// address in Via and `address` in Record-Route; everything else is outside.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InsideConfig {
    /// The shared inside address, `host[:port]`: the cluster Service of the sbc pods
    /// (`sbc.voice.svc.cluster.local:5060`). Required in sbc.yaml; an SbcCluster's operator
    /// fills it from the Service it creates when it is not given. Without a port, each
    /// listener's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub address: Option<String>,
    /// The inside networks (the backends), as CIDRs (`10.0.0.0/8`, `fd00::/8`).
    #[schemars(length(min = 1))]
    pub networks: Vec<String>,
}

/// Topology hiding (issue 13 item 3, Kamailio's topoh): outside peers see no inside address,
/// and the Call-ID towards inside peers carries a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopologyConfig {
    /// Hide the inside: Via, Record-Route and Contact towards outside peers name only the sbc.
    #[serde(default = "yes")]
    pub hide: bool,
    /// The prefix of Call-IDs towards inside peers (`CF-`): added to a call from outside,
    /// removed on the way back. Empty: the Call-ID is not rewritten.
    #[serde(default = "default_call_id_prefix")]
    #[schemars(length(max = 32))]
    pub call_id_prefix: String,
    /// A file of keys, one a line (at least 16 characters each), that encrypt and authenticate the
    /// parameters carrying hidden values: the first seals, every one opens (rotation: add
    /// the new key on top, drop the old one once no dialog carries it). Every replica must
    /// read the same file (a Secret). Absent: a random key per process, so only the replica
    /// that hid a value can restore it. The keys also sign flow tokens, so any replica
    /// forwards a request for a stream client's connection to the replica holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// The keys read from `keyFile` (never written back).
    #[serde(skip)]
    pub keys: Vec<String>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            hide: true,
            call_id_prefix: default_call_id_prefix(),
            key_file: None,
            keys: Vec::new(),
        }
    }
}

impl TopologyConfig {
    /// Reads `keyFile` into `keys`.
    fn read_keys(&mut self) -> Result<(), ConfigError> {
        let Some(file) = &self.key_file else {
            return Ok(());
        };
        let p = "relay.topology.keyFile";
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::field(p, format!("{file}: {e}")))?;
        let keys: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if keys.is_empty() {
            return Err(ConfigError::field(p, format!("{file}: no key in the file")));
        }
        if let Some(i) = keys.iter().position(|k| k.len() < 16) {
            return Err(ConfigError::field(
                p,
                format!("{file}: key {} is shorter than 16 characters", i + 1),
            ));
        }
        self.keys = keys;
        Ok(())
    }
}

fn default_call_id_prefix() -> String {
    "CF-".to_owned()
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            t1_ms: default_t1_ms(),
            t2_ms: default_t2_ms(),
            invite_timeout_ms: default_invite_timeout_ms(),
            record_route: true,
            nat: NatConfig::default(),
            inside: None,
            topology: None,
        }
    }
}

/// NAT traversal for clients (Kamailio's nathelper): which tests say a client is behind NAT,
/// and whether its Contact is then rewritten to the address its packets come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatConfig {
    /// The NAT tests, as the sum of Kamailio's `nat_uac_test` flags: 1 the Contact names a
    /// private address (RFC 1918, RFC 6598), 2 the top Via's host is not the source address,
    /// 4 the top Via names a private address, 8 the SDP's `c=` line names a private address,
    /// 16 the top Via's port is not the source port. Any passing test marks the client as
    /// behind NAT. 0: no test. ws and wss clients are always behind NAT.
    #[serde(default = "default_nat_detect")]
    #[schemars(range(min = 0, max = 31))]
    pub detect: u8,
    /// Rewrite the host and port of the Contact of an INVITE or REGISTER from a client behind
    /// NAT to the source address and port (`fix_nated_contact`, `fix_nated_register`).
    #[serde(default = "yes")]
    pub fix_contact: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            detect: default_nat_detect(),
            fix_contact: true,
        }
    }
}

fn default_nat_detect() -> u8 {
    19
}

fn default_t1_ms() -> u64 {
    500
}
fn default_t2_ms() -> u64 {
    4000
}
fn default_invite_timeout_ms() -> u64 {
    120_000
}

/// What SIGTERM does: stop taking calls, let open ones finish, exit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainConfig {
    /// Seconds to wait for open transactions before exiting anyway.
    #[serde(default = "default_grace_secs")]
    pub grace_period_secs: u64,
    /// Retry-After sent with the 503 that refuses new INVITEs while draining.
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u32,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            grace_period_secs: default_grace_secs(),
            retry_after_secs: default_retry_after(),
        }
    }
}

fn default_grace_secs() -> u64 {
    30
}
fn default_retry_after() -> u32 {
    5
}

impl SbcConfig {
    /// Parses and validates a YAML document. Errors name the offending field.
    pub fn from_yaml(text: &str) -> Result<SbcConfig, ConfigError> {
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        Self::from_value(value)
    }

    /// Deserializes and validates an already parsed document.
    pub fn from_value(value: serde_json::Value) -> Result<SbcConfig, ConfigError> {
        let config: SbcConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::field(path, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Renders the document as YAML, the form the operator writes into the ConfigMap.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }

    /// Reads the secrets the document names by file (`auth.nonceSecretFile`) into it, so a
    /// key that cannot be read refuses the version instead of leaving nonces unsigned. The sbc
    /// calls it on every version it loads; the operator never does (the files exist in the
    /// pods only). Files read per request (`valueFile`) or at startup (`store.urlFile`) are
    /// not touched.
    pub fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(a) = &mut self.auth {
            crate::policy::read_nonce_secret(a, "auth")?;
        }
        if let Some(t) = &mut self.relay.topology {
            t.read_keys()?;
        }
        Ok(())
    }

    /// Checks what the types alone cannot: ranges, uniqueness, URIs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::field(
                "listeners",
                "at least one listener is required",
            ));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(adv) = &l.advertise
                && (adv.is_empty() || adv.contains(|c: char| c.is_whitespace() || c == ';'))
            {
                return Err(ConfigError::field(
                    format!("listeners[{i}].advertise"),
                    format!("{adv:?} is not a host or host:port"),
                ));
            }
            l.validate_transport_options(i, self.tls.is_some())?;
            if self.listeners[..i]
                .iter()
                .any(|o| o.transport == l.transport && o.address == l.address)
            {
                return Err(ConfigError::field(
                    format!("listeners[{i}]"),
                    format!("{}:{} is listed twice", l.transport, l.address),
                ));
            }
        }
        if !(60..=604_800).contains(&self.dispatcher.dialog_timeout_secs) {
            return Err(ConfigError::field(
                "dispatcher.dialogTimeoutSecs",
                format!(
                    "{} is out of range 60..=604800",
                    self.dispatcher.dialog_timeout_secs
                ),
            ));
        }
        for (i, set) in self.dispatcher.sets.iter().enumerate() {
            let p = format!("dispatcher.sets[{i}]");
            if self.dispatcher.sets[..i].iter().any(|o| o.id == set.id) {
                return Err(ConfigError::field(
                    format!("{p}.id"),
                    format!("set id {} is used twice", set.id),
                ));
            }
            set.validate(&p)?;
        }
        let set_ids: Vec<u32> = self.dispatcher.sets.iter().map(|s| s.id).collect();
        self.routing.validate("routing", &set_ids)?;
        if self.limits.max_message_bytes < 1024 || self.limits.max_message_bytes > 65535 {
            return Err(ConfigError::field(
                "limits.maxMessageBytes",
                format!(
                    "{} is out of range 1024..=65535",
                    self.limits.max_message_bytes
                ),
            ));
        }
        if self.relay.t1_ms == 0 || self.relay.t2_ms < self.relay.t1_ms {
            return Err(ConfigError::field(
                "relay.t2Ms",
                "t1Ms must be positive and t2Ms at least t1Ms",
            ));
        }
        if self.relay.nat.detect > 31 {
            return Err(ConfigError::field(
                "relay.nat.detect",
                format!(
                    "{} names flags not supported (32, 64: the IPv6 tests); use a sum of 1, 2, 4, 8, 16",
                    self.relay.nat.detect
                ),
            ));
        }
        self.relay.validate_border()?;
        for (i, a) in self.access_lists.iter().enumerate() {
            a.validate(&format!("accessLists[{i}]"))?;
        }
        for (i, t) in self.throttles.iter().enumerate() {
            t.validate(&format!("throttles[{i}]"))?;
        }
        if let Some(a) = &self.auth {
            a.validate("auth")?;
        }
        if let Some(m) = &self.media {
            m.validate("media")?;
        }
        if let Some(o) = &self.observability {
            o.validate("observability")?;
        }
        if let Some(b) = &self.backend_tls
            && b.cert_file.is_some() != b.key_file.is_some()
        {
            return Err(ConfigError::field(
                "backendTls",
                "certFile and keyFile go together: give both or neither",
            ));
        }
        if let Some(store) = &self.store {
            store.validate("store")?;
            // The records' stream writer talks to one server; it cannot follow a sentinel
            // failover or a cluster's slots.
            if store.mode != StoreMode::Single
                && let Some(r) = self.observability.as_ref().and_then(|o| o.records.as_ref())
                && let Some(sink) = &r.redis
                && sink.url.is_none()
            {
                return Err(ConfigError::field(
                    "observability.records.redis.url",
                    "required when store.mode is sentinel or cluster (the stream goes to one server)",
                ));
            }
        }
        Ok(())
    }
}

impl RelayConfig {
    /// Checks `inside` and `topology`: an address that is a host[:port], CIDR networks, a
    /// Call-ID prefix of token characters, and topology hiding only with an inside to hide.
    fn validate_border(&self) -> Result<(), ConfigError> {
        if let Some(inside) = &self.inside {
            match &inside.address {
                None => {
                    return Err(ConfigError::field(
                        "relay.inside.address",
                        "required: the shared inside address (the sbc Service), host[:port]",
                    ));
                }
                Some(a) if !is_host_port(a) => {
                    return Err(ConfigError::field(
                        "relay.inside.address",
                        format!("{a:?} is not a host or host:port"),
                    ));
                }
                Some(_) => {}
            }
            if inside.networks.is_empty() {
                return Err(ConfigError::field(
                    "relay.inside.networks",
                    "at least one network is required",
                ));
            }
            for (i, n) in inside.networks.iter().enumerate() {
                if !crate::policy::is_cidr(n) {
                    return Err(ConfigError::field(
                        format!("relay.inside.networks[{i}]"),
                        format!("{n:?} is not a CIDR"),
                    ));
                }
            }
        }
        if let Some(t) = &self.topology {
            let p = &t.call_id_prefix;
            // Call-ID is `word [@ word]`: the prefix keeps it one, and cannot hold '@'.
            if p.len() > 32 || !p.bytes().all(is_call_id_word_char) {
                return Err(ConfigError::field(
                    "relay.topology.callIdPrefix",
                    format!(
                        "{p:?} must be at most 32 of the characters A-Z a-z 0-9 - . ! % * _ + ~"
                    ),
                ));
            }
            if t.hide && self.inside.is_none() {
                return Err(ConfigError::field(
                    "relay.topology.hide",
                    "needs relay.inside: what is hidden is the inside",
                ));
            }
            if !p.is_empty() && self.inside.is_none() {
                return Err(ConfigError::field(
                    "relay.topology.callIdPrefix",
                    "needs relay.inside: the prefix is for Call-IDs towards inside peers",
                ));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a host or host:port (a name, an IPv4 address or a bracketed IPv6 one).
fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    };
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0))
}

/// The plain characters of a Call-ID `word` (RFC 3261 section 25.1): no '@', no quoting.
fn is_call_id_word_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+~".contains(&b)
}

impl Listener {
    /// Checks the fields that only some transports take: `path` and `allowedOrigins` belong to
    /// ws/wss, and tls/wss need the document's `tls` certificate.
    fn validate_transport_options(&self, i: usize, has_tls: bool) -> Result<(), ConfigError> {
        let ws = matches!(self.transport, Transport::Ws | Transport::Wss);
        if let Some(p) = &self.path {
            if !ws {
                return Err(ConfigError::field(
                    format!("listeners[{i}].path"),
                    format!(
                        "only ws and wss listeners take a path, not {}",
                        self.transport
                    ),
                ));
            }
            if !p.starts_with('/') || p.contains(|c: char| c.is_ascii_whitespace() || c == '?') {
                return Err(ConfigError::field(
                    format!("listeners[{i}].path"),
                    format!("{p:?} is not an absolute path like \"/ws\""),
                ));
            }
        }
        if !self.allowed_origins.is_empty() && !ws {
            return Err(ConfigError::field(
                format!("listeners[{i}].allowedOrigins"),
                format!(
                    "only ws and wss listeners take allowedOrigins, not {}",
                    self.transport
                ),
            ));
        }
        if let Some((k, o)) = self.allowed_origins.iter().enumerate().find(|(_, o)| {
            !(o.starts_with("http://") || o.starts_with("https://"))
                || o.contains(char::is_whitespace)
        }) {
            return Err(ConfigError::field(
                format!("listeners[{i}].allowedOrigins[{k}]"),
                format!("{o:?} is not an origin like \"https://app.example.com\""),
            ));
        }
        if matches!(self.transport, Transport::Tls | Transport::Wss) && !has_tls {
            return Err(ConfigError::field(
                "tls",
                format!(
                    "listeners[{i}] ({}) needs tls.certFile and tls.keyFile",
                    self.transport
                ),
            ));
        }
        Ok(())
    }
}

impl DispatcherSetConfig {
    /// Validates one set; `path` is where it sits in the document.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        for (j, d) in self.destinations.iter().enumerate() {
            let dp = format!("{path}.destinations[{j}]");
            if let Err(why) = check_sip_uri(&d.uri) {
                return Err(ConfigError::field(format!("{dp}.uri"), why));
            }
            if let Some(w) = d.weight
                && w > 100
            {
                return Err(ConfigError::field(
                    format!("{dp}.weight"),
                    format!("{w} is out of range 0..=100"),
                ));
            }
            if let Some(w) = d.rweight
                && !(1..=100).contains(&w)
            {
                return Err(ConfigError::field(
                    format!("{dp}.rweight"),
                    format!("{w} is out of range 1..=100"),
                ));
            }
        }
        let pr = &self.probing;
        if pr.interval_ms < 100 {
            return Err(ConfigError::field(
                format!("{path}.probing.intervalMs"),
                format!("{} is below the minimum of 100", pr.interval_ms),
            ));
        }
        if pr.timeout_ms < 10 {
            return Err(ConfigError::field(
                format!("{path}.probing.timeoutMs"),
                format!("{} is below the minimum of 10", pr.timeout_ms),
            ));
        }
        if pr.failure_threshold == 0 {
            return Err(ConfigError::field(
                format!("{path}.probing.failureThreshold"),
                "must be at least 1",
            ));
        }
        if pr.success_threshold == 0 {
            return Err(ConfigError::field(
                format!("{path}.probing.successThreshold"),
                "must be at least 1",
            ));
        }
        let fo = &self.failover;
        for (k, c) in fo.codes.iter().enumerate() {
            if !valid_code_pattern(c) {
                return Err(ConfigError::field(
                    format!("{path}.failover.codes[{k}]"),
                    format!("{c:?} is not a reply code (\"503\") or class (\"5xx\")"),
                ));
            }
        }
        if !(1..=1000).contains(&fo.failure_threshold) {
            return Err(ConfigError::field(
                format!("{path}.failover.failureThreshold"),
                format!("{} is out of range 1..=1000", fo.failure_threshold),
            ));
        }
        if !(1..=16).contains(&fo.max_attempts) {
            return Err(ConfigError::field(
                format!("{path}.failover.maxAttempts"),
                format!("{} is out of range 1..=16", fo.max_attempts),
            ));
        }
        if fo.reply_timeout_ms < 100 {
            return Err(ConfigError::field(
                format!("{path}.failover.replyTimeoutMs"),
                format!("{} is below the minimum of 100", fo.reply_timeout_ms),
            ));
        }
        Ok(())
    }
}

/// Checks that `uri` is a `sip:`/`sips:` URI with a host, as destinations must be.
pub fn check_sip_uri(uri: &str) -> Result<(), String> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .ok_or_else(|| format!("{uri:?} is not a sip: or sips: URI"))?;
    let hostport = rest.split([';', '?']).next().unwrap_or("");
    let hostport = hostport.rsplit('@').next().unwrap_or("");
    if hostport.is_empty() || hostport.starts_with(':') {
        return Err(format!("{uri:?} has no host"));
    }
    if hostport.contains(|c: char| c.is_whitespace() || c == '<' || c == '>') {
        return Err(format!("{uri:?} has an invalid host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listeners:
  - transport: udp
    address: 127.0.0.1:5060
  - transport: tcp
    address: 127.0.0.1:5060
    advertise: sbc.example.com
dispatcher:
  sets:
    - id: 1
      algorithm: 4
      destinations:
        - uri: sip:127.0.0.1:5071
        - uri: sip:127.0.0.1:5072;transport=tcp
          weight: 50
      probing:
        intervalMs: 1000
"#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = SbcConfig::from_yaml(GOOD).expect("valid");
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.dispatcher.sets[0].algorithm, Algorithm::RoundRobin);
        assert_eq!(c.dispatcher.sets[0].probing.interval_ms, 1000);
        assert_eq!(c.dispatcher.sets[0].failover.max_attempts, 3);
        assert_eq!(c.admin.address, "127.0.0.1:9090".parse().unwrap());
        let again = SbcConfig::from_yaml(&c.to_yaml()).expect("round trip");
        assert_eq!(again, c);
    }

    #[test]
    fn nat_tests_are_chosen_by_kamailio_flags_and_others_refused() {
        let c = SbcConfig::from_yaml(GOOD).expect("valid");
        assert_eq!((c.relay.nat.detect, c.relay.nat.fix_contact), (19, true));
        let chosen = format!("{GOOD}relay:\n  nat:\n    detect: 17\n    fixContact: false\n");
        let c = SbcConfig::from_yaml(&chosen).expect("valid");
        assert_eq!((c.relay.nat.detect, c.relay.nat.fix_contact), (17, false));
        let err = SbcConfig::from_yaml(&chosen.replace("detect: 17", "detect: 64"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("relay.nat.detect: 64 names flags not supported"),
            "{err}"
        );
        let err = SbcConfig::from_yaml(&chosen.replace("fixContact", "fixContacts"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("relay.nat.fixContacts: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn unknown_algorithm_names_field_and_choices() {
        let bad = GOOD.replace("algorithm: 4", "algorithm: roundrobin");
        let err = SbcConfig::from_yaml(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "dispatcher.sets[0].algorithm: unknown value \"roundrobin\", expected one of"
            ),
            "{err}"
        );
        assert!(err.contains("\"round-robin\" (4)"), "{err}");
    }

    #[test]
    fn unknown_field_is_refused_with_path() {
        let bad = GOOD.replace("intervalMs: 1000", "intervalMS: 1000");
        let err = SbcConfig::from_yaml(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "dispatcher.sets[0].probing.intervalMS: unknown field `intervalMS`, expected one of"
            ),
            "{err}"
        );
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("sip:127.0.0.1:5071", "http://x"),
                "dispatcher.sets[0].destinations[0].uri: \"http://x\" is not a sip: or sips: URI",
            ),
            (
                GOOD.replace("weight: 50", "weight: 500"),
                "dispatcher.sets[0].destinations[1].weight: 500 is out of range 0..=100",
            ),
            (
                GOOD.replace("intervalMs: 1000", "intervalMs: 5"),
                "dispatcher.sets[0].probing.intervalMs: 5 is below the minimum of 100",
            ),
            (
                GOOD.replace("dispatcher:\n", "dispatcher:\n  dialogTimeoutSecs: 5\n"),
                "dispatcher.dialogTimeoutSecs: 5 is out of range 60..=604800",
            ),
            (
                GOOD.replace(
                    "address: 127.0.0.1:5060\n  - transport: tcp",
                    "address: 127.0.0.1:99999\n  - transport: tcp",
                ),
                "listeners[0].address: invalid socket address syntax",
            ),
        ];
        for (doc, want) in cases {
            let err = SbcConfig::from_yaml(&doc).unwrap_err().to_string();
            assert_eq!(err, want);
        }
    }

    #[test]
    fn duplicate_set_ids_are_refused() {
        let doc = r#"
listeners: [{transport: udp, address: "127.0.0.1:5060"}]
dispatcher:
  sets: [{id: 1}, {id: 1}]
"#;
        assert_eq!(
            SbcConfig::from_yaml(doc).unwrap_err().to_string(),
            "dispatcher.sets[1].id: set id 1 is used twice"
        );
    }

    #[test]
    fn failover_codes_match_classes_and_never_6xx() {
        let f = Failover::default();
        assert!(f.fails_over_on(503));
        assert!(f.fails_over_on(408));
        assert!(!f.fails_over_on(486));
        assert!(!f.fails_over_on(603));
    }
}
