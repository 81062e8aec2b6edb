//! The routing stage: which set and which target a request goes to. In-dialog requests
//! follow their Route set (loose routing, RFC 3261 section 16.4) or their Request-URI; initial
//! requests go where the routing rules ([`rules`]) say, or to the dispatcher's default set.
//! No DNS here: a target must be an IP address.

pub mod rules;

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;

use kubesbc_crds::config::{Failover, SbcConfig, Transport};

use crate::auth::digest;
use crate::dispatch::{Dispatcher, SelectKey, Selected};
use crate::relay::Local;
use crate::sip::uri::{self, Uri};
use crate::sip::{HeaderName, Message};
use crate::transport::Peer;

/// What the Route set of a request says about its way on.
#[derive(Debug, Default)]
pub struct Routes {
    /// How many leading Route values name us (to remove).
    pub ours: usize,
    /// The first one that does not: the next hop.
    pub next: Option<Vec<u8>>,
    /// The connection named by a flow token in one of ours (Path, Record-Route), unless
    /// the request came over that very connection (then it is on its way out of it).
    pub flow: Option<Peer>,
    /// The replica holding that connection, when its token names one that is not us: a
    /// request for a connection not open here is forwarded there.
    pub flow_owner: Option<std::net::SocketAddr>,
}

/// Reads the leading Route values that name us, the next hop, and a flow token in ours.
pub fn inspect_routes(msg: &Message, local: &Local, from: &Peer) -> Routes {
    let mut r = Routes::default();
    for v in msg.values(HeaderName::Route) {
        let u = uri::name_addr_uri(msg.slice(v));
        match Uri::parse(u) {
            Some(p) if local.is_us(p.host, p.port) => {
                r.ours += 1;
                if r.flow.is_none()
                    && let Some(f) = p.user.and_then(|user| local.flow_key.open(user))
                {
                    // Connection ids are per replica: one held elsewhere is never looked up
                    // here, and the request cannot have come over it.
                    let elsewhere = f.owner.filter(|o| !local.is_addr_us(*o));
                    let came_over_it =
                        f.peer.flow == from.flow && f.peer.transport == from.transport;
                    if elsewhere.is_some() || !came_over_it {
                        r.flow = Some(f.peer);
                        r.flow_owner = elsewhere;
                    }
                }
            }
            _ => {
                r.next = Some(u.to_vec());
                return r;
            }
        }
    }
    r
}

/// The next hop of a request routed by its Route set or Request-URI.
pub fn next_hop(msg: &Message, next_route: Option<&[u8]>) -> Option<Peer> {
    uri_target(next_route.unwrap_or(msg.request_uri()))
}

/// The next hop for a URI: its IP, port and transport. No DNS on the hot path: a host name
/// here is answered with 478.
pub fn uri_target(u: &[u8]) -> Option<Peer> {
    let uri = Uri::parse(u)?;
    if !uri.is_sip() {
        return None;
    }
    let sips = uri.scheme.eq_ignore_ascii_case(b"sips");
    let ip: IpAddr = std::str::from_utf8(uri.host).ok()?.parse().ok()?;
    let transport = match uri.param("transport").flatten() {
        Some(t) => Transport::from_name(std::str::from_utf8(t).ok()?)?,
        None if sips => Transport::Tls,
        None => Transport::Udp,
    };
    let port = uri.port.unwrap_or(if sips { 5061 } else { 5060 });
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, port),
        flow: None,
    })
}

/// Whether a Request-URI names the sbc itself (no user part): OPTIONS to it are answered here.
pub fn is_local_uri(local: &Local, u: &[u8]) -> bool {
    Uri::parse(u).is_some_and(|u| u.user.is_none() && local.is_us(u.host, u.port))
}

/// Picks a destination of `set` for an initial request, skipping the `tried` indexes.
pub fn select(
    dispatcher: &Dispatcher,
    msg: &Message,
    set: u32,
    tried: &[usize],
) -> Option<Selected> {
    let from = msg
        .header_value(HeaderName::From)
        .map(uri::name_addr_uri)
        .unwrap_or(b"");
    let to = msg
        .header_value(HeaderName::To)
        .map(uri::name_addr_uri)
        .unwrap_or(b"");
    let auth = msg
        .header_value(HeaderName::ProxyAuthorization)
        .or_else(|| msg.header_value(HeaderName::Authorization))
        .and_then(digest::username);
    let key = SelectKey {
        call_id: msg.call_id().unwrap_or(b""),
        from_uri: from,
        to_uri: to,
        request_uri: msg.request_uri(),
        auth_username: auth,
    };
    dispatcher.select(set, &key, tried)
}

/// The peer a selected destination is reached at.
pub fn dest_peer(sel: &Selected) -> Peer {
    Peer {
        transport: sel.dest.target.transport,
        addr: sel.dest.target.addr,
        flow: None,
    }
}

/// The failover settings of a set, borrowed from the loaded config (no copy per message).
pub fn failover_of(cfg: &SbcConfig, set: Option<u32>) -> &Failover {
    static DEFAULT: LazyLock<Failover> = LazyLock::new(Failover::default);
    let id = set.unwrap_or(cfg.dispatcher.default_set);
    cfg.dispatcher
        .sets
        .iter()
        .find(|s| s.id == id)
        .map_or(&*DEFAULT, |s| &s.failover)
}

/// The Retry-After of a 503 for a set with no destination up: its probe interval.
pub fn retry_after(cfg: &SbcConfig, set: u32) -> u64 {
    cfg.dispatcher
        .sets
        .iter()
        .find(|s| s.id == set)
        .map_or(5, |s| s.probing.interval_ms.div_ceil(1000).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_need_an_ip_and_honour_transport() {
        let p = uri_target(b"sip:bob@10.0.0.1:5080;transport=tcp").unwrap();
        assert_eq!(
            (p.addr, p.transport),
            ("10.0.0.1:5080".parse().unwrap(), Transport::Tcp)
        );
        let p = uri_target(b"sips:[::1]").unwrap();
        assert_eq!((p.addr.port(), p.transport), (5061, Transport::Tls));
        assert!(
            uri_target(b"sip:bob@pbx.example.com").is_none(),
            "no DNS on the hot path"
        );
        assert!(uri_target(b"tel:+1234").is_none());
    }

    #[test]
    fn digest_username_is_read_from_credentials() {
        assert_eq!(
            digest::username(b"Digest username=\"alice\", realm=\"x\", nonce=\"n\""),
            Some(&b"alice"[..])
        );
        assert_eq!(digest::username(b"Basic YWxpY2U6"), None);
    }
}
