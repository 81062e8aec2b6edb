//! The nat stage: where a caller really is (RFC 3261 section 18.2.1, RFC 3581). A request's
//! topmost Via gets `;received=` when its sent-by is not the packet's source, and `;rport=`
//! filled in when the caller asked; responses sent without a transaction follow them back.

use std::net::{IpAddr, SocketAddr};

use kubesbc_crds::config::Transport;

use crate::sip::build;
use crate::sip::uri::Via;
use crate::sip::{HeaderName, Message};
use crate::transport::Peer;

/// `;received=` and `;rport=` for the topmost Via `via` of a request from `src`, and whether
/// an empty `rport` is to be filled.
pub fn received_params(via: &Via<'_>, src: SocketAddr) -> (Option<Vec<u8>>, bool) {
    let host = std::str::from_utf8(via.host)
        .ok()
        .and_then(|h| h.parse::<IpAddr>().ok());
    let received = host != Some(src.ip()) && via.param("received").is_none();
    let fill = via.param("rport") == Some(None);
    if !received && !fill {
        return (None, false);
    }
    let mut p = Vec::with_capacity(40);
    if received {
        p.extend_from_slice(b";received=");
        p.extend_from_slice(src.ip().to_string().as_bytes());
    }
    if fill {
        p.extend_from_slice(b";rport=");
        p.extend_from_slice(&build::itoa(src.port()));
    }
    (Some(p), fill)
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
        received_params(&Via::parse(via.as_bytes()).unwrap(), src.parse().unwrap())
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
        let plain = "SIP/2.0/UDP 10.0.0.9:5090;branch=z9hG4bKabc";
        assert_eq!(params(plain, "10.0.0.9:5090"), (None, false));
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
