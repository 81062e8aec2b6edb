//! The bounded label values of the sbc's metrics, and their indexes into the pre-resolved
//! series.

use crate::config::Transport;

/// Why a message could not be parsed or failed the sanity checks. A small fixed set, so that
/// the label values are bounded and each has a pre-resolved counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseErrorKind {
    /// Not SIP at all (binary garbage, an HTTP request, a truncated start line).
    NotSip,
    /// The request or status line is malformed.
    StartLine,
    /// A header line is malformed.
    Header,
    /// A mandatory header (Via, From, To, Call-ID, CSeq, Max-Forwards) is missing.
    MissingHeader,
    /// Content-Length is missing on a stream, unparsable, or larger than the message.
    ContentLength,
    /// The message is larger than the configured limit.
    TooLarge,
    /// The SIP version is not 2.0.
    Version,
    /// The Request-URI scheme is not supported.
    UriScheme,
}

impl ParseErrorKind {
    /// Every kind, in label order.
    pub const ALL: [ParseErrorKind; 8] = [
        ParseErrorKind::NotSip,
        ParseErrorKind::StartLine,
        ParseErrorKind::Header,
        ParseErrorKind::MissingHeader,
        ParseErrorKind::ContentLength,
        ParseErrorKind::TooLarge,
        ParseErrorKind::Version,
        ParseErrorKind::UriScheme,
    ];

    /// The value of the `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            ParseErrorKind::NotSip => "not_sip",
            ParseErrorKind::StartLine => "start_line",
            ParseErrorKind::Header => "header",
            ParseErrorKind::MissingHeader => "missing_header",
            ParseErrorKind::ContentLength => "content_length",
            ParseErrorKind::TooLarge => "too_large",
            ParseErrorKind::Version => "version",
            ParseErrorKind::UriScheme => "uri_scheme",
        }
    }
}

/// A failure that is the sbc's own fault (a bug or a broken invariant), for the `error` label
/// of `sbc_internal_errors_total`: the caller got 500, or the step was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InternalError {
    /// A request we relayed could not be read back to write its CANCEL or ACK.
    OwnRequestUnreadable,
    /// Topology hiding could not read a message back (one the core wrote, or its own
    /// inside view of one from outside).
    Topology,
}

impl InternalError {
    /// Every error, in label order.
    pub const ALL: [InternalError; 2] =
        [InternalError::OwnRequestUnreadable, InternalError::Topology];

    /// The value of the `error` label.
    pub fn label(self) -> &'static str {
        match self {
            InternalError::OwnRequestUnreadable => "own_request_unreadable",
            InternalError::Topology => "topology",
        }
    }
}

/// Why a message was dropped without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// It could not be parsed well enough to answer.
    Unparsable,
    /// A response or an ACK that matches no transaction and cannot be routed statelessly.
    Stray,
    /// Larger than the message size limit.
    TooLarge,
    /// Refused by a connection or rate limit.
    Limit,
    /// Sending failed (unreachable destination, closed connection).
    SendFailed,
    /// An internal queue was full.
    QueueFull,
    /// A WebSocket connection broke RFC 6455 (closed with its close code).
    WsProtocol,
    /// An HTTP request to a ws/wss port was not upgraded (no `sip` subprotocol, path, Origin).
    WsUpgradeRefused,
    /// A TLS handshake (tls or wss) failed or timed out.
    TlsHandshake,
    /// A message for a WebSocket client whose connection is gone (ws cannot open one).
    WsNoConnection,
    /// A WebSocket connection's send queue was full.
    WsQueueFull,
    /// A response or an ACK from outside whose topology-hiding parameter does not verify.
    Topology,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 12] = [
        DropReason::Unparsable,
        DropReason::Stray,
        DropReason::TooLarge,
        DropReason::Limit,
        DropReason::SendFailed,
        DropReason::QueueFull,
        DropReason::WsProtocol,
        DropReason::WsUpgradeRefused,
        DropReason::TlsHandshake,
        DropReason::WsNoConnection,
        DropReason::WsQueueFull,
        DropReason::Topology,
    ];

    /// The value of the `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Unparsable => "unparsable",
            DropReason::Stray => "stray",
            DropReason::TooLarge => "too_large",
            DropReason::Limit => "limit",
            DropReason::SendFailed => "send_failed",
            DropReason::QueueFull => "queue_full",
            DropReason::WsProtocol => "ws_protocol",
            DropReason::WsUpgradeRefused => "ws_upgrade_refused",
            DropReason::TlsHandshake => "tls_handshake",
            DropReason::WsNoConnection => "ws_no_connection",
            DropReason::WsQueueFull => "ws_queue_full",
            DropReason::Topology => "topology",
        }
    }
}

/// Who produced a response the sbc sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseOrigin {
    /// Generated by the sbc itself (100 Trying, 400, 503, the answer to OPTIONS to itself).
    Local,
    /// Received from a destination and relayed upstream.
    Relayed,
}

impl ResponseOrigin {
    /// The value of the `origin` label.
    pub fn label(self) -> &'static str {
        match self {
            ResponseOrigin::Local => "local",
            ResponseOrigin::Relayed => "relayed",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            ResponseOrigin::Local => 0,
            ResponseOrigin::Relayed => 1,
        }
    }
}

/// Server (towards the caller) or client (towards a destination) transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionKind {
    /// A server transaction, created for a received request.
    Server,
    /// A client transaction, created for a request sent to a destination.
    Client,
}

/// Direction of traffic on a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received by the sbc.
    In,
    /// Sent by the sbc.
    Out,
}

impl Direction {
    pub(super) fn label(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Direction::In => 0,
            Direction::Out => 1,
        }
    }
}

/// The response codes that get their own `code` label value; every other code is `other`.
pub const COMMON_CODES: [u16; 18] = [
    100, 180, 183, 200, 401, 403, 404, 407, 408, 429, 481, 482, 483, 486, 487, 500, 503, 603,
];

/// Index of `code` in [`COMMON_CODES`], or `COMMON_CODES.len()` for "other". A `match` the
/// compiler turns into a jump table: no search.
pub(super) fn code_index(code: u16) -> usize {
    match code {
        100 => 0,
        180 => 1,
        183 => 2,
        200 => 3,
        401 => 4,
        403 => 5,
        404 => 6,
        407 => 7,
        408 => 8,
        429 => 9,
        481 => 10,
        482 => 11,
        483 => 12,
        486 => 13,
        487 => 14,
        500 => 15,
        503 => 16,
        603 => 17,
        _ => COMMON_CODES.len(),
    }
}

pub(super) const CLASS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];
pub(super) const TRANSPORTS: [Transport; 5] = [
    Transport::Udp,
    Transport::Tcp,
    Transport::Tls,
    Transport::Ws,
    Transport::Wss,
];

pub(super) fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
        Transport::Ws => 3,
        Transport::Wss => 4,
    }
}
