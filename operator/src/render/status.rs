//! The replica counts of a cluster's workload and label selection, read back for status.

use super::*;

/// The object running a cluster's pods.
#[derive(Debug, Clone)]
pub enum Workload {
    /// `replicas` pods (or as many as the HPA says), spread by the scheduler.
    Deployment(Box<Deployment>),
    /// With `hostNetwork`: one pod on every node.
    DaemonSet(Box<DaemonSet>),
}

impl Workload {
    /// The pod template's spec.
    pub fn pod_spec(&self) -> Option<&PodSpec> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref()?.template.spec.as_ref(),
            Workload::DaemonSet(d) => d.spec.as_ref()?.template.spec.as_ref(),
        }
    }

    /// The labels the workload selects its pods by.
    pub fn selector(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref()?.selector.match_labels.as_ref(),
            Workload::DaemonSet(d) => d.spec.as_ref()?.selector.match_labels.as_ref(),
        }
    }

    /// The counts of the workload as the API server returned it (after apply).
    pub fn counts(&self) -> ReplicaCounts {
        match self {
            Workload::Deployment(d) => deployment_counts(d),
            Workload::DaemonSet(d) => daemon_set_counts(d),
        }
    }
}

/// Pods of a cluster's workload, for its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaCounts {
    /// Pods wanted: the Deployment's replicas, or the nodes the DaemonSet should run on.
    pub desired: i32,
    /// Pods there are (`status.replicas` / `status.currentNumberScheduled`).
    pub current: i32,
    /// Pods ready.
    pub ready: i32,
    /// Pods running the current template (`updatedReplicas` / `updatedNumberScheduled`).
    pub updated: i32,
    /// The workload controller has seen the current spec (`status.observedGeneration` is
    /// at least `metadata.generation`).
    pub observed: bool,
}

impl ReplicaCounts {
    /// The rollout is over and every wanted pod is ready (and at least one is wanted): the
    /// controller saw the current spec, every pod runs the current template, no old pod is
    /// left, and all are ready.
    pub fn all_ready(&self) -> bool {
        self.desired > 0
            && self.observed
            && self.updated >= self.desired
            && self.current <= self.desired
            && self.ready >= self.desired
    }
}

fn observed(generation: Option<i64>, seen: Option<i64>) -> bool {
    match generation {
        None => true,
        Some(g) => seen.is_some_and(|s| s >= g),
    }
}

/// Counts of a Deployment as the API server returned it.
pub fn deployment_counts(d: &Deployment) -> ReplicaCounts {
    let st = d.status.as_ref();
    ReplicaCounts {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        current: st.and_then(|s| s.replicas).unwrap_or(0),
        ready: st.and_then(|s| s.ready_replicas).unwrap_or(0),
        updated: st.and_then(|s| s.updated_replicas).unwrap_or(0),
        observed: observed(
            d.metadata.generation,
            st.and_then(|s| s.observed_generation),
        ),
    }
}

/// Counts of a DaemonSet as the API server returned it: one pod per eligible node.
pub fn daemon_set_counts(d: &DaemonSet) -> ReplicaCounts {
    let st = d.status.as_ref();
    ReplicaCounts {
        desired: st.map_or(0, |s| s.desired_number_scheduled),
        current: st.map_or(0, |s| s.current_number_scheduled),
        ready: st.map_or(0, |s| s.number_ready),
        updated: st.and_then(|s| s.updated_number_scheduled).unwrap_or(0),
        observed: observed(
            d.metadata.generation,
            st.and_then(|s| s.observed_generation),
        ),
    }
}

/// Whether `selector` (absent: match nothing) matches `labels`.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else {
        return false;
    };
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|h| values.contains(h)),
            "NotIn" => have.is_none_or(|h| !values.contains(h)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}
