//! `sbc_dialogs_active_cluster`: the answered calls of every replica, summed through the
//! store (one key per replica, with a TTL).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::metrics::ObserveMetrics;
use crate::store::{Store, StoreError};

/// Publishes this replica's answered calls under one key with a TTL and sums every replica's
/// key into `sbc_dialogs_active_cluster`, every 5 s. A replica that stops is gone from the sum
/// when its key expires (15 s). Through the store, so it works with one server, Sentinel or a
/// Cluster; while the store falls back to local state the gauge shows this replica alone.
pub(super) async fn cluster_dialogs(store: Arc<dyn Store>, node: String, m: ObserveMetrics) {
    let key = format!("{DIALOGS_PREFIX}{node}");
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let local = m.dialogs.get();
        let total = tokio::time::timeout(Duration::from_secs(2), sum(&*store, &key, local)).await;
        m.dialogs_cluster.set(match total {
            Ok(Ok(t)) => t,
            _ => local,
        });
    }
}

/// Every replica's key: `{prefix}dialogs:<node>`.
const DIALOGS_PREFIX: &str = "dialogs:";

/// Replicas summed at most (far more than a cluster runs).
const MAX_REPLICAS: usize = 10_000;

async fn sum(store: &dyn Store, key: &str, local: i64) -> Result<i64, StoreError> {
    store
        .set_ex(key, Bytes::from(local.to_string()), Duration::from_secs(15))
        .await?;
    let all = store.list_prefix(DIALOGS_PREFIX, MAX_REPLICAS).await?;
    Ok(all
        .iter()
        .filter_map(|(_, v)| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn every_replicas_key_is_summed_and_ours_is_written() {
        let store = MemoryStore::new(100);
        store
            .set_ex(
                "dialogs:b",
                Bytes::from_static(b"4"),
                Duration::from_secs(15),
            )
            .await
            .unwrap();
        assert_eq!(sum(&store, "dialogs:a", 3).await.unwrap(), 7);
        assert_eq!(
            store.get("dialogs:a").await.unwrap().as_deref(),
            Some(&b"3"[..])
        );
    }
}
