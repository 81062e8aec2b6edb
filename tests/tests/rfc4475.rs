//! RFC 4475 through a running sbc: every torture message of `sbc::sip::torture` is sent over
//! UDP to an sbc in front of the test PBX, and what the caller gets back and what reaches the
//! PBX is checked against the table. A request the table relays arrives with the same
//! request line, Call-ID, CSeq, From, To and body; one the relay will not route (a preloaded
//! Route to a foreign host, an in-dialog request naming a host it cannot resolve) gets the
//! relay's answer; a refused one gets exactly the table's status line; a response without a
//! transaction and a message that does not parse reach nobody and are not answered. The sbc
//! still answers afterwards. The RFC 5118 IPv6 messages (`sbc::sip::torture::RFC5118`) go
//! the same way over IPv6, to an sbc and a PBX on `::1`. sbc only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubesbc_e2e::uas::Pbx;
use kubesbc_e2e::{Proxy, TempDir, e2e_tools, free_port, sbc_only};
use sbc::sip::torture::{CASES, Case, Expect, RFC5118};
use sbc::sip::{HeaderName, Message};

const PBX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// What one message led to.
#[derive(Debug, Default)]
struct Seen {
    /// Status lines the caller got.
    answers: Vec<String>,
    /// Requests with the message's Call-ID that reached the PBX.
    relayed: Vec<Message>,
}

fn parse(text: &str) -> Option<Message> {
    Message::parse(Bytes::copy_from_slice(text.as_bytes()), usize::MAX).ok()
}

/// The header values of `name` in `m`, as written.
fn values(m: &Message, name: HeaderName) -> Vec<Vec<u8>> {
    m.values(name).map(|v| m.slice(v).to_vec()).collect()
}

/// How the relay routes the case, beyond what the parser decides: (in dialog, has a Route).
fn routing_of(m: &Message) -> (bool, bool) {
    let to_tag = m.header_value(HeaderName::To).is_some_and(|v| {
        String::from_utf8_lossy(v)
            .to_ascii_lowercase()
            .split(';')
            .any(|p| p.trim().starts_with("tag"))
    });
    (to_tag, m.values(HeaderName::Route).next().is_some())
}

fn send_case(sock: &UdpSocket, sbc: SocketAddr, pbx: &Pbx, c: &Case) -> Seen {
    sock.send_to(c.bytes, sbc).expect("send");
    let call_id =
        parse(&String::from_utf8_lossy(c.bytes)).and_then(|m| m.call_id().map(<[u8]>::to_vec));
    let mut seen = Seen::default();
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + Duration::from_millis(600);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(
            left.min(Duration::from_millis(50))
                .max(Duration::from_millis(1)),
        ))
        .expect("timeout");
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let line = text.lines().next().unwrap_or_default().to_owned();
            if !line.starts_with("SIP/2.0 1") {
                seen.answers.push(line);
            }
        }
        for m in pbx.drain() {
            if let Some(msg) = parse(&m)
                && msg.call_id().map(<[u8]>::to_vec) == call_id
            {
                seen.relayed.push(msg);
            }
        }
        // Done once answered, and for a request the PBX takes, once it has it too.
        let at_pbx = c.expect == Expect::Relayed
            && parse(&String::from_utf8_lossy(c.bytes))
                .is_some_and(|m| relayed_outcome(&m).is_none());
        if !seen.answers.is_empty() && (!at_pbx || !seen.relayed.is_empty()) {
            break;
        }
    }
    seen
}

/// Top Via branch and sent-by of a message, as written: a second message with the same ones
/// is, to the sbc, a retransmission of the first (RFC 3261 section 17.2.3).
fn transaction_of(m: &Message) -> Option<Vec<u8>> {
    m.top_via().map(|v| m.slice(v).to_vec())
}

/// What the relay does with a request the parser and sanity let through: an initial
/// request with a Route to a host that is not the sbc gets 403, an in-dialog one is routed by
/// its Route set or Request-URI, which in RFC 4475 always name hosts (no DNS on the hot path:
/// 478), everything else goes to the PBX.
fn relayed_outcome(m: &Message) -> Option<&'static str> {
    let (in_dialog, routed) = routing_of(m);
    if in_dialog {
        Some("SIP/2.0 478 Unresolvable Destination")
    } else if routed {
        Some("SIP/2.0 403 Preload Route Denied")
    } else {
        None
    }
}

fn check(c: &Case, seen: &Seen) -> Result<(), String> {
    let orig = parse(&String::from_utf8_lossy(c.bytes));
    match c.expect {
        Expect::Refused(code, reason) => {
            let want = format!("SIP/2.0 {code} {reason}");
            if seen.answers != [want.clone()] || !seen.relayed.is_empty() {
                return Err(format!("want {want:?}, got {seen:?}"));
            }
        }
        Expect::Response | Expect::Dropped => {
            if !seen.answers.is_empty() || !seen.relayed.is_empty() {
                return Err(format!("want nothing, got {seen:?}"));
            }
        }
        Expect::Relayed => {
            let orig = orig.ok_or("the table relays it, the test cannot parse it")?;
            if let Some(want) = relayed_outcome(&orig) {
                if seen.answers != [want] || !seen.relayed.is_empty() {
                    return Err(format!("want {want:?}, got {seen:?}"));
                }
                return Ok(());
            }
            let [got] = seen.relayed.as_slice() else {
                return Err(format!("want it at the PBX once, got {seen:?}"));
            };
            if got.method_token() != orig.method_token() || got.request_uri() != orig.request_uri()
            {
                return Err("the request line changed".into());
            }
            if got.cseq() != orig.cseq() || got.call_id() != orig.call_id() {
                return Err("CSeq or Call-ID changed".into());
            }
            for h in [HeaderName::From, HeaderName::To] {
                if values(got, h) != values(&orig, h) {
                    return Err(format!("{h:?} changed"));
                }
            }
            if got.body() != orig.body() {
                return Err("the body changed".into());
            }
            if seen.answers != ["SIP/2.0 200 OK"] {
                return Err(format!("the PBX's 200 did not come back: {seen:?}"));
            }
        }
    }
    Ok(())
}

/// Sends every case of `cases` from `ip` to an sbc on `ip` in front of the test PBX on
/// `pbx_ip`, and checks each against its table outcome; `rfc` names the table in failures.
fn through_a_running_sbc(ip: IpAddr, pbx_ip: IpAddr, cases: &[Case], rfc: &str) {
    let dir = TempDir::new(&format!("rfc{rfc}"));
    let pbx = Pbx::start(pbx_ip);
    let port = free_port();
    let sbc = SocketAddr::from((ip, port));
    let config = format!(
        r#"
listeners:
  - {{transport: udp, address: "{sbc}"}}
dispatcher:
  sets:
    - id: 1
      destinations: [{{uri: "{}"}}]
      probing: {{intervalMs: 500, timeoutMs: 400}}
"#,
        pbx.uri()
    );
    let proxy = Proxy::start_sbc_config(&dir, &config, port);
    proxy.wait_destination(&pbx.uri(), true, Duration::from_secs(10));
    let sock = UdpSocket::bind((ip, 0)).expect("bind");
    let mut sent: Vec<(Vec<u8>, Instant)> = Vec::new();
    let mut failures = Vec::new();
    for c in cases {
        // Two RFC 4475 messages share a branch and sent-by: the second waits for the first's
        // transaction to end (timer J, 5 s over UDP) rather than be its retransmission.
        let tx = parse(&String::from_utf8_lossy(c.bytes)).and_then(|m| transaction_of(&m));
        if let Some(tx) = &tx
            && let Some((_, at)) = sent.iter().find(|(t, _)| t == tx)
        {
            let until = *at + Duration::from_millis(5_500);
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        let seen = send_case(&sock, sbc, &pbx, c);
        if let Some(tx) = tx {
            sent.push((tx, Instant::now()));
        }
        if let Err(why) = check(c, &seen) {
            failures.push(format!(
                "{} (RFC {rfc} {} {}): {why}",
                c.name, c.section, c.title
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Still serving.
    let ping = kubesbc_e2e::sip::options_ping(sbc, Duration::from_secs(3));
    assert!(
        ping.is_some_and(|r| r.code == 200),
        "the sbc stopped answering"
    );
    let metrics = proxy.metrics();
    if cases.iter().any(|c| c.expect == Expect::Dropped) {
        assert!(
            metrics.contains("sbc_parse_errors_total{"),
            "what did not parse is counted"
        );
    }
}

#[test]
fn every_torture_message_gets_the_outcome_of_the_table_through_a_running_sbc() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    through_a_running_sbc(Ipv4Addr::LOCALHOST.into(), PBX.into(), CASES, "4475");
}

#[test]
fn every_ipv6_torture_message_gets_the_outcome_of_the_table_through_a_running_sbc_over_ipv6() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let ip = Ipv6Addr::LOCALHOST.into();
    through_a_running_sbc(ip, ip, RFC5118, "5118");
}
