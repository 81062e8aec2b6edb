//! Leader election with a `coordination.k8s.io` Lease, so two operator replicas never
//! reconcile at once. The decision is a pure function; the loop around it is thin.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

/// What to do with a Lease as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds a live lease: wait.
    Wait,
}

/// Decides from the Lease's holder, renew time and duration whether `me` may lead at `now`.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    if spec.holder_identity.as_deref() == Some(me) {
        return Decision::Renew;
    }
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return Decision::Acquire;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match &spec.renew_time {
        Some(MicroTime(t)) if *t + duration > now => Decision::Wait,
        _ => Decision::Acquire,
    }
}

/// A Lease held by this process.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    me: String,
    duration: Duration,
}

impl LeaderElector {
    /// An elector for Lease `name` in `namespace`, identified as `me`.
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, duration: Duration) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            me: me.to_owned(),
            duration,
        }
    }

    /// One round: returns whether we hold the lease afterwards. A conflict (another replica
    /// won the race) is "not leader", not an error.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref(), &self.me, now);
        if decision == Decision::Wait {
            return Ok(false);
        }
        let secs = i32::try_from(self.duration.as_secs()).unwrap_or(15);
        let mut lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": self.name},
            "spec": {"holderIdentity": self.me, "leaseDurationSeconds": secs},
        }))
        .map_err(kube::Error::SerdeError)?;
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(now));
            let prev = current.as_ref().and_then(|l| l.spec.as_ref());
            spec.acquire_time = match decision {
                Decision::Renew => prev.and_then(|p| p.acquire_time.clone()),
                _ => Some(MicroTime(now)),
            };
            spec.lease_transitions = match decision {
                Decision::Acquire => Some(prev.and_then(|p| p.lease_transitions).unwrap_or(0) + 1),
                _ => prev.and_then(|p| p.lease_transitions),
            };
        }
        let result = match current {
            None => self
                .api
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ()),
            Some(cur) => {
                // Replacing with the resourceVersion we read makes the write conditional.
                lease.metadata.resource_version = cur.metadata.resource_version;
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Blocks until this process leads.
    pub async fn acquire(&self) {
        loop {
            match self.try_lead().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews until the lease is lost (returns then, so the caller can stop reconciling).
    pub async fn keep(&self) {
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_lead().await {
                Ok(true) => failures = 0,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal");
                    failures += 1;
                    // Two failed renewals in a row leave too little of the lease: step down.
                    if failures >= 2 {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: Timestamp, secs: i32) -> Lease {
        let mut l: Lease = serde_json::from_value(json!({
            "metadata": {"name": "kubesbc-operator"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": secs},
        }))
        .expect("lease");
        if let Some(s) = l.spec.as_mut() {
            s.renew_time = Some(MicroTime(renewed));
        }
        l
    }

    #[test]
    fn lease_decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&lease("a", now, 15)), "a", now),
            Decision::Renew
        );
        assert_eq!(decide(Some(&lease("b", now, 15)), "a", now), Decision::Wait);
        let old = now - SignedDuration::from_secs(16);
        assert_eq!(
            decide(Some(&lease("b", old, 15)), "a", now),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&lease("", now, 15)), "a", now),
            Decision::Acquire
        );
    }
}
