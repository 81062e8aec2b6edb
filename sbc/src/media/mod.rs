//! Media anchoring through rtpengine (docs/media.md). With a `media` section the relay passes
//! every message it sends through [`stage::MediaStage`], which calls [`Anchor`].
//!
//! - [`bencode`]: the ng protocol's encoding, decoding bounded for untrusted input.
//! - [`ng`]: the commands (`ping`, `offer`, `answer`, `delete`, `query`), their flags and
//!   replies.
//! - [`client`]: one UDP socket, a task demultiplexing replies by cookie, retransmission until
//!   a deadline.
//! - [`pool`]: the configured rtpengines, pinged on an interval; a call's engine is picked by
//!   rendezvous hashing of its Call-ID over the live ones.
//! - [`sdp`]: finding the SDP in a body (also inside multipart), replacing it, refusing a
//!   malformed offer.
//! - [`profile`]: the flags for a WebRTC or a plain leg.
//! - [`exchange`]: which message carries the offer, the answer, or ends the call.
//! - [`stage`]: the media stage of the call path: reads the message being sent, runs the step,
//!   rewrites the body and Content-Length.
//!
//! [`Anchor`] ties them together: the stage passes it the [`exchange::Step`] for a message, the
//! dialog's identifiers, the body and the leg the message goes to, and gets back the new body
//! or an error that knows its SIP status ([`MediaError::answer`]) and whether the failure
//! policy applies ([`FailurePolicy`]).

pub mod bencode;
pub mod client;
pub mod exchange;
pub mod ng;
pub mod pool;
pub mod profile;
pub mod sdp;
pub mod stage;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use kubesbc_crds::policy::{MediaConfig, MediaProfileConfig, MediaUnreachable};

use client::{NgClient, NgError, Timing};
use exchange::{Step, Tags};
use ng::{CallRef, CodecOptions, Outcome, Reply, Request};
use pool::{NoneReachable, Pool};
use profile::{Leg, Profile, Profiles, SdpRole};
use sdp::SdpError;

/// Why anchoring a message failed. [`MediaError::answer`] says what the caller is told.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The offerer's SDP (or its body) is malformed: nothing was sent to rtpengine.
    #[error("{0}")]
    Sdp(#[from] SdpError),
    /// No rtpengine is live.
    #[error("{0}")]
    NoneReachable(#[from] NoneReachable),
    /// The chosen rtpengine did not answer, or the socket failed.
    #[error("{0}")]
    Ng(#[from] NgError),
    /// rtpengine answered `error`.
    #[error("rtpengine {engine}: {command} refused: {reason}")]
    Refused {
        /// The engine's configured name.
        engine: String,
        /// The command.
        command: &'static str,
        /// rtpengine's `error-reason`.
        reason: String,
    },
    /// rtpengine answered `load limit`.
    #[error("rtpengine {engine}: load limit reached")]
    Overloaded {
        /// The engine's configured name.
        engine: String,
    },
    /// rtpengine answered `ok` to an offer or answer without an SDP.
    #[error("rtpengine {engine}: {command} reply has no SDP")]
    NoSdp {
        /// The engine's configured name.
        engine: String,
        /// The command.
        command: &'static str,
    },
}

/// What the caller of a failed request is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Reply with this status and reason phrase (and Retry-After when set).
    Reply {
        /// The status code.
        status: u16,
        /// The reason phrase (without CR/LF).
        reason: String,
        /// Seconds for a Retry-After header.
        retry_after: Option<u32>,
    },
    /// Forward the message unchanged, without anchoring.
    PassThrough,
}

/// What a call gets when no rtpengine can take it (none live, the chosen one timed out, or
/// it is at its load limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// 503 with Retry-After.
    Reject {
        /// Seconds in Retry-After.
        retry_after_secs: u32,
    },
    /// Forward without anchoring.
    PassThrough,
}

impl Default for FailurePolicy {
    fn default() -> FailurePolicy {
        FailurePolicy::Reject {
            retry_after_secs: 5,
        }
    }
}

/// Whether rtpengine's reason says the SDP cannot be negotiated (488) rather than that
/// rtpengine failed (500).
fn not_acceptable(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    // rtpengine's words for it: "Failed to parse SDP", "Incomplete SDP specification",
    // "Error rewriting SDP", "Unsupported ...", codec and crypto negotiation failures.
    [
        "sdp",
        "unsupported",
        "codec",
        "incompatible",
        "protocol",
        "crypto",
    ]
    .iter()
    .any(|k| r.contains(k))
}

impl MediaError {
    /// Whether the failure is the rtpengines' availability (none live, no reply, load limit):
    /// the [`FailurePolicy`] decides.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            MediaError::NoneReachable(_)
                | MediaError::Overloaded { .. }
                | MediaError::Ng(NgError::Timeout { .. } | NgError::Io { .. })
        )
    }

    /// What the caller is told: 400 for a malformed SDP, 488 or 500 for an rtpengine error
    /// reply as its reason says, the policy's answer when no rtpengine is available, 500 for
    /// anything else. Reasons carry rtpengine's own words.
    pub fn answer(&self, policy: FailurePolicy) -> Answer {
        let reply = |status, reason: String, retry_after| Answer::Reply {
            status,
            reason: reason.replace(['\r', '\n'], " "),
            retry_after,
        };
        match self {
            MediaError::Sdp(e) => reply(400, capitalized(&e.to_string()), None),
            e if e.is_unavailable() => match policy {
                FailurePolicy::Reject { retry_after_secs } => reply(
                    503,
                    "Media Relay Unavailable".to_owned(),
                    Some(retry_after_secs),
                ),
                FailurePolicy::PassThrough => Answer::PassThrough,
            },
            MediaError::Refused { reason, .. } if not_acceptable(reason) => {
                reply(488, format!("Not Acceptable Here ({reason})"), None)
            }
            MediaError::Refused { reason, .. } => {
                reply(500, format!("Media Relay Error ({reason})"), None)
            }
            _ => reply(500, "Media Relay Error".to_owned(), None),
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The identifiers of the dialog a message belongs to, as the stage reads them from the
/// message (before topology hiding changes the Call-ID: the same value on both sides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogIds {
    /// The Call-ID the calls hash on and rtpengine knows the call by.
    pub call_id: Bytes,
    /// The From tag.
    pub from_tag: Bytes,
    /// The To tag, once there is one.
    pub to_tag: Option<Bytes>,
}

impl DialogIds {
    fn call_ref(&self, tags: Tags) -> CallRef {
        let to = self.to_tag.clone().unwrap_or_default();
        let (from_tag, to_tag) = tags.order(self.from_tag.clone(), to);
        CallRef {
            call_id: self.call_id.clone(),
            from_tag,
            to_tag: (!to_tag.is_empty()).then_some(to_tag),
        }
    }
}

/// What [`Anchor::process`] did to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// Nothing to do (no step, or no SDP in the body): forward as is.
    Unchanged,
    /// Forward with this body (the relay writes its Content-Length).
    Body(Bytes),
    /// The call was deleted in rtpengine.
    Deleted,
}

/// The media stage's handle on rtpengine: the engines, the profiles and the failure policy.
#[derive(Debug, Clone)]
pub struct Anchor {
    pool: Pool,
    profiles: Profiles,
    policy: FailurePolicy,
}

fn codec(c: &kubesbc_crds::policy::MediaCodecConfig) -> CodecOptions {
    CodecOptions {
        strip: c.strip.clone(),
        offer: c.offer.clone(),
        transcode: c.transcode.clone(),
        mask: c.mask.clone(),
    }
}

fn profile(mut base: Profile, cfg: Option<&MediaProfileConfig>) -> Profile {
    if let Some(c) = cfg {
        base.codec = codec(&c.codec);
        base.flags.extend(c.flags.iter().cloned());
    }
    base
}

impl Anchor {
    /// Starts from a validated `media` section: binds the client (any port, on the
    /// unspecified address of the first engine's family), pings every engine once and then
    /// every `pingIntervalMs`.
    pub async fn start(cfg: &MediaConfig) -> std::io::Result<Anchor> {
        let v6 = cfg.rtpengine.first().is_some_and(|a| a.starts_with('['));
        let local: SocketAddr = if v6 {
            "[::]:0".parse().expect("literal")
        } else {
            "0.0.0.0:0".parse().expect("literal")
        };
        let timing = Timing {
            timeout: Duration::from_millis(cfg.timeout_ms),
            retransmit: Duration::from_millis(cfg.retransmit_ms),
        };
        let client = NgClient::bind(local, timing).await?;
        let pool = Pool::new(&cfg.rtpengine, client).await;
        pool.start_pinging(Duration::from_millis(cfg.ping_interval_ms))
            .await;
        let profiles = Profiles {
            webrtc: profile(Profile::webrtc(), cfg.webrtc.as_ref()),
            plain: profile(Profile::plain(), cfg.plain.as_ref()),
        };
        let policy = match cfg.when_unreachable {
            MediaUnreachable::Reject => FailurePolicy::Reject {
                retry_after_secs: cfg.retry_after_secs,
            },
            MediaUnreachable::PassThrough => FailurePolicy::PassThrough,
        };
        Ok(Anchor::from_parts(pool, profiles, policy))
    }

    /// An anchor over an existing pool.
    pub fn from_parts(pool: Pool, profiles: Profiles, policy: FailurePolicy) -> Anchor {
        Anchor {
            pool,
            profiles,
            policy,
        }
    }

    /// The engines.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The failure policy.
    pub fn policy(&self) -> FailurePolicy {
        self.policy
    }

    /// Sends `req` to the engine of `call_id`. An offer that times out is tried once more on
    /// the engine the call hashes to next (the first is marked down by the timeout), since a
    /// new call has no state to lose; other commands stay with the call's engine.
    async fn send(&self, call_id: &[u8], req: &Request) -> Result<(String, Reply), MediaError> {
        let engine = self.pool.select(call_id)?;
        let first = self.pool.request(engine, req).await;
        let r = match first {
            Err(NgError::Timeout { .. }) if req.command == ng::Command::Offer => {
                match self.pool.select(call_id) {
                    Ok(next) if next.name() != engine.name() => {
                        let r = self.pool.request(next, req).await;
                        return check(next.name(), req, r);
                    }
                    _ => first,
                }
            }
            r => r,
        };
        check(engine.name(), req, r)
    }

    /// `offer`: rtpengine's SDP for the leg the offer goes to.
    pub async fn offer(
        &self,
        ids: &DialogIds,
        tags: Tags,
        sdp: Bytes,
        to: Leg,
    ) -> Result<Bytes, MediaError> {
        // An initial offer has no to-tag yet; a re-INVITE's names the dialog's other side.
        self.rewrite(ids, tags, sdp, to, SdpRole::Offer).await
    }

    /// `answer`: rtpengine's SDP for the leg the answer goes to.
    pub async fn answer(
        &self,
        ids: &DialogIds,
        tags: Tags,
        sdp: Bytes,
        to: Leg,
    ) -> Result<Bytes, MediaError> {
        self.rewrite(ids, tags, sdp, to, SdpRole::Answer).await
    }

    /// `offer` or `answer`: sends the SDP with the flags of the leg it goes to and returns
    /// rtpengine's rewrite.
    async fn rewrite(
        &self,
        ids: &DialogIds,
        tags: Tags,
        sdp: Bytes,
        to: Leg,
        role: SdpRole,
    ) -> Result<Bytes, MediaError> {
        sdp::validate(&sdp)?;
        let flags = self.profiles.flags_towards(to, role);
        let (req, command) = match role {
            SdpRole::Offer => (Request::offer(ids.call_ref(tags), sdp, flags), "offer"),
            SdpRole::Answer => (Request::answer(ids.call_ref(tags), sdp, flags), "answer"),
        };
        let (engine, reply) = self.send(&ids.call_id, &req).await?;
        reply.sdp.ok_or(MediaError::NoSdp { engine, command })
    }

    /// `delete` of the whole call (every branch), by Call-ID and From tag.
    pub async fn delete(&self, ids: &DialogIds) -> Result<(), MediaError> {
        let call = CallRef {
            call_id: ids.call_id.clone(),
            from_tag: ids.from_tag.clone(),
            to_tag: None,
        };
        self.send(&ids.call_id, &Request::delete(call)).await?;
        Ok(())
    }

    /// `query`: rtpengine's dictionary about the call (`created`, `tags`, `totals`, ...).
    pub async fn query(&self, call_id: &Bytes) -> Result<bencode::Dict, MediaError> {
        let call = CallRef {
            call_id: call_id.clone(),
            from_tag: Bytes::new(),
            to_tag: None,
        };
        let (_, reply) = self.send(call_id, &Request::query(call)).await?;
        Ok(reply.dict)
    }

    /// Carries out `step` for a message with `body` of `content_type` going to leg `to`:
    /// the SDP (whole body or multipart part) is sent to rtpengine and replaced by its answer;
    /// a body without SDP is left alone; [`Step::Delete`] deletes the call.
    pub async fn process(
        &self,
        step: Step,
        ids: &DialogIds,
        content_type: Option<&[u8]>,
        body: &[u8],
        to: Leg,
    ) -> Result<Processed, MediaError> {
        let (tags, offer) = match step {
            Step::Nothing => return Ok(Processed::Unchanged),
            Step::Delete => {
                self.delete(ids).await?;
                return Ok(Processed::Deleted);
            }
            Step::Offer(t) => (t, true),
            Step::Answer(t) => (t, false),
        };
        let Some(loc) = sdp::find(content_type, body)? else {
            return Ok(Processed::Unchanged);
        };
        let sdp = Bytes::copy_from_slice(&body[loc.range.clone()]);
        let new = if offer {
            self.offer(ids, tags, sdp, to).await?
        } else {
            self.answer(ids, tags, sdp, to).await?
        };
        Ok(Processed::Body(sdp::replace(body, &loc, &new)))
    }
}

fn check(
    engine: &str,
    req: &Request,
    r: Result<Reply, NgError>,
) -> Result<(String, Reply), MediaError> {
    let reply = r?;
    match &reply.outcome {
        Outcome::Ok => {
            if let Some(w) = &reply.warning {
                tracing::info!(rtpengine = engine, command = req.command.name(), warning = %w, "rtpengine warning");
            }
            Ok((engine.to_owned(), reply))
        }
        Outcome::Error(reason) => {
            tracing::warn!(rtpengine = engine, command = req.command.name(), reason = %reason, "rtpengine refused");
            Err(MediaError::Refused {
                engine: engine.to_owned(),
                command: req.command.name(),
                reason: reason.clone(),
            })
        }
        Outcome::LoadLimit => Err(MediaError::Overloaded {
            engine: engine.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_what_the_caller_sees() {
        let reject = FailurePolicy::Reject {
            retry_after_secs: 7,
        };
        let e = MediaError::Sdp(SdpError::Malformed("no m= line".into()));
        assert_eq!(
            e.answer(reject),
            Answer::Reply {
                status: 400,
                reason: "Malformed SDP: no m= line".into(),
                retry_after: None
            }
        );
        let none = MediaError::NoneReachable(NoneReachable { configured: 2 });
        assert_eq!(none.to_string(), "no rtpengine reachable (of 2 configured)");
        assert_eq!(
            none.answer(reject),
            Answer::Reply {
                status: 503,
                reason: "Media Relay Unavailable".into(),
                retry_after: Some(7)
            }
        );
        assert_eq!(none.answer(FailurePolicy::PassThrough), Answer::PassThrough);
        let timeout = MediaError::Ng(NgError::Timeout {
            addr: "127.0.0.1:1".parse().unwrap(),
            command: "offer",
            ms: 10,
        });
        assert!(timeout.is_unavailable());
        let refused = |reason: &str| MediaError::Refused {
            engine: "e".into(),
            command: "offer",
            reason: reason.into(),
        };
        assert_eq!(
            refused("Failed to parse SDP").answer(reject),
            Answer::Reply {
                status: 488,
                reason: "Not Acceptable Here (Failed to parse SDP)".into(),
                retry_after: None
            }
        );
        assert_eq!(
            refused("Ran out of ports").answer(reject),
            Answer::Reply {
                status: 500,
                reason: "Media Relay Error (Ran out of ports)".into(),
                retry_after: None
            }
        );
        assert!(matches!(
            MediaError::Overloaded { engine: "e".into() }.answer(reject),
            Answer::Reply { status: 503, .. }
        ));
    }

    #[test]
    fn dialog_ids_order_tags_for_rtpengine() {
        let ids = DialogIds {
            call_id: Bytes::from_static(b"c"),
            from_tag: Bytes::from_static(b"caller"),
            to_tag: Some(Bytes::from_static(b"callee")),
        };
        let r = ids.call_ref(Tags::Swapped);
        assert_eq!(r.from_tag.as_ref(), b"callee");
        assert_eq!(r.to_tag.as_deref(), Some(&b"caller"[..]));
        let early = DialogIds {
            to_tag: None,
            ..ids
        };
        assert_eq!(early.call_ref(Tags::AsIs).to_tag, None);
    }
}
