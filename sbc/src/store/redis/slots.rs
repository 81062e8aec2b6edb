//! Splitting a multi-key call by Redis Cluster slot.
//!
//! A script runs on one node and may only touch keys of one slot. The stages hash-tag every key
//! of one decision alike (see [`crate::store::keys`]), so a decision is one slot and one round
//! trip; calls that merge several decisions (coalesced batches, flood syncs, releases) are
//! split here into one script per slot, sent at once, and their answers put back in order.

use std::future::Future;

use ::redis::cluster_routing::Slot;

use crate::store::StoreError;

/// The slot of `key` (its hash tag's, when it has one).
pub(crate) fn slot(key: &str) -> Slot {
    Slot::for_key(key)
}

/// Indices of `keys` grouped by slot, groups in order of first appearance.
pub(super) fn groups<S: PartialEq>(keys: impl Iterator<Item = S>) -> Vec<Vec<usize>> {
    let mut out: Vec<(S, Vec<usize>)> = Vec::new();
    for (i, s) in keys.enumerate() {
        match out.iter_mut().find(|(g, _)| *g == s) {
            Some((_, v)) => v.push(i),
            None => out.push((s, vec![i])),
        }
    }
    out.into_iter().map(|(_, v)| v).collect()
}

/// Runs `run` on the items of each slot concurrently (each answering one result per item)
/// and returns the answers in the items' order. Any slot that does not answer fails the whole
/// call, so the caller falls back for all of it rather than deciding on half the counters.
pub(super) async fn per_slot<T, R, F, Fut>(
    items: &[T],
    slot_of: impl Fn(&T) -> Slot,
    run: F,
) -> Result<Vec<R>, StoreError>
where
    T: Clone,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<R>, StoreError>>,
{
    let groups = groups(items.iter().map(slot_of));
    let answers = futures::future::join_all(groups.iter().map(|g| {
        let part: Vec<T> = g.iter().filter_map(|&i| items.get(i).cloned()).collect();
        run(part)
    }))
    .await;
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (g, a) in groups.iter().zip(answers) {
        let a = a?;
        if a.len() != g.len() {
            return Err(StoreError::Rejected(format!(
                "{} answers for {} operations",
                a.len(),
                g.len()
            )));
        }
        for (&i, r) in g.iter().zip(a) {
            if let Some(slot) = out.get_mut(i) {
                *slot = Some(r);
            }
        }
    }
    out.into_iter()
        .map(|r| r.ok_or_else(|| StoreError::Rejected("an operation got no answer".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_crc16_and_hash_tags() {
        // Values from the Redis Cluster specification's examples and `CLUSTER KEYSLOT`.
        assert_eq!(Some(slot("123456789")), Slot::new(12739));
        assert_eq!(Some(slot("foo")), Slot::new(12182));
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot("a{}b"), slot("{}"));
    }

    #[test]
    fn groups_keep_order_of_first_appearance() {
        assert_eq!(
            groups([5u16, 7, 5, 9, 7].into_iter()),
            vec![vec![0, 2], vec![1, 4], vec![3]]
        );
    }

    #[tokio::test]
    async fn answers_come_back_in_order_and_one_failed_slot_fails_all() {
        let items = ["{a}1", "{b}1", "{a}2", "{c}1"];
        let out = per_slot(
            &items,
            |k| slot(k),
            |part: Vec<&str>| async move { Ok(part.into_iter().map(str::to_owned).collect()) },
        )
        .await
        .unwrap();
        assert_eq!(out, items);
        let r = per_slot(
            &items,
            |k| slot(k),
            |part: Vec<&str>| async move {
                if part.contains(&"{b}1") {
                    Err(StoreError::Unavailable("node down".into()))
                } else {
                    Ok(part.into_iter().map(str::to_owned).collect())
                }
            },
        )
        .await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }

    /// Every key one decision (one script) touches is on one slot, the store's prefix put in
    /// front as the Redis store does; different sources, users and throttles spread.
    #[test]
    fn every_key_of_a_decision_is_on_one_slot() {
        use crate::store::keys::{self, IpKey};
        let p = |k: &str| slot(&format!("kubesbc:{k}"));
        let one = |ks: &[String]| {
            let s: Vec<Slot> = ks.iter().map(|k| p(k)).collect();
            assert!(s.windows(2).all(|w| w[0] == w[1]), "{ks:?} on {s:?}");
            s[0]
        };
        for ip in ["192.0.2.7", "2001:db8::1"] {
            let ip = ip.parse().unwrap();
            let k = |kind| IpKey::new(kind, ip).as_str().to_owned();
            // guard flood, REGISTER flood without auth, auth failures
            one(&[k(keys::FLOOD_PREFIX), k(keys::BAN_PREFIX)]);
            one(&[k(keys::REGFLOOD_SRC_PREFIX), k(keys::SRCBLOCK_PREFIX)]);
            let text = ip.to_string();
            one(&[
                keys::join("", keys::AUTH_FAIL_PREFIX, &text),
                keys::join("", keys::SRCBLOCK_PREFIX, &text),
                k(keys::SRCBLOCK_PREFIX),
            ]);
        }
        // a user's REGISTER flood, spelled by auth and by the guard
        one(&[
            keys::join("", keys::REGFLOOD_PREFIX, "alice"),
            keys::join("", keys::REGBLOCK_PREFIX, "alice"),
            keys::user_block("alice"),
        ]);
        // a throttle's decision for two tenants and the release of a call (the script
        // builds the counter key from the prefix, the tenant and the bucket)
        let t = one(&[
            keys::throttle_window("", "ns/t", "rps", "t=acme", 41),
            keys::throttle_window("", "ns/t", "rps", "t=acme", 40),
            keys::throttle_window("", "ns/t", "cps", "t=acme", 1_796_338_530),
            keys::throttle_window("", "ns/t", "cc", "none", 7),
            keys::throttle_window("", "ns/t", "cc", "t=globex", 6),
            keys::throttle_dialog("", "ns/t", b"a{b}c@host"),
            format!("{}t=acme:7", keys::throttle_calls("", "ns/t")),
        ]);
        assert_ne!(t, p(&keys::throttle_dialog("", "ns/u", b"x")));
        assert_ne!(
            p(IpKey::new(keys::BAN_PREFIX, "192.0.2.7".parse().unwrap()).as_str()),
            p(IpKey::new(keys::BAN_PREFIX, "192.0.2.8".parse().unwrap()).as_str())
        );
    }
}
