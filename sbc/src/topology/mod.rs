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
//! - **Record-Route**: the sbc's outside entry carries, in its `kth`, the entries on its
//!   inside (the sbc's inside entry and whatever the inside recorded), so the outside sees one
//!   hop; a Route (request) or Record-Route (response) from outside naming that entry gets
//!   them back, in the order its side needs.
//! - **Call-ID**: a call from outside carries `prefix + Call-ID` inside; a call started inside
//!   is seen outside as [`INSIDE_MARK`] followed by its Call-ID sealed (deterministically:
//!   one Call-ID, one outside form, as a dialog needs). Both map back.
//!
//! Hidden values are encrypted and authenticated (AES-256-GCM under a key derived from the
//! first key of `keyFile`; every key's opens): outside peers cannot read them, and a `kth`
//! value that does not open is refused (403 for a request, a dropped response), never
//! decoded into a target.

mod seal;

use kubesbc_crds::config::{SbcConfig, TopologyConfig, Transport};

use crate::relay::Local;
use crate::sip::parse::Span;
use crate::sip::uri::{self, Uri, Via};
use crate::sip::{HeaderName, Message, Method, StartLine};
use crate::transport::Peer;
use seal::Sealer;
#[cfg(test)]
use seal::hex;
pub use seal::random_key;

/// The parameter (of a Via, or of the sbc's Contact URI) that carries a hidden value.
pub const PARAM: &str = "kth";

/// What a Call-ID of a call started inside starts with outside: the rest is it, sealed.
pub const INSIDE_MARK: &[u8] = b"kTh-";

/// The kind byte authenticated with a value: a Via token cannot stand in for a Contact.
const KIND_VIA: u8 = b'v';
const KIND_CONTACT: u8 = b'c';
const KIND_ROUTE: u8 = b'r';
const KIND_CALL_ID: u8 = b'i';

/// Why a message from outside is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A `kth` value that does not open with any key, or does not decode.
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
    /// Seals and opens the hidden values.
    sealer: Sealer,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("hide", &self.hide)
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .field("keys", &self.sealer.keys())
            .finish()
    }
}

/// Which side of the sbc's outside Record-Route entry the hidden entries were on.
const SIDE_AFTER: u8 = b'a';
const SIDE_BEFORE: u8 = b'b';

impl Topology {
    /// The stage for `cfg.relay.topology`; None when it is absent or does nothing. Without a
    /// `keyFile` the values are signed with `own_key` (the process's own, kept across
    /// reloads so dialogs set up before a reload still verify).
    pub fn from_config(cfg: &SbcConfig, own_key: &[u8]) -> Option<Topology> {
        let t = cfg.relay.topology.as_ref()?;
        cfg.relay.inside.as_ref()?;
        let keys = if t.keys.is_empty() {
            vec![own_key.to_vec()]
        } else {
            t.keys.iter().map(|k| k.as_bytes().to_vec()).collect()
        };
        let top = Topology::new(t, keys);
        (top.hide || !top.prefix.is_empty()).then_some(top)
    }

    /// A stage with `cfg`'s settings and `keys` (the first seals, every one opens).
    pub fn new(cfg: &TopologyConfig, keys: Vec<Vec<u8>>) -> Topology {
        Topology {
            hide: cfg.hide,
            prefix: cfg.call_id_prefix.as_bytes().to_vec(),
            sealer: Sealer::new(&keys),
        }
    }

    /// The inside view of a Call-ID an outside peer sent (or was sent): a call started
    /// inside comes back from its [`INSIDE_MARK`] form, any other gets the prefix. The relay
    /// maps every message from outside with this, and the CDR tracker keys calls by it, so
    /// both sides of one call are one call.
    pub fn inside_call_id<'a>(&self, outside: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        use std::borrow::Cow;
        if self.prefix.is_empty() {
            return Cow::Borrowed(outside);
        }
        match outside
            .strip_prefix(INSIDE_MARK)
            .and_then(|t| self.sealer.open(KIND_CALL_ID, t).ok())
        {
            Some(orig) => Cow::Owned(orig),
            None => Cow::Owned([&self.prefix, outside].concat()),
        }
    }

    /// The outside view of an inside Call-ID.
    fn outside_call_id(&self, id: &[u8]) -> Vec<u8> {
        match id.strip_prefix(self.prefix.as_slice()) {
            Some(orig) => orig.to_vec(),
            None => [INSIDE_MARK, &self.sealer.seal_fixed(KIND_CALL_ID, id)].concat(),
        }
    }

    /// The Call-ID prefix towards inside peers.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// A message arrived from `from`: from an outside peer it gets the inside view (Call-ID
    /// prefixed; hidden Request-URI, Route, Record-Route and Vias restored). None: nothing
    /// to change. A hidden value that does not verify refuses the message.
    pub fn inbound(
        &self,
        msg: &Message,
        from: &Peer,
        local: &Local,
    ) -> Result<Option<Vec<u8>>, Refused> {
        if local.is_inside(from.addr.ip()) {
            return Ok(None);
        }
        let request = msg.is_request();
        let mut start = None;
        if self.hide
            && let StartLine::Request { .. } = msg.start
        {
            let ruri = msg.request_uri();
            if let Some(u) = Uri::parse(ruri)
                && local.is_us(u.host, u.port)
                && let Some(v) = u.param(PARAM)
            {
                let real = self.sealer.open(KIND_CONTACT, v.unwrap_or(b""))?;
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
                    let id = self.inside_call_id(msg.slice(h.value));
                    out.replace(h, &[id]);
                }
                HeaderName::Via if self.hide && !request && !top_done => {
                    top_done = true;
                    let mut vals: Vec<Vec<u8>> = Vec::new();
                    for (i, span) in values(msg, h).enumerate() {
                        let v = msg.slice(span);
                        if i == 0
                            && let Some(p) = Via::parse(v)
                            && let Some(tok) = p.param(PARAM)
                        {
                            let packed = self.sealer.open(KIND_VIA, tok.unwrap_or(b""))?;
                            vals.push(without_param(v, PARAM));
                            vals.push(packed);
                        } else {
                            vals.push(v.to_vec());
                        }
                    }
                    out.replace(h, &vals);
                }
                // A Route of an in-dialog request, or the Record-Route of a response to a
                // request the sbc sent out: the entries hidden in the sbc's own come back.
                HeaderName::Route | HeaderName::RecordRoute
                    if self.hide && (request == (h.name == HeaderName::Route)) =>
                {
                    let mut vals: Vec<Vec<u8>> = Vec::new();
                    for span in values(msg, h) {
                        let v = msg.slice(span);
                        match self.route_token(v, local) {
                            Some(tok) => {
                                let packed = self.sealer.open(KIND_ROUTE, tok)?;
                                let (side, hidden) =
                                    packed.split_first().ok_or(Refused::BadToken)?;
                                let mut hidden: Vec<Vec<u8>> =
                                    split_list(hidden).map(<[u8]>::to_vec).collect();
                                let own = without_uri_param(v, PARAM);
                                match (*side, request) {
                                    // A Route is the Record-Route reversed by a caller
                                    // that got it in a response (entries that were before).
                                    (SIDE_BEFORE, true) => {
                                        hidden.reverse();
                                        vals.push(own);
                                        vals.extend(hidden);
                                    }
                                    (SIDE_AFTER, _) => {
                                        vals.push(own);
                                        vals.extend(hidden);
                                    }
                                    (SIDE_BEFORE, false) => {
                                        vals.extend(hidden);
                                        vals.push(own);
                                    }
                                    _ => return Err(Refused::BadToken),
                                }
                            }
                            None => vals.push(v.to_vec()),
                        }
                    }
                    out.replace(h, &vals);
                }
                _ => out.keep(h),
            }
        }
        Ok(out.finish())
    }

    /// The `kth` of a Route or Record-Route value that is the sbc's.
    fn route_token<'v>(&self, v: &'v [u8], local: &Local) -> Option<&'v [u8]> {
        let u = Uri::parse(uri::name_addr_uri(v))?;
        if !local.is_us(u.host, u.port) {
            return None;
        }
        Some(u.param(PARAM)?.unwrap_or(b""))
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
        // Via and Record-Route are rewritten as lists (across their header lines), written
        // where their first line was.
        let (vias, rrs) = if self.hide {
            let vias: Vec<Vec<u8>> = if request {
                self.pack_vias(
                    &msg.values(HeaderName::Via)
                        .map(|s| msg.slice(s))
                        .collect::<Vec<_>>(),
                )
            } else {
                Vec::new()
            };
            let rr: Vec<&[u8]> = msg
                .values(HeaderName::RecordRoute)
                .map(|s| msg.slice(s))
                .collect();
            (vias, self.pack_record_route(&rr, local))
        } else {
            (Vec::new(), None)
        };
        let mut out = Rebuild::new(msg, None);
        let (mut via_done, mut rr_done) = (false, false);
        for h in &msg.headers {
            match h.name {
                HeaderName::CallId if !self.prefix.is_empty() => {
                    let outside = self.outside_call_id(msg.slice(h.value));
                    out.replace(h, &[outside]);
                }
                HeaderName::Via if self.hide && request => {
                    if via_done {
                        out.drop(h);
                    } else {
                        via_done = true;
                        out.replace(h, &vias);
                    }
                }
                HeaderName::RecordRoute if rrs.is_some() => {
                    if rr_done {
                        out.drop(h);
                    } else if let Some(vals) = &rrs {
                        rr_done = true;
                        out.replace(h, vals);
                    }
                }
                HeaderName::Contact if self.hide && !register => {
                    let vals: Vec<Vec<u8>> = values(msg, h)
                        .map(|s| self.hide_contact(msg.slice(s), to.transport, local))
                        .collect();
                    out.replace(h, &vals);
                }
                _ => out.keep(h),
            }
        }
        out.finish()
    }

    /// The Vias of a request going out: the sbc's own (the top one) carrying the rest.
    fn pack_vias(&self, vias: &[&[u8]]) -> Vec<Vec<u8>> {
        let Some((top, rest)) = vias.split_first() else {
            return Vec::new();
        };
        let mut v = top.to_vec();
        if !rest.is_empty() {
            v.extend_from_slice(b";");
            v.extend_from_slice(PARAM.as_bytes());
            v.push(b'=');
            v.extend_from_slice(&self.sealer.seal(KIND_VIA, &rest.join(&b", "[..])));
        }
        vec![v]
    }

    /// The Record-Route an outside peer sees: the sbc's outside entry carries the entries on
    /// its inside (the sbc's inside entry and whatever the inside added), so the outside
    /// sees one hop and the inside gets its route set back intact. None: nothing to change.
    fn pack_record_route(&self, rr: &[&[u8]], local: &Local) -> Option<Vec<Vec<u8>>> {
        let ours = |v: &[u8]| {
            Uri::parse(uri::name_addr_uri(v)).map(|u| {
                (
                    local.is_us(u.host, u.port),
                    local.is_outside_us(u.host, u.port),
                )
            })
        };
        let marks: Vec<(bool, bool)> = rr
            .iter()
            .map(|v| ours(v).unwrap_or((false, false)))
            .collect();
        let k = marks.iter().position(|(_, outside)| *outside)?;
        let (side, hidden, kept): (u8, &[&[u8]], Vec<&[u8]>) =
            if marks.get(k + 1).is_some_and(|(us, _)| *us) {
                (SIDE_AFTER, &rr[k + 1..], rr[..=k].to_vec())
            } else if k > 0 && marks[k - 1].0 {
                (SIDE_BEFORE, &rr[..k], rr[k..].to_vec())
            } else {
                // One entry of ours: nothing of the inside is in this list.
                return None;
            };
        let mut data = Vec::with_capacity(1 + hidden.iter().map(|v| v.len() + 2).sum::<usize>());
        data.push(side);
        data.extend_from_slice(&hidden.join(&b", "[..]));
        let token = self.sealer.seal(KIND_ROUTE, &data);
        let at = if side == SIDE_AFTER { k } else { 0 };
        Some(
            kept.iter()
                .enumerate()
                .map(|(i, v)| {
                    if i == at {
                        with_uri_param(v, PARAM, &token)
                    } else {
                        v.to_vec()
                    }
                })
                .collect(),
        )
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
        v.extend_from_slice(&self.sealer.seal(KIND_CONTACT, real));
        v.push(b'>');
        if !params.is_empty() {
            v.push(b';');
            v.extend_from_slice(params);
        }
        v
    }
}

/// The values of header `h`, split at top-level commas.
fn values<'m>(msg: &'m Message, h: &crate::sip::Header) -> impl Iterator<Item = Span> + 'm {
    crate::sip::parse::split_values(msg.bytes(), h.value)
}

/// The values of a `, `-joined list that [`Topology::seal`] carried.
fn split_list(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    let span = Span {
        start: 0,
        end: u32::try_from(list.len()).unwrap_or(u32::MAX),
    };
    crate::sip::parse::split_values(list, span).map(move |s| &list[s.range()])
}

/// A name-addr (or addr-spec) with `;name=value` added as the last URI parameter.
fn with_uri_param(v: &[u8], name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + name.len() + value.len() + 2);
    let param = |out: &mut Vec<u8>| {
        out.push(b';');
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
    };
    match (memchr::memchr(b'<', v), memchr::memchr(b'>', v)) {
        (Some(lt), Some(gt)) if lt < gt => {
            out.extend_from_slice(&v[..gt]);
            param(&mut out);
            out.extend_from_slice(&v[gt..]);
        }
        _ => {
            // An addr-spec: its own parameters are the URI's.
            out.extend_from_slice(v);
            param(&mut out);
        }
    }
    out
}

/// A name-addr without its URI parameter `name` (as [`with_uri_param`] wrote it).
fn without_uri_param(v: &[u8], name: &str) -> Vec<u8> {
    let mut needle = Vec::with_capacity(name.len() + 2);
    needle.push(b';');
    needle.extend_from_slice(name.as_bytes());
    needle.push(b'=');
    let Some(at) = memchr::memmem::find(v, &needle) else {
        return v.to_vec();
    };
    let rest = &v[at + needle.len()..];
    let end = rest
        .iter()
        .position(|c| matches!(c, b';' | b'>' | b',' | b'?'))
        .map_or(v.len(), |i| at + needle.len() + i);
    [&v[..at], &v[end..]].concat()
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
}

impl<'a> Rebuild<'a> {
    fn new(msg: &'a Message, start: Option<Vec<u8>>) -> Rebuild<'a> {
        let mut out = Vec::with_capacity(msg.bytes().len() + 256);
        let changed = start.is_some();
        match start {
            Some(line) => out.extend_from_slice(&line),
            None => out.extend_from_slice(msg.slice(msg.start_line)),
        }
        Rebuild { msg, out, changed }
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

    fn finish(mut self) -> Option<Vec<u8>> {
        if !self.changed {
            return None;
        }
        let m = self.msg;
        self.out.extend_from_slice(&m.bytes()[m.headers_end..]);
        Some(self.out)
    }
}

#[cfg(test)]
mod tests;
