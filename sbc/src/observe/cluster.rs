//! `sbc_dialogs_active_cluster`: the answered calls of every replica, summed through the
//! store (one key per replica, with a TTL).

use std::time::Duration;

use super::metrics::ObserveMetrics;

/// Publishes this replica's answered calls under one key with a TTL and sums every replica's
/// key into `sbc_dialogs_active_cluster`, every 5 s. A replica that stops is gone from the sum
/// when its key expires (15 s). Without Redis the gauge shows this replica alone.
pub(super) async fn cluster_dialogs(
    client: ::redis::Client,
    prefix: String,
    node: String,
    m: ObserveMetrics,
) {
    let key = format!("{prefix}{node}");
    let mut conn: Option<::redis::aio::MultiplexedConnection> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let local = m.dialogs.get();
        if conn.is_none() {
            conn = tokio::time::timeout(
                Duration::from_secs(2),
                client.get_multiplexed_async_connection(),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else {
            m.dialogs_cluster.set(local);
            continue;
        };
        let sum =
            tokio::time::timeout(Duration::from_secs(2), sum_dialogs(c, &key, &prefix, local))
                .await;
        match sum {
            Ok(Ok(total)) => m.dialogs_cluster.set(total),
            _ => {
                conn = None;
                m.dialogs_cluster.set(local);
            }
        }
    }
}

/// Keeps `sbc_dialogs_cluster` at this replica's count (no store it can sum on).
pub(super) async fn local_dialogs(m: ObserveMetrics) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        m.dialogs_cluster.set(m.dialogs.get());
    }
}

async fn sum_dialogs(
    c: &mut ::redis::aio::MultiplexedConnection,
    key: &str,
    prefix: &str,
    local: i64,
) -> ::redis::RedisResult<i64> {
    let () = ::redis::cmd("SET")
        .arg(key)
        .arg(local)
        .arg("EX")
        .arg(15)
        .query_async(c)
        .await?;
    let mut cursor: u64 = 0;
    let mut total = 0i64;
    // Bounded: 64 SCAN pages of 1000 keys, far more replicas than a cluster runs.
    for _ in 0..64 {
        let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        if !keys.is_empty() {
            let vals: Vec<Option<i64>> = ::redis::cmd("MGET").arg(&keys).query_async(c).await?;
            total += vals.into_iter().flatten().sum::<i64>();
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(total)
}
