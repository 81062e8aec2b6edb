//! Registration events: each REGISTER received and the final response sent back make one
//! event (user, contact, expires, source, transport, outcome), and successful ones keep the
//! binding table `sbc ctl registrations` lists (what passed through this sbc, like
//! `kamctl online`). Bounded: at most `max` pending REGISTERs and `max` bindings.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Seen, lossy, unix};
use crate::sip::parse::parse_u32;
use crate::sip::{HeaderName, Message, Method, StartLine, uri};
use crate::telemetry::Direction;
use crate::transport::Peer;

/// A REGISTER with no final response after this is forgotten.
const PENDING_LIMIT: Duration = Duration::from_secs(32);

/// One REGISTER outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistrationEvent {
    /// Always `registration`.
    pub kind: &'static str,
    /// The address of record (To URI).
    pub user: String,
    /// The Contact registered (first one of the request; `*` for remove-all).
    pub contact: Option<String>,
    /// Seconds granted (from the 2xx) or asked for.
    pub expires: Option<u32>,
    /// The client's address.
    pub source: String,
    /// The client's transport.
    pub transport: &'static str,
    /// The final status code.
    pub code: u16,
    /// `ok` (2xx), `challenged` (401/407) or `failed`.
    pub result: &'static str,
    /// Unix time of the response.
    pub time: f64,
    /// The replica that relayed it.
    pub replica: String,
    /// The Call-ID of the REGISTER.
    pub call_id: String,
}

/// One binding, as `/registrations` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingEntry {
    /// Address of record.
    pub user: String,
    /// Contact URI.
    pub contact: String,
    /// Client address.
    pub source: String,
    /// Client transport.
    pub transport: String,
    /// Seconds left.
    pub expires_in: u64,
}

struct Pending {
    user: String,
    contact: Option<String>,
    expires: Option<u32>,
    source: Peer,
    at: SystemTime,
}

struct Binding {
    source: Peer,
    until: SystemTime,
}

/// Follows REGISTER transactions and the bindings they made.
pub struct RegistrationTracker {
    pending: HashMap<(String, u32), Pending>,
    bindings: BTreeMap<(String, String), Binding>,
    max: usize,
    replica: String,
    /// REGISTERs or bindings not followed because the tables were full.
    pub overflow: u64,
}

impl RegistrationTracker {
    /// A tracker with tables of at most `max` entries each.
    pub fn new(max: usize, replica: String) -> RegistrationTracker {
        RegistrationTracker {
            pending: HashMap::new(),
            bindings: BTreeMap::new(),
            max,
            replica,
            overflow: 0,
        }
    }

    /// Bindings alive now.
    pub fn bindings(&self, now: SystemTime) -> Vec<BindingEntry> {
        self.bindings
            .iter()
            .filter_map(|((user, contact), b)| {
                let left = b.until.duration_since(now).ok()?;
                Some(BindingEntry {
                    user: user.clone(),
                    contact: contact.clone(),
                    source: b.source.addr.to_string(),
                    transport: b.source.transport.name().to_owned(),
                    expires_in: left.as_secs(),
                })
            })
            .collect()
    }

    /// Number of bindings (expired ones go at the next sweep).
    pub fn binding_count(&self) -> usize {
        self.bindings.len()
    }

    /// Takes one observed message; returns the event a final response completes.
    pub fn on_message(&mut self, s: &Seen<'_>) -> Option<RegistrationEvent> {
        if s.sniff.cseq_method != b"REGISTER" {
            return None;
        }
        // REGISTER and its answers are parsed in full (several Contacts, their parameters);
        // they are few next to the messages of calls.
        let msg = Message::parse_checked(s.data.clone(), usize::from(u16::MAX)).ok()?;
        let msg = &msg;
        let (cseq, method) = msg.cseq()?;
        if method != b"REGISTER" {
            return None;
        }
        let key = (lossy(msg.call_id()?), cseq);
        match (msg.start, s.direction) {
            (
                StartLine::Request {
                    method: Method::Register,
                    ..
                },
                Direction::In,
            ) => {
                if self.pending.contains_key(&key) {
                    return None;
                }
                if self.pending.len() >= self.max {
                    self.overflow += 1;
                    return None;
                }
                let to = msg.header_value(HeaderName::To).unwrap_or(b"");
                let contact = msg.header_value(HeaderName::Contact);
                let expires = contact
                    .and_then(contact_expires)
                    .or_else(|| msg.header_value_named("Expires").and_then(parse_u32));
                self.pending.insert(
                    key,
                    Pending {
                        user: lossy(uri::name_addr_uri(to)),
                        contact: contact.map(|c| lossy(first_contact(c))),
                        expires,
                        source: s.peer,
                        at: s.at,
                    },
                );
                None
            }
            (StartLine::Response { code, .. }, Direction::Out) if code >= 200 => {
                let p = self.pending.remove(&key)?;
                let ok = (200..300).contains(&code);
                let mut expires = p.expires;
                if ok {
                    // The registrar's grant wins: the Contact of ours in the 2xx, or Expires.
                    let granted = p.contact.as_deref().and_then(|mine| {
                        msg.values(HeaderName::Contact)
                            .map(|v| msg.slice(v))
                            .find(|v| uri::name_addr_uri(v) == mine.as_bytes())
                            .and_then(contact_expires)
                    });
                    expires = granted
                        .or_else(|| msg.header_value_named("Expires").and_then(parse_u32))
                        .or(expires);
                    self.bind(&p, expires, s.at);
                }
                Some(RegistrationEvent {
                    kind: "registration",
                    user: p.user,
                    contact: p.contact,
                    expires,
                    source: p.source.addr.to_string(),
                    transport: p.source.transport.name(),
                    code,
                    result: match code {
                        200..=299 => "ok",
                        401 | 407 => "challenged",
                        _ => "failed",
                    },
                    time: unix(s.at),
                    replica: self.replica.clone(),
                    call_id: key.0,
                })
            }
            _ => None,
        }
    }

    fn bind(&mut self, p: &Pending, expires: Option<u32>, now: SystemTime) {
        let Some(contact) = &p.contact else {
            return;
        };
        if contact == "*" {
            self.bindings.retain(|(u, _), _| *u != p.user);
            return;
        }
        let key = (p.user.clone(), contact.clone());
        let secs = expires.unwrap_or(3600);
        if secs == 0 {
            self.bindings.remove(&key);
            return;
        }
        if !self.bindings.contains_key(&key) && self.bindings.len() >= self.max {
            self.overflow += 1;
            return;
        }
        self.bindings.insert(
            key,
            Binding {
                source: p.source,
                until: now + Duration::from_secs(u64::from(secs)),
            },
        );
    }

    /// Forgets REGISTERs never answered and bindings expired.
    pub fn sweep(&mut self, now: SystemTime) {
        self.pending
            .retain(|_, p| now.duration_since(p.at).unwrap_or_default() < PENDING_LIMIT);
        self.bindings.retain(|_, b| b.until > now);
    }
}

/// The first Contact value's URI (`*` stays `*`).
fn first_contact(v: &[u8]) -> &[u8] {
    let first = v.split(|c| *c == b',').next().unwrap_or(v);
    let t = first.trim_ascii();
    if t == b"*" { t } else { uri::name_addr_uri(t) }
}

/// The `expires` parameter of a Contact value.
fn contact_expires(v: &[u8]) -> Option<u32> {
    let first = v.split(|c| *c == b',').next().unwrap_or(v);
    uri::param(uri::name_addr_params(first), "expires")
        .flatten()
        .and_then(parse_u32)
}
