//! Routing rules seen from the wire, with real sipp callers and backends in three sets:
//! the PBX (set 1, the default) calling out reaches the carriers (set 2); a Request-URI
//! prefix goes to its set (3); no match goes to the default set; the carriers' first
//! destination answers 503 and the call fails over to the other carrier, never to set 1.
//!
//! Every backend has an address of its own (127.0.0.11, .21, ...), since `fromSet` compares
//! addresses, not ports. sbc only: the rules come from the sbc's configuration file.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use kubesbc_e2e::{
    CallRun, Proxy, Sipp, SippTransport, TempDir, UacOptions, e2e_tools, free_port,
    received_invites, sbc_only, scenario, start_calls_from,
};

const PBX: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
const CARRIER_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
const CARRIER_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);
const INTL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 31);
const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 41);

struct Scene {
    // Dropped first: the proxy, then the backends.
    proxy: Proxy,
    pbx: Sipp,
    carrier_a: Sipp,
    carrier_b: Sipp,
    intl: Sipp,
}

fn uas(dir: &TempDir, name: &str, file: &str, ip: Ipv4Addr) -> Sipp {
    Sipp::uas_on(
        dir,
        name,
        &scenario(file),
        ip,
        free_port(),
        SippTransport::Udp,
    )
}

fn start(dir: &TempDir) -> Scene {
    let pbx = uas(dir, "pbx", "uas.xml", PBX);
    let carrier_a = uas(dir, "carrier-a", "uas_503.xml", CARRIER_A);
    let carrier_b = uas(dir, "carrier-b", "uas.xml", CARRIER_B);
    let intl = uas(dir, "intl", "uas.xml", INTL);
    let port = free_port();
    let uri = |ip: Ipv4Addr, s: &Sipp| format!("sip:{ip}:{}", s.port());
    let config = format!(
        r#"
listeners:
  - {{transport: udp, address: "127.0.0.1:{port}"}}
dispatcher:
  defaultSet: 1
  sets:
    - id: 1
      destinations: [{{uri: "{pbx}"}}]
      probing: {{intervalMs: 500, timeoutMs: 400}}
    - id: 2
      algorithm: priority
      destinations:
        - {{uri: "{a}", priority: 10}}
        - {{uri: "{b}", priority: 5}}
      probing: {{intervalMs: 500, timeoutMs: 400}}
      failover: {{codes: ["5xx"], maxAttempts: 2, replyTimeoutMs: 1000}}
    - id: 3
      destinations: [{{uri: "{intl}"}}]
      probing: {{intervalMs: 500, timeoutMs: 400}}
routing:
  rules:
    - {{name: pbx-out, fromSet: 1, methods: [INVITE], set: 2}}
    - {{name: international, uriUserPrefixes: ["44"], set: 3}}
"#,
        pbx = uri(PBX, &pbx),
        a = uri(CARRIER_A, &carrier_a),
        b = uri(CARRIER_B, &carrier_b),
        intl = uri(INTL, &intl),
    );
    let proxy = Proxy::start_sbc_config(dir, &config, port);
    for (ip, s) in [
        (PBX, &pbx),
        (CARRIER_A, &carrier_a),
        (CARRIER_B, &carrier_b),
        (INTL, &intl),
    ] {
        proxy.wait_destination(&uri(ip, s), true, std::time::Duration::from_secs(10));
    }
    Scene {
        proxy,
        pbx,
        carrier_a,
        carrier_b,
        intl,
    }
}

/// Places `calls` calls to `user` from `from` and waits for them; returns the run and the
/// Call-IDs of its INVITEs.
fn call(
    dir: &TempDir,
    s: &Scene,
    name: &str,
    from: Ipv4Addr,
    user: &str,
    calls: u32,
) -> (CallRun, BTreeSet<String>) {
    let opts = UacOptions::new(calls, 10)
        .with_hold_ms(20)
        .with_service(user);
    let uac = start_calls_from(
        dir,
        name,
        "uac.xml",
        from,
        s.proxy.sip_addr(),
        SippTransport::Udp,
        &opts,
    );
    let run = CallRun::finish(uac, &opts);
    let ids: BTreeSet<String> = run
        .log
        .sent_requests("INVITE")
        .filter_map(|m| m.call_id().map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), calls as usize, "{name}: one Call-ID per call");
    (run, ids)
}

/// Which of `ids` `backend` received an INVITE for.
fn seen(backend: &Sipp, ids: &BTreeSet<String>) -> usize {
    received_invites(backend).intersection(ids).count()
}

#[test]
fn rules_pick_the_set_and_failover_stays_inside_it() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("routing");
    let s = start(&dir);

    // The PBX (an address of set 1) calls a number: the carriers. Carrier A, first by
    // priority, answers 503; each call moves to carrier B, and the caller gets its 200.
    let (run, out) = call(&dir, &s, "pbx-out", PBX, "0049301234", 4);
    run.assert_all_succeeded(4);
    assert_eq!(
        run.log.responses_received(200).intersection(&out).count(),
        4
    );
    assert_eq!(
        run.log.responses_received(503).len(),
        0,
        "the caller never sees carrier A's 503"
    );
    assert_eq!(seen(&s.carrier_a, &out), 4, "carrier A was tried first");
    assert_eq!(seen(&s.carrier_b, &out), 4, "and carrier B took every call");
    assert_eq!(seen(&s.pbx, &out), 0, "failover never left set 2");
    assert_eq!(seen(&s.intl, &out), 0);

    // A caller that is no member of set 1 calling +44: the prefix rule's set 3.
    let (run, intl) = call(&dir, &s, "phone-intl", PHONE, "442071234567", 3);
    run.assert_all_succeeded(3);
    assert_eq!(
        run.log.responses_received(200).intersection(&intl).count(),
        3
    );
    assert_eq!(seen(&s.intl, &intl), 3);
    for b in [&s.pbx, &s.carrier_a, &s.carrier_b] {
        assert_eq!(seen(b, &intl), 0);
    }

    // No rule matches (a number, but not from the PBX, and no prefix rule): set 1.
    let (run, plain) = call(&dir, &s, "phone-plain", PHONE, "0049301234", 3);
    run.assert_all_succeeded(3);
    assert_eq!(
        run.log.responses_received(200).intersection(&plain).count(),
        3
    );
    assert_eq!(seen(&s.pbx, &plain), 3);
    for b in [&s.carrier_a, &s.carrier_b, &s.intl] {
        assert_eq!(seen(b, &plain), 0);
    }
}

#[test]
fn when_the_chosen_set_fails_the_caller_gets_its_answer_not_the_default_set() {
    if !e2e_tools() || !sbc_only() {
        return;
    }
    let dir = TempDir::new("routing-fail");
    let s = start(&dir);
    // Carrier B stops: set 2 has only carrier A's 503 left (B is tried and times out, or
    // is already down), and the PBX's call still never lands back in set 1.
    let mut s = s;
    s.carrier_b.kill();
    let opts = UacOptions::new(1, 1)
        .with_hold_ms(20)
        .with_service("0049301234");
    let uac = start_calls_from(
        &dir,
        "pbx-out-fails",
        "uac.xml",
        PBX,
        s.proxy.sip_addr(),
        SippTransport::Udp,
        &opts,
    );
    let run = CallRun::finish(uac, &opts);
    assert_eq!(run.stats.successful, 0, "{:?}", run.stats);
    let ids: BTreeSet<String> = run
        .log
        .sent_requests("INVITE")
        .filter_map(|m| m.call_id().map(str::to_owned))
        .collect();
    let finals: Vec<u16> = run
        .log
        .messages
        .iter()
        .filter(|m| m.received)
        .filter_map(|m| m.status())
        .filter(|c| *c >= 300)
        .collect();
    assert!(
        finals.iter().all(|c| [408, 503].contains(c)) && !finals.is_empty(),
        "the caller got set 2's failure: {finals:?}"
    );
    assert_eq!(seen(&s.carrier_a, &ids), 1);
    assert_eq!(seen(&s.pbx, &ids), 0, "never the default set");
}
