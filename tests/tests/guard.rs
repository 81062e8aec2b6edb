//! The guard stage seen from the wire: each access rule answers the status line a caller
//! sees (403 with a reason naming the rule), allowed requests still reach the backend, and a
//! burst from one source is banned (no answer) while another source still calls.
//!
//! sbc only: the rules come from the sbc's own configuration file.

use std::net::Ipv4Addr;
use std::time::Duration;

use kubesbc_e2e::proxy::run_sbc;
use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse, options_burst};
use kubesbc_e2e::{
    CallRun, SippTransport, TempDir, Testbed, UacOptions, e2e_tools, http, sbc_only,
    start_calls_from,
};

const SIGNATURE: &str = "s3cret-e2e";

const RULES: &str = r#"
listeners:
  - transport: udp
    address: 127.0.0.1:9
accessLists:
  - name: e2e/edge
    rules:
      - action: deny
        userAgents: [friendly-scanner, sipvicious, sipcli, VaxSIPUserAgent]
      - action: deny
        fromDomains: [evil.example]
      - action: deny
        methods: [INVITE]
        requiredHeaders:
          - name: X-Company-Signature
            value: s3cret-e2e
  - name: e2e/sources
    rules:
      - action: deny
        sources: ["127.0.0.9/32", "::2/128"]
        responseCode: 603
"#;

/// A backend (sipp UAS answering INVITE and OPTIONS) and an sbc in front of it configured
/// with `config`.
fn start(dir: &TempDir, config: &str) -> Testbed {
    Testbed::builder(dir)
        .backend("uas", "uas.xml")
        .config(config)
        .start()
}

fn signed_invite(client: &SipClient, target: std::net::SocketAddr) -> RequestBuilder {
    RequestBuilder::invite(&format!("sip:service@{target}"), client)
        .set("X-Company-Signature", SIGNATURE)
        .set("User-Agent", "e2e-phone/1.0")
}

fn exchange(client: &mut SipClient, req: &RequestBuilder) -> SipResponse {
    let resp = client
        .request(&req.build(), Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no final answer to {} {}", req.method, req.uri));
    if req.method == "INVITE" && resp.code >= 300 {
        client.send(&req.ack(&resp).build());
    }
    resp
}

#[test]
fn each_access_rule_answers_its_status_line_and_allowed_requests_reach_the_backend() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("guard-rules");
    let bed = start(&dir, RULES);
    let target = bed.proxy.sip_addr();
    let mut client = SipClient::udp(target);

    type Edit = fn(RequestBuilder) -> RequestBuilder;
    let rows: [(&str, Edit, u16, &str); 8] = [
        (
            "scanner user agent",
            |r| r.set("User-Agent", "friendly-scanner"),
            403,
            "Forbidden (scanner)",
        ),
        (
            "scanner user agent, other case",
            |r| r.set("User-Agent", "SIPVicious 0.3.4"),
            403,
            "Forbidden (scanner)",
        ),
        (
            "VaxSIPUserAgent",
            |r| r.set("User-Agent", "vaxsipuseragent/3.5"),
            403,
            "Forbidden (scanner)",
        ),
        (
            "denied From domain",
            |r| r.set("From", "<sip:mallory@evil.example>;tag=e1"),
            403,
            "Forbidden (from domain)",
        ),
        (
            "missing signature",
            |r| r.remove("X-Company-Signature"),
            403,
            "Forbidden - Invalid Signature",
        ),
        (
            "wrong signature",
            |r| r.set("X-Company-Signature", "s3cret-e2f"),
            403,
            "Forbidden - Invalid Signature",
        ),
        (
            "multicast Request-URI",
            |mut r| {
                r.uri = "sip:service@224.0.1.75".into();
                r
            },
            403,
            "Forbidden (multicast target)",
        ),
        (
            "mDNS Route",
            |r| r.set("Route", "<sip:pbx.local;lr>"),
            403,
            "Forbidden (mDNS .local target)",
        ),
    ];
    let mut refused_ids = Vec::new();
    for (name, edit, code, reason) in rows {
        let req = edit(signed_invite(&client, target));
        let resp = exchange(&mut client, &req);
        assert_eq!(
            (resp.code, resp.reason.as_str()),
            (code, reason),
            "{name}: {}",
            resp.status_line
        );
        refused_ids.push(req.get("Call-ID").unwrap_or_default().to_owned());
    }

    // A denied source (127.0.0.9): the rule's own code.
    let mut denied = SipClient::udp_from(Ipv4Addr::new(127, 0, 0, 9), target);
    let req = signed_invite(&denied, target);
    let resp = exchange(&mut denied, &req);
    assert_eq!(resp.status_line, "SIP/2.0 603 Decline (source address)");
    refused_ids.push(req.get("Call-ID").unwrap_or_default().to_owned());

    // Allowed: a signed INVITE and an unsigned OPTIONS (the signature rule is INVITE-only)
    // are answered by the backend.
    let ok = signed_invite(&client, target);
    let resp = exchange(&mut client, &ok);
    assert_eq!(resp.code, 200, "{}", resp.status_line);
    let options = RequestBuilder::new("OPTIONS", "sip:service@example.com", &client);
    let resp = exchange(&mut client, &options);
    assert_eq!(resp.code, 200, "{}", resp.status_line);

    let log = bed.backend(0).messages();
    let invites = log.calls_received("INVITE");
    let ok_id = ok.get("Call-ID").unwrap_or_default().to_owned();
    assert!(
        invites.contains(&ok_id),
        "the allowed INVITE reached the backend"
    );
    for id in &refused_ids {
        assert!(
            !invites.contains(id),
            "refused call {id} reached the backend"
        );
    }
    assert_eq!(invites.len(), 1, "{invites:?}");

    bed.proxy.assert_metrics_contain(&[
        "sbc_guard_refused_total{reason=\"rule\"} 7",
        "sbc_guard_refused_total{reason=\"target\"} 2",
    ]);
}

const FLOOD: &str = r#"
listeners:
  - transport: udp
    address: 127.0.0.1:9
accessLists:
  - name: e2e/pike
    flood:
      requests: 20
      windowSecs: 2
      banSecs: 60
"#;

#[test]
fn a_burst_from_one_source_is_banned_while_another_source_still_calls() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("guard-flood");
    let bed = start(&dir, FLOOD);
    let proxy = &bed.proxy;
    let target = proxy.sip_addr();
    let flooder = Ipv4Addr::new(127, 0, 0, 3);
    let mut client = SipClient::udp_from(flooder, target);

    // 20 requests per (fixed) window pass, then nothing: 20, or up to 40 when the burst
    // straddles a window's end.
    let answered = options_burst(&mut client, 60, Duration::from_millis(1500));
    assert!(
        (1..=40).contains(&answered),
        "20 requests per window pass, then nothing: {answered} of 60 answered"
    );
    // Banned: no answer at all, even in a later window.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(
        options_burst(&mut client, 3, Duration::from_millis(1000)),
        0
    );

    let admin = proxy.admin().to_string();
    let out = run_sbc(
        &dir,
        &["ctl", "--admin", &admin, "bans", "list"],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("BANS: 1\n127.0.0.3 "),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("REASON flood"), "{}", out.stdout);

    // Another source places calls through the same sbc meanwhile.
    let opts = UacOptions::new(5, 5);
    let caller = start_calls_from(
        &dir,
        "uac",
        "uac.xml",
        Ipv4Addr::new(127, 0, 0, 2),
        target,
        SippTransport::Udp,
        &opts,
    );
    CallRun::finish(caller, &opts).assert_all_succeeded(5);

    // Lifting the ban lets the source in again.
    let out = run_sbc(
        &dir,
        &["ctl", "--admin", &admin, "bans", "remove", "127.0.0.3"],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "ban of 127.0.0.3 lifted\n");
    assert_eq!(
        options_burst(&mut client, 1, Duration::from_millis(2000)),
        1
    );
    let bans = http::get(proxy.admin(), "/bans", Duration::from_secs(3)).expect("bans");
    assert_eq!(bans.body, "[]");
}
