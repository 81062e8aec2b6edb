//! Safe defaults, seen from the wire (issue 15), with the test PBX on 127.0.0.5 as the only
//! backend: one INVITE the PBX never answers costs its caller a 408 and nobody else anything;
//! known scanners are dropped with no AccessList declared; a UDP request over the size limit
//! is dropped whole; a stream whose framing is lost gets its answer and is closed. sbc only.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kubesbc_e2e::sip::{RequestBuilder, SipClient};
use kubesbc_e2e::uas::Pbx;
use kubesbc_e2e::{Proxy, TempDir, e2e_tools, free_port, sbc_only};

const PBX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// An sbc on 127.0.0.1 (UDP and TCP, one port) in front of `pbx`, with `extra` sections.
fn sbc(dir: &TempDir, pbx: &Pbx, extra: &str) -> (Proxy, SocketAddr) {
    sbc_with(dir, pbx, "", extra)
}

/// As [`sbc`], with more `listeners` entries (YAML list items).
fn sbc_with(dir: &TempDir, pbx: &Pbx, listeners: &str, extra: &str) -> (Proxy, SocketAddr) {
    let port = free_port();
    let config = format!(
        r#"
listeners:
  - {{transport: udp, address: "127.0.0.1:{port}"}}
  - {{transport: tcp, address: "127.0.0.1:{port}"}}
{listeners}
dispatcher:
  sets:
    - id: 1
      destinations: [{{uri: "{}"}}]
      probing: {{intervalMs: 500, timeoutMs: 400}}
      failover: {{replyTimeoutMs: 1000}}
{extra}"#,
        pbx.uri()
    );
    let proxy = Proxy::start_sbc_config(dir, &config, port);
    proxy.wait_destination(&pbx.uri(), true, Duration::from_secs(10));
    (proxy, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

fn invite(to: &str, client: &SipClient, port: u16) -> RequestBuilder {
    RequestBuilder::invite(&format!("sip:{to}@127.0.0.1:{port}"), client)
}

/// The final answer to `req` sent by a fresh UDP client, within `wait`.
fn final_answer(
    sbc: SocketAddr,
    req: impl Fn(&SipClient) -> RequestBuilder,
    wait: Duration,
) -> Option<u16> {
    let mut c = SipClient::udp(sbc);
    let r = req(&c);
    c.send(&r.build());
    c.recv_final(wait).map(|r| r.code)
}

#[test]
fn one_ignored_invite_costs_its_caller_a_408_and_nobody_else_anything() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("defence-silent");
    let pbx = Pbx::start_ignoring(PBX, |m| m.starts_with("INVITE sip:silent@"));
    let (proxy, addr) = sbc(&dir, &pbx, "");
    let port = addr.port();
    // The request the PBX loses, and while it waits, someone else's call.
    let mut lost = SipClient::udp(addr);
    let lost_invite = invite("silent", &lost, port);
    lost.send(&lost_invite.build());
    assert_eq!(
        final_answer(addr, |c| invite("bob", c, port), Duration::from_secs(5)),
        Some(200),
        "another caller while the PBX ignores one INVITE"
    );
    let started = Instant::now();
    let answer = lost
        .recv_final(Duration::from_secs(5))
        .expect("the lost call gets an answer");
    assert_eq!(answer.code, 408, "{}", answer.status_line);
    lost.send(&lost_invite.ack(&answer).build());
    assert!(started.elapsed() < Duration::from_secs(3));
    // The destination is still in: the next callers get through, not 503.
    for _ in 0..5 {
        assert_eq!(
            final_answer(addr, |c| invite("bob", c, port), Duration::from_secs(5)),
            Some(200)
        );
    }
    let flags = proxy.destination_flags(&pbx.uri()).expect("listed");
    assert!(
        flags.starts_with('A'),
        "still active after one timeout: {flags}"
    );
}

#[test]
fn known_scanners_are_dropped_with_no_access_list_declared() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("defence-scanners");
    let pbx = Pbx::start(PBX);
    let (proxy, addr) = sbc(&dir, &pbx, "");
    let port = addr.port();
    for ua in ["friendly-scanner", "sipcli/v1.8", "VaxSIPUserAgent/3.1"] {
        let got = final_answer(
            addr,
            |c| invite("100", c, port).set("User-Agent", ua),
            Duration::from_secs(1),
        );
        assert_eq!(got, None, "{ua} got an answer");
    }
    assert!(
        pbx.drain().iter().all(|m| !m.starts_with("INVITE ")),
        "a scanner's INVITE reached the PBX"
    );
    assert!(
        proxy.metrics().contains("sbc_guard_scanners_total{"),
        "scanner drops are counted"
    );
    let got = final_answer(
        addr,
        |c| invite("100", c, port).set("User-Agent", "Yealink SIP-T46S"),
        Duration::from_secs(5),
    );
    assert_eq!(got, Some(200), "a phone gets through");
}

#[test]
fn a_udp_request_over_the_size_limit_is_dropped_whole() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("defence-size");
    let pbx = Pbx::start(PBX);
    let (proxy, addr) = sbc(&dir, &pbx, "limits: {maxMessageBytes: 2048}\n");
    let port = addr.port();
    let got = final_answer(
        addr,
        |c| {
            let mut r = invite("big", c, port);
            r.body
                .push_str(&format!("a=x-pad:{}\r\n", "x".repeat(3000)));
            r
        },
        Duration::from_secs(1),
    );
    assert_eq!(got, None, "an oversized datagram is not answered");
    assert!(
        pbx.drain().iter().all(|m| !m.starts_with("INVITE ")),
        "nothing of it reached the PBX"
    );
    assert!(
        proxy
            .metric("sbc_messages_dropped_total{reason=\"too_large\"}")
            .is_some_and(|n| n >= 1.0),
        "the drop is counted"
    );
    assert_eq!(
        final_answer(addr, |c| invite("small", c, port), Duration::from_secs(5)),
        Some(200)
    );
}

/// Everything the sbc sends on `s` until it closes the connection (or `wait` passes: then
/// the second value is false).
fn read_to_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true);
            }
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), false)
}

#[test]
fn a_stream_that_loses_its_framing_gets_its_answer_and_is_closed() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("defence-framing");
    let pbx = Pbx::start(PBX);
    let (_proxy, addr) = sbc(&dir, &pbx, "limits: {maxMessageBytes: 2048}\n");
    let port = addr.port();
    let client = SipClient::tcp(addr);
    let cases = [
        (
            "no Content-Length",
            None,
            "SIP/2.0 400 Missing Content-Length",
        ),
        (
            "a bad Content-Length",
            Some("twelve"),
            "SIP/2.0 400 Bad Content-Length",
        ),
        (
            "over the size limit",
            Some("60000"),
            "SIP/2.0 513 Message Too Large",
        ),
    ];
    for (what, length, want) in cases {
        let mut s = TcpStream::connect(addr).expect("connect");
        let local = s.local_addr().expect("local addr");
        let mut r = invite("bob", &client, port).set(
            "Via",
            &format!(
                "SIP/2.0/TCP {local};branch=z9hG4bKfr{}",
                kubesbc_e2e::sip::token()
            ),
        );
        r.body.clear();
        r = r.remove("Content-Type");
        let mut bytes = r.build();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let text = text.replace("Content-Length: 0\r\n", "");
        let text = match length {
            Some(l) => text.replacen("\r\n\r\n", &format!("\r\nContent-Length: {l}\r\n\r\n"), 1),
            None => text,
        };
        bytes = text.into_bytes();
        s.write_all(&bytes).expect("send");
        let (got, closed) = read_to_close(&mut s, Duration::from_secs(5));
        assert!(
            got.starts_with(want),
            "{what}: want {want:?}, got {:?}",
            got.lines().next()
        );
        assert!(closed, "{what}: the connection was left open");
    }
    assert!(
        pbx.drain().iter().all(|m| !m.starts_with("INVITE ")),
        "nothing unframed reached the PBX"
    );
}

/// How many of `streams` the sbc still holds open (a read would block), once it has had
/// `settle` to close the ones over its limit.
fn still_open(streams: &[TcpStream], settle: Duration) -> usize {
    std::thread::sleep(settle);
    streams
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).expect("nonblocking");
            let mut b = [0u8; 64];
            let mut s = *s;
            matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// 1,000 idle TCP connections and 1,000 half-open WebSocket upgrades from one source: the
/// sbc keeps `maxConnectionsPerSource` of each and closes the rest, and a client from
/// another address still places its call over TCP and upgrades over WS.
#[test]
fn a_thousand_idle_connections_from_one_source_leave_other_clients_served() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    const PER_SOURCE: usize = 100;
    const FLOOD: usize = 1000;
    let dir = TempDir::new("defence-conns");
    let pbx = Pbx::start(PBX);
    let ws = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let (proxy, addr) = sbc_with(
        &dir,
        &pbx,
        &format!("  - {{transport: ws, address: \"{ws}\"}}"),
        &format!("limits: {{maxConnectionsPerSource: {PER_SOURCE}}}\n"),
    );
    let port = addr.port();
    // Idle TCP connections.
    let idle: Vec<TcpStream> = (0..FLOOD)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    let open = still_open(&idle, Duration::from_millis(500));
    assert_eq!(
        open, PER_SOURCE,
        "the sbc keeps its per-source limit of idle connections"
    );
    // Another source is served.
    let mut caller = kubesbc_e2e::sip::SipClient::tcp_from(Ipv4Addr::new(127, 0, 0, 2), addr);
    let r = invite("bob", &caller, port);
    caller.send(&r.build());
    let answer = caller
        .recv_final(Duration::from_secs(5))
        .expect("a call from another source is answered");
    assert_eq!(answer.code, 200, "{}", answer.status_line);
    assert!(
        proxy
            .metric("sbc_messages_dropped_total{reason=\"limit\"}")
            .is_some_and(|n| n >= (FLOOD - PER_SOURCE) as f64),
        "refused connections are counted"
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));

    // Half-open WebSocket upgrades: the request head never ends.
    let half: Vec<TcpStream> = (0..FLOOD)
        .filter_map(|_| {
            let mut s = TcpStream::connect_timeout(&ws, Duration::from_secs(2)).ok()?;
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: sbc\r\nUpgrade: websocket\r\n");
            Some(s)
        })
        .collect();
    let open = still_open(&half, Duration::from_millis(500));
    // The handshake timeout (10 s) has not struck yet: the limit is what closed the rest.
    assert_eq!(open, PER_SOURCE, "the per-source limit of upgrades wait");
    // A browser elsewhere still upgrades.
    let mut browser = kubesbc_e2e::sip::SipClient::tcp_from(Ipv4Addr::new(127, 0, 0, 2), ws);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    browser.send(
        format!(
            "GET / HTTP/1.1\r\nHost: sbc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: sip\r\n\r\n"
        )
        .as_bytes(),
    );
    let SipClient::Tcp { stream, .. } = &mut browser else {
        unreachable!("a TCP client")
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).expect("an answer to the upgrade");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "another source upgrades: {head}"
    );
    drop(half);
}
