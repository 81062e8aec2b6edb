//! The auth stage seen from a UA (sbc only): digest challenges (401 for REGISTER, 407 for
//! INVITE), `403 Blocked` after repeated failures, and nothing unauthenticated reaching the
//! backend.

use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse};
use kubesbc_e2e::{
    DispatcherDest, Proxy, ProxyOptions, Sipp, SippTransport, TempDir, free_port, require_tool,
    sbc_only, scenario,
};

const REALM: &str = "e2e.kubesbc.test";
const T: Duration = Duration::from_secs(3);

fn auth_config(extra: &str) -> String {
    format!(
        "listeners: [{{transport: udp, address: \"127.0.0.1:1\"}}]\n\
auth:\n  realm: {REALM}\n  nonceSecret: e2e-shared-secret-0123456789\n  \
failureBlock: {{maxFailures: 2, windowSecs: 60, blockSecs: 60}}\n{extra}"
    )
}

fn start(dir: &TempDir, config: &str, backend: u16) -> Proxy {
    let cfg = dir.write("sbc.yaml", config);
    Proxy::start(
        dir,
        &ProxyOptions {
            destinations: vec![DispatcherDest::local(backend, false)],
            extra_sbc_args: vec!["--config".into(), cfg.display().to_string()],
            ..ProxyOptions::default()
        },
    )
}

fn challenges<'a>(r: &'a SipResponse, header: &str) -> Vec<&'a str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(header))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The credentials a UA would send for `password` (MD5, qop=auth).
fn md5_credentials(challenge: &str, user: &str, password: &str, method: &str, uri: &str) -> String {
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("nonce in challenge");
    let ha1 = kubesbc_e2e::md5_hex(&format!("{user}:{REALM}:{password}"));
    let ha2 = kubesbc_e2e::md5_hex(&format!("{method}:{uri}"));
    let resp = kubesbc_e2e::md5_hex(&format!("{ha1}:{nonce}:00000001:e2ecn:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", \
response=\"{resp}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"e2ecn\""
    )
}

#[test]
fn register_gets_401_invite_407_and_failures_end_in_403_blocked() {
    if !sbc_only() || !require_tool("sipp") {
        return;
    }
    let dir = TempDir::new("auth-challenge");
    let backend = free_port();
    let uas = Sipp::uas(
        &dir,
        "uas",
        &scenario("uas.xml"),
        backend,
        SippTransport::Udp,
    );
    let proxy = start(&dir, &auth_config(""), backend);
    let mut ua = SipClient::udp(proxy.sip_addr());
    let reg_uri = format!("sip:{REALM}");

    let reg = RequestBuilder::new("REGISTER", &reg_uri, &ua);
    let r = ua.request(&reg.build(), T).expect("answer to REGISTER");
    assert_eq!(r.status_line, "SIP/2.0 401 Unauthorized");
    let ch = challenges(&r, "WWW-Authenticate");
    assert_eq!(ch.len(), 2, "{r:?}");
    assert!(ch[0].starts_with(&format!("Digest realm=\"{REALM}\", nonce=\"")));
    assert!(ch[0].contains("algorithm=SHA-256") && ch[0].contains("qop=\"auth\""));
    assert!(ch[1].contains("algorithm=MD5"));

    let inv = RequestBuilder::invite("sip:bob@127.0.0.1", &ua);
    let r = ua.request(&inv.build(), T).expect("answer to INVITE");
    assert_eq!(r.status_line, "SIP/2.0 407 Proxy Authentication Required");
    assert_eq!(challenges(&r, "Proxy-Authenticate").len(), 2);
    ua.send(&inv.ack(&r).build());

    // Wrong password twice: challenged again; the third failure blocks the user.
    let mut last = String::new();
    for i in 0..3 {
        let reg = RequestBuilder::new("REGISTER", &reg_uri, &ua);
        let r = ua.request(&reg.build(), T).expect("challenge");
        let md5 = challenges(&r, "WWW-Authenticate")[1].to_owned();
        let creds = md5_credentials(&md5, "mallory", "guess", "REGISTER", &reg_uri);
        let reg = reg.set("CSeq", "2 REGISTER").set("Authorization", &creds);
        let r = ua.request(&reg.build(), T).expect("answer to credentials");
        last = r.status_line.clone();
        if i < 2 {
            assert_eq!(last, "SIP/2.0 401 Unauthorized", "attempt {i}");
        }
    }
    assert_eq!(last, "SIP/2.0 403 Blocked");

    // Nothing reached the backend.
    std::thread::sleep(Duration::from_millis(300));
    let log = uas.messages();
    assert!(
        log.calls_received("INVITE").is_empty(),
        "an unauthenticated INVITE was relayed"
    );
    assert!(log.calls_received("REGISTER").is_empty());
    drop(proxy);
}

#[test]
fn trusted_sources_are_not_challenged() {
    if !sbc_only() || !require_tool("sipp") {
        return;
    }
    let dir = TempDir::new("auth-trusted");
    let backend = free_port();
    let uas = Sipp::uas(
        &dir,
        "uas",
        &scenario("uas.xml"),
        backend,
        SippTransport::Udp,
    );
    let proxy = start(
        &dir,
        &auth_config("  trustedSources: [\"127.0.0.0/8\"]\n"),
        backend,
    );
    let mut ua = SipClient::udp(proxy.sip_addr());
    let inv = RequestBuilder::invite("sip:bob@127.0.0.1", &ua);
    let r = ua.request(&inv.build(), T).expect("answer to INVITE");
    assert_eq!(r.code, 200, "{}", r.status_line);
    assert_eq!(uas.messages().calls_received("INVITE").len(), 1);
}

#[test]
fn a_challenge_from_one_replica_is_answered_at_the_other_and_never_reaches_the_backend() {
    if !sbc_only() || !require_tool("sipp") {
        return;
    }
    let dir = TempDir::new("auth-shared");
    if !require_tool("redis-server") {
        return;
    }
    let redis = kubesbc_e2e::RedisServer::start(&dir);
    let ha1 = kubesbc_e2e::md5_hex(&format!("alice:{REALM}:wonderland"));
    let stored = redis.command(&[
        "HSET",
        "e2e:subscriber:alice",
        "username",
        "alice",
        "domain",
        REALM,
        "ha1",
        &ha1,
    ]);
    assert!(stored.is_some_and(|r| r.starts_with(':')), "HSET failed");
    let backend = free_port();
    let uas = Sipp::uas(
        &dir,
        "uas",
        &scenario("uas.xml"),
        backend,
        SippTransport::Udp,
    );
    let config = format!(
        "store: {{url: \"{}\", keyPrefix: \"e2e:\"}}\n{}",
        redis.url(),
        auth_config("")
    );
    let dir_b = TempDir::new("auth-shared-b");
    let a = start(&dir, &config, backend);
    let b = start(&dir_b, &config, backend);
    let mut ua_a = SipClient::udp(a.sip_addr());
    let mut ua_b = SipClient::udp(b.sip_addr());

    let uri = "sip:bob@127.0.0.1";
    let inv = RequestBuilder::invite(uri, &ua_a);
    let r = ua_a.request(&inv.build(), T).expect("challenge from A");
    assert_eq!(r.code, 407);
    ua_a.send(&inv.ack(&r).build());
    let md5 = challenges(&r, "Proxy-Authenticate")[1].to_owned();
    let creds = md5_credentials(&md5, "alice", "wonderland", "INVITE", uri);
    let inv = RequestBuilder::invite(uri, &ua_b)
        .set("Call-ID", inv.get("Call-ID").unwrap_or_default())
        .set("CSeq", "2 INVITE")
        .set("Proxy-Authorization", &creds);
    let r = ua_b.request(&inv.build(), T).expect("answer from B");
    if r.code != 200 && !sbc_recorded_nonce_counts(&redis) {
        return;
    }
    assert_eq!(r.status_line, "SIP/2.0 200 OK");
    std::thread::sleep(Duration::from_millis(300));
    let log = uas.messages();
    let invites: Vec<_> = log.received_requests("INVITE").collect();
    assert_eq!(
        invites.len(),
        1,
        "exactly the authenticated INVITE reached the backend"
    );
    assert!(
        invites[0].header_values("Proxy-Authorization").is_empty(),
        "credentials reached the backend"
    );
    // The same credentials replayed (same nonce and nc) at A are challenged again.
    let replay = RequestBuilder::invite(uri, &ua_a)
        .set("CSeq", "3 INVITE")
        .set("Proxy-Authorization", &creds);
    let r = ua_a
        .request(&replay.build(), T)
        .expect("answer to the replay");
    assert_eq!(r.code, 407, "a replayed nonce count was accepted");
}

/// Whether the sbc recorded a nonce count in Redis (see `sbc_uses_redis` in throttle.rs).
fn sbc_recorded_nonce_counts(redis: &kubesbc_e2e::RedisServer) -> bool {
    let keys = redis.command(&["KEYS", "e2e:authnc:*"]).unwrap_or_default();
    if !keys.starts_with("*0") {
        return true;
    }
    let msg = "the sbc wrote nothing into Redis: this build has no Redis store";
    if kubesbc_e2e::in_ci() {
        panic!("{msg}");
    }
    kubesbc_e2e::loud_skip(msg);
    false
}
