//! The shared store with a real redis-server: two sbc replicas enforce each other's bans,
//! calls keep flowing when Redis stops (each replica falls back to local state and says so
//! in its metrics), and shared state resumes when Redis is back.
//!
//! sbc only. Needs `redis-server` (Debian's package); under `CI=true` its absence fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kubesbc_e2e::sip::{RequestBuilder, SipClient};
use kubesbc_e2e::{
    DispatcherDest, Proxy, ProxyOptions, RedisServer, Sipp, SippTransport, TempDir, UacOptions,
    e2e_tools, free_port, http, require_tool, sbc_only, scenario, wait_for,
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

/// A replica with its own directory (its log, dispatcher list and config), which lives as
/// long as the process: fields drop in order, the process first.
struct Replica {
    proxy: Proxy,
    _dir: TempDir,
}

fn start_replica(name: &str, dest: &DispatcherDest, cfg: &str) -> Replica {
    let dir = TempDir::new(&format!("store-{name}"));
    let file = dir.write("sbc.yaml", cfg);
    let proxy = Proxy::start(
        &dir,
        &ProxyOptions {
            destinations: vec![dest.clone()],
            extra_sbc_args: vec!["--config".into(), file.display().to_string()],
            ..ProxyOptions::default()
        },
    );
    proxy.wait_destination(&dest.uri, true, Duration::from_secs(10));
    Replica { proxy, _dir: dir }
}

/// Sends `n` OPTIONS from `from` to `target` and counts the answers within `wait`.
fn burst(from: Ipv4Addr, target: SocketAddr, n: usize, wait: Duration) -> usize {
    let mut client = SipClient::udp_from(from, target);
    for _ in 0..n {
        let req = RequestBuilder::new("OPTIONS", "sip:burst@example.com", &client);
        client.send(&req.build());
    }
    let mut answered = 0;
    while client.recv(wait).is_some() {
        answered += 1;
    }
    answered
}

/// The value of the first sample of `metric` (a full series name with labels, or a bare name).
fn metric(proxy: &Proxy, series: &str) -> Option<f64> {
    let body = http::get(proxy.admin(), "/metrics", Duration::from_secs(3))?.body;
    body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn replicas_share_bans_and_calls_keep_flowing_while_redis_is_down() {
    if !e2e_tools() || !sbc_only() || !require_tool("redis-server") {
        return;
    }
    let dir = TempDir::new("store-redis");
    let mut redis = RedisServer::start(&dir);
    let port = free_port();
    let _uas = Sipp::uas(&dir, "uas", &scenario("uas.xml"), port, SippTransport::Udp);
    let dest = DispatcherDest::local(port, false);
    let cfg = config(&redis.url());
    let ra = start_replica("a", &dest, &cfg);
    let rb = start_replica("b", &dest, &cfg);
    let (a, b) = (&ra.proxy, &rb.proxy);

    // A burst through replica A bans the source; replica B enforces that ban.
    let answered = burst(
        Ipv4Addr::new(127, 0, 0, 3),
        a.sip_addr(),
        150,
        Duration::from_millis(1500),
    );
    assert!(
        (1..=100).contains(&answered),
        "{answered} of 150 answered by A"
    );
    assert_eq!(
        burst(
            Ipv4Addr::new(127, 0, 0, 3),
            b.sip_addr(),
            3,
            Duration::from_secs(1)
        ),
        0
    );
    assert_eq!(
        burst(
            Ipv4Addr::new(127, 0, 0, 2),
            b.sip_addr(),
            1,
            Duration::from_secs(2)
        ),
        1
    );
    let bans = http::get(b.admin(), "/bans", Duration::from_secs(3)).expect("bans of B");
    assert!(bans.body.contains("\"ip\":\"127.0.0.3\""), "{}", bans.body);
    assert_eq!(metric(a, "sbc_store_backend_up"), Some(1.0));
    // Flood tallies are kept locally and synced: a source sending request after request
    // costs a round trip when first seen, then shares the syncs, not one trip per request.
    let asked = || metric(a, "sbc_store_round_trips_total{op=\"flood_hit\"}").unwrap_or(0.0);
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
    let synced = metric(a, "sbc_store_round_trips_total{op=\"flood_sync\"}").unwrap_or(0.0);
    assert!(synced >= 1.0, "flood_sync round trips: {synced}");

    // Redis stops in the middle of a call run: every call still completes.
    let mut uac = Sipp::uac_from(
        &dir,
        "uac",
        &scenario("uac.xml"),
        Ipv4Addr::new(127, 0, 0, 2),
        free_port(),
        a.sip_addr(),
        SippTransport::Udp,
        &UacOptions {
            rate: 20,
            calls: 60,
            hold_ms: 100,
            timeout_s: 30,
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    redis.stop();
    assert_eq!(uac.wait(Duration::from_secs(40)), 0, "{:?}", uac.stats());
    assert_eq!(uac.stats().successful, 60, "{:?}", uac.stats());
    assert_eq!(metric(a, "sbc_store_backend_up"), Some(0.0));
    let fallbacks = metric(a, "sbc_store_fallbacks_total").unwrap_or(0.0);
    assert!(fallbacks > 0.0, "calls were decided locally: {fallbacks}");
    // Locally, A still answers (the ban of 127.0.0.3 lived in Redis and is gone with it).
    assert_eq!(
        burst(
            Ipv4Addr::new(127, 0, 0, 5),
            a.sip_addr(),
            1,
            Duration::from_secs(2)
        ),
        1
    );

    // Redis is back (empty: no persistence): both replicas return to it and share again.
    redis.restart();
    assert_eq!(
        burst(
            Ipv4Addr::new(127, 0, 0, 5),
            b.sip_addr(),
            1,
            Duration::from_secs(2)
        ),
        1
    );
    for (name, p) in [("A", a), ("B", b)] {
        let back = wait_for(Duration::from_secs(15), || {
            (metric(p, "sbc_store_backend_up") == Some(1.0)).then_some(())
        });
        assert!(back.is_some(), "replica {name} went back to Redis");
    }
    // Make sure B's connection is re-established before the check (its first call after
    // the restart may meet the old, dropped connection and answer locally).
    assert_eq!(
        burst(
            Ipv4Addr::new(127, 0, 0, 5),
            b.sip_addr(),
            1,
            Duration::from_secs(2)
        ),
        1
    );
    wait_for(Duration::from_secs(15), || {
        (metric(b, "sbc_store_backend_up") == Some(1.0)).then_some(())
    })
    .expect("B back on Redis");
    let answered = burst(
        Ipv4Addr::new(127, 0, 0, 4),
        a.sip_addr(),
        150,
        Duration::from_millis(1500),
    );
    assert!(
        (1..=100).contains(&answered),
        "{answered} of 150 answered by A"
    );
    assert_eq!(
        burst(
            Ipv4Addr::new(127, 0, 0, 4),
            b.sip_addr(),
            3,
            Duration::from_secs(1)
        ),
        0
    );
}
