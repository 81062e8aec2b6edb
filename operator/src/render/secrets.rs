//! The Secrets a cluster mounts and the hashes that restart its pods when they change.

use super::*;

/// A hash of a Secret's data (keys and values, in key order): what decides whether the pods
/// mounting it restart.
pub fn secret_data_hash<'a>(data: impl IntoIterator<Item = (&'a String, &'a [u8])>) -> String {
    let mut text = Vec::new();
    for (k, v) in data {
        text.extend_from_slice(k.as_bytes());
        text.push(0);
        text.extend_from_slice(&(v.len() as u64).to_le_bytes());
        text.extend_from_slice(v);
    }
    fnv1a(&text)
}

/// Pod template annotation carrying a hash of the data of every Secret the sbc pods mount, so
/// a rotation rolls the pods: the sbc reads the Redis URL when it starts, and the nonce key
/// and required header values when it loads a configuration, and the kubelet refreshes a
/// mounted Secret only about once a minute, so a new pod is the one way the new value is
/// certain to be read.
pub const STARTUP_SECRETS: &str = "kubesbc.io/startup-secrets";

/// FNV-1a 64: a stable hash of the rendered config without pulling in a crypto crate.
pub fn fnv1a(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Where the Secret `name` is mounted in sbc pods.
pub fn secret_dir(name: &str) -> String {
    format!("{SECRETS_DIR}/{name}")
}

/// Checks that Secret `name` (in `obj`'s namespace) has `key`; returns the file the pods
/// read it from.
pub(super) fn secret_file<K: Resource<DynamicType = ()>>(
    obj: &K,
    lookups: &Lookups,
    field: &str,
    name: &str,
    key: &str,
) -> Result<String, RenderError> {
    let ns = obj.namespace().unwrap_or_default();
    let keys = lookups
        .secrets
        .get(&(ns.clone(), name.to_owned()))
        .ok_or_else(|| {
            err(
                obj,
                "SecretNotFound",
                format!("{field}.name"),
                format!("Secret {ns}/{name} does not exist"),
            )
        })?;
    if !keys.contains(key) {
        return Err(err(
            obj,
            "SecretKeyNotFound",
            format!("{field}.key"),
            format!("Secret {ns}/{name} has no key {key:?}"),
        ));
    }
    Ok(format!("{}/{key}", secret_dir(name)))
}

/// `redis://user:pass@host/0` -> `redis://host/0`: what may be shown in a ConfigMap.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::new();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// The Secrets (in the cluster's namespace) a cluster's rendered config refers to and its
/// pods mount: the Redis URL, the nonce key of `auth`, the topology keys and the
/// required-header values of the selected AccessLists. A change to any of them re-renders the cluster.
pub fn mounted_secrets<'a>(
    cluster: &SbcCluster,
    access_lists: impl IntoIterator<Item = &'a AccessList>,
) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = access_lists
        .into_iter()
        .flat_map(|a| a.spec.rules.iter())
        .flat_map(|r| r.required_headers.iter())
        .map(|h| h.secret_key_ref.name.clone())
        .collect();
    if let Some(r) = &cluster.spec.redis {
        out.insert(r.url_secret_ref.name.clone());
    }
    if let Some(a) = &cluster.spec.auth {
        out.insert(a.nonce_secret_ref.name.clone());
    }
    if let Some(k) = &cluster.spec.topology_key_secret_ref {
        out.insert(k.name.clone());
    }
    out
}

/// The hash for [`STARTUP_SECRETS`]: the data hashes of the Secrets `names` (in the
/// cluster's namespace); empty when the pods mount none.
pub fn startup_secrets_hash(
    cluster: &SbcCluster,
    names: &BTreeSet<String>,
    lookups: &Lookups,
) -> String {
    if names.is_empty() {
        return String::new();
    }
    let ns = cluster.namespace().unwrap_or_default();
    let mut text = String::new();
    for name in names {
        let hash = lookups
            .secret_hashes
            .get(&(ns.clone(), name.clone()))
            .map_or("", String::as_str);
        text.push_str(name);
        text.push('=');
        text.push_str(hash);
        text.push('\n');
    }
    fnv1a(text.as_bytes())
}
