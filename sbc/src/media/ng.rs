//! The ng protocol's messages: the command dictionaries the sbc sends to rtpengine (`ping`,
//! `offer`, `answer`, `delete`, `query`) with their flags, and the replies it reads back.
//!
//! A datagram is `<cookie> <bencoded dictionary>`; the cookie is chosen per request by the
//! client ([`super::client`]) and echoed by rtpengine, which also answers a retransmitted
//! request (same cookie) from its cache instead of executing it twice.

use bytes::Bytes;

use super::bencode::{self, DecodeError, Dict, Limits, Value};

/// An ng command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Health check; the reply's result is `pong`.
    Ping,
    /// An SDP offer: rtpengine allocates ports and returns the rewritten SDP.
    Offer,
    /// The SDP answer to an earlier offer.
    Answer,
    /// Ends the call (or one branch of it).
    Delete,
    /// Reports the call's state and statistics.
    Query,
}

impl Command {
    /// The command's name in the protocol.
    pub fn name(self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Offer => "offer",
            Command::Answer => "answer",
            Command::Delete => "delete",
            Command::Query => "query",
        }
    }
}

/// `transport-protocol`: the media transport written into the rewritten SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportProtocol {
    /// `RTP/AVP`: plain RTP.
    RtpAvp,
    /// `RTP/SAVPF`: SRTP with feedback (with DTLS, rtpengine writes `UDP/TLS/RTP/SAVPF`).
    RtpSavpf,
    /// `UDP/TLS/RTP/SAVPF`: DTLS-SRTP with feedback, what browsers offer.
    UdpTlsRtpSavpf,
}

impl TransportProtocol {
    /// The protocol string.
    pub fn name(self) -> &'static str {
        match self {
            TransportProtocol::RtpAvp => "RTP/AVP",
            TransportProtocol::RtpSavpf => "RTP/SAVPF",
            TransportProtocol::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
        }
    }
}

/// `ICE`: what to do with ICE attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ice {
    /// `force`: rtpengine adds its own candidates (and strips the peer's).
    Force,
    /// `remove`: no ICE attributes in the rewritten SDP.
    Remove,
}

impl Ice {
    fn name(self) -> &'static str {
        match self {
            Ice::Force => "force",
            Ice::Remove => "remove",
        }
    }
}

/// `DTLS`: rtpengine's DTLS role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtls {
    /// `passive`: wait for the peer's ClientHello (`a=setup:passive`).
    Passive,
    /// `active`: start the handshake (`a=setup:active`).
    Active,
    /// `off`: no DTLS.
    Off,
}

impl Dtls {
    fn name(self) -> &'static str {
        match self {
            Dtls::Passive => "passive",
            Dtls::Active => "active",
            Dtls::Off => "off",
        }
    }
}

/// One entry of `rtcp-mux`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpMux {
    /// `offer`: offer rtcp-mux.
    Offer,
    /// `demux`: separate RTP and RTCP ports towards this side.
    Demux,
    /// `require`: rtcp-mux only, no separate RTCP port even in an offer (browsers).
    Require,
    /// `accept`: accept rtcp-mux when offered.
    Accept,
}

impl RtcpMux {
    fn name(self) -> &'static str {
        match self {
            RtcpMux::Offer => "offer",
            RtcpMux::Demux => "demux",
            RtcpMux::Require => "require",
            RtcpMux::Accept => "accept",
        }
    }
}

/// Codec manipulation, passed through to rtpengine's `codec` dictionary as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecOptions {
    /// `codec.strip`: codecs removed (`all` for every one).
    pub strip: Vec<String>,
    /// `codec.offer`: codecs kept or re-added after a strip.
    pub offer: Vec<String>,
    /// `codec.transcode`: codecs added and transcoded to when the peer picks them.
    pub transcode: Vec<String>,
    /// `codec.mask`: codecs hidden from the peer but still accepted.
    pub mask: Vec<String>,
}

impl CodecOptions {
    fn is_empty(&self) -> bool {
        self.strip.is_empty()
            && self.offer.is_empty()
            && self.transcode.is_empty()
            && self.mask.is_empty()
    }

    fn to_dict(&self) -> Dict {
        let mut d = Dict::new();
        for (key, list) in [
            ("strip", &self.strip),
            ("offer", &self.offer),
            ("transcode", &self.transcode),
            ("mask", &self.mask),
        ] {
            if !list.is_empty() {
                d.insert(key, strings(list));
            }
        }
        d
    }
}

fn strings(list: &[String]) -> Value {
    Value::List(list.iter().map(|s| Value::from(s.clone())).collect())
}

/// The flags of an offer or answer: how rtpengine rewrites the SDP for the side it goes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `replace: [origin]`: rtpengine's address in `o=`.
    pub replace_origin: bool,
    /// `replace: [session-connection]`: rtpengine's address in the session-level `c=`.
    pub replace_session_connection: bool,
    /// `ICE`.
    pub ice: Option<Ice>,
    /// `transport-protocol`.
    pub transport_protocol: Option<TransportProtocol>,
    /// `DTLS`.
    pub dtls: Option<Dtls>,
    /// `rtcp-mux`.
    pub rtcp_mux: Vec<RtcpMux>,
    /// `codec`.
    pub codec: CodecOptions,
    /// Plain entries of `flags` (`trust-address`, `SIP-source-address`, ...), as configured.
    pub flags: Vec<String>,
}

impl Flags {
    fn add_to(&self, d: &mut Dict) {
        let mut replace = Vec::new();
        if self.replace_origin {
            replace.push(Value::from("origin"));
        }
        if self.replace_session_connection {
            replace.push(Value::from("session-connection"));
        }
        if !replace.is_empty() {
            d.insert("replace", replace);
        }
        if let Some(i) = self.ice {
            d.insert("ICE", i.name());
        }
        if let Some(t) = self.transport_protocol {
            d.insert("transport-protocol", t.name());
        }
        if let Some(x) = self.dtls {
            d.insert("DTLS", x.name());
        }
        if !self.rtcp_mux.is_empty() {
            d.insert(
                "rtcp-mux",
                Value::List(self.rtcp_mux.iter().map(|m| m.name().into()).collect()),
            );
        }
        if !self.codec.is_empty() {
            d.insert("codec", self.codec.to_dict());
        }
        if !self.flags.is_empty() {
            d.insert("flags", strings(&self.flags));
        }
    }
}

/// The identity of a call (or of one side of it) in rtpengine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRef {
    /// `call-id`.
    pub call_id: Bytes,
    /// `from-tag`: the tag of the side that made the offer (empty: not sent, e.g. a query or a
    /// delete of the whole call).
    pub from_tag: Bytes,
    /// `to-tag`: the tag of the answering side (answers; optional for delete).
    pub to_tag: Option<Bytes>,
}

/// One request: a command and its arguments.
#[derive(Debug, Clone)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// The call it is about (`None` for `ping`).
    pub call: Option<CallRef>,
    /// The SDP of an offer or answer.
    pub sdp: Option<Bytes>,
    /// Flags of an offer or answer.
    pub flags: Flags,
}

impl Request {
    /// `ping`.
    pub fn ping() -> Request {
        Request {
            command: Command::Ping,
            call: None,
            sdp: None,
            flags: Flags::default(),
        }
    }

    /// `offer` of `sdp` for `call`, rewritten with `flags`.
    pub fn offer(call: CallRef, sdp: Bytes, flags: Flags) -> Request {
        Request {
            command: Command::Offer,
            call: Some(call),
            sdp: Some(sdp),
            flags,
        }
    }

    /// `answer` of `sdp` for `call` (which carries the to-tag).
    pub fn answer(call: CallRef, sdp: Bytes, flags: Flags) -> Request {
        Request {
            command: Command::Answer,
            call: Some(call),
            sdp: Some(sdp),
            flags,
        }
    }

    /// `delete` of `call`.
    pub fn delete(call: CallRef) -> Request {
        Request {
            command: Command::Delete,
            call: Some(call),
            sdp: None,
            flags: Flags::default(),
        }
    }

    /// `query` of `call`.
    pub fn query(call: CallRef) -> Request {
        Request {
            command: Command::Query,
            call: Some(call),
            sdp: None,
            flags: Flags::default(),
        }
    }

    /// The bencoded dictionary (without the cookie).
    pub fn encode(&self) -> Vec<u8> {
        let mut d = Dict::new().with("command", self.command.name());
        if let Some(c) = &self.call {
            d.insert("call-id", c.call_id.clone());
            if !c.from_tag.is_empty() {
                d.insert("from-tag", c.from_tag.clone());
            }
            if let Some(t) = &c.to_tag {
                d.insert("to-tag", t.clone());
            }
        }
        if let Some(s) = &self.sdp {
            d.insert("sdp", s.clone());
        }
        self.flags.add_to(&mut d);
        bencode::encode(&Value::Dict(d))
    }
}

/// The `result` of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `ok` (or `pong` to a ping).
    Ok,
    /// `error`, with `error-reason`.
    Error(String),
    /// `load limit`: rtpengine refuses new calls because it is overloaded.
    LoadLimit,
}

/// A decoded reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// What rtpengine says about the request.
    pub outcome: Outcome,
    /// The rewritten SDP (offer, answer).
    pub sdp: Option<Bytes>,
    /// A `warning` rtpengine added (the request was carried out).
    pub warning: Option<String>,
    /// The whole dictionary (query statistics, ...).
    pub dict: Dict,
}

/// Why a reply cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not bencode.
    #[error("{0}")]
    Bencode(#[from] DecodeError),
    /// Bencode, but not a dictionary with a known `result`.
    #[error("ng reply: {0}")]
    Shape(&'static str),
}

/// Longest reason text kept from a reply (they end up in logs and SIP reason phrases).
const MAX_REASON: usize = 200;

fn text(b: &Bytes) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(MAX_REASON)]);
    s.chars().filter(|c| !c.is_control()).collect()
}

impl Reply {
    /// Decodes the dictionary of a reply (the part after the cookie).
    pub fn decode(payload: &Bytes) -> Result<Reply, ReplyError> {
        let v = bencode::decode(payload, Limits::default())?;
        let Value::Dict(dict) = v else {
            return Err(ReplyError::Shape("not a dictionary"));
        };
        let result = dict.bytes("result").ok_or(ReplyError::Shape("no result"))?;
        let outcome = match result.as_ref() {
            b"ok" | b"pong" => Outcome::Ok,
            b"error" => Outcome::Error(
                dict.bytes("error-reason")
                    .map(text)
                    .unwrap_or_else(|| "(no reason given)".to_owned()),
            ),
            b"load limit" => Outcome::LoadLimit,
            _ => return Err(ReplyError::Shape("unknown result")),
        };
        Ok(Reply {
            outcome,
            sdp: dict.bytes("sdp").cloned(),
            warning: dict.bytes("warning").map(text),
            dict,
        })
    }
}

/// Splits a datagram into its cookie and payload: `<cookie> <payload>`. `None` when there is
/// no space within the first 64 bytes or the cookie is empty.
pub fn split_cookie(datagram: &Bytes) -> Option<(Bytes, Bytes)> {
    let head = &datagram[..datagram.len().min(65)];
    let sp = head.iter().position(|&b| b == b' ')?;
    if sp == 0 {
        return None;
    }
    Some((datagram.slice(..sp), datagram.slice(sp + 1..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call() -> CallRef {
        CallRef {
            call_id: Bytes::from_static(b"c1"),
            from_tag: Bytes::from_static(b"ft"),
            to_tag: Some(Bytes::from_static(b"tt")),
        }
    }

    #[test]
    fn offer_carries_every_flag_the_issue_names() {
        let flags = Flags {
            replace_origin: true,
            replace_session_connection: true,
            ice: Some(Ice::Force),
            transport_protocol: Some(TransportProtocol::RtpSavpf),
            dtls: Some(Dtls::Passive),
            rtcp_mux: vec![RtcpMux::Require],
            codec: CodecOptions {
                strip: vec!["all".into()],
                offer: vec!["PCMU".into()],
                ..CodecOptions::default()
            },
            flags: vec!["trust-address".into()],
        };
        let r = Request::offer(call(), Bytes::from_static(b"v=0\r\n"), flags);
        assert_eq!(
            String::from_utf8(r.encode()).unwrap(),
            "d7:command5:offer7:call-id2:c18:from-tag2:ft6:to-tag2:tt3:sdp5:v=0\r\n\
             7:replacel6:origin18:session-connectione3:ICE5:force\
             18:transport-protocol9:RTP/SAVPF4:DTLS7:passive8:rtcp-muxl7:requiree\
             5:codecd5:stripl3:alle5:offerl4:PCMUee5:flagsl13:trust-addressee"
        );
        assert_eq!(Request::ping().encode(), b"d7:command4:pinge".to_vec());
    }

    #[test]
    fn replies() {
        let r = Reply::decode(&Bytes::from_static(b"d6:result4:ponge")).unwrap();
        assert_eq!(r.outcome, Outcome::Ok);
        let r = Reply::decode(&Bytes::from_static(
            b"d6:result5:error12:error-reason15:Unknown call-ide",
        ))
        .unwrap();
        assert_eq!(r.outcome, Outcome::Error("Unknown call-id".into()));
        let r = Reply::decode(&Bytes::from_static(b"d6:result10:load limite")).unwrap();
        assert_eq!(r.outcome, Outcome::LoadLimit);
        let r = Reply::decode(&Bytes::from_static(
            b"d3:sdp3:v=07:warning3:\x07hi6:result2:oke",
        ))
        .unwrap();
        assert_eq!(r.sdp.as_deref(), Some(&b"v=0"[..]));
        assert_eq!(r.warning.as_deref(), Some("hi"));
        for bad in [
            &b"le"[..],
            b"de",
            b"d6:result3:wate",
            b"d6:resulti1ee",
            b"x",
        ] {
            assert!(Reply::decode(&Bytes::copy_from_slice(bad)).is_err());
        }
    }

    #[test]
    fn cookies() {
        let d = Bytes::from_static(b"abc d6:result2:oke");
        let (c, p) = split_cookie(&d).unwrap();
        assert_eq!(
            (c.as_ref(), p.as_ref()),
            (&b"abc"[..], &b"d6:result2:oke"[..])
        );
        assert!(split_cookie(&Bytes::from_static(b" d")).is_none());
        assert!(split_cookie(&Bytes::from_static(b"nospace")).is_none());
        assert!(split_cookie(&Bytes::from(vec![b'a'; 100])).is_none());
    }
}
