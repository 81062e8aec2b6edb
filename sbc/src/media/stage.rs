//! The media stage: what the relay calls for every message it is about to send when a
//! `media` section is configured (docs/media.md). It reads the message once, decides the
//! [`Step`] ([`exchange::decide`]) and, when there is one, hands back a [`Job`] that talks
//! to rtpengine and yields the bytes to send instead (SDP rewritten, Content-Length fixed).
//!
//! The stage sits on the way out, after the transaction core, because only there is the leg
//! the message goes to known (a ws/wss client, or a plain backend): the flags follow that
//! leg. A failed offer in a request is reported back to the core
//! ([`crate::relay::Core::on_media_refused`]), which answers the caller and ends the client
//! transaction without counting it against the destination.
//!
//! Retransmissions the core sends again (timers A, G, a re-sent provisional) are offered or
//! answered again with the same SDP: rtpengine answers a repeated offer with the same ports,
//! so nothing is kept per message here. What is kept is how each INVITE transaction carried
//! its offer (a late offer puts it in the response), by Call-ID and CSeq, for 64*T1.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::exchange::{self, InviteOffer, Step};
use super::profile::Leg;
use super::{Anchor, Answer, DialogIds, MediaError, Processed, sdp};
use crate::sip::{HeaderName, Message, Method, build, uri};
use crate::transport::Peer;

/// How long the stage remembers how an INVITE transaction carried its offer.
const REMEMBER: Duration = Duration::from_secs(32);

/// The stage's counters (`sbc_media_*`).
#[derive(Clone)]
pub struct MediaMetrics {
    /// Offers, answers and deletes sent, by command and outcome.
    commands: IntCounterVec,
    /// Calls that found no rtpengine, by what they got (`reject`, `pass_through`).
    unavailable: IntCounterVec,
    /// Offers refused before anything was sent (malformed SDP).
    malformed: IntCounter,
}

impl MediaMetrics {
    /// Registers the counters in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<MediaMetrics> {
        let commands = IntCounterVec::new(
            Opts::new(
                "sbc_media_commands_total",
                "rtpengine ng commands sent by the media stage, by command and outcome",
            ),
            &["command", "outcome"],
        )?;
        registry.register(Box::new(commands.clone()))?;
        let unavailable = IntCounterVec::new(
            Opts::new(
                "sbc_media_unavailable_total",
                "messages that found no rtpengine available, by what the call got",
            ),
            &["action"],
        )?;
        registry.register(Box::new(unavailable.clone()))?;
        let malformed = IntCounter::new(
            "sbc_media_malformed_sdp_total",
            "offers refused with 400 for a malformed SDP (nothing sent to rtpengine)",
        )?;
        registry.register(Box::new(malformed.clone()))?;
        Ok(MediaMetrics {
            commands,
            unavailable,
            malformed,
        })
    }
}

/// How an INVITE transaction carried its offer, remembered for its responses.
#[derive(Debug, Clone, Copy)]
struct InviteSeen {
    offer: InviteOffer,
    in_dialog: bool,
    at: Instant,
}

/// The media stage.
pub struct MediaStage {
    anchor: Anchor,
    metrics: MediaMetrics,
    invites: Mutex<HashMap<Vec<u8>, InviteSeen>>,
    /// Whether a peer is a destination flagged `webrtc`.
    webrtc_peers: Option<WebRtcPeers>,
}

/// Tells whether an address is a destination flagged `webrtc` (the dispatcher in force).
pub type WebRtcPeers = std::sync::Arc<dyn Fn(std::net::SocketAddr) -> bool + Send + Sync>;

/// What to do with a message after rtpengine answered.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes (rewritten, or the original when nothing changed or the policy passes
    /// the call through).
    Send(Bytes),
    /// Do not send: answer the request's caller with this status instead.
    Refuse {
        /// The status.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// Retry-After seconds.
        retry_after: Option<u32>,
    },
}

/// One message's exchange with rtpengine, to run off the receive path.
pub struct Job {
    step: Step,
    msg: Message,
    ids: DialogIds,
    to: Leg,
    request: bool,
}

impl Job {
    /// Whether the message is a delete only (sent at once; rtpengine is told beside it).
    pub fn is_delete(&self) -> bool {
        self.step == Step::Delete
    }
}

fn key(call_id: &[u8], cseq: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(call_id.len() + 11);
    k.extend_from_slice(call_id);
    k.push(b' ');
    k.extend_from_slice(&build::itoa(cseq));
    k
}

fn ids(msg: &Message) -> Option<DialogIds> {
    let call_id = Bytes::copy_from_slice(msg.call_id()?);
    let from_tag = uri::tag(msg.header_value(HeaderName::From)?)?;
    let to_tag = msg.header_value(HeaderName::To).and_then(uri::tag);
    Some(DialogIds {
        call_id,
        from_tag: Bytes::copy_from_slice(from_tag),
        to_tag: to_tag.map(Bytes::copy_from_slice),
    })
}

impl MediaStage {
    /// The stage over a started [`Anchor`].
    pub fn new(anchor: Anchor, metrics: MediaMetrics) -> MediaStage {
        MediaStage {
            anchor,
            metrics,
            invites: Mutex::new(HashMap::new()),
            webrtc_peers: None,
        }
    }

    /// Gives legs towards the destinations `peers` names the WebRTC profile.
    pub fn with_webrtc_destinations(self, peers: WebRtcPeers) -> MediaStage {
        MediaStage {
            webrtc_peers: Some(peers),
            ..self
        }
    }

    /// The anchor (engines, policy).
    pub fn anchor(&self) -> &Anchor {
        &self.anchor
    }

    /// Reads a message about to go to `to` and returns its job, or `None` when rtpengine has
    /// nothing to do with it (no SDP, not a call's end, not SIP we can read).
    pub fn inspect(&self, data: &Bytes, to: &Peer) -> Option<Job> {
        let msg = Message::parse(data.clone(), usize::MAX).ok()?;
        let ct = msg.header_value(HeaderName::ContentType);
        let has_sdp = !msg.body().is_empty() && !matches!(sdp::find(ct, msg.body()), Ok(None));
        let (_, cseq_method) = msg.cseq()?;
        let cseq = msg.cseq()?.0;
        let method = Method::from_bytes(cseq_method);
        let request = msg.is_request();
        let step = if request {
            let in_dialog = msg
                .header_value(HeaderName::To)
                .and_then(uri::tag)
                .is_some();
            let method = msg.method()?;
            if method == Method::Invite {
                self.remember(&msg, cseq, has_sdp, in_dialog);
            }
            // An ACK can only carry SDP as the answer to a late offer (RFC 3264).
            let m = exchange::Message::Request {
                method,
                in_dialog,
                has_sdp,
            };
            exchange::decide(m, InviteOffer::Late)
        } else {
            let status = msg.code()?;
            let seen = (method == Method::Invite)
                .then(|| self.recall(msg.call_id()?, cseq))
                .flatten();
            let m = exchange::Message::Response {
                method,
                status,
                in_dialog: seen.is_some_and(|s| s.in_dialog),
                has_sdp,
            };
            exchange::decide(m, seen.map_or(InviteOffer::InInvite, |s| s.offer))
        };
        let step = match step {
            // The ACK rule above assumed a late offer; after an early one its SDP is ignored.
            Step::Answer(_) if request && msg.method() == Some(Method::Ack) => {
                let early = self
                    .recall(msg.call_id()?, cseq)
                    .is_some_and(|s| s.offer == InviteOffer::InInvite);
                if early { Step::Nothing } else { step }
            }
            s => s,
        };
        if step == Step::Nothing {
            return None;
        }
        Some(Job {
            step,
            ids: ids(&msg)?,
            msg,
            to: Leg {
                transport: to.transport,
                webrtc: self.webrtc_peers.as_ref().is_some_and(|f| f(to.addr)),
            },
            request,
        })
    }

    fn remember(&self, msg: &Message, cseq: u32, has_sdp: bool, in_dialog: bool) {
        let Some(call_id) = msg.call_id() else { return };
        let now = Instant::now();
        let mut m = self.invites.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 1024 && m.len().is_power_of_two() {
            m.retain(|_, s| now.duration_since(s.at) < REMEMBER);
        }
        let offer = if has_sdp {
            InviteOffer::InInvite
        } else {
            InviteOffer::Late
        };
        m.insert(
            key(call_id, cseq),
            InviteSeen {
                offer,
                in_dialog,
                at: now,
            },
        );
    }

    fn recall(&self, call_id: &[u8], cseq: u32) -> Option<InviteSeen> {
        let m = self.invites.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&key(call_id, cseq))
            .copied()
            .filter(|s| s.at.elapsed() < REMEMBER)
    }

    /// Tells rtpengine about a delete step; errors are logged (the call may be gone already:
    /// a CANCEL and its 487 both end it).
    pub async fn delete(&self, job: &Job) {
        match self.anchor.delete(&job.ids).await {
            Ok(()) => self.count("delete", "ok"),
            Err(e) => {
                self.count("delete", "error");
                tracing::debug!(call_id = %String::from_utf8_lossy(&job.ids.call_id), error = %e, "rtpengine delete");
            }
        }
    }

    fn count(&self, command: &str, outcome: &str) {
        self.metrics
            .commands
            .with_label_values(&[command, outcome])
            .inc();
    }

    /// Runs an offer or answer job: the bytes to send, or the answer to give the caller.
    pub async fn run(&self, job: Job) -> Outcome {
        let command = match job.step {
            Step::Offer(_) => "offer",
            Step::Answer(_) => "answer",
            _ => "delete",
        };
        let ct = job.msg.header_value(HeaderName::ContentType);
        let r = self
            .anchor
            .process(job.step, &job.ids, ct, job.msg.body(), job.to)
            .await;
        let original = || Outcome::Send(job.msg.bytes().clone());
        let e = match r {
            Ok(Processed::Body(body)) => {
                self.count(command, "ok");
                return Outcome::Send(Bytes::from(build::replace_body(&job.msg, &body)));
            }
            Ok(_) => return original(),
            Err(e) => e,
        };
        let call_id = String::from_utf8_lossy(&job.ids.call_id).into_owned();
        if matches!(e, MediaError::Sdp(_)) {
            self.metrics.malformed.inc();
        } else {
            self.count(command, "error");
        }
        let answer = e.answer(self.anchor.policy());
        if e.is_unavailable() {
            let action = match answer {
                Answer::PassThrough => "pass_through",
                Answer::Reply { .. } => "reject",
            };
            self.metrics.unavailable.with_label_values(&[action]).inc();
            tracing::warn!(call_id, command, error = %e, action, "no rtpengine available");
        } else {
            tracing::warn!(call_id, command, error = %e, "media anchoring failed");
        }
        match answer {
            // A response or an ACK cannot be refused: it goes on as it is.
            Answer::Reply { .. } if !job.request || job.msg.method() == Some(Method::Ack) => {
                original()
            }
            Answer::Reply {
                status,
                reason,
                retry_after,
            } => Outcome::Refuse {
                status,
                reason,
                retry_after,
            },
            Answer::PassThrough => original(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_body_fixes_content_length() {
        let raw = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nContent-Type: application/sdp\r\nl: 3\r\n\r\nabc";
        let msg = Message::parse(Bytes::from_static(raw), 4096).unwrap();
        let out = build::replace_body(&msg, b"v=0\r\n");
        assert!(
            out.ends_with(b"l: 5\r\n\r\nv=0\r\n"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let raw = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\r\n";
        let msg = Message::parse(Bytes::from_static(raw), 4096).unwrap();
        let out = build::replace_body(&msg, b"xy");
        assert!(out.ends_with(b"Content-Length: 2\r\n\r\nxy"));
    }
}
