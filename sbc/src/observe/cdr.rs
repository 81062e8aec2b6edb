//! CDRs from the messages that cross the border (what Kamailio's acc and dialog modules
//! give): an initial INVITE received opens a call; the INVITEs sent for it name the backends
//! tried (failover attempts); the final response sent back closes an attempt, or a 2xx makes
//! it a call that the 200 to its BYE (or a timeout) closes.
//!
//! Keyed by the inside view of the Call-ID: with topology hiding's Call-ID mapping
//! ([`CallIdMap`]), the caller's `abc` and the backend's `CF-abc` are one call, whose record
//! carries the Call-ID the caller used. Bounded: at most `max_calls` calls
//! are followed; one more is counted in [`CdrTracker::overflow`] and gets no record.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::sniff::{self, First};
use super::{Seen, lossy, unix};
use crate::sip::uri;
use crate::telemetry::Direction;
use crate::transport::Peer;

/// Which dispatcher destination an address is: `(set, uri)`.
pub type DestinationOf = Arc<dyn Fn(SocketAddr) -> Option<(u32, String)> + Send + Sync>;

/// A call not answered within this is forgotten with disposition `no_final`.
const UNANSWERED_LIMIT: Duration = Duration::from_secs(300);
/// After a BYE, how long the 200 may take before the call is closed anyway.
const BYE_WAIT: Duration = Duration::from_secs(32);

/// One CDR, written as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cdr {
    /// Always `cdr`.
    pub kind: &'static str,
    /// `attempt` (no 2xx) or `call` (answered, then ended).
    #[serde(rename = "type")]
    pub record_type: &'static str,
    /// Always `INVITE`.
    pub method: &'static str,
    /// The Call-ID.
    pub call_id: String,
    /// The caller's From tag.
    pub from_tag: Option<String>,
    /// The callee's To tag (from the final response).
    pub to_tag: Option<String>,
    /// The From URI.
    pub caller: String,
    /// The To URI.
    pub callee: String,
    /// The Request-URI of the INVITE received.
    pub request_uri: String,
    /// The final status code sent to the caller (0: none before the record was closed).
    pub code: u16,
    /// Its reason phrase.
    pub reason: String,
    /// Unix time the INVITE was received.
    pub start: f64,
    /// Unix time of the 2xx.
    pub answer: Option<f64>,
    /// Unix time the attempt or call ended.
    pub end: f64,
    /// Seconds from answer to end (0 for attempts).
    pub duration_secs: f64,
    /// Milliseconds from the INVITE to the first 18x or 2xx sent back.
    pub setup_ms: Option<u64>,
    /// The caller's address.
    pub source: String,
    /// The caller's transport.
    pub transport: &'static str,
    /// The backend that took the call (its dispatcher URI, else its address).
    pub backend: Option<String>,
    /// The dispatcher set of that backend.
    pub set: Option<u32>,
    /// Tenant id, from the header the throttles read (absent without throttles).
    pub tenant: Option<String>,
    /// The replica that relayed it.
    pub replica: String,
    /// Backends tried after the first.
    pub failover_attempts: u32,
    /// answered, busy, cancelled, no_answer, challenged, rejected, failed, expired, no_final.
    pub disposition: &'static str,
    /// For calls: `caller`, `callee` (who sent the BYE) or `timeout`.
    pub ended_by: Option<&'static str>,
}

/// A call in progress, as `/dialogs` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DialogEntry {
    /// The Call-ID.
    pub call_id: String,
    /// `early` (not answered yet) or `confirmed`.
    pub state: String,
    /// From URI.
    pub caller: String,
    /// To URI.
    pub callee: String,
    /// The caller's address.
    pub source: String,
    /// The backend it went to.
    pub backend: Option<String>,
    /// Seconds since the INVITE.
    pub age_secs: u64,
    /// Tenant id, if known.
    pub tenant: Option<String>,
}

struct Call {
    /// The Call-ID as the caller sent it.
    call_id: String,
    from_tag: Option<String>,
    to_tag: Option<String>,
    caller: String,
    callee: String,
    request_uri: String,
    source: Peer,
    tenant: Option<String>,
    start: SystemTime,
    setup: Option<Duration>,
    answer: Option<SystemTime>,
    /// Peers the INVITE was sent to, in order, without retransmissions.
    tried: Vec<Peer>,
    code: u16,
    reason: String,
    bye: Option<(SystemTime, &'static str)>,
}

/// What one observed message changed.
#[derive(Debug, Default)]
pub struct Effects {
    /// A record closed by this message.
    pub cdr: Option<Cdr>,
    /// Setup time of a call that just rang or was answered.
    pub setup: Option<Duration>,
}

/// Topology hiding's Call-ID mapping ([`crate::relay::Relay::call_id_map`]): the inside
/// view of a Call-ID seen on the wire with a peer, None when it is the same.
pub type CallIdMap = Arc<dyn Fn(&[u8], &Peer) -> Option<Vec<u8>> + Send + Sync>;

/// Follows calls and closes their records.
pub struct CdrTracker {
    /// Keyed by the Call-ID's bytes, so a lookup allocates nothing.
    calls: HashMap<Box<[u8]>, Call>,
    max_calls: usize,
    max_call: Duration,
    tenant_headers: Vec<String>,
    replica: String,
    destination_of: DestinationOf,
    call_ids: Option<CallIdMap>,
    /// Calls that got no record because `max_calls` were followed already.
    pub overflow: u64,
}

impl CdrTracker {
    /// A tracker following at most `max_calls` calls, closing answered ones after `max_call`.
    pub fn new(
        max_calls: usize,
        max_call: Duration,
        tenant_headers: Vec<String>,
        replica: String,
        destination_of: DestinationOf,
    ) -> CdrTracker {
        CdrTracker {
            calls: HashMap::new(),
            max_calls,
            max_call,
            tenant_headers,
            replica,
            destination_of,
            call_ids: None,
            overflow: 0,
        }
    }

    /// Follows calls across topology hiding's border (see [`CallIdMap`]).
    pub fn with_call_ids(mut self, call_ids: Option<CallIdMap>) -> CdrTracker {
        self.call_ids = call_ids;
        self
    }

    /// Calls answered and not ended.
    pub fn confirmed(&self) -> usize {
        self.calls.values().filter(|c| c.answer.is_some()).count()
    }

    /// The calls followed now.
    pub fn dialogs(&self, now: SystemTime) -> Vec<DialogEntry> {
        let mut v: Vec<DialogEntry> = self
            .calls
            .values()
            .map(|c| DialogEntry {
                call_id: c.call_id.clone(),
                state: if c.answer.is_some() {
                    "confirmed"
                } else {
                    "early"
                }
                .to_owned(),
                caller: c.caller.clone(),
                callee: c.callee.clone(),
                source: c.source.addr.to_string(),
                backend: c.tried.last().map(|p| self.backend_name(p.addr).0),
                age_secs: now.duration_since(c.start).unwrap_or_default().as_secs(),
                tenant: c.tenant.clone(),
            })
            .collect();
        v.sort_by(|a, b| b.age_secs.cmp(&a.age_secs).then(a.call_id.cmp(&b.call_id)));
        v
    }

    fn backend_name(&self, addr: SocketAddr) -> (String, Option<u32>) {
        match (self.destination_of)(addr) {
            Some((set, uri)) => (uri, Some(set)),
            None => (addr.to_string(), None),
        }
    }

    /// Takes one observed message.
    pub fn on_message(&mut self, s: &Seen<'_>) -> Effects {
        let m = s.sniff;
        // Bounded like the records: a huge Call-ID does not make a huge key.
        let wire = &m.call_id[..m.call_id.len().min(512)];
        if wire.is_empty() {
            return Effects::default();
        }
        let key = match self.call_ids.as_ref().and_then(|f| f(wire, &s.peer)) {
            Some(inside) => std::borrow::Cow::Owned(inside),
            None => std::borrow::Cow::Borrowed(wire),
        };
        let call_id: &[u8] = &key;
        match m.first {
            First::Request { method, uri } => {
                let initial = uri::tag(m.to).is_none();
                match (method, s.direction) {
                    (b"INVITE", Direction::In) if initial => {
                        if self.calls.contains_key(call_id) {
                            return Effects::default();
                        }
                        if self.calls.len() >= self.max_calls {
                            self.overflow += 1;
                            return Effects::default();
                        }
                        let tenant = self
                            .tenant_headers
                            .iter()
                            .find_map(|h| sniff::header(s.data, h.as_bytes()))
                            .map(lossy);
                        self.calls.insert(
                            call_id.into(),
                            Call {
                                call_id: lossy(wire),
                                from_tag: uri::tag(m.from).map(lossy),
                                to_tag: None,
                                caller: lossy(uri::name_addr_uri(m.from)),
                                callee: lossy(uri::name_addr_uri(m.to)),
                                request_uri: lossy(uri),
                                source: s.peer,
                                tenant,
                                start: s.at,
                                setup: None,
                                answer: None,
                                tried: Vec::new(),
                                code: 0,
                                reason: String::new(),
                                bye: None,
                            },
                        );
                    }
                    (b"INVITE", Direction::Out) if initial => {
                        if let Some(c) = self.calls.get_mut(call_id)
                            && c.tried.last() != Some(&s.peer)
                            && c.tried.len() < 64
                        {
                            c.tried.push(s.peer);
                        }
                    }
                    (b"BYE", Direction::In) => {
                        if let Some(c) = self.calls.get_mut(call_id)
                            && c.answer.is_some()
                            && c.bye.is_none()
                        {
                            let by = if same_side(&s.peer, &c.source) {
                                "caller"
                            } else {
                                "callee"
                            };
                            c.bye = Some((s.at, by));
                        }
                    }
                    _ => {}
                }
                Effects::default()
            }
            First::Response { code, reason } => {
                if m.cseq_method == b"BYE" {
                    let closes = self
                        .calls
                        .get(call_id)
                        .is_some_and(|c| c.bye.is_some() && (200..300).contains(&code));
                    if closes && let Some(c) = self.calls.remove(call_id) {
                        let by = c.bye.map(|b| b.1);
                        return Effects {
                            cdr: Some(self.close(c, s.at, by)),
                            setup: None,
                        };
                    }
                    return Effects::default();
                }
                // Responses sent (Out) go back to the caller: they are what the caller saw.
                if m.cseq_method != b"INVITE" || s.direction != Direction::Out {
                    return Effects::default();
                }
                let Some(c) = self.calls.get_mut(call_id) else {
                    return Effects::default();
                };
                let mut fx = Effects::default();
                if (180..300).contains(&code) && c.setup.is_none() {
                    let d = s.at.duration_since(c.start).unwrap_or_default();
                    c.setup = Some(d);
                    fx.setup = Some(d);
                }
                if code < 200 || c.answer.is_some() {
                    return fx;
                }
                c.code = code;
                c.reason = lossy(reason);
                c.to_tag = uri::tag(m.to).map(lossy);
                if code < 300 {
                    c.answer = Some(s.at);
                    return fx;
                }
                if let Some(c) = self.calls.remove(call_id) {
                    fx.cdr = Some(self.close(c, s.at, None));
                }
                fx
            }
        }
    }

    /// Closes calls whose time is up; returns their records.
    pub fn sweep(&mut self, now: SystemTime) -> Vec<Cdr> {
        let max_call = self.max_call;
        let due: Vec<Box<[u8]>> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
                match (c.answer, c.bye) {
                    (_, Some((t, _))) => age(t) > BYE_WAIT,
                    (Some(t), None) => age(t) > max_call,
                    (None, None) => age(c.start) > UNANSWERED_LIMIT,
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            if let Some(c) = self.calls.remove(&id) {
                let by = match c.bye {
                    Some((_, by)) => Some(by),
                    None if c.answer.is_some() => Some("timeout"),
                    None => None,
                };
                let end = c.bye.map_or(now, |b| b.0);
                out.push(self.close(c, end, by));
            }
        }
        out
    }

    fn close(&self, c: Call, end: SystemTime, by: Option<&'static str>) -> Cdr {
        let answered = c.answer.is_some();
        let disposition = if answered {
            if by == Some("timeout") {
                "expired"
            } else {
                "answered"
            }
        } else {
            disposition(c.code)
        };
        let (backend, set) = match c.tried.last() {
            Some(p) => {
                let (b, s) = self.backend_name(p.addr);
                (Some(b), s)
            }
            None => (None, None),
        };
        Cdr {
            kind: "cdr",
            record_type: if answered { "call" } else { "attempt" },
            method: "INVITE",
            call_id: c.call_id,
            from_tag: c.from_tag,
            to_tag: c.to_tag,
            caller: c.caller,
            callee: c.callee,
            request_uri: c.request_uri,
            code: c.code,
            reason: c.reason,
            start: unix(c.start),
            answer: c.answer.map(unix),
            end: unix(end),
            duration_secs: c.answer.map_or(0.0, |a| {
                (end.duration_since(a).unwrap_or_default().as_millis() as f64) / 1000.0
            }),
            setup_ms: c
                .setup
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            source: c.source.addr.to_string(),
            transport: c.source.transport.name(),
            backend,
            set,
            tenant: c.tenant,
            replica: self.replica.clone(),
            failover_attempts: u32::try_from(c.tried.len().saturating_sub(1)).unwrap_or(0),
            disposition,
            ended_by: if answered { by } else { None },
        }
    }
}

/// The same remote side: same address, or (streams) same connection.
fn same_side(a: &Peer, b: &Peer) -> bool {
    a.addr == b.addr || (a.flow.is_some() && a.flow == b.flow)
}

/// The disposition of a call that ended with `code` and no 2xx.
fn disposition(code: u16) -> &'static str {
    match code {
        0 => "no_final",
        486 | 600 => "busy",
        487 => "cancelled",
        408 | 480 => "no_answer",
        401 | 407 => "challenged",
        403 | 603 => "rejected",
        _ => "failed",
    }
}

#[cfg(test)]
#[path = "cdr_tests.rs"]
mod tests;
