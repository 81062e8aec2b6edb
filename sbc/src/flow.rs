//! The flows stage (RFC 5626 flow tokens, RFC 3327 Path): how a request from a backend finds
//! the stream connection (tcp, tls, ws, wss) a client opened. A REGISTER from a stream client
//! leaves with `Path: <sip:TOKEN@sbc;lr;ob>`, a dialog it starts gets a Record-Route entry
//! with the token on its side; a request whose consumed Route carries a token goes over that
//! connection, or gets 430 Flow Failed when it is closed. See docs/architecture.md, "Flows".
//!
//! The token is the connection's [`Peer`] (transport, address, connection id), the address of
//! the replica holding it (its pod address on the inside, when the pod is on the inside), and
//! an HMAC-SHA256 of them, hex-encoded: the sbc recognises its own tokens without a table, and
//! a token cannot be made up to reach another client's connection. The key is random to the
//! process, or, with `relay.topology.keyFile`, derived from the keys every replica shares: then
//! any replica reads any replica's tokens and forwards a request for a connection it does not
//! hold to the replica that does (docs/architecture.md, "Flows"). Only stream clients get a
//! token, so UDP requests pay nothing here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use kubesbc_crds::config::{SbcConfig, Transport};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::sip::build;
use crate::transport::Peer;

/// The prefix of every token: anything else in a Route's user part is not ours.
const PREFIX: &[u8] = b"kf";
/// Bytes of the MAC kept in a token.
const MAC_LEN: usize = 8;
/// The longest token body: kind, connection id, two ports and two IPv6 addresses.
const MAX_BODY: usize = 1 + 8 + 2 + 16 + 2 + 16;
const TRANSPORTS: [Transport; 5] = [
    Transport::Udp,
    Transport::Tcp,
    Transport::Tls,
    Transport::Ws,
    Transport::Wss,
];
/// Bits of the kind byte above the transport's index.
const PEER_V6: u8 = 0x10;
const OWNER: u8 = 0x20;
const OWNER_V6: u8 = 0x40;
/// What a shared key is derived with: a token key never equals a topology key.
const DERIVE: &[u8] = b"kubesbc flow token key v1";

/// The keys flow tokens are signed with: the first signs, every one verifies.
#[derive(Clone)]
pub struct FlowKey {
    keys: Vec<[u8; 32]>,
    shared: bool,
}

impl Default for FlowKey {
    fn default() -> FlowKey {
        FlowKey::random()
    }
}

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FlowKey({} keys, shared: {})",
            self.keys.len(),
            self.shared
        )
    }
}

/// What a token names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The client's connection.
    pub peer: Peer,
    /// The replica holding it, when the token says (keys shared by every replica).
    pub owner: Option<SocketAddr>,
}

impl FlowKey {
    /// A fresh random key (tokens die with the process, as its connections do).
    pub fn random() -> FlowKey {
        let mut k = [0u8; 32];
        for c in k.chunks_mut(8) {
            c.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        FlowKey {
            keys: vec![k],
            shared: false,
        }
    }

    /// Keys derived from the keys every replica reads (`relay.topology.keyFile`), in order:
    /// the first signs. None when `keys` is empty.
    pub fn shared<K: AsRef<[u8]>>(keys: &[K]) -> Option<FlowKey> {
        let keys: Vec<[u8; 32]> = keys
            .iter()
            .map(|k| {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k.as_ref())
                    .expect("HMAC accepts keys of any length");
                m.update(DERIVE);
                m.finalize().into_bytes().into()
            })
            .collect();
        (!keys.is_empty()).then_some(FlowKey { keys, shared: true })
    }

    /// The key for `cfg`: shared when `relay.topology` has keys, else `own` (the process's).
    pub fn for_config(cfg: &SbcConfig, own: &FlowKey) -> FlowKey {
        cfg.relay
            .topology
            .as_ref()
            .and_then(|t| FlowKey::shared(&t.keys))
            .unwrap_or_else(|| own.clone())
    }

    /// Whether every replica reads these tokens.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    fn mac(key: &[u8; 32], data: &[u8]) -> [u8; MAC_LEN] {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// The token naming the connection `peer` held by the replica at `owner` (written only
    /// with shared keys); None for UDP (no connection to name).
    pub fn token(&self, peer: &Peer, owner: Option<SocketAddr>) -> Option<Vec<u8>> {
        let flow = peer.flow?;
        let owner = owner.filter(|_| self.shared);
        let mut kind = TRANSPORTS.iter().position(|t| *t == peer.transport)? as u8;
        if peer.addr.is_ipv6() {
            kind |= PEER_V6;
        }
        match owner {
            Some(o) if o.is_ipv6() => kind |= OWNER | OWNER_V6,
            Some(_) => kind |= OWNER,
            None => {}
        }
        let mut raw = Vec::with_capacity(MAX_BODY + MAC_LEN);
        raw.push(kind);
        raw.extend_from_slice(&flow.to_be_bytes());
        push_addr(&mut raw, peer.addr);
        if let Some(o) = owner {
            push_addr(&mut raw, o);
        }
        let mac = Self::mac(self.keys.first()?, &raw);
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
        self.open(token).map(|f| f.peer)
    }

    /// What a token names, if it is one of ours (under any of the keys) and intact.
    pub fn open(&self, token: &[u8]) -> Option<Flow> {
        let hex = token.strip_prefix(PREFIX)?;
        let mut raw = [0u8; MAX_BODY + MAC_LEN];
        if hex.len() % 2 != 0 || hex.len() / 2 > raw.len() {
            return None;
        }
        let n = hex.len() / 2;
        for (i, pair) in hex.chunks(2).enumerate() {
            raw[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        let (body, mac) = raw[..n].split_at(n.checked_sub(MAC_LEN)?);
        if !self
            .keys
            .iter()
            .any(|k| bool::from(Self::mac(k, body).as_slice().ct_eq(mac)))
        {
            return None;
        }
        let kind = *body.first()?;
        let transport = *TRANSPORTS.get(usize::from(kind & 0x0f))?;
        let flow = u64::from_be_bytes(body.get(1..9)?.try_into().ok()?);
        let (addr, rest) = read_addr(body.get(9..)?, kind & PEER_V6 != 0)?;
        let (owner, rest) = if kind & OWNER != 0 {
            let (o, rest) = read_addr(rest, kind & OWNER_V6 != 0)?;
            (Some(o), rest)
        } else {
            (None, rest)
        };
        if !rest.is_empty() {
            return None;
        }
        Some(Flow {
            peer: Peer {
                transport,
                addr,
                flow: Some(flow),
            },
            owner,
        })
    }
}

fn push_addr(raw: &mut Vec<u8>, a: SocketAddr) {
    raw.extend_from_slice(&a.port().to_be_bytes());
    match a.ip() {
        IpAddr::V4(v4) => raw.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => raw.extend_from_slice(&v6.octets()),
    }
}

/// A port and an address of the given family from the front of `b`, and what follows.
fn read_addr(b: &[u8], v6: bool) -> Option<(SocketAddr, &[u8])> {
    let port = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
    let len = if v6 { 16 } else { 4 };
    let ip_bytes = b.get(2..2 + len)?;
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip_bytes).ok()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip_bytes).ok()?))
    };
    Some((SocketAddr::new(ip, port), b.get(2 + len..)?))
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
            let t = key.token(&p, None).unwrap();
            assert!(t.starts_with(b"kf") && t.iter().all(u8::is_ascii_alphanumeric));
            assert_eq!(key.peer(&t), Some(p));
            assert_eq!(FlowKey::random().peer(&t), None, "another process's key");
        }
        let udp = Peer {
            flow: None,
            transport: Transport::Udp,
            ..ws("127.0.0.1:5060", 1)
        };
        assert_eq!(key.token(&udp, None), None);
    }

    #[test]
    fn with_shared_keys_every_replica_reads_the_owner_and_rotation_keeps_old_tokens() {
        let a = FlowKey::shared(&["the-shared-key-of-the-cluster"]).unwrap();
        let b = FlowKey::shared(&["the-shared-key-of-the-cluster"]).unwrap();
        for (peer, owner) in [
            (ws("127.0.0.1:40000", 7), "10.0.0.3:5060"),
            (ws("[2001:db8::1]:443", 9), "10.0.0.4:5060"),
            (ws("127.0.0.1:40000", 7), "[fd00::4]:5060"),
        ] {
            let owner: SocketAddr = owner.parse().unwrap();
            let t = a.token(&peer, Some(owner)).unwrap();
            assert_eq!(
                b.open(&t),
                Some(Flow {
                    peer,
                    owner: Some(owner)
                }),
                "another replica reads it"
            );
        }
        let t = a.token(
            &ws("127.0.0.1:40000", 7),
            Some("10.0.0.3:5060".parse().unwrap()),
        );
        let t = t.unwrap();
        // A new key on top: tokens of the old one still open; a stranger's key does not.
        let rotated = FlowKey::shared(&[
            "a-newer-key-of-the-cluster",
            "the-shared-key-of-the-cluster",
        ]);
        assert!(rotated.unwrap().open(&t).is_some());
        let other = FlowKey::shared(&["some-other-cluster-key"]).unwrap();
        assert_eq!(other.open(&t), None);
        // A process key writes no owner: only its own replica holds the connection.
        let own = FlowKey::random();
        let t = own.token(
            &ws("127.0.0.1:40000", 7),
            Some("10.0.0.3:5060".parse().unwrap()),
        );
        assert_eq!(own.open(&t.unwrap()).unwrap().owner, None);
        assert!(FlowKey::shared::<&str>(&[]).is_none());
    }

    #[test]
    fn a_token_pointing_its_owner_elsewhere_is_refused() {
        let key = FlowKey::shared(&["the-shared-key-of-the-cluster"]).unwrap();
        let t = key
            .token(
                &ws("127.0.0.1:40000", 7),
                Some("10.0.0.3:5060".parse().unwrap()),
            )
            .unwrap();
        // The last hex digit of the owner's address, before the MAC.
        let mut forged = t.clone();
        let i = t.len() - 2 * MAC_LEN - 1;
        forged[i] = if forged[i] == b'4' { b'5' } else { b'4' };
        assert_eq!(key.open(&forged), None);
    }

    #[test]
    fn a_forged_or_damaged_token_is_refused() {
        let key = FlowKey::random();
        let t = key.token(&ws("127.0.0.1:40000", 7), None).unwrap();
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
