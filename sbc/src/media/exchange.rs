//! Which message carries the offer and which the answer (RFC 3264 over RFC 3261), as one pure
//! decision the media stage makes for every message it forwards.
//!
//! - An INVITE (initial or re-INVITE) or UPDATE with SDP is an **offer**; the SDP in its 18x
//!   or 2xx is the **answer**.
//! - An INVITE without SDP is a late offer: the SDP in its 18x/2xx is the **offer** (from the
//!   callee) and the ACK's SDP the **answer**.
//! - BYE, CANCEL, a final failure of an initial INVITE and the timeout of an initial INVITE
//!   **delete** the call in rtpengine. A failed re-INVITE or UPDATE leaves the call as it is
//!   (the dialog and its media go on).
//!
//! The tags rtpengine is given follow the offerer: the offer's `from-tag` is the tag of the
//! side that offered. For an offer in a request that is the From tag; for a late offer (in a
//! response) it is the To tag, and the ACK's answer then names the tags swapped as well.

use crate::sip::Method;

/// What the stage knows about the message it is forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A request.
    Request {
        /// Its method.
        method: Method,
        /// Whether it has a To tag (a re-INVITE, an in-dialog UPDATE).
        in_dialog: bool,
        /// Whether it carries SDP.
        has_sdp: bool,
    },
    /// A response.
    Response {
        /// The method of its CSeq.
        method: Method,
        /// Its status code.
        status: u16,
        /// Whether the request it answers had a To tag.
        in_dialog: bool,
        /// Whether it carries SDP.
        has_sdp: bool,
    },
    /// A client transaction that ended without a final response (Timer B/F).
    Timeout {
        /// The request's method.
        method: Method,
        /// Whether the request had a To tag.
        in_dialog: bool,
    },
}

/// Whether the INVITE of the transaction carried SDP (the state the stage keeps per INVITE
/// transaction, or reads from the message it keeps anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteOffer {
    /// The INVITE carried an offer.
    InInvite,
    /// The INVITE had no SDP: the offer comes in the response.
    Late,
}

/// Which header's tag is rtpengine's `from-tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tags {
    /// `from-tag` = From tag, `to-tag` = To tag.
    AsIs,
    /// `from-tag` = To tag, `to-tag` = From tag (the callee offered).
    Swapped,
}

impl Tags {
    /// `(from-tag, to-tag)` for rtpengine from the message's From and To tags.
    pub fn order<T>(self, from: T, to: T) -> (T, T) {
        match self {
            Tags::AsIs => (from, to),
            Tags::Swapped => (to, from),
        }
    }
}

/// What to do with rtpengine for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing: forward the message as it is.
    Nothing,
    /// `offer` the message's SDP and put rtpengine's SDP in its place.
    Offer(Tags),
    /// `answer` with the message's SDP and put rtpengine's SDP in its place.
    Answer(Tags),
    /// `delete` the call.
    Delete,
}

/// The step for `msg`; `invite` says how the INVITE transaction a response or ACK belongs to
/// carried its offer (ignored for other messages).
pub fn decide(msg: Message, invite: InviteOffer) -> Step {
    match msg {
        Message::Request {
            method, has_sdp, ..
        } => match method {
            Method::Invite | Method::Update if has_sdp => Step::Offer(Tags::AsIs),
            Method::Ack if has_sdp && invite == InviteOffer::Late => Step::Answer(Tags::Swapped),
            Method::Bye | Method::Cancel => Step::Delete,
            _ => Step::Nothing,
        },
        Message::Response {
            method,
            status,
            in_dialog,
            has_sdp,
        } => match method {
            Method::Invite if status >= 300 && !in_dialog => Step::Delete,
            Method::Invite if (101..300).contains(&status) && has_sdp => match invite {
                InviteOffer::InInvite => Step::Answer(Tags::AsIs),
                InviteOffer::Late => Step::Offer(Tags::Swapped),
            },
            Method::Update if (200..300).contains(&status) && has_sdp => Step::Answer(Tags::AsIs),
            _ => Step::Nothing,
        },
        Message::Timeout { method, in_dialog } => match method {
            Method::Invite if !in_dialog => Step::Delete,
            _ => Step::Nothing,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, in_dialog: bool, has_sdp: bool) -> Message {
        Message::Request {
            method,
            in_dialog,
            has_sdp,
        }
    }

    fn resp(method: Method, status: u16, in_dialog: bool, has_sdp: bool) -> Message {
        Message::Response {
            method,
            status,
            in_dialog,
            has_sdp,
        }
    }

    use InviteOffer::{InInvite, Late};
    use Method::{Ack, Bye, Cancel, Invite, Options, Update};

    #[test]
    fn early_offer_invite_then_answer_in_183_and_200() {
        assert_eq!(
            decide(req(Invite, false, true), InInvite),
            Step::Offer(Tags::AsIs)
        );
        assert_eq!(
            decide(resp(Invite, 100, false, false), InInvite),
            Step::Nothing
        );
        assert_eq!(
            decide(resp(Invite, 180, false, false), InInvite),
            Step::Nothing
        );
        assert_eq!(
            decide(resp(Invite, 183, false, true), InInvite),
            Step::Answer(Tags::AsIs)
        );
        assert_eq!(
            decide(resp(Invite, 200, false, true), InInvite),
            Step::Answer(Tags::AsIs)
        );
        assert_eq!(decide(req(Ack, true, false), InInvite), Step::Nothing);
        // An ACK with SDP after an early offer is not an answer (RFC 3264 allows none).
        assert_eq!(decide(req(Ack, true, true), InInvite), Step::Nothing);
    }

    #[test]
    fn late_offer_in_the_200_and_answer_in_the_ack() {
        assert_eq!(decide(req(Invite, false, false), Late), Step::Nothing);
        assert_eq!(
            decide(resp(Invite, 200, false, true), Late),
            Step::Offer(Tags::Swapped)
        );
        assert_eq!(
            decide(req(Ack, true, true), Late),
            Step::Answer(Tags::Swapped)
        );
        assert_eq!(Tags::Swapped.order("from", "to"), ("to", "from"));
        assert_eq!(Tags::AsIs.order("from", "to"), ("from", "to"));
    }

    #[test]
    fn reinvite_and_update_offer_again_and_their_failures_keep_the_call() {
        assert_eq!(
            decide(req(Invite, true, true), InInvite),
            Step::Offer(Tags::AsIs)
        );
        assert_eq!(
            decide(resp(Invite, 200, true, true), InInvite),
            Step::Answer(Tags::AsIs)
        );
        assert_eq!(
            decide(resp(Invite, 491, true, false), InInvite),
            Step::Nothing
        );
        assert_eq!(
            decide(req(Update, true, true), InInvite),
            Step::Offer(Tags::AsIs)
        );
        assert_eq!(
            decide(resp(Update, 200, true, true), InInvite),
            Step::Answer(Tags::AsIs)
        );
        assert_eq!(
            decide(resp(Update, 500, true, false), InInvite),
            Step::Nothing
        );
        assert_eq!(decide(req(Update, true, false), InInvite), Step::Nothing);
        assert_eq!(
            decide(
                Message::Timeout {
                    method: Invite,
                    in_dialog: true
                },
                InInvite
            ),
            Step::Nothing
        );
    }

    #[test]
    fn bye_cancel_failure_and_timeout_delete() {
        assert_eq!(decide(req(Bye, true, false), InInvite), Step::Delete);
        assert_eq!(decide(req(Cancel, false, false), InInvite), Step::Delete);
        for status in [300, 404, 486, 487, 500, 503, 603] {
            assert_eq!(
                decide(resp(Invite, status, false, false), InInvite),
                Step::Delete
            );
        }
        assert_eq!(
            decide(
                Message::Timeout {
                    method: Invite,
                    in_dialog: false
                },
                Late
            ),
            Step::Delete
        );
        // The BYE's own 200 and other methods do nothing.
        assert_eq!(decide(resp(Bye, 200, true, false), InInvite), Step::Nothing);
        assert_eq!(decide(req(Options, false, true), InInvite), Step::Nothing);
        assert_eq!(
            decide(req(Method::Message, false, true), InInvite),
            Step::Nothing
        );
    }
}
