//! The flows stage (RFC 5626 flow tokens, RFC 3327 Path): how a request from a backend finds
//! the stream connection (tcp, tls, ws, wss) a client opened. A REGISTER from a stream client
//! leaves with `Path: <sip:TOKEN@sbc;lr;ob>`, a dialog it starts gets a Record-Route entry
//! with the token on its side; a request whose consumed Route carries a token goes over that
//! connection, or gets 430 Flow Failed when it is closed. See docs/architecture.md, "Flows".
//!
//! The token is the connection's [`Peer`] (transport, address, connection id) and an
//! HMAC-SHA256 of it under a key random to this process, hex-encoded: the sbc recognises its
//! own tokens without a table, and a token cannot be made up to reach another client's
//! connection. Only stream clients get one, so UDP requests pay nothing here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use kubesbc_crds::config::Transport;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::sip::build;
use crate::transport::Peer;

/// The prefix of every token: anything else in a Route's user part is not ours.
const PREFIX: &[u8] = b"kf";
/// Bytes of the MAC kept in a token.
const MAC_LEN: usize = 8;
const TRANSPORTS: [Transport; 5] = [
    Transport::Udp,
    Transport::Tcp,
    Transport::Tls,
    Transport::Ws,
    Transport::Wss,
];

/// The key flow tokens are signed with (random by default).
#[derive(Clone)]
pub struct FlowKey([u8; 32]);

impl Default for FlowKey {
    fn default() -> FlowKey {
        FlowKey::random()
    }
}

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowKey(..)")
    }
}

impl FlowKey {
    /// A fresh random key (tokens die with the process, as its connections do).
    pub fn random() -> FlowKey {
        let mut k = [0u8; 32];
        for c in k.chunks_mut(8) {
            c.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        FlowKey(k)
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// The token naming the connection `peer`; None for UDP (no connection to name).
    pub fn token(&self, peer: &Peer) -> Option<Vec<u8>> {
        let flow = peer.flow?;
        let t = TRANSPORTS.iter().position(|t| *t == peer.transport)? as u8;
        let mut raw = Vec::with_capacity(27 + MAC_LEN);
        raw.push(t);
        raw.extend_from_slice(&flow.to_be_bytes());
        raw.extend_from_slice(&peer.addr.port().to_be_bytes());
        match peer.addr.ip() {
            IpAddr::V4(v4) => raw.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => raw.extend_from_slice(&v6.octets()),
        }
        let mac = self.mac(&raw);
        raw.extend_from_slice(&mac);
        let mut out = Vec::with_capacity(PREFIX.len() + raw.len() * 2);
        out.extend_from_slice(PREFIX);
        for b in raw {
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        }
        Some(out)
    }

    /// The connection a token names, if it is one of ours and intact.
    pub fn peer(&self, token: &[u8]) -> Option<Peer> {
        let hex = token.strip_prefix(PREFIX)?;
        let mut raw = [0u8; 27 + MAC_LEN];
        if hex.len() % 2 != 0 || hex.len() / 2 > raw.len() {
            return None;
        }
        let n = hex.len() / 2;
        for (i, pair) in hex.chunks(2).enumerate() {
            raw[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        let ip_len = n.checked_sub(11 + MAC_LEN)?;
        let (body, mac) = raw[..n].split_at(n - MAC_LEN);
        if !bool::from(self.mac(body).as_slice().ct_eq(mac)) {
            return None;
        }
        let transport = *TRANSPORTS.get(body[0] as usize)?;
        let flow = u64::from_be_bytes(body[1..9].try_into().ok()?);
        let port = u16::from_be_bytes([body[9], body[10]]);
        let ip = match ip_len {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&body[11..15]).ok()?)),
            16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&body[11..27]).ok()?)),
            _ => return None,
        };
        Some(Peer {
            transport,
            addr: SocketAddr::new(ip, port),
            flow: Some(flow),
        })
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A SIP URI naming the sbc at `host:port` over `t`, with `user` (a flow token) when given,
/// as a name-addr: `<sip:[user@]host:port[;transport=t];lr[;ob]>`.
pub fn sbc_uri(user: Option<&[u8]>, host: &str, port: u16, t: Transport, ob: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    v.extend_from_slice(b"<sip:");
    if let Some(u) = user {
        v.extend_from_slice(u);
        v.push(b'@');
    }
    v.extend_from_slice(host.as_bytes());
    v.push(b':');
    v.extend_from_slice(&build::itoa(port));
    if t != Transport::Udp {
        v.extend_from_slice(b";transport=");
        v.extend_from_slice(t.name().as_bytes());
    }
    v.extend_from_slice(b";lr");
    if ob {
        v.extend_from_slice(b";ob");
    }
    v.push(b'>');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(addr: &str, flow: u64) -> Peer {
        Peer {
            transport: Transport::Ws,
            addr: addr.parse().unwrap(),
            flow: Some(flow),
        }
    }

    #[test]
    fn a_token_names_its_connection_and_only_its_key_reads_it() {
        let key = FlowKey::random();
        for p in [ws("127.0.0.1:40000", 7), ws("[2001:db8::1]:443", u64::MAX)] {
            let t = key.token(&p).unwrap();
            assert!(t.starts_with(b"kf") && t.iter().all(u8::is_ascii_alphanumeric));
            assert_eq!(key.peer(&t), Some(p));
            assert_eq!(FlowKey::random().peer(&t), None, "another process's key");
        }
        let udp = Peer {
            flow: None,
            transport: Transport::Udp,
            ..ws("127.0.0.1:5060", 1)
        };
        assert_eq!(key.token(&udp), None);
    }

    #[test]
    fn a_forged_or_damaged_token_is_refused() {
        let key = FlowKey::random();
        let t = key.token(&ws("127.0.0.1:40000", 7)).unwrap();
        // Another connection id with the old MAC.
        let mut forged = t.clone();
        let i = 2 + 2 * 8; // a hex digit of the connection id
        forged[i] = if forged[i] == b'0' { b'1' } else { b'0' };
        assert_eq!(key.peer(&forged), None);
        for bad in [
            &b"kf"[..],
            b"kfzz",
            b"alice",
            &t[..t.len() - 1],
            &[b'k'; 200],
        ] {
            assert_eq!(key.peer(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sbc_uris_are_loose_routes() {
        assert_eq!(
            sbc_uri(Some(b"kf00"), "127.0.0.1", 5060, Transport::Udp, true),
            b"<sip:kf00@127.0.0.1:5060;lr;ob>"
        );
        assert_eq!(
            sbc_uri(None, "127.0.0.1", 8080, Transport::Ws, false),
            b"<sip:127.0.0.1:8080;transport=ws;lr>"
        );
    }
}
