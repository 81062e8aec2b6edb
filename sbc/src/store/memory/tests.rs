//! Tests of `store/memory`.

use super::*;
use std::sync::Arc;

fn store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new(1000))
}

#[tokio::test(start_paused = true)]
async fn fixed_window_counts_then_resets() {
    let s = store();
    let w = Duration::from_secs(10);
    assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 1);
    assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 2);
    assert_eq!(s.incr_window("pike:10.0.0.2", w).await.unwrap(), 1);
    tokio::time::advance(Duration::from_secs(9)).await;
    // The window does not slide: a hit near the end does not extend it.
    assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 3);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(s.incr_window("pike:10.0.0.1", w).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn set_get_expire_and_delete() {
    let s = store();
    s.set_ex(
        "ban:10.0.0.9",
        Bytes::from_static(b"flood"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get("ban:10.0.0.9").await.unwrap(),
        Some(Bytes::from_static(b"flood"))
    );
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(s.get("ban:10.0.0.9").await.unwrap().is_some());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(s.get("ban:10.0.0.9").await.unwrap(), None);

    s.set_ex("k", Bytes::from_static(b"v"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(s.del("k").await.unwrap());
    assert!(!s.del("k").await.unwrap());
    assert_eq!(s.get("k").await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn incr_by_counts_concurrent_calls_and_refreshes_ttl() {
    let s = store();
    let ttl = Duration::from_secs(30);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.incr_by("calls:tenant-a", 1, ttl).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.incr_by("calls:tenant-a", -1, ttl).await.unwrap(), 49);
    assert_eq!(
        s.get("calls:tenant-a").await.unwrap(),
        Some(Bytes::from_static(b"49"))
    );
    tokio::time::advance(Duration::from_secs(20)).await;
    s.incr_by("calls:tenant-a", 0, ttl).await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(s.incr_by("calls:tenant-a", 0, ttl).await.unwrap(), 49);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(s.incr_by("calls:tenant-a", -1, ttl).await.unwrap(), -1);
}

#[tokio::test(start_paused = true)]
async fn counters_refuse_non_integers_and_overflow() {
    let s = store();
    s.set_ex("text", Bytes::from_static(b"abc"), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(
        s.incr_by("text", 1, Duration::from_secs(5)).await,
        Err(StoreError::NotAnInteger(_))
    ));
    s.set_ex("num", Bytes::from_static(b"41"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        s.incr_by("num", 1, Duration::from_secs(5)).await.unwrap(),
        42
    );
    s.incr_by("big", i64::MAX, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(matches!(
        s.incr_by("big", 1, Duration::from_secs(5)).await,
        Err(StoreError::Overflow(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn list_prefix_is_sorted_limited_and_skips_expired() {
    let s = store();
    for (k, ttl) in [("ban:b", 60), ("ban:a", 60), ("ban:c", 1), ("other", 60)] {
        s.set_ex(k, Bytes::from(k), Duration::from_secs(ttl))
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    let all = s.list_prefix("ban:", 100).await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["ban:a", "ban:b"]);
    assert_eq!(all[0].1, Bytes::from_static(b"ban:a"));
    assert_eq!(s.list_prefix("ban:", 1).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn capped_and_expired_keys_are_reclaimed() {
    let m = Arc::new(MemoryStore::new(SHARDS));
    let s: Arc<dyn Store> = m.clone();
    let mut refused = 0;
    for i in 0..200 {
        if let Err(e) = s
            .set_ex(&format!("k{i}"), Bytes::new(), Duration::from_secs(5))
            .await
        {
            assert!(matches!(e, StoreError::Full(_)));
            refused += 1;
        }
    }
    assert!(refused > 0, "the cap refuses new keys");
    assert!(m.len() <= SHARDS);
    // Existing keys can still be updated when full.
    let kept = s.list_prefix("k", 1).await.unwrap();
    let (key, _) = &kept[0];
    s.set_ex(key, Bytes::from_static(b"x"), Duration::from_secs(5))
        .await
        .unwrap();
    // Once the keys expire their room is reused.
    tokio::time::advance(Duration::from_secs(6)).await;
    assert!(m.is_empty());
    for i in 0..200 {
        let _ = s
            .set_ex(&format!("n{i}"), Bytes::new(), Duration::from_secs(5))
            .await;
    }
    assert_eq!(s.list_prefix("k", 100).await.unwrap().len(), 0);
    assert!(!m.is_empty());
}

#[tokio::test(start_paused = true)]
async fn hashes_merge_fields_and_read_back() {
    let s = store();
    assert!(s.hash_get_all("subscriber:alice").await.unwrap().is_empty());
    s.hash_set(
        "subscriber:alice",
        vec![
            ("username".into(), Bytes::from("alice")),
            ("ha1".into(), Bytes::from("x")),
        ],
        None,
    )
    .await
    .unwrap();
    s.hash_set(
        "subscriber:alice",
        vec![("ha1".into(), Bytes::from("y"))],
        None,
    )
    .await
    .unwrap();
    let got = s.hash_get_all("subscriber:alice").await.unwrap();
    assert_eq!(
        got,
        vec![
            ("username".into(), Bytes::from("alice")),
            ("ha1".into(), Bytes::from("y"))
        ]
    );
    assert!(
        s.incr_by("subscriber:alice", 1, Duration::from_secs(1))
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn flood_hit_counts_bans_and_expires() {
    let s = store();
    let hit = || FloodHit {
        counter_key: "flood:10.0.0.1",
        ban_key: "ban:10.0.0.1",
        limit: 3,
        window: Duration::from_secs(2),
        ban_ttl: Duration::from_secs(60),
        ban_value: Bytes::from_static(b"x"),
        hits: 1,
    };
    for n in 1..=3 {
        assert_eq!(
            s.flood_hit(hit()).await.unwrap(),
            FloodOutcome::Allowed { count: n }
        );
    }
    assert_eq!(
        s.flood_hit(hit()).await.unwrap(),
        FloodOutcome::Banned {
            remaining: Duration::from_secs(60),
            new: true
        }
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        s.flood_hit(hit()).await.unwrap(),
        FloodOutcome::Banned {
            remaining: Duration::from_secs(50),
            new: false
        }
    );
    let listed = s.list_prefix_ttl("ban:", 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ttl, Duration::from_secs(50));
    tokio::time::advance(Duration::from_secs(50)).await;
    assert_eq!(
        s.flood_hit(hit()).await.unwrap(),
        FloodOutcome::Allowed { count: 1 }
    );
}

#[tokio::test(start_paused = true)]
async fn batch_runs_operations_in_order_each_on_its_own() {
    contract::batch_runs_operations_in_order_each_on_its_own(store().as_ref()).await;
}

#[tokio::test(start_paused = true)]
async fn credentials_and_nonce_counts() {
    let s = store();
    crate::store::auth_ops::credentials_and_nonce_counts(s.as_ref(), s.as_ref()).await;
    // The maximum expires with its TTL, then any count starts again.
    tokio::time::advance(Duration::from_secs(61)).await;
    let r = s
        .batch(&[Op::MaxAdvance("nc:x".into(), 1, Duration::from_secs(60))])
        .await
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap(), &OpResult::Count(0));
}

#[tokio::test(start_paused = true)]
async fn release_dialog_decrements_its_live_bucket_once() {
    contract::release_dialog_decrements_its_live_bucket_once(store().as_ref()).await;
}

#[tokio::test(start_paused = true)]
async fn huge_ttl_does_not_panic() {
    let s = store();
    s.set_ex("forever", Bytes::from_static(b"1"), Duration::MAX)
        .await
        .unwrap();
    assert_eq!(s.incr_by("forever", 1, Duration::MAX).await.unwrap(), 2);
    assert_eq!(s.incr_window("w", Duration::MAX).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn sweep_removes_expired_keys_never_touched_again() {
    let m = MemoryStore::new(1000);
    for i in 0..100 {
        m.set_ex(&format!("old{i}"), Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap();
    }
    tokio::time::advance(SWEEP_INTERVAL + Duration::from_secs(1)).await;
    // Touch every shard once with other keys: each sweeps its expired entries.
    for i in 0..200 {
        m.get(&format!("probe{i}")).await.unwrap();
    }
    let stored: usize = m.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
    assert_eq!(stored, 0);
}
