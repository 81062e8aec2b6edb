//! Direction-dependent flags: what rtpengine writes into an SDP depends on the leg the SDP is
//! going to. A WebRTC leg (a ws/wss transport, or a leg flagged `webrtc`) gets DTLS-SRTP with
//! ICE and rtcp-mux; a plain leg gets RTP/AVP without ICE. Both get rtpengine's address in
//! `o=` and in the session-level `c=`.
//!
//! Which way an SDP goes: an offer in a request goes to the request's destination, an answer in
//! a response back to the caller; the stage always passes the leg the message is forwarded to.

use kubesbc_crds::config::Transport;

use super::ng::{CodecOptions, Dtls, Flags, Ice, RtcpMux, TransportProtocol};

/// The kind of a call leg, as far as media is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegKind {
    /// A browser: DTLS-SRTP, ICE, rtcp-mux.
    WebRtc,
    /// A phone, trunk or PBX speaking RTP.
    Plain,
}

/// What the stage knows about a leg: its transport and whether its listener or destination is
/// flagged `webrtc` (a WebRTC client behind a plain-SIP gateway, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    /// The SIP transport of the leg.
    pub transport: Transport,
    /// An explicit `webrtc` flag on the listener or destination.
    pub webrtc: bool,
}

impl Leg {
    /// WebRTC for ws and wss legs and for flagged ones, plain otherwise.
    pub fn kind(self) -> LegKind {
        if self.webrtc || matches!(self.transport, Transport::Ws | Transport::Wss) {
            LegKind::WebRtc
        } else {
            LegKind::Plain
        }
    }
}

/// Whether the SDP being rewritten is an offer or an answer (DTLS roles differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpRole {
    /// rtpengine's SDP is an offer to the leg.
    Offer,
    /// rtpengine's SDP is an answer to the leg.
    Answer,
}

/// The flags for one kind of leg. Built-in defaults from [`Profile::webrtc`] and
/// [`Profile::plain`]; configuration sets the codec options and adds entries to `flags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `transport-protocol`.
    pub transport_protocol: TransportProtocol,
    /// `ICE`.
    pub ice: Ice,
    /// `DTLS` when rtpengine's SDP is an offer (`None`: rtpengine's default, `actpass`).
    pub dtls_offer: Option<Dtls>,
    /// `DTLS` when rtpengine's SDP is an answer.
    pub dtls_answer: Option<Dtls>,
    /// `rtcp-mux`.
    pub rtcp_mux: Vec<RtcpMux>,
    /// `codec`, passed through.
    pub codec: CodecOptions,
    /// Entries of `flags` (built-in ones, then the configured ones).
    pub flags: Vec<String>,
}

impl Profile {
    /// Towards a browser: `UDP/TLS/RTP/SAVPF` (RTP/SAVPF over DTLS, what JSEP writes),
    /// `ICE=force`, `rtcp-mux: [require]` (browsers refuse separate RTCP ports) and
    /// `SDES-off` (browsers do DTLS-SRTP only; no `a=crypto` lines). The DTLS role is left
    /// to rtpengine both ways: given a browser's `actpass` offer it takes `active` and sends
    /// its ClientHello as soon as ICE connects, which can be before the answer; forcing
    /// `passive` in the answer then flipped the role under a handshake already started and
    /// chromium's DTLS never connected (tests/tests/browser.rs showed it).
    pub fn webrtc() -> Profile {
        Profile {
            transport_protocol: TransportProtocol::UdpTlsRtpSavpf,
            ice: Ice::Force,
            dtls_offer: None,
            dtls_answer: None,
            rtcp_mux: vec![RtcpMux::Require],
            codec: CodecOptions::default(),
            flags: vec!["SDES-off".to_owned()],
        }
    }

    /// Towards a phone or PBX: `RTP/AVP`, `ICE=remove`, `rtcp-mux: [demux]` (separate RTCP
    /// ports, which every RTP stack understands).
    pub fn plain() -> Profile {
        Profile {
            transport_protocol: TransportProtocol::RtpAvp,
            ice: Ice::Remove,
            dtls_offer: Some(Dtls::Off),
            dtls_answer: Some(Dtls::Off),
            rtcp_mux: vec![RtcpMux::Demux],
            codec: CodecOptions::default(),
            flags: Vec::new(),
        }
    }

    /// The ng flags for an SDP in `role` going to a leg of this profile.
    pub fn flags(&self, role: SdpRole) -> Flags {
        Flags {
            replace_origin: true,
            replace_session_connection: true,
            ice: Some(self.ice),
            transport_protocol: Some(self.transport_protocol),
            dtls: match role {
                SdpRole::Offer => self.dtls_offer,
                SdpRole::Answer => self.dtls_answer,
            },
            rtcp_mux: self.rtcp_mux.clone(),
            codec: self.codec.clone(),
            flags: self.flags.clone(),
        }
    }
}

/// The two profiles in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profiles {
    /// For WebRTC legs.
    pub webrtc: Profile,
    /// For plain legs.
    pub plain: Profile,
}

impl Default for Profiles {
    fn default() -> Profiles {
        Profiles {
            webrtc: Profile::webrtc(),
            plain: Profile::plain(),
        }
    }
}

impl Profiles {
    /// The flags for an SDP in `role` going to `leg`.
    pub fn flags_towards(&self, leg: Leg, role: SdpRole) -> Flags {
        match leg.kind() {
            LegKind::WebRtc => self.webrtc.flags(role),
            LegKind::Plain => self.plain.flags(role),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leg_kind_follows_transport_or_flag() {
        for (t, webrtc, kind) in [
            (Transport::Udp, false, LegKind::Plain),
            (Transport::Tcp, false, LegKind::Plain),
            (Transport::Tls, false, LegKind::Plain),
            (Transport::Ws, false, LegKind::WebRtc),
            (Transport::Wss, false, LegKind::WebRtc),
            (Transport::Udp, true, LegKind::WebRtc),
        ] {
            assert_eq!(
                Leg {
                    transport: t,
                    webrtc
                }
                .kind(),
                kind,
                "{t} {webrtc}"
            );
        }
    }

    #[test]
    fn browser_to_pbx_offer_goes_plain_and_the_answer_back_goes_webrtc() {
        let p = Profiles::default();
        let pbx = Leg {
            transport: Transport::Udp,
            webrtc: false,
        };
        let browser = Leg {
            transport: Transport::Wss,
            webrtc: false,
        };
        let offer = p.flags_towards(pbx, SdpRole::Offer);
        assert_eq!(offer.transport_protocol, Some(TransportProtocol::RtpAvp));
        assert_eq!(offer.ice, Some(Ice::Remove));
        assert_eq!(offer.rtcp_mux, vec![RtcpMux::Demux]);
        assert!(offer.replace_origin && offer.replace_session_connection);
        let answer = p.flags_towards(browser, SdpRole::Answer);
        assert_eq!(
            answer.transport_protocol,
            Some(TransportProtocol::UdpTlsRtpSavpf)
        );
        assert_eq!(answer.flags, vec!["SDES-off".to_owned()]);
        assert_eq!(answer.ice, Some(Ice::Force));
        assert_eq!(answer.dtls, None, "rtpengine keeps the role it took");
        assert_eq!(answer.rtcp_mux, vec![RtcpMux::Require]);
        assert!(answer.replace_origin && answer.replace_session_connection);
        // An offer to a browser leaves the DTLS role to rtpengine too (actpass).
        assert_eq!(p.flags_towards(browser, SdpRole::Offer).dtls, None);
    }
}
