//! Topology hiding (Kamailio's topoh, `relay.topology`; docs/topology.md): a pure rewrite of
//! each message crossing the border, run by the relay when a message arrives from an outside
//! peer ([`Topology::inbound`]) and when one leaves for an outside peer
//! ([`Topology::outbound`]). The transaction core in between sees the inside view of every
//! dialog; outside peers see only the sbc.
//!
//! What is hidden towards outside peers:
//! - **Via**: in a request the sbc relays outwards, the Vias below its own (the backend's) are
//!   packed into a `kth` parameter of its own Via and unpacked from the response.
//! - **Contact**: replaced by the sbc's own outside address, the real URI carried in the
//!   URI's `kth` parameter; a request from outside whose Request-URI is such a Contact gets
//!   the real URI back.
//! - **Record-Route**: entries that are not the sbc's are dropped (the outside's in-dialog
//!   requests come to the sbc, which sends them to the real Contact).
//! - **Call-ID**: a call from outside carries `prefix + Call-ID` inside; a call started inside
//!   is seen outside as [`INSIDE_MARK`] followed by its Call-ID in hex. Both map back.
//!
//! Hidden values are authenticated (HMAC-SHA256, 8-byte tag, with the first key of
//! `keyFile`; every key verifies): a `kth` value that does not verify is refused (403 for a
//! request, a dropped response), never decoded into a target.

use hmac::{Hmac, Mac};
use kubesbc_crds::config::{SbcConfig, TopologyConfig, Transport};
use sha2::Sha256;

use crate::relay::Local;
use crate::sip::uri::{self, Uri, Via};
use crate::sip::{HeaderName, Message, Method, StartLine};
use crate::transport::Peer;

/// The parameter (of a Via, or of the sbc's Contact URI) that carries a hidden value.
pub const PARAM: &str = "kth";

/// What a Call-ID of a call started inside starts with outside: the rest is its hex.
pub const INSIDE_MARK: &[u8] = b"kTh-";

const MAC_LEN: usize = 8;
/// The kind byte signed with a value: a Via token cannot stand in for a Contact.
const KIND_VIA: u8 = b'v';
const KIND_CONTACT: u8 = b'c';

/// Why a message from outside is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A `kth` value that does not verify with any key, or does not decode.
    #[error("Forbidden (bad topology parameter)")]
    BadToken,
}

impl Refused {
    /// The status the sender gets.
    pub fn code(self) -> u16 {
        403
    }

    /// The reason phrase.
    pub fn reason(self) -> &'static str {
        "Forbidden (bad topology parameter)"
    }
}

/// The topology stage, built from `relay.topology`.
pub struct Topology {
    hide: bool,
    prefix: Vec<u8>,
    /// The first signs, every one verifies.
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("hide", &self.hide)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// Maps a Call-ID seen on the wire back to the caller's original: strips `prefix` (a call
/// from outside, as a backend sees it). For the CDR tracker, which keys calls by the Call-ID
/// of the caller's INVITE.
pub fn original_call_id<'a>(prefix: &[u8], wire: &'a [u8]) -> &'a [u8] {
    if prefix.is_empty() {
        return wire;
    }
    wire.strip_prefix(prefix).unwrap_or(wire)
}

impl Topology {
    /// The stage for `cfg.relay.topology`; None when it is absent or does nothing.
    pub fn from_config(cfg: &SbcConfig) -> Option<Topology> {
        let t = cfg.relay.topology.as_ref()?;
        cfg.relay.inside.as_ref()?;
        let keys = if t.keys.is_empty() {
            if t.hide {
                tracing::warn!(
                    "relay.topology.keyFile not set: hidden values verify on this replica only"
                );
            }
            vec![random_key()]
        } else {
            t.keys.iter().map(|k| k.as_bytes().to_vec()).collect()
        };
        let top = Topology::new(t, keys);
        (top.hide || !top.prefix.is_empty()).then_some(top)
    }

    /// A stage with `cfg`'s settings and `keys` (the first signs).
    pub fn new(cfg: &TopologyConfig, keys: Vec<Vec<u8>>) -> Topology {
        Topology {
            hide: cfg.hide,
            prefix: cfg.call_id_prefix.as_bytes().to_vec(),
            keys,
        }
    }

    /// The Call-ID prefix towards inside peers.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// A message arrived from `from`: from an outside peer it gets the inside view (Call-ID
    /// prefixed, hidden Request-URI or Vias restored). None: nothing to change.
    pub fn inbound(
        &self,
        msg: &Message,
        from: &Peer,
        local: &Local,
    ) -> Result<Option<Vec<u8>>, Refused> {
        if local.is_inside(from.addr.ip()) {
            return Ok(None);
        }
        let mut start = None;
        if self.hide
            && let StartLine::Request { .. } = msg.start
        {
            let ruri = msg.request_uri();
            if let Some(u) = Uri::parse(ruri)
                && local.is_us(u.host, u.port)
                && let Some(v) = u.param(PARAM)
            {
                let real = self.open(KIND_CONTACT, v.unwrap_or(b""))?;
                let mut line = Vec::with_capacity(real.len() + 32);
                line.extend_from_slice(msg.method_token());
                line.push(b' ');
                line.extend_from_slice(&real);
                line.extend_from_slice(b" SIP/2.0\r\n");
                start = Some(line);
            }
        }
        let mut out = Rebuild::new(msg, start);
        let mut top_done = false;
        for h in &msg.headers {
            match h.name {
                HeaderName::CallId if !self.prefix.is_empty() => {
                    let id = msg.slice(h.value);
                    let inside = match id.strip_prefix(INSIDE_MARK).and_then(unhex) {
                        Some(orig) => orig,
                        None => [self.prefix.as_slice(), id].concat(),
                    };
                    out.replace(h, &[inside]);
                }
                HeaderName::Via if self.hide && !msg.is_request() && !top_done => {
                    top_done = true;
                    let mut vals: Vec<Vec<u8>> = Vec::new();
                    for (i, span) in
                        crate::sip::parse::split_values(msg.bytes(), h.value).enumerate()
                    {
                        let v = msg.slice(span);
                        if i == 0
                            && let Some(p) = Via::parse(v)
                            && let Some(tok) = p.param(PARAM)
                        {
                            let packed = self.open(KIND_VIA, tok.unwrap_or(b""))?;
                            vals.push(without_param(v, PARAM));
                            vals.push(packed);
                        } else {
                            vals.push(v.to_vec());
                        }
                    }
                    out.replace(h, &vals);
                }
                _ => out.keep(h),
            }
        }
        Ok(out.finish())
    }

    /// A message leaves for `to`: towards an outside peer, the inside is hidden and the
    /// Call-ID mapped back. None: nothing to change.
    pub fn outbound(&self, msg: &Message, to: &Peer, local: &Local) -> Option<Vec<u8>> {
        if local.is_inside(to.addr.ip()) {
            return None;
        }
        let request = msg.is_request();
        let register = msg.method() == Some(Method::Register)
            || msg
                .cseq()
                .is_some_and(|(_, m)| m.eq_ignore_ascii_case(b"REGISTER"));
        let mut out = Rebuild::new(msg, None);
        let mut vias: Vec<&[u8]> = Vec::new();
        let mut via_header = None;
        for h in &msg.headers {
            match h.name {
                HeaderName::CallId if !self.prefix.is_empty() => {
                    let id = msg.slice(h.value);
                    let outside = match id.strip_prefix(self.prefix.as_slice()) {
                        Some(orig) => orig.to_vec(),
                        None => [INSIDE_MARK, &hex(id)].concat(),
                    };
                    out.replace(h, &[outside]);
                }
                HeaderName::Via if self.hide && request => {
                    // Gathered, then written where the first Via line was.
                    vias.extend(
                        crate::sip::parse::split_values(msg.bytes(), h.value).map(|s| msg.slice(s)),
                    );
                    if via_header.is_none() {
                        via_header = Some(h);
                        out.placeholder(h);
                    } else {
                        out.drop(h);
                    }
                }
                HeaderName::RecordRoute if self.hide => {
                    let ours: Vec<Vec<u8>> = crate::sip::parse::split_values(msg.bytes(), h.value)
                        .map(|s| msg.slice(s))
                        .filter(|v| {
                            Uri::parse(uri::name_addr_uri(v))
                                .is_some_and(|u| local.is_us(u.host, u.port))
                        })
                        .map(<[u8]>::to_vec)
                        .collect();
                    out.replace(h, &ours);
                }
                HeaderName::Contact if self.hide && !register => {
                    let vals: Vec<Vec<u8>> = crate::sip::parse::split_values(msg.bytes(), h.value)
                        .map(|s| self.hide_contact(msg.slice(s), to.transport, local))
                        .collect();
                    out.replace(h, &vals);
                }
                _ => out.keep(h),
            }
        }
        if let Some(h) = via_header {
            let mut vals = Vec::with_capacity(1);
            if let Some((top, rest)) = vias.split_first() {
                let mut v = top.to_vec();
                if !rest.is_empty() {
                    v.extend_from_slice(b";");
                    v.extend_from_slice(PARAM.as_bytes());
                    v.push(b'=');
                    v.extend_from_slice(&self.seal(KIND_VIA, &rest.join(&b", "[..])));
                }
                vals.push(v);
            }
            out.fill(h, &vals);
        }
        out.finish()
    }

    /// The sbc's own outside Contact standing for `value` (a Contact header value).
    fn hide_contact(&self, value: &[u8], t: Transport, local: &Local) -> Vec<u8> {
        let real = uri::name_addr_uri(value);
        match Uri::parse(real) {
            Some(u) if local.is_us(u.host, u.port) => return value.to_vec(),
            None => return value.to_vec(),
            Some(_) => {}
        }
        let params = uri::name_addr_params(value);
        let (host, port) = local.sent_by(t);
        let mut v = Vec::with_capacity(64 + real.len() * 2);
        v.extend_from_slice(b"<sip:");
        v.extend_from_slice(host.as_bytes());
        v.push(b':');
        v.extend_from_slice(&crate::sip::build::itoa(port));
        if t != Transport::Udp {
            v.extend_from_slice(b";transport=");
            v.extend_from_slice(t.name().as_bytes());
        }
        v.push(b';');
        v.extend_from_slice(PARAM.as_bytes());
        v.push(b'=');
        v.extend_from_slice(&self.seal(KIND_CONTACT, real));
        v.push(b'>');
        if !params.is_empty() {
            v.push(b';');
            v.extend_from_slice(params);
        }
        v
    }

    fn mac(key: &[u8], kind: u8, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        m.update(&[kind]);
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// `data` and its tag, in hex (a token: fits a URI or Via parameter as is).
    fn seal(&self, kind: u8, data: &[u8]) -> Vec<u8> {
        let key = self.keys.first().map_or(&[][..], Vec::as_slice);
        let mut raw = Vec::with_capacity(data.len() + MAC_LEN);
        raw.extend_from_slice(data);
        raw.extend_from_slice(&Self::mac(key, kind, data));
        hex(&raw)
    }

    /// The value a token carries, if some key verifies it.
    fn open(&self, kind: u8, token: &[u8]) -> Result<Vec<u8>, Refused> {
        let raw = unhex(token).ok_or(Refused::BadToken)?;
        let n = raw.len().checked_sub(MAC_LEN).ok_or(Refused::BadToken)?;
        let (data, tag) = raw.split_at(n);
        let ok = self.keys.iter().any(|k| {
            Self::mac(k, kind, data)
                .iter()
                .zip(tag)
                .fold(0, |a, (x, y)| a | (x ^ y))
                == 0
        });
        if !ok {
            return Err(Refused::BadToken);
        }
        Ok(data.to_vec())
    }
}

fn random_key() -> Vec<u8> {
    (0..4)
        .flat_map(|_| fastrand::u64(..).to_le_bytes())
        .collect()
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() * 2);
    for c in b {
        out.push(HEX[(c >> 4) as usize]);
        out.push(HEX[(c & 15) as usize]);
    }
    out
}

fn unhex(h: &[u8]) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    h.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// A Via value without its `;name=...` parameter.
fn without_param(v: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    for (i, part) in v.split(|c| *c == b';').enumerate() {
        let pname = part.split(|c| *c == b'=').next().unwrap_or(b"");
        if i > 0 && pname.trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        if i > 0 {
            out.push(b';');
        }
        out.extend_from_slice(part);
    }
    out
}

/// A message written again header by header: lines kept as they are, some replaced.
struct Rebuild<'a> {
    msg: &'a Message,
    out: Vec<u8>,
    changed: bool,
    /// Where the placeholder of a header to be filled later is, and its name.
    hole: Option<(usize, &'a crate::sip::Header)>,
}

impl<'a> Rebuild<'a> {
    fn new(msg: &'a Message, start: Option<Vec<u8>>) -> Rebuild<'a> {
        let mut out = Vec::with_capacity(msg.bytes().len() + 256);
        let changed = start.is_some();
        match start {
            Some(line) => out.extend_from_slice(&line),
            None => out.extend_from_slice(msg.slice(msg.start_line)),
        }
        Rebuild {
            msg,
            out,
            changed,
            hole: None,
        }
    }

    fn keep(&mut self, h: &crate::sip::Header) {
        self.out.extend_from_slice(self.msg.slice(h.line));
    }

    fn drop(&mut self, _h: &crate::sip::Header) {
        self.changed = true;
    }

    /// Writes `h` with `values` (none: the header goes).
    fn replace<V: AsRef<[u8]>>(&mut self, h: &crate::sip::Header, values: &[V]) {
        let same = values.len() == 1 && values[0].as_ref() == self.msg.slice(h.value);
        if same {
            return self.keep(h);
        }
        self.changed = true;
        if values.is_empty() {
            return;
        }
        self.out.extend_from_slice(self.msg.slice(h.name_span));
        self.out.extend_from_slice(b": ");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.extend_from_slice(b", ");
            }
            self.out.extend_from_slice(v.as_ref());
        }
        self.out.extend_from_slice(b"\r\n");
    }

    fn placeholder(&mut self, h: &'a crate::sip::Header) {
        self.hole = Some((self.out.len(), h));
    }

    /// Writes `h` with `values` at its placeholder.
    fn fill(&mut self, h: &crate::sip::Header, values: &[Vec<u8>]) {
        let Some((at, _)) = self.hole.take() else {
            return;
        };
        let tail = self.out.split_off(at);
        let before = self.out.len();
        self.replace(h, values);
        // A lone Via value equal to the original line is no change; anything else is.
        if self.out.len() - before != self.msg.slice(h.line).len()
            || self.out[before..] != *self.msg.slice(h.line)
        {
            self.changed = true;
        }
        self.out.extend_from_slice(&tail);
    }

    fn finish(mut self) -> Option<Vec<u8>> {
        if !self.changed {
            return None;
        }
        let m = self.msg;
        self.out.extend_from_slice(&m.bytes()[m.headers_end..]);
        Some(self.out)
    }
}
