//! The `store` section of `sbc.yaml`: where shared state lives, on one Redis server, behind
//! Redis Sentinel, or on a Redis Cluster.
//!
//! Every mode reads its addresses and credentials from the one `url` (or `urlFile`), so a
//! password only ever sits in the file the operator mounts from a Secret. Sentinel and cluster
//! URLs list several hosts, comma-separated: `redis://:pw@s1:26379,s2:26379,s3:26379/0`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Where shared state lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreConfig {
    /// `redis://[[user]:password@]host:port[,host:port...]/db` or `rediss://...`. Mode
    /// `single`: one server. `sentinel`: the sentinels. `cluster`: seed nodes of the cluster
    /// (database 0 only).
    pub url: String,
    /// A file holding the full URL (password included), read instead of `url` when set; the
    /// operator mounts it from a Secret so the password never sits in the ConfigMap, and
    /// writes `url` without its password, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<String>,
    /// How the URL's hosts are used. Default `single`.
    #[serde(default, skip_serializing_if = "StoreMode::is_single")]
    pub mode: StoreMode,
    /// Sentinel settings; required with `mode: sentinel`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelConfig>,
    /// Prefix of every key, one per SbcCluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Milliseconds to wait for the store before falling back to local state.
    #[serde(default = "default_store_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_store_timeout_ms() -> u64 {
    100
}

/// How the store's URL is used: `single` (one server), `sentinel` (the URL's hosts are Redis
/// Sentinels naming the master) or `cluster` (seed nodes of a Redis Cluster).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreMode {
    /// One Redis server (the URL has one host).
    #[default]
    Single,
    /// Redis Sentinel: the URL's hosts are sentinels; they name the master of
    /// `sentinel.masterName`, and a failover moves the store to the new master.
    Sentinel,
    /// Redis Cluster: the URL's hosts are seed nodes; the client learns the rest.
    Cluster,
}

impl StoreMode {
    fn is_single(&self) -> bool {
        *self == StoreMode::Single
    }
}

/// Redis Sentinel settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name in the sentinels' configuration (`sentinel monitor <name> ...`).
    #[schemars(length(min = 1, max = 256))]
    pub master_name: String,
    /// Whether the sentinels too need the URL's user and password (`requirepass` in
    /// sentinel.conf). Default false: only the master and replicas get them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auth_sentinels: bool,
}

impl StoreConfig {
    /// Checks the URL against the mode and the mode's settings; `path` is the section's.
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let url = split_url(&self.url).map_err(|e| ConfigError::field(format!("{path}.url"), e))?;
        self.check_url(path, "url", &url)?;
        match (self.mode, &self.sentinel) {
            (StoreMode::Sentinel, None) => Err(ConfigError::field(
                format!("{path}.sentinel"),
                "mode sentinel needs sentinel.masterName",
            )),
            (StoreMode::Sentinel, Some(s)) if s.master_name.trim().is_empty() => Err(
                ConfigError::field(format!("{path}.sentinel.masterName"), "must not be empty"),
            ),
            (StoreMode::Single | StoreMode::Cluster, Some(_)) => Err(ConfigError::field(
                format!("{path}.sentinel"),
                "only with mode: sentinel",
            )),
            _ => Ok(()),
        }?;
        if let Some(p) = &self.key_prefix
            && p.contains(['{', '}'])
        {
            // The stages put hash tags in their keys; a brace in the prefix would become the
            // tag of every key and put the whole key space on one cluster slot.
            return Err(ConfigError::field(
                format!("{path}.keyPrefix"),
                format!("{p:?}: braces are reserved for hash tags"),
            ));
        }
        Ok(())
    }

    /// Checks a URL (`url`, or the content of `urlFile` at startup) against the mode.
    pub fn check_url(&self, path: &str, field: &str, url: &[String]) -> Result<(), ConfigError> {
        let at = || format!("{path}.{field}");
        if self.mode == StoreMode::Single && url.len() > 1 {
            return Err(ConfigError::field(
                at(),
                format!(
                    "{} hosts: several hosts need mode sentinel or cluster",
                    url.len()
                ),
            ));
        }
        if self.mode == StoreMode::Cluster
            && let Some(db) = url.first().and_then(|u| db_of(u))
            && db != "0"
        {
            return Err(ConfigError::field(
                at(),
                format!("database {db}: a Redis Cluster has database 0 only"),
            ));
        }
        Ok(())
    }
}

/// The database part of a one-host URL (`/3` of `redis://h:1/3`), if any.
fn db_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    let db = path.trim_start_matches('/');
    let db = db.split(['?', '#']).next().unwrap_or("");
    (!db.is_empty()).then_some(db)
}

/// Splits a store URL listing several hosts (`scheme://[userinfo@]h1:p1,h2:p2[/db][?q]`) into
/// one URL per host, each with the same scheme, user info, database and query. Errors are
/// for the user and never show the password.
pub fn split_url(url: &str) -> Result<Vec<String>, String> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not a redis:// or rediss:// URL".to_owned());
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "scheme {scheme:?}: not a redis:// or rediss:// URL"
        ));
    }
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut out = Vec::new();
    for (i, host) in hosts.split(',').enumerate() {
        let host = host.trim();
        if host.is_empty() {
            return Err(format!("host {} is empty", i + 1));
        }
        // An IPv6 literal keeps its brackets; the port is whatever follows the last colon.
        let port = match host.rfind(']') {
            Some(b) => host[b + 1..].strip_prefix(':'),
            None => host.rsplit_once(':').map(|(_, p)| p),
        };
        if let Some(p) = port
            && p.parse::<u16>().is_err()
        {
            return Err(format!(
                "host {} ({host}): port {p:?} is not a number",
                i + 1
            ));
        }
        let mut u = String::with_capacity(url.len());
        u.push_str(scheme);
        u.push_str("://");
        if let Some(info) = userinfo {
            u.push_str(info);
            u.push('@');
        }
        u.push_str(host);
        u.push_str(tail);
        out.push(u);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> Result<StoreConfig, String> {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        let s: StoreConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        s.validate("store").map_err(|e| e.to_string())?;
        Ok(s)
    }

    #[test]
    fn splits_hosts_keeping_credentials_database_and_query() {
        assert_eq!(
            split_url("redis://:pw@a:1,b:2,[::1]:3/2?protocol=resp3").unwrap(),
            [
                "redis://:pw@a:1/2?protocol=resp3",
                "redis://:pw@b:2/2?protocol=resp3",
                "redis://:pw@[::1]:3/2?protocol=resp3",
            ]
        );
        assert_eq!(split_url("rediss://h").unwrap(), ["rediss://h"]);
        assert!(split_url("http://h").unwrap_err().contains("redis://"));
        assert!(
            split_url("redis://a:1,,b:2")
                .unwrap_err()
                .contains("host 2")
        );
        let e = split_url("redis://:secret@a:x").unwrap_err();
        assert!(e.contains("port \"x\"") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn modes_and_their_fields_are_checked() {
        let s = store("url: redis://a:1/0\n").unwrap();
        assert_eq!(s.mode, StoreMode::Single);
        let e = store("url: redis://a:1,b:2/0\n").unwrap_err();
        assert!(e.starts_with("store.url: 2 hosts"), "{e}");
        let s = store("url: redis://a:1,b:2\nmode: cluster\n").unwrap();
        assert_eq!(s.mode, StoreMode::Cluster);
        let e = store("url: redis://a:1,b:2/3\nmode: cluster\n").unwrap_err();
        assert!(e.starts_with("store.url: database 3"), "{e}");
        let e = store("url: redis://s:26379\nmode: sentinel\n").unwrap_err();
        assert!(e.starts_with("store.sentinel:"), "{e}");
        let e = store("url: redis://s:26379\nmode: sentinel\nsentinel: {masterName: ' '}\n")
            .unwrap_err();
        assert!(e.starts_with("store.sentinel.masterName:"), "{e}");
        let s =
            store("url: redis://s:1,t:2/1\nmode: sentinel\nsentinel: {masterName: m}\n").unwrap();
        assert_eq!(s.sentinel.unwrap().master_name, "m");
        let e = store("url: redis://a:1\nsentinel: {masterName: m}\n").unwrap_err();
        assert!(
            e.starts_with("store.sentinel: only with mode: sentinel"),
            "{e}"
        );
        let e = store("url: redis://a:1\nmode: ring\n").unwrap_err();
        assert!(e.contains("ring"), "{e}");
        let e = store("url: redis://a:1\nkeyPrefix: '{x}:'\n").unwrap_err();
        assert!(e.starts_with("store.keyPrefix:"), "{e}");
    }

    #[test]
    fn sbc_config_checks_the_store_and_the_records_stream_against_the_mode() {
        use crate::config::SbcConfig;
        let base = "listeners: [{transport: udp, address: '127.0.0.1:5060'}]\n";
        let cfg = |store: &str, extra: &str| SbcConfig::from_yaml(&format!("{base}{store}{extra}"));
        let sentinel = "store: {url: 'redis://:pw@s1:26379,s2:26379/0', mode: sentinel, \
                        sentinel: {masterName: m}}\n";
        let c = cfg(sentinel, "").expect("valid");
        assert_eq!(c.store.unwrap().mode, StoreMode::Sentinel);
        let e = cfg("store: {url: 'redis://a:1,b:2'}\n", "").unwrap_err();
        assert!(e.to_string().starts_with("store.url: 2 hosts"), "{e}");
        let e = cfg(
            "store: {url: 'redis://a:1', mode: cluster, sentinel: {masterName: m}}\n",
            "",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("store.sentinel:"), "{e}");
        let records = "observability: {records: {cdrs: true, redis: {}}}\n";
        let e = cfg(sentinel, records).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("observability.records.redis.url:"),
            "{e}"
        );
        let own = "observability: {records: {cdrs: true, redis: {url: 'redis://r:6379/0'}}}\n";
        cfg(sentinel, own).expect("a stream with its own url");
        cfg("store: {url: 'redis://a:1/0'}\n", records).expect("one server: the store's url");
    }
}
