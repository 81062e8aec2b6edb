//! The addresses that are the sbc itself, and what it writes into Via and Record-Route.

use std::net::{IpAddr, SocketAddr};

use kubesbc_crds::config::{SbcConfig, Transport};

use crate::flow::FlowKey;
use crate::sip::build;
use crate::sip::uri;

/// The addresses that are the sbc itself, and what it writes into Via and Record-Route.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The key of the flow tokens this sbc writes (Path, Record-Route) and reads back.
    pub flow_key: FlowKey,
    /// Per transport: host and port written into Via and Record-Route.
    pub sent_by: Vec<(Transport, String, u16)>,
    /// Every (host, port) that means "this sbc".
    pub aliases: Vec<(String, u16)>,
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
            }
            local.aliases.push((host, port));
            local.aliases.push((addr.ip().to_string(), addr.port()));
        }
        local
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

    /// Whether the address `ip:port` is this sbc.
    pub fn is_addr_us(&self, addr: SocketAddr) -> bool {
        self.aliases.iter().any(|(h, port)| {
            *port == addr.port()
                && h.trim_matches(['[', ']']).parse::<IpAddr>().ok() == Some(addr.ip())
        })
    }

    /// Our Via value for a request sent over `t` with `branch`.
    pub fn via_value(&self, t: Transport, branch: &[u8]) -> Vec<u8> {
        let (host, port) = self.sent_by(t);
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

    /// Our Record-Route value for a dialog whose caller reached us over `t`.
    pub fn record_route_value(&self, t: Transport) -> Vec<u8> {
        let (host, port) = self.sent_by(t);
        let mut v = Vec::with_capacity(48);
        v.extend_from_slice(b"<sip:");
        v.extend_from_slice(host.as_bytes());
        v.push(b':');
        v.extend_from_slice(&build::itoa(port));
        if t != Transport::Udp {
            v.extend_from_slice(b";transport=");
            v.extend_from_slice(t.name().as_bytes());
        }
        v.extend_from_slice(b";lr>");
        v
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
}
