//! The store contract tests of `store/memory`.

use super::*;

/// A batch answers each operation on its own, in order; an error in one does not stop the
/// others; every key it writes gets its TTL; an empty batch answers nothing.
pub(in crate::store) async fn batch_runs_operations_in_order_each_on_its_own(s: &dyn Store) {
    let ttl = Duration::from_secs(10);
    s.set_ex("b:text", Bytes::from_static(b"abc"), ttl)
        .await
        .unwrap();
    let ops = [
        Op::IncrWindow("b:w".into(), ttl),
        Op::IncrWindow("b:w".into(), ttl),
        Op::IncrBy("b:text".into(), 1, ttl),
        Op::IncrBy("b:c".into(), 5, ttl),
        Op::SetEx("b:d".into(), Bytes::from_static(b"7|t=a"), ttl),
        Op::Get("b:d".into()),
        Op::Get("b:absent".into()),
        Op::Del("b:d".into()),
        Op::Del("b:d".into()),
    ];
    let r = s.batch(&ops).await.unwrap();
    assert_eq!(r.len(), ops.len());
    assert_eq!(r[0].as_ref().unwrap(), &OpResult::Count(1));
    assert_eq!(r[1].as_ref().unwrap(), &OpResult::Count(2));
    assert!(matches!(r[2], Err(StoreError::NotAnInteger(_))), "{r:?}");
    assert_eq!(r[3].as_ref().unwrap(), &OpResult::Count(5));
    assert_eq!(r[4].as_ref().unwrap(), &OpResult::Done);
    assert_eq!(
        r[5].as_ref().unwrap(),
        &OpResult::Value(Some(Bytes::from_static(b"7|t=a")))
    );
    assert_eq!(r[6].as_ref().unwrap(), &OpResult::Value(None));
    assert_eq!(r[7].as_ref().unwrap(), &OpResult::Deleted(true));
    assert_eq!(r[8].as_ref().unwrap(), &OpResult::Deleted(false));
    // The window counter got its TTL, the others theirs.
    let listed = s.list_prefix_ttl("b:", 10).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed.iter().all(|l| l.ttl > Duration::from_secs(5)),
        "{listed:?}"
    );
    assert!(s.batch(&[]).await.unwrap().is_empty());
}

/// Releasing a dialog decrements its live bucket once (a second BYE releases nothing) and
/// leaves a bucket past its life alone; the dialog's key is gone either way.
pub(in crate::store) async fn release_dialog_decrements_its_live_bucket_once(s: &dyn Store) {
    let ttl = Duration::from_secs(100);
    s.incr_by("cc:t=a:7", 2, ttl).await.unwrap();
    s.set_ex("dlg:x", Bytes::from_static(b"7|t=a"), ttl)
        .await
        .unwrap();
    let rel = |key| DialogRelease {
        dialog_key: key,
        counter_prefix: "cc:",
        bucket_ms: 1000,
        timeout_ms: 4000,
        now_ms: 9000,
    };
    assert!(s.release_dialog(rel("dlg:x")).await.unwrap());
    assert_eq!(s.get("cc:t=a:7").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(s.get("dlg:x").await.unwrap(), None);
    // The second BYE finds no dialog and releases nothing.
    assert!(!s.release_dialog(rel("dlg:x")).await.unwrap());
    assert_eq!(s.get("cc:t=a:7").await.unwrap().as_deref(), Some(&b"1"[..]));
    // A bucket past its life (ended at 8 s, lived 4 s more) is left alone.
    s.set_ex("dlg:y", Bytes::from_static(b"7|t=a"), ttl)
        .await
        .unwrap();
    let mut late = rel("dlg:y");
    late.now_ms = 12_000;
    assert!(s.release_dialog(late).await.unwrap());
    assert_eq!(s.get("cc:t=a:7").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(s.get("dlg:y").await.unwrap(), None);
}
