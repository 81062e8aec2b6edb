//! The nat stage: where a caller really is (RFC 3261 section 18.2.1, RFC 3581). A request's
//! topmost Via gets `;received=` when its sent-by is not the packet's source, and `;rport=`
//! filled in when the caller asked; responses sent without a transaction follow them back.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use kubesbc_crds::config::Transport;

use crate::sip::build;
use crate::sip::uri::{self, Uri, Via};
use crate::sip::{HeaderName, Message};
use crate::transport::Peer;

/// The parameters the nat stage appends to a caller's topmost Via, kept inline (no heap
/// allocation per request): `;received=<ip>` (IPv6 at most 39 characters) and
/// `;rport=<port>` fit in 64 bytes.
#[derive(Clone, Copy)]
pub struct ViaParams {
    buf: [u8; 64],
    len: u8,
    fill: bool,
}

impl ViaParams {
    /// The bytes to append, if any.
    pub fn bytes(&self) -> Option<&[u8]> {
        (self.len > 0).then(|| &self.buf[..self.len as usize])
    }

    /// Whether a bare `rport` is to be removed first (the valued one replaces it).
    pub fn fill_rport(&self) -> bool {
        self.fill
    }

    fn push(&mut self, b: &[u8]) {
        let at = self.len as usize;
        let end = (at + b.len()).min(self.buf.len());
        self.buf[at..end].copy_from_slice(&b[..end - at]);
        self.len = end as u8;
    }
}

/// `;received=` and `;rport=` for the topmost Via `via` of a request from `src`. The
/// rport is forced (Kamailio's `force_rport`): written whether or not the caller asked,
/// since browsers (JsSIP, sip.js) and many phones behind NAT do not, and a response to the
/// port they sent from is the only one that reaches them. A Via whose rport already has a
/// value is left as it is.
pub fn received_params(via: &Via<'_>, src: SocketAddr) -> ViaParams {
    let host = std::str::from_utf8(via.host)
        .ok()
        .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok());
    let received = host != Some(src.ip()) && via.param("received").is_none();
    let rport = via.param("rport");
    let mut p = ViaParams {
        buf: [0; 64],
        len: 0,
        fill: rport == Some(None),
    };
    if received {
        p.push(b";received=");
        let mut ip = [0u8; 40];
        let mut w = &mut ip[..];
        let _ = write!(w, "{}", src.ip());
        let n = 40 - w.len();
        p.push(&ip[..n]);
    }
    if !matches!(rport, Some(Some(_))) {
        p.push(b";rport=");
        p.push(&build::itoa(src.port()));
    }
    p
}

/// Where a response without a transaction goes: the Via below ours, `received` and `rport`
/// honoured (RFC 3261 section 16.7 item 9, RFC 3581 section 4).
pub fn second_via_target(msg: &Message) -> Option<Peer> {
    let v = msg.values(HeaderName::Via).nth(1)?;
    let via = Via::parse(msg.slice(v))?;
    let host = via.param("received").flatten().unwrap_or(via.host);
    let ip: IpAddr = std::str::from_utf8(host)
        .ok()?
        .trim_matches(['[', ']'])
        .parse()
        .ok()?;
    let port = via
        .param("rport")
        .flatten()
        .and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())
        .or(via.port)
        .unwrap_or(5060);
    let transport = Transport::from_name(std::str::from_utf8(via.transport).ok()?)?;
    Some(Peer {
        transport,
        addr: SocketAddr::new(ip, port),
        flow: None,
    })
}

/// Kamailio's `nat_uac_test` flags (the `relay.nat.detect` sum).
pub mod test {
    /// The Contact names a private address.
    pub const CONTACT_PRIVATE: u8 = 1;
    /// The top Via's host is not the source address.
    pub const VIA_RECEIVED: u8 = 2;
    /// The top Via names a private address.
    pub const VIA_PRIVATE: u8 = 4;
    /// The SDP's `c=` line names a private address.
    pub const SDP_PRIVATE: u8 = 8;
    /// The top Via's port is not the source port.
    pub const VIA_PORT: u8 = 16;
}

/// An RFC 1918 (10/8, 172.16/12, 192.168/16) or RFC 6598 (100.64/10, carrier-grade NAT)
/// address, or an IPv6 unique local address (fc00::/7).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    std::str::from_utf8(host)
        .ok()?
        .trim_matches(['[', ']'])
        .parse()
        .ok()
}

/// Whether the request `msg` from `src`, whose top Via is `via`, passes one of the NAT tests
/// in `flags` (Kamailio's `nat_uac_test`). ws and wss clients always do: a browser has no
/// address of its own to be reached at. Reads only what the tests chosen need; no allocation.
pub fn is_nated(flags: u8, msg: &Message, via: &Via<'_>, src: &Peer) -> bool {
    if matches!(src.transport, Transport::Ws | Transport::Wss) {
        return true;
    }
    let via_ip = parse_ip(via.host);
    if flags & test::VIA_RECEIVED != 0 && via_ip != Some(src.addr.ip()) {
        return true;
    }
    if flags & test::VIA_PRIVATE != 0 && via_ip.is_some_and(is_private) {
        return true;
    }
    if flags & test::VIA_PORT != 0 && via.port.unwrap_or(5060) != src.addr.port() {
        return true;
    }
    if flags & test::CONTACT_PRIVATE != 0
        && let Some(c) = msg.header_value(HeaderName::Contact)
        && let Some(u) = Uri::parse(uri::name_addr_uri(c))
        && parse_ip(u.host).is_some_and(is_private)
    {
        return true;
    }
    flags & test::SDP_PRIVATE != 0 && sdp_names_private(msg.body())
}

/// Whether an SDP body has a `c=IN IP4|IP6 <private address>` line.
fn sdp_names_private(body: &[u8]) -> bool {
    body.split(|c| *c == b'\n').any(|l| {
        let l = l.trim_ascii();
        l.strip_prefix(b"c=IN IP4 ")
            .or_else(|| l.strip_prefix(b"c=IN IP6 "))
            .and_then(|a| parse_ip(a.split(|c| *c == b'/').next().unwrap_or(a)))
            .is_some_and(is_private)
    })
}

/// Where the host and port of the first Contact URI of `msg` are (byte offsets into the
/// message), for `fix_nated_contact`: None for no Contact, `*`, or a URI with no host.
pub fn contact_hostport(msg: &Message) -> Option<(u32, u32)> {
    let span = msg.values(HeaderName::Contact).next()?;
    let u = uri::name_addr_uri(msg.slice(span));
    let colon = u.iter().position(|c| *c == b':')?;
    let start = u
        .iter()
        .position(|c| *c == b'@')
        .map_or(colon + 1, |at| at + 1);
    let end = u[start..]
        .iter()
        .position(|c| matches!(c, b';' | b'?' | b'>'))
        .map_or(u.len(), |i| start + i);
    if end <= start {
        return None;
    }
    let base = msg.bytes().as_ptr() as usize;
    let off = (u.as_ptr() as usize).checked_sub(base)?;
    Some(((off + start) as u32, (off + end) as u32))
}

/// The `host:port` a NATed client's Contact gets: where its packets come from.
pub fn source_hostport(src: SocketAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(48);
    match src.ip() {
        IpAddr::V4(ip) => v.extend_from_slice(ip.to_string().as_bytes()),
        IpAddr::V6(ip) => v.extend_from_slice(format!("[{ip}]").as_bytes()),
    }
    v.push(b':');
    v.extend_from_slice(&build::itoa(src.port()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes()), 65535).expect("valid")
    }

    fn params(via: &str, src: &str) -> (Option<Vec<u8>>, bool) {
        let p = received_params(&Via::parse(via.as_bytes()).unwrap(), src.parse().unwrap());
        (p.bytes().map(<[u8]>::to_vec), p.fill_rport())
    }

    #[test]
    fn received_and_rport_are_added_when_the_source_differs() {
        let v = "SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKabc;rport";
        let (p, fill) = params(v, "192.0.2.7:40000");
        assert_eq!(p.as_deref(), Some(&b";received=192.0.2.7;rport=40000"[..]));
        assert!(fill);
        let (p, fill) = params(v, "10.0.0.9:5090");
        assert_eq!(p.as_deref(), Some(&b";rport=5090"[..]));
        assert!(fill);
    }

    #[test]
    fn rport_is_forced_when_the_caller_did_not_ask() {
        // JsSIP and sip.js send no rport: they still get the port they sent from.
        let plain = "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKabc";
        let (p, fill) = params(plain, "127.0.0.1:40000");
        assert_eq!(p.as_deref(), Some(&b";received=127.0.0.1;rport=40000"[..]));
        assert!(!fill, "no bare rport to remove");
        let same = "SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKabc";
        assert_eq!(
            params(same, "10.0.0.9:5090").0.as_deref(),
            Some(&b";rport=5090"[..])
        );
        let v6 = "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKabc";
        let (p, _) = params(v6, "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
        assert_eq!(
            p.as_deref(),
            Some(&b";received=2001:db8:ffff:ffff:ffff:ffff:ffff:ffff;rport=65535"[..])
        );
        let valued = "SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKabc;rport=5090";
        assert_eq!(params(valued, "10.0.0.9:5090"), (None, false));
    }

    const NATED_INVITE: &str = "INVITE sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bKn1;rport\r\nFrom: <sip:alice@a>;tag=1\r\nTo: <sip:bob@b>\r\nCall-ID: n1\r\nCSeq: 1 INVITE\r\nContact: \"Alice\" <sip:alice@192.168.1.20:5062;transport=udp>;expires=60\r\nContent-Type: application/sdp\r\nContent-Length: 30\r\n\r\nv=0\r\nc=IN IP4 100.64.3.4\r\nm=a 9\r\n";

    fn nated(flags: u8, m: &Message, src: &str, t: Transport) -> bool {
        let via = Via::parse(m.slice(m.top_via().unwrap())).unwrap();
        let src = Peer {
            transport: t,
            addr: src.parse().unwrap(),
            flow: None,
        };
        is_nated(flags, m, &via, &src)
    }

    #[test]
    fn each_nat_test_flag_checks_its_own_thing() {
        let m = msg(NATED_INVITE);
        let from_nat = "203.0.113.5:40000";
        for flag in [1, 2, 4, 8, 16] {
            assert!(nated(flag, &m, from_nat, Transport::Udp), "flag {flag}");
        }
        assert!(!nated(0, &m, from_nat, Transport::Udp), "no test chosen");
        // The same client seen at its own address: only the private-address tests fire.
        let direct = "192.168.1.20:5062";
        assert!(!nated(2 | 16, &m, direct, Transport::Udp));
        assert!(nated(1, &m, direct, Transport::Udp));
        assert!(
            nated(8, &m, direct, Transport::Udp),
            "100.64/10 is RFC 6598"
        );
        // A public client on its own address passes none.
        let public = msg(&NATED_INVITE
            .replace("192.168.1.20", "198.51.100.7")
            .replace("100.64.3.4", "198.51.100.7"));
        assert!(!nated(31, &public, "198.51.100.7:5062", Transport::Udp));
        assert!(
            nated(0, &public, "198.51.100.7:5062", Transport::Ws),
            "ws: always"
        );
        assert!(
            !is_private("172.32.0.1".parse().unwrap()) && is_private("172.31.0.1".parse().unwrap())
        );
        assert!(
            !is_private("100.128.0.1".parse().unwrap()) && is_private("fd00::1".parse().unwrap())
        );
    }

    #[test]
    fn the_contact_hostport_is_found_for_fixing() {
        let m = msg(NATED_INVITE);
        let (a, b) = contact_hostport(&m).unwrap();
        assert_eq!(&m.bytes()[a as usize..b as usize], b"192.168.1.20:5062");
        let bare = msg(&NATED_INVITE.replace(
            "\"Alice\" <sip:alice@192.168.1.20:5062;transport=udp>;expires=60",
            "sip:10.1.1.1",
        ));
        let (a, b) = contact_hostport(&bare).unwrap();
        assert_eq!(&bare.bytes()[a as usize..b as usize], b"10.1.1.1");
        let star = msg(&NATED_INVITE.replace(
            "\"Alice\" <sip:alice@192.168.1.20:5062;transport=udp>;expires=60",
            "*",
        ));
        assert_eq!(contact_hostport(&star), None);
        assert_eq!(
            source_hostport("[2001:db8::1]:5060".parse().unwrap()),
            b"[2001:db8::1]:5060"
        );
    }

    #[test]
    fn stateless_responses_follow_received_and_rport() {
        let r = msg(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKkSx\r\nVia: SIP/2.0/TCP 10.0.0.9:5090;branch=z9hG4bKa;received=192.0.2.7;rport=40000\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
        );
        let to = second_via_target(&r).unwrap();
        assert_eq!(to.addr, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(to.transport, Transport::Tcp);
    }
}
