//! The nat stage: where a caller really is (RFC 3261 section 18.2.1, RFC 3581). A request's
//! topmost Via gets `;received=` when its sent-by is not the packet's source, and `;rport=`
//! filled in when the caller asked; responses sent without a transaction follow them back.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use kubesbc_crds::config::Transport;

use crate::sip::build;
use crate::sip::uri::Via;
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
