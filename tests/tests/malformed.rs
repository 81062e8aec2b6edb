//! Malformed requests: each gets the status and reason the contract names, and the proxy keeps
//! answering OPTIONS after each one (one table-driven test).
//!
//! Against Kamailio (`KUBESBC_E2E_PROXY=kamailio`) only the rows where Kamailio's answer is the
//! same are checked, and only by status code: the reason phrases are ours.

use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse, invite_once, options_ping};
use kubesbc_e2e::{DispatcherDest, ProxyKind, TempDir, Testbed, e2e_tools, free_port};

/// A request that comes back to the proxy (its only destination is the proxy itself) is a loop
/// (RFC 3261 16.3 item 4): the caller gets 482. Kamailio's config has no loop detection; there
/// the request goes round until Max-Forwards (capped at 10) runs out: 483.
#[test]
fn request_that_loops_back_to_the_proxy_gets_482() {
    if !e2e_tools() {
        return;
    }
    let dir = TempDir::new("loop");
    let port = free_port();
    let bed = Testbed::builder(&dir)
        .sip_port(port)
        .destination(&DispatcherDest::local(port, false))
        .start();
    let proxy = &bed.proxy;
    let target = proxy.sip_addr();
    let resp =
        invite_once(target, Duration::from_secs(8)).expect("a final response to a looping INVITE");
    let expected = match proxy.kind() {
        ProxyKind::Sbc => 482,
        ProxyKind::Kamailio => 483,
    };
    assert_eq!(resp.code, expected, "{}", resp.status_line);
    let alive = options_ping(target, Duration::from_secs(2));
    assert_eq!(
        alive.map(|r| r.code),
        Some(200),
        "proxy still answers OPTIONS"
    );
}

/// What a row expects back.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// This status code and exactly this reason phrase.
    Exact(u16, &'static str),
    /// This status code, and a reason phrase that names this (case-insensitive).
    Naming(u16, &'static str),
    /// This status code, any reason.
    Code(u16),
    /// No response at all: garbage is dropped (and counted).
    Nothing,
}

struct Row {
    name: &'static str,
    tcp: bool,
    /// Builds the raw bytes from a valid INVITE to the proxy and the proxy's `host:port`.
    build: fn(RequestBuilder, &str) -> Vec<u8>,
    expect: Expect,
    /// What Kamailio does, when it is the same as ours up to the reason phrase (None: it
    /// differs, and the row is skipped under Kamailio).
    kamailio: Option<Expect>,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "missing Call-ID",
            tcp: false,
            build: |r, _| r.remove("Call-ID").build(),
            expect: Expect::Exact(400, "Missing Call-ID"),
            kamailio: None,
        },
        Row {
            name: "missing Call-ID over TCP",
            tcp: true,
            build: |r, _| r.remove("Call-ID").build(),
            expect: Expect::Exact(400, "Missing Call-ID"),
            kamailio: None,
        },
        Row {
            name: "Content-Length not a number",
            tcp: false,
            build: |r, _| r.set("Content-Length", "abc").build(),
            expect: Expect::Exact(400, "Bad Content-Length"),
            kamailio: None,
        },
        Row {
            name: "Content-Length larger than the datagram",
            tcp: false,
            build: |r, _| {
                let n = r.body.len() + 100;
                r.set("Content-Length", &n.to_string()).build()
            },
            expect: Expect::Exact(400, "Bad Content-Length"),
            kamailio: Some(Expect::Code(400)),
        },
        Row {
            name: "missing From",
            tcp: false,
            build: |r, _| r.remove("From").build(),
            expect: Expect::Naming(400, "From"),
            kamailio: None,
        },
        Row {
            name: "missing To",
            tcp: false,
            build: |r, _| r.remove("To").build(),
            expect: Expect::Naming(400, "To"),
            kamailio: None,
        },
        Row {
            name: "missing CSeq",
            tcp: false,
            build: |r, _| r.remove("CSeq").build(),
            expect: Expect::Naming(400, "CSeq"),
            kamailio: None,
        },
        Row {
            name: "CSeq number not a number",
            tcp: false,
            build: |r, _| r.set("CSeq", "one INVITE").build(),
            expect: Expect::Naming(400, "CSeq"),
            kamailio: Some(Expect::Code(400)),
        },
        Row {
            name: "CSeq method differs from the request method",
            tcp: false,
            build: |r, _| r.set("CSeq", "1 BYE").build(),
            expect: Expect::Naming(400, "CSeq"),
            kamailio: Some(Expect::Code(400)),
        },
        Row {
            name: "Max-Forwards not a number",
            tcp: false,
            build: |r, _| r.set("Max-Forwards", "many").build(),
            expect: Expect::Naming(400, "Max-Forwards"),
            kamailio: None,
        },
        Row {
            name: "SIP version 3.0",
            tcp: false,
            build: |mut r, _| {
                r.version = "SIP/3.0".to_owned();
                r.build()
            },
            expect: Expect::Code(505),
            kamailio: None,
        },
        Row {
            name: "unsupported Request-URI scheme",
            tcp: false,
            build: |mut r, _| {
                r.uri = "http://127.0.0.1/call".to_owned();
                r.build()
            },
            expect: Expect::Code(416),
            kamailio: None,
        },
        Row {
            name: "Max-Forwards 0",
            tcp: false,
            build: |r, _| r.set("Max-Forwards", "0").build(),
            expect: Expect::Code(483),
            kamailio: Some(Expect::Code(483)),
        },
        Row {
            name: "header line without a colon",
            tcp: false,
            build: |r, _| {
                let mut b = r.build();
                let at = b.windows(2).position(|w| w == b"\r\n").unwrap_or(0) + 2;
                b.splice(at..at, b"This line has no colon\r\n".iter().copied());
                b
            },
            expect: Expect::Code(400),
            kamailio: None,
        },
        Row {
            name: "binary garbage",
            tcp: false,
            build: |_, _| (0u8..=255).cycle().take(700).collect(),
            expect: Expect::Nothing,
            kamailio: Some(Expect::Nothing),
        },
    ]
}

fn check(row: &Row, got: Option<&SipResponse>, kamailio: bool) -> Result<(), String> {
    let status = got.map(|r| r.status_line.clone());
    let expect = if kamailio {
        row.kamailio
    } else {
        Some(row.expect)
    };
    let Some(expect) = expect else {
        return Ok(());
    };
    let ok = match (expect, got) {
        (Expect::Exact(c, reason), Some(r)) => r.code == c && r.reason == reason,
        (Expect::Naming(c, word), Some(r)) => {
            r.code == c && r.reason.to_lowercase().contains(&word.to_lowercase())
        }
        (Expect::Code(c), Some(r)) => r.code == c,
        (Expect::Nothing, None) => true,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got {status:?}"))
    }
}

#[test]
fn malformed_requests_get_their_status_and_the_proxy_keeps_answering() {
    if !e2e_tools() {
        return;
    }
    let kamailio = ProxyKind::from_env() == ProxyKind::Kamailio;
    let dir = TempDir::new("malformed");
    // A live backend, so a request that wrongly passes sanity would be relayed, not 503'd.
    let bed = Testbed::builder(&dir).backend("uas", "uas.xml").start();
    let target = bed.proxy.sip_addr();
    let me = target.to_string();
    let mut failures = Vec::new();
    for row in rows() {
        if kamailio && row.kamailio.is_none() {
            eprintln!(
                "row {:?}: Kamailio answers differently, not checked",
                row.name
            );
            continue;
        }
        let mut client = if row.tcp {
            SipClient::tcp(target)
        } else {
            SipClient::udp(target)
        };
        let base = RequestBuilder::invite(&format!("sip:service@{me}"), &client);
        let bytes = (row.build)(base.clone(), &me);
        client.send(&bytes);
        // Nothing is expected for garbage: wait a little to see that nothing comes.
        let wait = match row.expect {
            Expect::Nothing => Duration::from_millis(700),
            _ => Duration::from_secs(3),
        };
        let got = client.recv_final(wait);
        if let Some(r) = &got
            && r.code >= 300
            && base.get("Call-ID").is_some()
        {
            client.send(&base.ack(r).build());
        }
        eprintln!(
            "row {:?}: {:?}",
            row.name,
            got.as_ref().map(|r| &r.status_line)
        );
        if let Err(e) = check(&row, got.as_ref(), kamailio) {
            failures.push(format!("{}: {e}", row.name));
        }
        let alive = options_ping(target, Duration::from_secs(2));
        if alive.as_ref().map(|r| r.code) != Some(200) {
            failures.push(format!(
                "{}: proxy no longer answers OPTIONS (got {:?})",
                row.name,
                alive.map(|r| r.status_line)
            ));
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "malformed requests:\n{}",
        failures.join("\n")
    );
}
