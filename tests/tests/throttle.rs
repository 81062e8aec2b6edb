//! The throttle stage seen from a UA (sbc only): 429 + Retry-After over a tenant's limit,
//! capacity given back by BYE, other tenants unaffected.

use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, SipResponse};
use kubesbc_e2e::{
    RedisServer, TempDir, Testbed, require_tool, sbc_only, sleep_into_next_second, wait_for,
};

const T: Duration = Duration::from_secs(3);

/// A config throttling tenant acme by `acme` and tenant globex by `globex` (YAML flow
/// mappings such as `{concurrentCalls: 2}`), answering 429 with Retry-After 3.
fn throttle_config(acme: &str, globex: &str) -> String {
    format!(
        "listeners: [{{transport: udp, address: \"127.0.0.1:1\"}}]\n\
throttles:\n  - name: e2e/tt\n    response: {{code: 429, retryAfterSecs: 3}}\n    tenants:\n      \
acme: {acme}\n      globex: {globex}\n"
    )
}

/// An sbc configured with `config` in front of one sipp backend.
fn start(dir: &TempDir, config: &str) -> Testbed {
    Testbed::builder(dir)
        .backend("uas", "uas.xml")
        .config(config)
        .start()
}

/// A UA in front of a fresh sbc that throttles acme and globex as [`throttle_config`] says;
/// `None` (after a loud skip) when sipp is missing or the proxy is not the sbc.
fn throttled(label: &str, acme: &str, globex: &str) -> Option<(SipClient, Testbed, TempDir)> {
    if !sbc_only() || !require_tool("sipp") {
        return None;
    }
    let dir = TempDir::new(label);
    let bed = start(&dir, &throttle_config(acme, globex));
    Some((SipClient::udp(bed.proxy.sip_addr()), bed, dir))
}

fn invite(ua: &mut SipClient, tenant: &str) -> (RequestBuilder, SipResponse) {
    let inv = RequestBuilder::invite("sip:bob@127.0.0.1", ua).set("X-Tenant-ID", tenant);
    let r = ua.request(&inv.build(), T).expect("final answer to INVITE");
    if r.code >= 300 {
        ua.send(&inv.ack(&r).build());
    }
    (inv, r)
}

/// The BYE ending the dialog `inv` set up with `ok` (Route from the Record-Route).
fn bye(ua: &SipClient, inv: &RequestBuilder, ok: &SipResponse) -> RequestBuilder {
    let contact = ok.header("Contact").unwrap_or_default();
    let target = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or_default();
    let mut b = RequestBuilder::new("BYE", target, ua)
        .set("From", inv.get("From").unwrap_or_default())
        .set("To", ok.header("To").unwrap_or_default())
        .set("Call-ID", inv.get("Call-ID").unwrap_or_default())
        .set("CSeq", "2 BYE")
        .remove("Contact");
    let routes: Vec<&str> = ok
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Record-Route"))
        .map(|(_, v)| v.as_str())
        .collect();
    if !routes.is_empty() {
        b = b.set("Route", &routes.join(", "));
    }
    b
}

fn assert_429(r: &SipResponse) {
    assert_eq!(r.status_line, "SIP/2.0 429 Too Many Requests");
    assert_eq!(r.header("Retry-After"), Some("3"));
}

#[test]
fn concurrent_calls_over_the_limit_get_429_until_a_bye() {
    let Some((mut ua, _bed, _dir)) = throttled(
        "throttle-cc",
        "{concurrentCalls: 2}",
        "{concurrentCalls: 1}",
    ) else {
        return;
    };
    let (inv1, ok1) = invite(&mut ua, "acme");
    assert_eq!(ok1.code, 200, "{}", ok1.status_line);
    let (_, ok2) = invite(&mut ua, "acme");
    assert_eq!(ok2.code, 200);
    assert_429(&invite(&mut ua, "acme").1);
    // Another tenant is not blocked by acme's limit.
    assert_eq!(invite(&mut ua, "globex").1.code, 200);

    let b = bye(&ua, &inv1, &ok1);
    let r = ua.request(&b.build(), T).expect("answer to BYE");
    assert_eq!(r.code, 200, "{}", r.status_line);
    let admitted = wait_for(Duration::from_secs(3), || {
        (invite(&mut ua, "acme").1.code == 200).then_some(())
    });
    assert!(admitted.is_some(), "the BYE did not give the slot back");
    assert_429(&invite(&mut ua, "acme").1);
}

#[test]
fn calls_per_second_over_the_limit_get_429() {
    let Some((mut ua, _bed, _dir)) =
        throttled("throttle-cps", "{callsPerSecond: 3}", "{callsPerSecond: 3}")
    else {
        return;
    };
    // Windows are wall-clock seconds: start just after a second begins, so the six calls
    // (a few milliseconds each on loopback) fall into one window.
    sleep_into_next_second();
    let codes: Vec<u16> = (0..6).map(|_| invite(&mut ua, "acme").1.code).collect();
    let other = invite(&mut ua, "globex").1;
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");
    assert_eq!(other.code, 200, "another tenant was blocked");
}

#[test]
fn two_replicas_sharing_redis_admit_n_calls_per_second_in_total() {
    if !sbc_only() || !require_tool("sipp") {
        return;
    }
    let dir = TempDir::new("throttle-shared");
    if !require_tool("redis-server") {
        return;
    }
    let redis = RedisServer::start(&dir);
    let config = format!(
        "{}{}",
        redis.store_config(),
        throttle_config("{callsPerSecond: 4}", "{callsPerSecond: 4}")
    );
    let dir_b = TempDir::new("throttle-shared-b");
    let a = start(&dir, &config);
    // Replica B relays to A's backend.
    let b = Testbed::builder(&dir_b)
        .destination(&a.dests[0])
        .config(&config)
        .start();
    let mut ua_a = SipClient::udp(a.proxy.sip_addr());
    let mut ua_b = SipClient::udp(b.proxy.sip_addr());
    // Tolerance: none. Windows are wall-clock seconds shared through Redis, and the ten calls
    // start just after a second begins and take a few milliseconds each on loopback, so they
    // all fall into one window.
    sleep_into_next_second();
    let mut answers = Vec::new();
    for i in 0..10 {
        let ua = if i % 2 == 0 { &mut ua_a } else { &mut ua_b };
        answers.push(invite(ua, "acme").1);
    }
    let other = invite(&mut ua_b, "globex").1;
    if !redis.sbc_wrote("e2e:*") {
        return;
    }
    let ok = answers.iter().filter(|r| r.code == 200).count();
    assert_eq!(ok, 4, "calls admitted across both replicas");
    for r in answers.iter().filter(|r| r.code != 200) {
        assert_429(r);
    }
    assert_eq!(other.code, 200, "another tenant was blocked");
}
