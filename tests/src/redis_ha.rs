//! Redis beyond one server for the store tests: a Sentinel set (a master, a replica and three
//! sentinels) and a three-master Redis Cluster, all Debian binaries on fresh loopback ports,
//! stopped by PID on drop.

use std::process::Command;
use std::time::Duration;

use crate::{RedisServer, TempDir, wait_for};

/// The master name the sentinels monitor.
pub const MASTER_NAME: &str = "e2e";

/// A master, its replica and three sentinels watching them (quorum 2, a master is down after
/// three seconds without an answer: tests see the window before the failover).
#[derive(Debug)]
pub struct SentinelSet {
    /// The master at start.
    pub master: RedisServer,
    /// The replica at start (promoted by a failover).
    pub replica: RedisServer,
    /// The three sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSet {
    /// Starts the set and waits until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels (else a failover could not happen). Call
    /// [`crate::require_tool`] for `redis-server` and `redis-sentinel` first.
    pub fn start(dir: &TempDir) -> SentinelSet {
        let master = RedisServer::start_with(dir, "master", &[]);
        let port = master.port().to_string();
        let replica = RedisServer::start_with(dir, "replica", &["--replicaof", "127.0.0.1", &port]);
        let conf = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 3000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n"
        );
        let sentinels: Vec<RedisServer> = (1..=3)
            .map(|i| RedisServer::start_sentinel(dir, &format!("sentinel{i}"), &conf))
            .collect();
        let set = SentinelSet {
            master,
            replica,
            sentinels,
        };
        let synced = wait_for(Duration::from_secs(20), || {
            let info = set.replica.command(&["INFO", "replication"])?;
            info.contains("master_link_status:up").then_some(())
        });
        assert!(
            synced.is_some(),
            "replica not in sync: {}",
            set.replica.log_tail()
        );
        for s in &set.sentinels {
            let ready = wait_for(Duration::from_secs(30), || {
                let m = s.command(&["SENTINEL", "MASTER", MASTER_NAME])?;
                (field(&m, "num-slaves") == Some("1")
                    && field(&m, "num-other-sentinels") == Some("2"))
                .then_some(())
            });
            assert!(
                ready.is_some(),
                "sentinel {} not ready: {}",
                s.port(),
                s.log_tail()
            );
        }
        set
    }

    /// `redis://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/0`: the sentinels, for `store.url`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(RedisServer::addr).collect();
        format!("redis://{}/0", hosts.join(","))
    }

    /// The port the first sentinel names as master now.
    pub fn master_port(&self) -> Option<u16> {
        let r = self.sentinels[0].command(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])?;
        // *2 $9 127.0.0.1 $5 PORT
        r.lines().nth(4)?.trim().parse().ok()
    }
}

/// The value after `name` in a flat RESP array of field/value pairs.
fn field<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let lines: Vec<&str> = resp.lines().collect();
    let at = lines.iter().position(|l| *l == name)?;
    lines.get(at + 2).copied()
}

/// Three masters forming a Redis Cluster (no replicas), created with
/// `redis-cli --cluster create`.
#[derive(Debug)]
pub struct ClusterSet {
    /// The masters.
    pub nodes: Vec<RedisServer>,
}

impl ClusterSet {
    /// Starts three cluster-enabled servers, joins them and waits until every node says the
    /// cluster is ok. Call [`crate::require_tool`] for `redis-server` and `redis-cli` first.
    pub fn start(dir: &TempDir) -> ClusterSet {
        let nodes: Vec<RedisServer> = (1..=3)
            .map(|i| {
                let conf = dir.path().join(format!("nodes{i}.conf"));
                let conf = conf.to_string_lossy().into_owned();
                RedisServer::start_with(
                    dir,
                    &format!("node{i}"),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &conf,
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(RedisServer::addr))
            .arg("--cluster-yes")
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let set = ClusterSet { nodes };
        for n in &set.nodes {
            let ok = wait_for(Duration::from_secs(20), || {
                n.command(&["CLUSTER", "INFO"])?
                    .contains("cluster_state:ok")
                    .then_some(())
            });
            assert!(
                ok.is_some(),
                "cluster not ok on {}: {}",
                n.port(),
                n.log_tail()
            );
        }
        set
    }

    /// `redis://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`: the seed nodes, for `store.url`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(RedisServer::addr).collect();
        format!("redis://{}", hosts.join(","))
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> Option<u16> {
        let r = self.nodes[0].command(&["CLUSTER", "KEYSLOT", key])?;
        r.trim().strip_prefix(':')?.parse().ok()
    }

    /// The node serving `key`'s slot.
    pub fn node_of(&self, key: &str) -> Option<&RedisServer> {
        // A node that does not serve the slot answers MOVED, before looking at the key.
        self.nodes.iter().find(|n| {
            n.command(&["TYPE", key])
                .is_some_and(|r| !r.starts_with("-MOVED"))
        })
    }

    /// Every key matching `pattern`, on all nodes.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.command(&["KEYS", pattern]))
            .flat_map(|r| {
                r.lines()
                    .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}
