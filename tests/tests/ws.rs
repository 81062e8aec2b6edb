//! The sbc's WebSocket listener (RFC 7118) against raw frames written by the test: every RFC
//! 6455 violation is closed with its close code, refused upgrades get an HTTP answer, and a
//! second, well-behaved client keeps being served throughout.

use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient};
use kubesbc_e2e::ws::{WsClient, http_exchange, op, upgrade_request};
use kubesbc_e2e::{Proxy, ProxyOptions, TempDir, e2e_tools, free_port, loopback, sbc_only};

/// An OPTIONS addressed to the sbc itself, written as a client on `ws` would.
fn options_to_sbc(target: std::net::SocketAddr) -> Vec<u8> {
    // The builder needs a socket for Via and Contact; the WebSocket client's own address is
    // not known to it, and the sbc answers by the connection anyway.
    let any = SipClient::udp(target);
    RequestBuilder::new("OPTIONS", &format!("sip:{target};transport=ws"), &any)
        .set(
            "Via",
            &format!(
                "SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bK{};rport",
                kubesbc_e2e::sip::token()
            ),
        )
        .set("Contact", "<sip:e2e@df7jal23ls0d.invalid;transport=ws>")
        .build()
}

fn start_ws_sbc(dir: &TempDir) -> (Proxy, std::net::SocketAddr) {
    let ws_port = free_port();
    let opts = ProxyOptions {
        extra_sbc_args: vec!["--listen".into(), format!("ws:127.0.0.1:{ws_port}")],
        ..ProxyOptions::default()
    };
    (Proxy::start(dir, &opts), loopback(ws_port))
}

fn assert_served(good: &mut WsClient, ws: std::net::SocketAddr, after: &str) {
    let r = good
        .sip_request(&options_to_sbc(ws), Duration::from_secs(3))
        .unwrap_or_else(|| panic!("the well-behaved client got no answer after {after}"));
    assert_eq!(r.code, 200, "after {after}: {}", r.status_line);
}

/// Each violation of RFC 6455 on its own connection gets the close code the RFC names, and
/// a well-behaved client on another connection is answered after each one.
#[test]
fn rfc6455_violations_get_their_close_codes_while_others_are_served() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("ws-rfc6455");
    let (proxy, ws) = start_ws_sbc(&dir);
    let mut good = WsClient::connect(ws);
    assert_served(&mut good, ws, "the upgrade");

    // (name, bytes after the upgrade, expected close code)
    let big = vec![b'x'; 70_000];
    let mut top_bit_length = vec![0x82, 0x80 | 127];
    top_bit_length.extend_from_slice(&0x8000_0000_0000_0010u64.to_be_bytes());
    top_bit_length.extend_from_slice(&[1, 2, 3, 4]);
    let table: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "an unmasked client frame",
            kubesbc_e2e::ws::encode_frame(0x80 | op::TEXT, b"OPTIONS", false),
            1002,
        ),
        (
            "reserved opcode 0x3",
            kubesbc_e2e::ws::encode_frame(0x80 | 0x3, b"x", true),
            1002,
        ),
        (
            "reserved control opcode 0xB",
            kubesbc_e2e::ws::encode_frame(0x80 | 0xB, b"", true),
            1002,
        ),
        (
            "RSV1 without an extension",
            kubesbc_e2e::ws::encode_frame(0x80 | 0x40 | op::TEXT, b"x", true),
            1002,
        ),
        (
            "invalid UTF-8 in a text frame",
            kubesbc_e2e::ws::encode_frame(0x80 | op::TEXT, b"OPTIONS \xff\xfe sip:x", true),
            1007,
        ),
        (
            "a 64-bit length with the most significant bit set",
            top_bit_length,
            1002,
        ),
        (
            "a control frame over 125 bytes",
            kubesbc_e2e::ws::encode_frame(0x80 | op::PING, &[b'p'; 126], true),
            1002,
        ),
        (
            "a fragmented control frame",
            kubesbc_e2e::ws::encode_frame(op::PING, b"p", true),
            1002,
        ),
        (
            "a message over the size limit",
            kubesbc_e2e::ws::encode_frame(0x80 | op::BINARY, &big, true),
            1009,
        ),
    ];
    for (name, bytes, want) in table {
        let mut bad = WsClient::connect(ws);
        bad.send_raw(&bytes);
        let code = bad.read_close_code(Duration::from_secs(3));
        assert_eq!(code, Some(want), "{name}: close code");
        assert!(
            bad.closed_within(Duration::from_secs(3)),
            "{name}: the connection stayed open after the close frame"
        );
        assert_served(&mut good, ws, name);
    }
    // Each violation is logged with its peer and code, so an operator sees who broke what.
    let log = proxy.log_tail();
    assert_eq!(
        log.matches("closing websocket").count(),
        9,
        "one log line per violation:\n{log}"
    );
    // Counted as WebSocket protocol errors, not as unparsable SIP.
    let dropped = |r: &str| proxy.metric(&format!("sbc_messages_dropped_total{{reason=\"{r}\"}}"));
    assert_eq!(dropped("ws_protocol"), Some(9.0));
    assert_eq!(dropped("unparsable"), Some(0.0));
}

/// Upgrades that must not happen get an HTTP answer and never a hang: no `sip` subprotocol
/// (400), another subprotocol (400), a plain GET (426), a wrong version (426); a client that
/// behaves keeps being served. Each is counted as `ws_upgrade_refused` in
/// `sbc_messages_dropped_total`, not as an unparsable SIP message.
#[test]
fn refused_upgrades_get_http_answers() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("ws-refused");
    let (proxy, ws) = start_ws_sbc(&dir);
    let mut good = WsClient::connect(ws);
    let cases = [
        (
            "no Sec-WebSocket-Protocol",
            upgrade_request(ws, "/", None),
            400,
        ),
        (
            "Sec-WebSocket-Protocol: chat",
            upgrade_request(ws, "/", Some("chat")),
            400,
        ),
        (
            "a plain HTTP GET",
            format!("GET / HTTP/1.1\r\nHost: {ws}\r\n\r\n"),
            426,
        ),
        (
            "WebSocket version 8",
            upgrade_request(ws, "/", Some("sip")).replace("Version: 13", "Version: 8"),
            426,
        ),
    ];
    for (name, req, want) in cases {
        let head = http_exchange(ws, &req).unwrap_or_else(|| panic!("{name}: no HTTP answer"));
        assert_eq!(head.status, want, "{name}: {}", head.text);
        assert!(
            !head
                .text
                .to_ascii_lowercase()
                .contains("sec-websocket-accept"),
            "{name}: upgraded anyway: {}",
            head.text
        );
        assert_served(&mut good, ws, name);
    }
    let dropped = |r: &str| proxy.metric(&format!("sbc_messages_dropped_total{{reason=\"{r}\"}}"));
    assert_eq!(dropped("ws_upgrade_refused"), Some(4.0));
    assert_eq!(dropped("unparsable"), Some(0.0));
}

/// Text and binary messages both carry SIP (RFC 7118 section 5.2), and a CRLF keep-alive
/// ping gets its CRLF pong (RFC 5626 section 4.4.1) over the WebSocket.
#[test]
fn text_and_binary_messages_and_crlf_keepalives() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("ws-kinds");
    let (_proxy, ws) = start_ws_sbc(&dir);
    let mut c = WsClient::connect(ws);
    let r = c
        .sip_request(&options_to_sbc(ws), Duration::from_secs(3))
        .expect("answer to a text frame");
    assert_eq!(r.code, 200);
    c.send_frame(0x80 | op::BINARY, &options_to_sbc(ws), true);
    let f = c
        .read_frame(Duration::from_secs(3))
        .expect("answer to a binary frame");
    assert!(
        String::from_utf8_lossy(&f.payload).starts_with("SIP/2.0 200"),
        "{f:?}"
    );
    c.send_text("\r\n\r\n");
    let pong = c
        .read_frame(Duration::from_secs(3))
        .expect("a CRLF pong to the CRLF ping");
    assert_eq!(
        (pong.opcode(), pong.payload.as_slice()),
        (op::TEXT, &b"\r\n"[..])
    );
}

/// A ws listener configured with `path: /ws` and `allowedOrigins` (from a config file):
/// another path gets 404, another Origin 403, and the right path from the right origin is
/// upgraded and served.
#[test]
fn configured_path_and_allowed_origins_are_enforced() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("ws-path");
    let (udp, ws_port, admin) = (free_port(), free_port(), loopback(free_port()));
    let cfg = dir.write(
        "sbc.yaml",
        &format!(
            "listeners:\n  - transport: udp\n    address: 127.0.0.1:{udp}\n  - transport: ws\n    \
             address: 127.0.0.1:{ws_port}\n    path: /ws\n    allowedOrigins: [https://app.example.com]\n\
             admin:\n  address: {admin}\n"
        ),
    );
    let _proxy = Proxy::start_sbc(
        &dir,
        &["--config".to_owned(), cfg.display().to_string()],
        udp,
        admin,
    );
    let ws = loopback(ws_port);
    let with_origin = |path: &str, origin: &str| {
        upgrade_request(ws, path, Some("sip")).trim_end().to_owned()
            + &format!("\r\nOrigin: {origin}\r\n\r\n")
    };
    let cases = [
        (
            "another path",
            with_origin("/", "https://app.example.com"),
            404,
        ),
        (
            "another origin",
            with_origin("/ws", "https://evil.example.net"),
            403,
        ),
        ("no origin", upgrade_request(ws, "/ws", Some("sip")), 403),
        (
            "the path and origin",
            with_origin("/ws?x=1", "https://app.example.com"),
            101,
        ),
    ];
    for (name, req, want) in cases {
        let head = http_exchange(ws, &req).unwrap_or_else(|| panic!("{name}: no HTTP answer"));
        assert_eq!(head.status, want, "{name}: {}", head.text);
    }
}
