//! The shared store with a real redis-server: two sbc replicas enforce each other's bans,
//! calls keep flowing when Redis stops (each replica falls back to local state and says so
//! in its metrics), and shared state resumes when Redis is back.
//!
//! sbc only. Needs `redis-server` (Debian's package); under `CI=true` its absence fails.

use std::net::Ipv4Addr;
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient, options_burst};
use kubesbc_e2e::{
    CallRun, Proxy, RedisServer, SippTransport, TempDir, Testbed, UacOptions, e2e_tools, http,
    require_tool, sbc_only, start_calls_from, wait_for,
};

fn config(redis_url: &str) -> String {
    format!(
        r#"
listeners:
  - transport: udp
    address: 127.0.0.1:9
store:
  url: "{redis_url}"
  keyPrefix: "e2e:"
  timeoutMs: 100
accessLists:
  - name: e2e/pike
    flood:
      requests: 100
      windowSecs: 2
      banSecs: 120
"#
    )
}

/// Sends `n` OPTIONS from 127.0.0.`source` to `proxy` and counts the answers within `wait`.
fn burst(source: u8, proxy: &Proxy, n: usize, wait: Duration) -> usize {
    let mut client = SipClient::udp_from(Ipv4Addr::new(127, 0, 0, source), proxy.sip_addr());
    options_burst(&mut client, n, wait)
}

/// A burst from 127.0.0.`source` through replica `a` passes the flood limit and bans the
/// source; replica `b` enforces that ban (no answer). The window is fixed: a burst that
/// straddles a window's end gets up to the limit in each, so 250 requests pass at most 200
/// (and 100 when the burst falls in one window).
fn assert_ban_shared(source: u8, a: &Proxy, b: &Proxy) {
    let answered = burst(source, a, 250, Duration::from_millis(1500));
    assert!(
        (1..=200).contains(&answered),
        "{answered} of 250 answered by A"
    );
    assert_eq!(
        burst(source, b, 3, Duration::from_secs(1)),
        0,
        "B let 127.0.0.{source} in"
    );
}

/// One OPTIONS from 127.0.0.`source` is answered by `proxy`.
fn assert_answers(source: u8, proxy: &Proxy) {
    assert_eq!(
        burst(source, proxy, 1, Duration::from_secs(2)),
        1,
        "127.0.0.{source} unanswered"
    );
}

/// Waits until `proxy` says it uses Redis again.
fn back_on_redis(proxy: &Proxy) -> Option<()> {
    wait_for(Duration::from_secs(15), || {
        (proxy.metric("sbc_store_backend_up") == Some(1.0)).then_some(())
    })
}

#[test]
fn replicas_share_bans_and_calls_keep_flowing_while_redis_is_down() {
    if !e2e_tools() || !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let dir = TempDir::new("store-redis");
    let mut redis = RedisServer::start(&dir);
    let cfg = config(&redis.url());
    let ra = Testbed::builder(&dir)
        .backend("uas", "uas.xml")
        .config(&cfg)
        .start();
    // Replica B has its own directory and relays to A's backend.
    let dir_b = TempDir::new("store-b");
    let rb = Testbed::builder(&dir_b)
        .destination(&ra.dests[0])
        .config(&cfg)
        .start();
    let (a, b) = (&ra.proxy, &rb.proxy);

    // A burst through replica A bans the source; replica B enforces that ban.
    assert_ban_shared(3, a, b);
    assert_answers(2, b);
    let bans = http::get(b.admin(), "/bans", Duration::from_secs(3)).expect("bans of B");
    assert!(bans.body.contains("\"ip\":\"127.0.0.3\""), "{}", bans.body);
    assert_eq!(a.metric("sbc_store_backend_up"), Some(1.0));
    // Flood tallies are kept locally and synced: a source sending request after request
    // costs a round trip when first seen, then shares the syncs, not one trip per request.
    let asked = || {
        a.metric("sbc_store_round_trips_total{op=\"flood_hit\"}")
            .unwrap_or(0.0)
    };
    let before = asked();
    let mut steady = SipClient::udp_from(Ipv4Addr::new(127, 0, 0, 6), a.sip_addr());
    for i in 0..60 {
        let req = RequestBuilder::new("OPTIONS", "sip:steady@example.com", &steady);
        steady.send(&req.build());
        assert!(
            steady.recv(Duration::from_secs(2)).is_some(),
            "request {i} of a steady source unanswered"
        );
    }
    let trips = asked() - before;
    assert!(
        (1.0..=3.0).contains(&trips),
        "flood_hit round trips: {trips}"
    );
    let synced = a
        .metric("sbc_store_round_trips_total{op=\"flood_sync\"}")
        .unwrap_or(0.0);
    assert!(synced >= 1.0, "flood_sync round trips: {synced}");

    // Redis is killed and comes back in the middle of a call run: every call completes,
    // decided locally while it is gone, and both replicas return to it.
    let opts = UacOptions::new(100, 20);
    let uac = start_calls_from(
        &dir,
        "uac",
        "uac.xml",
        Ipv4Addr::new(127, 0, 0, 2),
        a.sip_addr(),
        SippTransport::Udp,
        &opts,
    );
    std::thread::sleep(Duration::from_secs(1));
    redis.stop();
    assert!(
        wait_for(Duration::from_secs(3), || {
            (a.metric("sbc_store_backend_up") == Some(0.0)).then_some(())
        })
        .is_some(),
        "A saw Redis go"
    );
    // Locally, A still answers (the ban of 127.0.0.3 lived in Redis and is gone with it).
    assert_answers(5, a);
    // Back (empty: no persistence) while the calls go on.
    redis.restart();
    CallRun::finish(uac, &opts).assert_all_succeeded(100);
    let fallbacks = a.metric("sbc_store_fallbacks_total").unwrap_or(0.0);
    assert!(fallbacks > 0.0, "calls were decided locally: {fallbacks}");
    assert_answers(5, b);
    for (name, p) in [("A", a), ("B", b)] {
        assert!(
            back_on_redis(p).is_some(),
            "replica {name} went back to Redis"
        );
    }
    // Make sure B's connection is re-established before the check (its first call after
    // the restart may meet the old, dropped connection and answer locally).
    assert_answers(5, b);
    back_on_redis(b).expect("B back on Redis");
    assert_ban_shared(4, a, b);
}
