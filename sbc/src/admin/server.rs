//! The HTTP/1 server of the admin endpoint: bounded connections, header timeout, graceful stop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::routes::{admits, forbidden_write, list_bans, respond_async};
use super::{AdminError, AdminState};

/// Connections served at once; more are closed at once (the endpoint is for probes, scrapes
/// and operators, not for traffic).
const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown is signalled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A bound admin endpoint, not yet serving. Binding first lets the caller learn the port
/// when it asked for port 0.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl AdminServer {
    /// Binds the admin address.
    pub async fn bind(addr: SocketAddr) -> Result<AdminServer, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(AdminServer {
            listener,
            local_addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` turns true (or its sender is dropped), then gives open
    /// connections a few seconds to finish their current request.
    pub async fn run(
        self,
        state: AdminState,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), AdminError> {
        let state = Arc::new(state);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(16 * 1024)
            .max_header_size(8 * 1024)
            .keep_alive(true);
        let builder = Arc::new(builder);
        tracing::info!(address = %self.local_addr, "admin endpoint listening");

        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let accepted = tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
                accepted = self.listener.accept() => accepted,
                // Reap finished connection tasks so the set stays small.
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "admin connection refused: too many open");
                continue;
            };
            let state = state.clone();
            let builder = builder.clone();
            let mut stop = shutdown.clone();
            conns.spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move {
                        let (method, uri) = (req.method(), req.uri());
                        let resp = if !admits(method, peer.ip()) {
                            forbidden_write()
                        } else if uri.path() == "/bans"
                            && (method == Method::GET || method == Method::HEAD)
                        {
                            list_bans(&state).await
                        } else {
                            respond_async(&state, method, uri).await
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    res = conn.as_mut() => {
                        if let Err(e) = res {
                            tracing::debug!(%peer, error = %e, "admin connection error");
                        }
                    }
                    _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }

        drop(self.listener);
        let drain = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            conns.abort_all();
        }
        tracing::info!("admin endpoint stopped");
        Ok(())
    }
}

/// Binds `addr` and serves the admin endpoint until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AdminError> {
    AdminServer::bind(addr).await?.run(state, shutdown).await
}
