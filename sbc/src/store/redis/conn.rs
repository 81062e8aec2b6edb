//! The connection the Redis store sends through: one server, a Redis Cluster, or the master
//! that Redis Sentinel names.
//!
//! All three are one [`Conn`] implementing redis-rs' `ConnectionLike`, so the store's commands
//! and scripts are written once. One server keeps today's [`ConnectionManager`] (lazy,
//! reconnecting), so that path costs nothing more. A cluster or a sentinel-discovered master
//! is connected lazily too (a Redis that is down at startup does not stop the sbc), and the
//! sentinel connection is dropped on a connection error or a READONLY answer, so the next call
//! asks the sentinels again and reaches the master a failover promoted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{ConfigError, StoreConfig, StoreMode};
use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError, RedisFuture, RedisResult,
    ServerErrorKind, TlsMode, Value,
};
use kubesbc_crds::store::split_url;

/// Where the store's Redis is and how to reach it.
#[derive(Debug, Clone)]
pub enum Target {
    /// One server.
    Single(String),
    /// Seed nodes of a Redis Cluster, one URL each.
    Cluster(Vec<String>),
    /// Sentinels, one URL each, and the master's name; the master gets the first URL's user,
    /// password, database and TLS; the sentinels get its user and password only when `auth`.
    Sentinel {
        /// Sentinel URLs.
        urls: Vec<String>,
        /// `sentinel monitor <name>`.
        master_name: String,
        /// Whether the sentinels need the credentials too.
        auth: bool,
    },
}

impl Target {
    /// The target of the `store` section, `url` being its URL (`store.url`, or what
    /// `store.urlFile` holds) and `field` the field it came from, for errors.
    pub fn from_config(sc: &StoreConfig, url: &str, field: &str) -> Result<Target, ConfigError> {
        let urls = split_url(url).map_err(|e| ConfigError::Field {
            path: format!("store.{field}"),
            message: e,
        })?;
        sc.check_url("store", field, &urls)?;
        Ok(match (sc.mode, &sc.sentinel) {
            (StoreMode::Sentinel, Some(s)) => Target::Sentinel {
                urls,
                master_name: s.master_name.clone(),
                auth: s.auth_sentinels,
            },
            (StoreMode::Cluster, _) => Target::Cluster(urls),
            // Validated: one URL in single mode, sentinel settings with mode sentinel.
            _ => Target::Single(urls.into_iter().next().unwrap_or_default()),
        })
    }
}

/// The connection, cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Lazy(Arc<Lazy>),
}

pub(super) struct Lazy {
    how: How,
    current: Mutex<Option<Current>>,
    connecting: tokio::sync::Mutex<()>,
}

enum How {
    Cluster(ClusterClient),
    Sentinel(tokio::sync::Mutex<SentinelClient>, AsyncConnectionConfig),
}

#[derive(Clone)]
enum Current {
    Cluster(ClusterConnection),
    Master(MultiplexedConnection),
}

impl Conn {
    /// A lazy connection to `target`; `timeout` bounds connecting (replies get ten times it).
    pub(super) fn new(target: &Target, timeout: Duration) -> RedisResult<Conn> {
        let connect = timeout.max(Duration::from_millis(50));
        let respond = connect * 10;
        match target {
            Target::Single(url) => {
                let client = Client::open(url.as_str())?;
                // Reconnection backs off quickly and stays bounded: the fallback store probes
                // on its own, so a long backoff here would only delay the return to shared
                // state.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(respond))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            Target::Cluster(urls) => {
                let infos = urls
                    .iter()
                    .map(|u| u.as_str().into_connection_info())
                    .collect::<RedisResult<Vec<_>>>()?;
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(connect)
                    .response_timeout(respond)
                    // Few, short retries: the fallback store answers meanwhile.
                    .retries(2)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()?;
                Ok(Conn::lazy(How::Cluster(client)))
            }
            Target::Sentinel {
                urls,
                master_name,
                auth,
            } => {
                let infos = urls
                    .iter()
                    .map(|u| u.as_str().into_connection_info())
                    .collect::<RedisResult<Vec<ConnectionInfo>>>()?;
                let first = infos.first().ok_or_else(|| {
                    RedisError::from((ErrorKind::InvalidClientConfig, "no sentinel"))
                })?;
                let master_info = first.redis_settings().clone();
                let tls = match first.addr() {
                    ConnectionAddr::TcpTls { insecure, .. } => Some(if *insecure {
                        TlsMode::Insecure
                    } else {
                        TlsMode::Secure
                    }),
                    _ => None,
                };
                // Sentinels have no databases; they get credentials only when they ask.
                let sentinels: Vec<ConnectionInfo> = infos
                    .iter()
                    .map(|i| {
                        let mut r = RedisConnectionInfo::default();
                        if *auth {
                            if let Some(u) = i.redis_settings().username() {
                                r = r.set_username(u);
                            }
                            if let Some(p) = i.redis_settings().password() {
                                r = r.set_password(p);
                            }
                        }
                        i.clone().set_redis_settings(r)
                    })
                    .collect();
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(master_info);
                if let Some(t) = tls {
                    node = node.set_tls_mode(t);
                }
                let client = SentinelClient::build(
                    sentinels,
                    master_name.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect))
                    .set_response_timeout(Some(respond));
                Ok(Conn::lazy(How::Sentinel(
                    tokio::sync::Mutex::new(client),
                    config,
                )))
            }
        }
    }

    fn lazy(how: How) -> Conn {
        Conn::Lazy(Arc::new(Lazy {
            how,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }))
    }

    /// Whether keys must share a slot per command (a cluster).
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Lazy(l) if matches!(l.how, How::Cluster(_)))
    }

    /// Runs `cmd` on every master (a cluster) or on the one server, combining array answers:
    /// for listings, whose SCAN sees one node's keys only.
    pub(super) async fn on_every_master(&mut self, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Lazy(l) => {
                let current = l.get().await?;
                let r = match current {
                    Current::Cluster(mut c) => {
                        let all = RoutingInfo::MultiNode((
                            MultipleNodeRoutingInfo::AllMasters,
                            Some(ResponsePolicy::CombineArrays),
                        ));
                        c.route_command(cmd, all).await
                    }
                    Current::Master(mut c) => c.req_packed_command(&cmd).await,
                };
                if let Err(e) = &r {
                    l.failed(e);
                }
                r
            }
            Conn::Single(c) => c.req_packed_command(&cmd).await,
        }
    }
}

impl Lazy {
    /// The live connection, connecting first when there is none.
    async fn get(&self) -> RedisResult<Current> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        // One caller connects; the others wait for its result.
        let _one = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let c = match &self.how {
            How::Cluster(client) => Current::Cluster(client.get_async_connection().await?),
            How::Sentinel(sentinel, config) => {
                let client = sentinel.lock().await.async_get_client().await?;
                tracing::info!(master = ?client.get_connection_info().addr(), "sentinel names the store's master");
                Current::Master(
                    client
                        .get_multiplexed_async_connection_with_config(config)
                        .await?,
                )
            }
        };
        if let Ok(mut g) = self.current.lock() {
            *g = Some(c.clone());
        }
        Ok(c)
    }

    fn live(&self) -> Option<Current> {
        self.current.lock().ok().and_then(|g| g.clone())
    }

    /// After an error: a master that is gone or no longer a master is forgotten, so the next
    /// call asks the sentinels. A cluster connection follows slot moves by itself.
    fn failed(&self, e: &RedisError) {
        if !matches!(self.how, How::Sentinel(..)) {
            return;
        }
        let stale = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
            );
        if stale && let Ok(mut g) = self.current.lock() {
            *g = None;
        }
    }
}

impl ConnectionLike for Current {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Current::Cluster(c) => c.req_packed_command(cmd),
            Current::Master(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Current::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Current::Master(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Current::Cluster(c) => c.get_db(),
            Current::Master(c) => c.get_db(),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Lazy(l) => Box::pin(async move {
                let mut c = l.get().await?;
                let r = c.req_packed_command(cmd).await;
                if let Err(e) = &r {
                    l.failed(e);
                }
                r
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Lazy(l) => Box::pin(async move {
                let mut c = l.get().await?;
                let r = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &r {
                    l.failed(e);
                }
                r
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Lazy(l) => l.live().map_or(0, |c| c.get_db()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> StoreConfig {
        let v: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_mode_picks_the_target_and_errors_name_the_field() {
        let single = store("url: x\n");
        assert!(matches!(
            Target::from_config(&single, "redis://:pw@h:1/2", "url"),
            Ok(Target::Single(u)) if u == "redis://:pw@h:1/2"
        ));
        let e = Target::from_config(&single, "redis://a:1,b:2", "urlFile").unwrap_err();
        assert!(e.to_string().starts_with("store.urlFile: 2 hosts"), "{e}");
        let cluster = store("url: x\nmode: cluster\n");
        assert!(matches!(
            Target::from_config(&cluster, "redis://a:1,b:2", "url"),
            Ok(Target::Cluster(us)) if us == ["redis://a:1", "redis://b:2"]
        ));
        let sentinel =
            store("url: x\nmode: sentinel\nsentinel: {masterName: m, authSentinels: true}\n");
        match Target::from_config(&sentinel, "redis://:pw@s:1,t:2/1", "url") {
            Ok(Target::Sentinel {
                urls,
                master_name,
                auth,
            }) => {
                assert_eq!(urls, ["redis://:pw@s:1/1", "redis://:pw@t:2/1"]);
                assert_eq!((master_name.as_str(), auth), ("m", true));
            }
            other => panic!("{other:?}"),
        }
        let e = Target::from_config(&sentinel, "http://s:1", "url").unwrap_err();
        assert!(e.to_string().starts_with("store.url: scheme"), "{e}");
    }
}
