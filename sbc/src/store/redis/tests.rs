//! Tests of `store/redis`.

use super::super::memory::contract;
use super::*;

#[tokio::test]
async fn pattern_escapes_glob_characters() {
    let r = Registry::new();
    let s = RedisStore::new(
        "redis://127.0.0.1:1/0",
        "a*b:",
        Duration::from_millis(50),
        &r,
    )
    .unwrap();
    assert_eq!(s.pattern("ban:"), "a\\*b:ban:*");
    assert_eq!(s.key("ban:1"), "a*b:ban:1");
}

/// A redis-server on a free loopback port, killed on drop; None (with a loud line) when
/// the binary is missing outside CI.
struct Server(std::process::Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts redis-server on `port` without persistence, with `extra` arguments. None (the test
/// skips) when it is not installed, which fails under CI.
pub(super) fn spawn_redis(port: u16, extra: &[&std::ffi::OsStr]) -> Option<std::process::Child> {
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn();
    match child {
        Ok(c) => Some(c),
        Err(e) => {
            assert!(
                std::env::var("CI").is_err(),
                "redis-server is required under CI: {e}"
            );
            eprintln!("SKIP: redis-server not available ({e})");
            None
        }
    }
}

fn redis_server() -> Option<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let server = Server(spawn_redis(port, &[])?, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(server);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not listen on {port}");
}

/// Asserts the round trips counted per operation (`sbc_store_round_trips_total`).
fn assert_round_trips(r: &Registry, expected: &[(&str, u64)]) {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&r.gather())
        .unwrap();
    for (op, n) in expected {
        let sample = format!("sbc_store_round_trips_total{{op=\"{op}\"}} {n}");
        assert!(text.contains(&sample), "no {sample} in:\n{text}");
    }
}

#[tokio::test]
async fn every_operation_against_a_real_redis() {
    let Some(srv) = redis_server() else { return };
    let r = Registry::new();
    let url = format!("redis://127.0.0.1:{}/3", srv.1);
    let s = RedisStore::new(&url, "t1:", Duration::from_millis(500), &r).unwrap();
    let w = Duration::from_secs(10);
    assert_eq!(s.incr_window("win", w).await.unwrap(), 1);
    assert_eq!(s.incr_window("win", w).await.unwrap(), 2);
    assert_eq!(s.get("win").await.unwrap().as_deref(), Some(&b"2"[..]));
    s.set_ex("ban:10.0.0.1", Bytes::from_static(b"v"), w)
        .await
        .unwrap();
    assert_eq!(
        s.get("ban:10.0.0.1").await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(s.incr_by("calls", 5, w).await.unwrap(), 5);
    assert_eq!(s.incr_by("calls", -2, w).await.unwrap(), 3);
    assert!(matches!(
        s.incr_by("ban:10.0.0.1", 1, w).await,
        Err(StoreError::NotAnInteger(_))
    ));
    s.hash_set(
        "subscriber:alice",
        vec![("ha1".into(), Bytes::from_static(b"abc"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.hash_get_all("subscriber:alice").await.unwrap(),
        vec![("ha1".to_string(), Bytes::from_static(b"abc"))]
    );
    let hit = || FloodHit {
        counter_key: "flood:10.0.0.2",
        ban_key: "ban:10.0.0.2",
        limit: 2,
        window: w,
        ban_ttl: Duration::from_secs(30),
        ban_value: Bytes::from_static(b"flood"),
        hits: 1,
    };
    assert_eq!(
        s.flood_hit(hit()).await.unwrap(),
        FloodOutcome::Allowed { count: 1 }
    );
    assert_eq!(
        s.flood_hit(hit()).await.unwrap(),
        FloodOutcome::Allowed { count: 2 }
    );
    assert!(matches!(
        s.flood_hit(hit()).await.unwrap(),
        FloodOutcome::Banned { new: true, .. }
    ));
    assert!(matches!(
        s.flood_hit(hit()).await.unwrap(),
        FloodOutcome::Banned { new: false, remaining } if remaining > Duration::from_secs(25)
    ));
    let bans = s.list_prefix_ttl("ban:", 10).await.unwrap();
    let keys: Vec<&str> = bans.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["ban:10.0.0.1", "ban:10.0.0.2"]);
    assert_eq!(bans[1].value, Bytes::from_static(b"flood"));
    assert!(bans[1].ttl > Duration::from_secs(25));
    assert_eq!(s.list_prefix("ban:", 1).await.unwrap().len(), 1);
    assert!(s.del("ban:10.0.0.2").await.unwrap());
    assert!(!s.del("ban:10.0.0.2").await.unwrap());
    s.ping().await.unwrap();

    // A batch: one round trip, each operation answered on its own, in order.
    contract::batch_runs_operations_in_order_each_on_its_own(&s).await;
    // Releasing a dialog: its live bucket is decremented once, by one caller.
    contract::release_dialog_decrements_its_live_bucket_once(&s).await;

    // Another prefix sees none of it.
    let other = RedisStore::new(&url, "t2:", Duration::from_millis(500), &r).unwrap();
    assert!(other.list_prefix_ttl("", 10).await.unwrap().is_empty());
    // The empty batch sent nothing: one batch round trip.
    assert_round_trips(&r, &[("flood_hit", 4), ("batch", 1), ("release_dialog", 3)]);
}

#[tokio::test]
async fn credentials_unprefixed_and_nonce_counts_in_one_round_trip() {
    let Some(srv) = redis_server() else { return };
    let r = Registry::new();
    let url = format!("redis://127.0.0.1:{}/4", srv.1);
    let s = RedisStore::new(&url, "t2:", Duration::from_millis(500), &r).unwrap();
    let raw = RedisStore::new(&url, "", Duration::from_millis(500), &r).unwrap();
    crate::store::auth_ops::credentials_and_nonce_counts(&s, &raw).await;
    // The counter is under the cluster's prefix and expires.
    assert!(raw.get("nc:x").await.unwrap().is_none());
    let listed = raw.list_prefix_ttl("t2:nc:x", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].ttl > Duration::ZERO && listed[0].ttl <= Duration::from_secs(60));
}

#[tokio::test]
async fn bad_urls_are_refused() {
    let r = Registry::new();
    assert!(RedisStore::new("http://x", "", Duration::from_millis(50), &r).is_err());
}

#[tokio::test]
async fn unreachable_redis_is_unavailable() {
    let r = Registry::new();
    // Port 1 on loopback: nothing listens there, the connection is refused at once.
    let s = RedisStore::new("redis://127.0.0.1:1/0", "", Duration::from_millis(50), &r).unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), s.get("k"))
        .await
        .expect("bounded by the connection timeout")
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert_round_trips(&r, &[("get", 1)]);
}
