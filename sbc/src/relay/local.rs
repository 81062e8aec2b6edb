//! The addresses that are the sbc itself, and what it writes into Via and Record-Route.
//!
//! With `relay.inside` the sbc has two sides (docs/topology.md): towards an inside peer (an
//! address in `relay.inside.networks`) its Via carries the pod's own address, so responses
//! come back to the replica that owns the transaction, and its Record-Route the shared inside
//! address; towards everyone else both carry the outside (`advertise`) address.

use std::net::{IpAddr, SocketAddr};

use kubesbc_crds::config::{SbcConfig, Transport};

use crate::cidr::Cidr;
use crate::flow::FlowKey;
use crate::sip::build;
use crate::sip::uri;
use crate::transport::Peer;

/// The inside of the border: its networks and the shared address the sbc has there.
#[derive(Debug, Clone, Default)]
pub struct Inside {
    /// The shared inside host (the sbc Service's name or address).
    pub host: String,
    /// Its port; None: the port of the listener a message goes out of.
    pub port: Option<u16>,
    /// The inside networks.
    pub networks: Vec<Cidr>,
}

/// The addresses that are the sbc itself, and what it writes into Via and Record-Route.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The key of the flow tokens this sbc writes (Path, Record-Route) and reads back.
    pub flow_key: FlowKey,
    /// Per transport: host and port written into Via and Record-Route.
    pub sent_by: Vec<(Transport, String, u16)>,
    /// Every (host, port) that means "this sbc".
    pub aliases: Vec<(String, u16)>,
    /// Per transport: the pod's own host and port (POD_IP or the bound address), written into
    /// Via towards inside peers.
    pub pod: Vec<(Transport, String, u16)>,
    /// The inside, when `relay.inside` is configured.
    pub inside: Option<Inside>,
    /// Where the other replicas reach this one: its UDP listener at the pod's address, when
    /// that address is on the inside. Written into flow tokens (with keys every replica
    /// shares) so that a replica not holding a client's connection forwards to this one.
    pub owner: Option<SocketAddr>,
}

impl Local {
    /// Builds the identity from the bound listeners and the configured advertise addresses.
    /// A listener bound to the unspecified address (`0.0.0.0`, as in a pod) with no advertise
    /// address writes `pod_ip` (the pod's `POD_IP`) into messages: `0.0.0.0` in a Via or
    /// Record-Route would send every reply nowhere.
    pub fn new(
        config: &SbcConfig,
        bound: &[(Transport, SocketAddr)],
        pod_ip: Option<IpAddr>,
    ) -> Local {
        let mut local = Local::default();
        if let Some(ip) = pod_ip {
            for (_, addr) in bound {
                local.aliases.push((ip.to_string(), addr.port()));
            }
        }
        for (t, addr) in bound {
            let adv = config
                .listeners
                .iter()
                .find(|l| l.transport == *t && (l.address == *addr || l.address.port() == 0))
                .and_then(|l| l.advertise.clone());
            let (host, port) = match adv {
                Some(a) => match uri::split_host_port(a.as_bytes()) {
                    Some((h, p)) => (
                        String::from_utf8_lossy(h).into_owned(),
                        p.unwrap_or(addr.port()),
                    ),
                    None => (a, addr.port()),
                },
                None if addr.ip().is_unspecified() => match pod_ip {
                    Some(ip) => (host_string(ip), addr.port()),
                    None => {
                        tracing::warn!(
                            listener = %format!("{t}:{addr}"),
                            "listener bound to all addresses without an advertise address or POD_IP: Via and Record-Route will say 127.0.0.1; set listeners[].advertise"
                        );
                        ("127.0.0.1".to_owned(), addr.port())
                    }
                },
                None => (host_string(addr.ip()), addr.port()),
            };
            if !local.sent_by.iter().any(|(tt, _, _)| tt == t) {
                local.sent_by.push((*t, host.clone(), port));
                let pod = match (addr.ip().is_unspecified(), pod_ip) {
                    (true, Some(ip)) => host_string(ip),
                    (true, None) => "127.0.0.1".to_owned(),
                    (false, _) => host_string(addr.ip()),
                };
                local.pod.push((*t, pod, addr.port()));
            }
            local.aliases.push((host, port));
            local.aliases.push((addr.ip().to_string(), addr.port()));
        }
        if let Some(cfg) = &config.relay.inside
            && let Some(a) = &cfg.address
        {
            let (host, port) = match uri::split_host_port(a.as_bytes()) {
                Some((h, p)) => (String::from_utf8_lossy(h).into_owned(), p),
                None => (a.clone(), None),
            };
            match port {
                Some(p) => local.aliases.push((host.clone(), p)),
                None => {
                    for (_, addr) in bound {
                        local.aliases.push((host.clone(), addr.port()));
                    }
                }
            }
            local.inside = Some(Inside {
                host,
                port,
                // Validated with the configuration: a network that does not parse is absent.
                networks: cfg.networks.iter().filter_map(|n| Cidr::parse(n)).collect(),
            });
        }
        local.owner = bound
            .iter()
            .find(|(t, _)| *t == Transport::Udp)
            .and_then(|(_, a)| {
                let ip = match (a.ip().is_unspecified(), pod_ip) {
                    (true, Some(ip)) => ip,
                    (true, None) => return None,
                    (false, _) => a.ip(),
                };
                Some(SocketAddr::new(ip, a.port()))
            })
            .filter(|a| local.is_inside(a.ip()));
        local
    }

    /// A flow token naming the connection `peer` and, when every replica reads the tokens,
    /// this replica as the one holding it.
    pub fn flow_token(&self, peer: &Peer) -> Option<Vec<u8>> {
        self.flow_key.token(peer, self.owner)
    }

    /// Whether `ip` is on the inside (false without `relay.inside`).
    pub fn is_inside(&self, ip: IpAddr) -> bool {
        self.inside
            .as_ref()
            .is_some_and(|i| i.networks.iter().any(|n| n.contains(ip)))
    }

    /// The host and port the sbc's Via carries towards `to`: the pod's own towards an inside
    /// peer (its responses must come back to this replica), else the outside one.
    pub fn via_host(&self, to: &Peer) -> (&str, u16) {
        if self.is_inside(to.addr.ip())
            && let Some((_, h, p)) = self
                .pod
                .iter()
                .find(|(t, _, _)| *t == to.transport)
                .or_else(|| self.pod.first())
        {
            return (h.as_str(), *p);
        }
        self.sent_by(to.transport)
    }

    /// The host and port the sbc's Record-Route (and Path) carries on the side of `peer`:
    /// the shared inside address towards an inside peer, else the outside one.
    pub fn route_host(&self, peer: &Peer) -> (&str, u16) {
        let (h, p) = self.sent_by(peer.transport);
        match &self.inside {
            Some(i) if self.is_inside(peer.addr.ip()) => {
                let listener = self
                    .pod
                    .iter()
                    .find(|(t, _, _)| *t == peer.transport)
                    .map_or(p, |(_, _, port)| *port);
                (i.host.as_str(), i.port.unwrap_or(listener))
            }
            _ => (h, p),
        }
    }

    /// The host and port written into messages sent over `t`.
    pub fn sent_by(&self, t: Transport) -> (&str, u16) {
        self.sent_by
            .iter()
            .find(|(tt, _, _)| *tt == t)
            .or_else(|| self.sent_by.first())
            .map_or(("127.0.0.1", 5060), |(_, h, p)| (h.as_str(), *p))
    }

    /// Whether `host:port` names this sbc.
    pub fn is_us(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        self.aliases
            .iter()
            .any(|(h, p)| *p == port && h.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Whether `host:port` is the sbc's outside address (what it writes towards outside
    /// peers), not its inside or pod address.
    pub fn is_outside_us(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        self.sent_by
            .iter()
            .any(|(_, h, p)| *p == port && h.as_bytes().eq_ignore_ascii_case(host))
    }

    /// Whether the address `ip:port` is this sbc.
    pub fn is_addr_us(&self, addr: SocketAddr) -> bool {
        self.aliases.iter().any(|(h, port)| {
            *port == addr.port()
                && h.trim_matches(['[', ']']).parse::<IpAddr>().ok() == Some(addr.ip())
        })
    }

    /// Our Via value for a request sent to `to` with `branch`.
    pub fn via_value(&self, to: &Peer, branch: &[u8]) -> Vec<u8> {
        let t = to.transport;
        let (host, port) = self.via_host(to);
        let mut v = Vec::with_capacity(48 + branch.len());
        v.extend_from_slice(b"SIP/2.0/");
        v.extend_from_slice(t.via_name().as_bytes());
        v.push(b' ');
        v.extend_from_slice(host.as_bytes());
        v.push(b':');
        v.extend_from_slice(&build::itoa(port));
        v.extend_from_slice(b";branch=");
        v.extend_from_slice(branch);
        v
    }

    /// Our Record-Route value for a dialog whose caller is `peer`, both sides on its side.
    pub fn record_route_value(&self, peer: &Peer) -> Vec<u8> {
        let (host, port) = self.route_host(peer);
        crate::flow::sbc_uri(None, host, port, peer.transport, false)
    }
}

fn host_string(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_bound_to_all_addresses_writes_its_pod_ip() {
        let cfg = crate::config::from_listeners(vec![
            crate::config::parse_listen("udp:0.0.0.0:5060").unwrap(),
        ])
        .unwrap();
        let bound = [(Transport::Udp, "0.0.0.0:5060".parse().unwrap())];
        let l = Local::new(&cfg, &bound, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(l.sent_by(Transport::Udp), ("10.1.2.3", 5060));
        assert!(l.is_us(b"10.1.2.3", None));
        let mut adv = cfg.clone();
        adv.listeners[0].advertise = Some("203.0.113.9:5080".into());
        let l = Local::new(&adv, &bound, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(l.sent_by(Transport::Udp), ("203.0.113.9", 5080));
        assert!(l.is_us(b"203.0.113.9", Some(5080)) && l.is_us(b"10.1.2.3", Some(5060)));
    }

    #[test]
    fn the_owner_in_flow_tokens_is_the_pods_udp_listener_when_the_pod_is_inside() {
        let mut cfg = crate::config::from_listeners(vec![
            crate::config::parse_listen("udp:0.0.0.0:5060").unwrap(),
            crate::config::parse_listen("tcp:0.0.0.0:5060").unwrap(),
        ])
        .unwrap();
        let bound = [
            (Transport::Udp, "0.0.0.0:5060".parse().unwrap()),
            (Transport::Tcp, "0.0.0.0:5060".parse().unwrap()),
        ];
        let pod = Some("10.1.2.3".parse().unwrap());
        assert_eq!(Local::new(&cfg, &bound, pod).owner, None, "no inside");
        cfg.relay.inside = Some(kubesbc_crds::config::InsideConfig {
            address: Some("sbc.voice.svc.cluster.local".into()),
            networks: vec!["10.0.0.0/8".into()],
        });
        let l = Local::new(&cfg, &bound, pod);
        assert_eq!(l.owner, Some("10.1.2.3:5060".parse().unwrap()));
        let outside_pod = Some("192.0.2.3".parse().unwrap());
        assert_eq!(Local::new(&cfg, &bound, outside_pod).owner, None);
    }

    #[test]
    fn an_inside_peer_gets_the_pod_in_via_and_the_inside_address_in_record_route() {
        let mut cfg = crate::config::from_listeners(vec![
            crate::config::parse_listen("udp:0.0.0.0:5060").unwrap(),
        ])
        .unwrap();
        cfg.listeners[0].advertise = Some("203.0.113.9".into());
        cfg.relay.inside = Some(kubesbc_crds::config::InsideConfig {
            address: Some("sbc.voice.svc.cluster.local".into()),
            networks: vec!["10.0.0.0/8".into()],
        });
        let bound = [(Transport::Udp, "0.0.0.0:5060".parse().unwrap())];
        let l = Local::new(&cfg, &bound, Some("10.1.2.3".parse().unwrap()));
        let peer = |a: &str| Peer {
            transport: Transport::Udp,
            addr: a.parse().unwrap(),
            flow: None,
        };
        let (inside, outside) = (peer("10.9.0.1:5060"), peer("198.51.100.7:5060"));
        assert_eq!(l.via_host(&inside), ("10.1.2.3", 5060));
        assert_eq!(l.via_host(&outside), ("203.0.113.9", 5060));
        assert_eq!(l.route_host(&inside), ("sbc.voice.svc.cluster.local", 5060));
        assert_eq!(l.route_host(&outside), ("203.0.113.9", 5060));
        // Without a port the inside address takes the listener's.
        assert!(l.is_us(b"sbc.voice.svc.cluster.local", Some(5060)));
        assert!(!l.is_us(b"sbc.voice.svc.cluster.local", Some(5070)));
        assert_eq!(
            l.record_route_value(&inside),
            b"<sip:sbc.voice.svc.cluster.local:5060;lr>"
        );
    }
}
