//! The protocol side of SIP over WebSocket, free of sockets: the decision on an HTTP upgrade
//! request (RFC 6455 section 4.2, RFC 7118 section 4), the close code for each RFC 6455
//! violation, and [`replay`], which runs a client's bytes through the same WebSocket reader
//! and limits a listener uses (for tests and the fuzz target).

use std::io::{Read, Write};

use kubesbc_crds::config::{Limits, Listener};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// What one ws/wss listener accepts.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRules {
    /// The path the upgrade must ask for; any path when absent.
    pub path: Option<String>,
    /// Allowed `Origin` values; any (or none) when empty.
    pub origins: Vec<String>,
}

impl UpgradeRules {
    /// The rules of listener `l`.
    pub fn of(l: &Listener) -> UpgradeRules {
        UpgradeRules {
            path: l.path.clone(),
            origins: l.allowed_origins.clone(),
        }
    }
}

/// CRLF keep-alives (a ping `\r\n\r\n`, a pong `\r\n`) carried in a WebSocket message.
pub(super) fn is_keepalive(data: &[u8]) -> bool {
    !data.is_empty() && data.len() <= 4 && data.iter().all(|b| matches!(b, b'\r' | b'\n'))
}

/// The close code for a read error, or `None` when the connection is simply gone.
pub fn close_code(e: &tungstenite::Error) -> Option<(CloseCode, &'static str)> {
    use tungstenite::error::{CapacityError, Error, ProtocolError};
    Some(match e {
        Error::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        // RFC 6455 section 5.2: the most significant bit of a 64-bit length MUST be 0.
        Error::Capacity(CapacityError::MessageTooLong { size, .. })
            if (*size as u64) >> 63 == 1 =>
        {
            (
                CloseCode::Protocol,
                "frame length with the most significant bit set",
            )
        }
        Error::Capacity(_) => (CloseCode::Size, "message too big"),
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        Error::Protocol(ProtocolError::UnmaskedFrameFromClient) => {
            (CloseCode::Protocol, "unmasked frame from a client")
        }
        Error::Protocol(ProtocolError::NonZeroReservedBits) => (
            CloseCode::Protocol,
            "reserved bits set without an extension",
        ),
        Error::Protocol(ProtocolError::InvalidOpcode(_))
        | Error::Protocol(ProtocolError::UnknownControlFrameType(_))
        | Error::Protocol(ProtocolError::UnknownDataFrameType(_)) => {
            (CloseCode::Protocol, "reserved opcode")
        }
        Error::Protocol(ProtocolError::ControlFrameTooBig)
        | Error::Protocol(ProtocolError::FragmentedControlFrame) => {
            (CloseCode::Protocol, "control frame too big or fragmented")
        }
        Error::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        _ => return None,
    })
}

/// The decision on an HTTP upgrade request.
#[derive(Debug, PartialEq, Eq)]
pub enum Upgrade {
    /// Upgrade: the `Sec-WebSocket-Accept` value.
    Accept(String),
    /// Refuse with this status line and reason (sent as the body).
    Refuse(&'static str, &'static str),
}

/// Decides on the request head `head` (complete, up to the blank line).
pub fn decide(head: &[u8], rules: &UpgradeRules) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Upgrade::Refuse("400 Bad Request", "not an HTTP request"),
    }
    let get = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    let tokens = |name: &str| -> Vec<String> {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| {
                String::from_utf8_lossy(h.value)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let path = req.path.unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    if let Some(want) = &rules.path
        && path != want
    {
        return Upgrade::Refuse("404 Not Found", "no WebSocket endpoint at this path");
    }
    let upgrade = tokens("upgrade").iter().any(|t| t == "websocket");
    let connection = tokens("connection").iter().any(|t| t == "upgrade");
    if !upgrade || !connection {
        return Upgrade::Refuse(
            "426 Upgrade Required",
            "this port speaks SIP over WebSocket (RFC 7118) only",
        );
    }
    if req.method != Some("GET") {
        return Upgrade::Refuse("400 Bad Request", "a WebSocket upgrade is a GET");
    }
    if get("sec-websocket-version").as_deref() != Some("13") {
        return Upgrade::Refuse("426 Upgrade Required", "WebSocket version 13 required");
    }
    let Some(key) = get("sec-websocket-key").filter(|k| k.len() == 24) else {
        return Upgrade::Refuse("400 Bad Request", "missing or invalid Sec-WebSocket-Key");
    };
    if !rules.origins.is_empty() {
        let allowed =
            get("origin").is_some_and(|o| rules.origins.iter().any(|a| a.eq_ignore_ascii_case(&o)));
        if !allowed {
            return Upgrade::Refuse("403 Forbidden", "origin not allowed");
        }
    }
    if !tokens("sec-websocket-protocol").iter().any(|p| p == "sip") {
        return Upgrade::Refuse(
            "400 Bad Request",
            "Sec-WebSocket-Protocol: sip is required (RFC 7118)",
        );
    }
    Upgrade::Accept(tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The reader settings of every ws/wss connection: frames and messages up to the largest
/// SIP message accepted, and masked client frames only (RFC 6455 section 5.1).
pub fn ws_config(limits: &Limits) -> WebSocketConfig {
    let max = limits.max_message_bytes;
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .accept_unmasked_frames(false)
}

/// How a replayed client stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// SIP messages (text or binary WebSocket messages that are not keep-alives) delivered.
    pub messages: usize,
    /// The close code the sbc sends for an RFC 6455 violation; `None` when the input simply
    /// ended (or closed cleanly).
    pub close: Option<u16>,
}

/// The client's bytes in, whatever the server writes counted and dropped.
struct Wire<'a> {
    input: &'a [u8],
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `data`, what a client sends after the upgrade, through the WebSocket reader with the
/// listener's limits, as a connection would read it.
pub fn replay(data: &[u8], limits: &Limits) -> Replay {
    let mut ws =
        WebSocket::from_raw_socket(Wire { input: data }, Role::Server, Some(ws_config(limits)));
    let mut messages = 0;
    // Every read consumes input or fails, so the input's length bounds the loop.
    for _ in 0..=data.len() {
        match ws.read() {
            Ok(Message::Text(s)) if !is_keepalive(s.as_bytes()) => messages += 1,
            Ok(Message::Binary(b)) if !is_keepalive(&b) => messages += 1,
            Ok(_) => {}
            Err(e) => {
                return Replay {
                    messages,
                    close: close_code(&e).map(|(c, _)| u16::from(c)),
                };
            }
        }
    }
    Replay {
        messages,
        close: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: sbc\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\nOrigin: https://app.example.com\r\n\r\n";

    #[test]
    fn upgrade_accepts_sip_on_any_path_by_default() {
        assert_eq!(
            decide(UPGRADE.as_bytes(), &UpgradeRules::default()),
            Upgrade::Accept("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into())
        );
    }

    #[test]
    fn upgrade_refusals() {
        let any = UpgradeRules::default();
        let cases = [
            (
                UPGRADE.replace("Sec-WebSocket-Protocol: sip\r\n", ""),
                "400 Bad Request",
            ),
            (
                UPGRADE.replace("Protocol: sip", "Protocol: chat"),
                "400 Bad Request",
            ),
            (
                "GET / HTTP/1.1\r\nHost: sbc\r\n\r\n".to_owned(),
                "426 Upgrade Required",
            ),
            (
                UPGRADE.replace("Version: 13", "Version: 8"),
                "426 Upgrade Required",
            ),
            ("\x16\x03\x01garbage\r\n\r\n".to_owned(), "400 Bad Request"),
        ];
        for (req, want) in cases {
            match decide(req.as_bytes(), &any) {
                Upgrade::Refuse(status, _) => assert_eq!(status, want, "{req}"),
                other => panic!("{req}: {other:?}"),
            }
        }
        let rules = UpgradeRules {
            path: Some("/sip".into()),
            origins: vec!["https://other.example.com".into()],
        };
        assert!(matches!(
            decide(UPGRADE.as_bytes(), &rules),
            Upgrade::Refuse("404 Not Found", _)
        ));
        let rules = UpgradeRules {
            path: Some("/ws".into()),
            origins: vec!["https://other.example.com".into()],
        };
        assert!(matches!(
            decide(UPGRADE.as_bytes(), &rules),
            Upgrade::Refuse("403 Forbidden", _)
        ));
        let rules = UpgradeRules {
            path: Some("/ws".into()),
            origins: vec!["https://app.example.com".into()],
        };
        assert!(matches!(
            decide(UPGRADE.as_bytes(), &rules),
            Upgrade::Accept(_)
        ));
    }

    #[test]
    fn close_codes() {
        use tungstenite::error::{CapacityError, Error, ProtocolError};
        let code = |e: Error| close_code(&e).map(|(c, _)| u16::from(c));
        assert_eq!(
            code(Error::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::NonZeroReservedBits)),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::InvalidOpcode(3))),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::ControlFrameTooBig)),
            Some(1002)
        );
        assert_eq!(
            code(Error::Capacity(CapacityError::MessageTooLong {
                size: 70_000,
                max_size: 65_535
            })),
            Some(1009)
        );
        assert_eq!(
            code(Error::Capacity(CapacityError::MessageTooLong {
                size: 1 << 63,
                max_size: 65_535
            })),
            Some(1002)
        );
        assert_eq!(
            code(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)),
            None
        );
    }

    #[test]
    fn replayed_violations_get_their_close_codes() {
        let limits = Limits::default();
        let masked = |head: u8, payload: &[u8]| {
            let mut f = vec![head, 0x80 | payload.len() as u8, 1, 2, 3, 4];
            f.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
            );
            f
        };
        let mut top_bit = vec![0x82, 0xff];
        top_bit.extend_from_slice(&0x8000_0000_0000_0010u64.to_be_bytes());
        top_bit.extend_from_slice(&[1, 2, 3, 4]);
        let cases: [(Vec<u8>, usize, Option<u16>); 7] = [
            (
                [masked(0x81, b"OPTIONS"), masked(0x82, b"\r\n\r\n")].concat(),
                1,
                None,
            ),
            (vec![0x81, 0x01, b'x'], 0, Some(1002)),
            (masked(0x83, b"x"), 0, Some(1002)),
            (masked(0xc1, b"x"), 0, Some(1002)),
            (masked(0x81, b"\xff\xfe"), 0, Some(1007)),
            (top_bit, 0, Some(1002)),
            (masked(0x09, b"p"), 0, Some(1002)),
        ];
        for (data, messages, close) in cases {
            assert_eq!(
                replay(&data, &limits),
                Replay { messages, close },
                "{data:02x?}"
            );
        }
    }
}
