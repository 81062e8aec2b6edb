//! Listeners and connections: UDP sockets, TCP and TLS connections with Content-Length
//! framing and CRLF keep-alives, WebSocket (ws, wss) connections, and the flow tables that send
//! a reply or a request back over the connection a client opened (or reuse one towards a
//! backend).

mod tcp;
pub mod tls;
mod ws;
pub mod ws_rules;

pub use tcp::{Frame, next_frame};
pub use tls::TlsError;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use kubesbc_crds::config::{Limits, Listener, Transport};
use kubesbc_crds::policy::{BackendTlsConfig, TlsConfig};
use tokio::sync::mpsc;

/// Identifies one stream connection.
pub type FlowId = u64;

/// Where a message came from, or where one goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The transport.
    pub transport: Transport,
    /// The remote address.
    pub addr: SocketAddr,
    /// The connection, for stream transports.
    pub flow: Option<FlowId>,
}

/// What the transport layer hands received messages and failures to (the relay).
pub trait Inbound: Send + Sync + 'static {
    /// A whole message arrived from `peer`.
    fn on_message(&self, data: Bytes, peer: Peer);
    /// A message sent with `token` could not be delivered (connection refused or lost).
    fn on_send_error(&self, token: Vec<u8>);
    /// A message was dropped before parsing (too large, framing error), for the metrics.
    fn on_dropped(&self, reason: &'static str);
    /// A stream connection lost its framing (RFC 3261 section 18.3: a message without or
    /// with a bad Content-Length, or over the size limit) and is about to be closed; `head`
    /// is what was buffered, so the request can be answered first. Counts the drop too.
    fn on_framing_lost(&self, head: Bytes, reason: &'static str, peer: Peer);
}

/// One message as it crossed the border, for an observer (HEP, CDRs).
#[derive(Debug, Clone)]
pub struct TapEvent {
    /// Received (`In`) or sent (`Out`).
    pub direction: crate::telemetry::Direction,
    /// The message (a cheap `Bytes` clone of the one received or sent).
    pub data: Bytes,
    /// The other side.
    pub peer: Peer,
    /// The sbc's address, when the transport knows it (UDP sockets, accepted connections).
    pub local: Option<SocketAddr>,
    /// When it was received or handed to the socket.
    pub at: SystemTime,
}

/// Watches every message the transports receive and send. Called on the message path: an
/// implementation must return at once (queue, never wait).
pub trait Tap: Send + Sync + 'static {
    /// A message was received or is being sent.
    fn tap(&self, event: TapEvent);
    /// Whether [`Tap::tap`] wants messages at all (false: no event is built).
    fn wants_messages(&self) -> bool {
        true
    }
    /// A TLS handshake (tls or wss listener) failed or timed out.
    fn tls_handshake_failed(&self) {}
}

/// The observer slot shared by the transports and the wrapped inbound handlers.
type TapSlot = Arc<ArcSwapOption<Box<dyn Tap>>>;

/// Hands received messages to the tap (when one is set) before the real inbound handler.
struct TapInbound {
    inner: Arc<dyn Inbound>,
    tap: TapSlot,
    local: Option<SocketAddr>,
}

impl Inbound for TapInbound {
    fn on_message(&self, data: Bytes, peer: Peer) {
        if let Some(t) = self.tap.load().as_ref()
            && t.wants_messages()
        {
            t.tap(TapEvent {
                direction: crate::telemetry::Direction::In,
                data: data.clone(),
                peer,
                local: self.local,
                at: SystemTime::now(),
            });
        }
        self.inner.on_message(data, peer);
    }
    fn on_send_error(&self, token: Vec<u8>) {
        self.inner.on_send_error(token);
    }
    fn on_dropped(&self, reason: &'static str) {
        if reason == "tls_handshake"
            && let Some(t) = self.tap.load().as_ref()
        {
            t.tls_handshake_failed();
        }
        self.inner.on_dropped(reason);
    }
    fn on_framing_lost(&self, head: Bytes, reason: &'static str, peer: Peer) {
        self.inner.on_framing_lost(head, reason, peer);
    }
}

fn tapped(inner: &Arc<dyn Inbound>, tap: &TapSlot, local: Option<SocketAddr>) -> Arc<dyn Inbound> {
    Arc::new(TapInbound {
        inner: inner.clone(),
        tap: tap.clone(),
        local,
    })
}

/// Errors while binding listeners.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket could not be bound.
    #[error("cannot listen on {transport}:{addr}: {source}")]
    Bind {
        /// Transport of the listener.
        transport: Transport,
        /// Address of the listener.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A certificate, key or CA file cannot be used.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// The bound listeners and open connections.
pub struct Transports {
    udp: Vec<(SocketAddr, Arc<std::net::UdpSocket>)>,
    tcp: Arc<tcp::TcpSide>,
    tls: Arc<tcp::TcpSide>,
    ws: Arc<ws::WsSide>,
    tls_server: Option<Arc<tls::TlsServer>>,
    tls_client: Arc<tls::TlsClient>,
    tap: TapSlot,
    /// The inbound handler given at bind time, and the same wrapped for the tap: connections
    /// the sbc opens report their messages through it.
    inbound: (Arc<dyn Inbound>, Arc<dyn Inbound>),
}

/// Socket buffers as large as Kamailio's `maxbuffer` in our benchmark, so bursts are not lost.
const UDP_BUFFER: usize = 4 * 1024 * 1024;

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    // Blocking: each socket has a thread of its own sleeping in recvfrom, as Kamailio's UDP
    // workers do. Against a tokio socket this saves an epoll_wait and a recvfrom that returns
    // EAGAIN per datagram, the larger part of the proxy's CPU at moderate load (perf).
    s.bind(&addr.into())?;
    Ok(s.into())
}

impl Transports {
    /// Binds every listener and starts receiving; messages go to `inbound`.
    /// UDP listeners get `workers` sockets on the same port (SO_REUSEPORT), one receive loop
    /// each, so the kernel spreads peers over the runtime's threads.
    pub async fn bind(
        listeners: &[Listener],
        limits: &Limits,
        workers: usize,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Arc<Transports>, TransportError> {
        Self::bind_with_tls(listeners, limits, workers, inbound, None, None).await
    }

    /// [`Transports::bind`] with the certificate of the tls/wss listeners (required when
    /// there are some) and the TLS settings towards backends (system roots when absent).
    pub async fn bind_with_tls(
        listeners: &[Listener],
        limits: &Limits,
        workers: usize,
        inbound: Arc<dyn Inbound>,
        tls: Option<&TlsConfig>,
        backend_tls: Option<&BackendTlsConfig>,
    ) -> Result<Arc<Transports>, TransportError> {
        let needs_cert = listeners
            .iter()
            .any(|l| matches!(l.transport, Transport::Tls | Transport::Wss));
        let tls_server = match tls {
            Some(t) if needs_cert => Some(Arc::new(tls::TlsServer::new(t)?)),
            None if needs_cert => {
                return Err(TransportError::Tls(TlsError {
                    field: "tls".into(),
                    file: String::new(),
                    message: "tls and wss listeners need tls.certFile and tls.keyFile".into(),
                }));
            }
            _ => None,
        };
        let tls_client = Arc::new(tls::TlsClient::new(backend_tls)?);
        let mut udp = Vec::new();
        let mut tcp_listeners = Vec::new();
        let mut ws_listeners = Vec::new();
        for l in listeners {
            match l.transport {
                Transport::Udp => {
                    let mut addr = l.address;
                    for i in 0..workers.max(1) {
                        let sock = bind_udp(addr).map_err(|source| TransportError::Bind {
                            transport: l.transport,
                            addr,
                            source,
                        })?;
                        if i == 0 {
                            // Port 0 binds an ephemeral port; the others join it.
                            addr = sock.local_addr().unwrap_or(addr);
                        }
                        udp.push((addr, Arc::new(sock)));
                    }
                }
                Transport::Tcp | Transport::Tls => {
                    tcp_listeners.push((l.transport, bind_tcp(l).await?));
                }
                Transport::Ws | Transport::Wss => {
                    ws_listeners.push((
                        l.transport,
                        bind_tcp(l).await?,
                        ws_rules::UpgradeRules::of(l),
                    ));
                }
            }
        }
        // One count of stream connections for every stream transport, so the per-source and
        // total caps hold whichever transport a peer uses.
        let counts = Arc::new(Mutex::new(ConnCounts::default()));
        let tap: TapSlot = Arc::new(ArcSwapOption::empty());
        let t = Arc::new(Transports {
            inbound: (inbound.clone(), tapped(&inbound, &tap, None)),
            tap,
            udp,
            tcp: Arc::new(tcp::TcpSide::new(limits.clone(), counts.clone())),
            tls: Arc::new(tcp::TcpSide::new_tls(
                limits.clone(),
                counts.clone(),
                tls_server.clone(),
                tls_client.clone(),
            )),
            ws: Arc::new(ws::WsSide::new(limits.clone(), counts, tls_server.clone())),
            tls_server,
            tls_client,
        });
        if let Some(s) = &t.tls_server {
            tokio::spawn(s.clone().watch());
        }
        let handle = tokio::runtime::Handle::current();
        for (i, (addr, sock)) in t.udp.iter().enumerate() {
            let inbound = tapped(&inbound, &t.tap, Some(*addr));
            let (sock, handle) = (sock.clone(), handle.clone());
            let max = limits.max_message_bytes;
            std::thread::Builder::new()
                .name(format!("udp-{i}"))
                .spawn(move || {
                    // Stages and TCP sends spawn tasks from here: give them the runtime.
                    let _rt = handle.enter();
                    udp_loop(&sock, max, &*inbound);
                })
                .map_err(|source| TransportError::Bind {
                    transport: Transport::Udp,
                    addr: *addr,
                    source,
                })?;
        }
        for (kind, l) in tcp_listeners {
            let side = if kind == Transport::Tls {
                &t.tls
            } else {
                &t.tcp
            };
            let local = l.local_addr().ok();
            if let Some(a) = local {
                side.add_local(a);
            }
            let inbound = tapped(&inbound, &t.tap, local);
            tokio::spawn(tcp::accept_loop(side.clone(), l, inbound));
        }
        for (kind, l, rules) in ws_listeners {
            let local = l.local_addr().ok();
            if let Some(a) = local {
                t.ws.add_local(kind, a);
            }
            let inbound = tapped(&inbound, &t.tap, local);
            tokio::spawn(ws::accept_loop(t.ws.clone(), kind, l, rules, inbound));
        }
        Ok(t)
    }

    /// Puts the TLS settings of a new configuration version in force for new connections
    /// (open ones keep theirs). The version was checked with [`tls::check`] before.
    pub fn set_tls(&self, tls: Option<&TlsConfig>, backend_tls: Option<&BackendTlsConfig>) {
        if let (Some(server), Some(t)) = (&self.tls_server, tls) {
            server.set(t);
        }
        self.tls_client.set(backend_tls);
    }

    /// The host names TLS backends are verified against, by address (from the destination
    /// URIs that name a host). A backend not listed is verified against its IP address.
    pub fn set_tls_server_names(&self, names: impl IntoIterator<Item = (SocketAddr, String)>) {
        self.tls_client.set_names(names);
    }

    /// The addresses actually bound (ports resolved), per transport.
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        let mut v: Vec<(Transport, SocketAddr)> = Vec::new();
        for (a, _) in &self.udp {
            if !v.contains(&(Transport::Udp, *a)) {
                v.push((Transport::Udp, *a));
            }
        }
        v.extend(
            self.tcp
                .local_addrs()
                .into_iter()
                .map(|a| (Transport::Tcp, a)),
        );
        v.extend(
            self.tls
                .local_addrs()
                .into_iter()
                .map(|a| (Transport::Tls, a)),
        );
        v.extend(self.ws.local_addrs());
        v
    }

    /// Sends `data` to `to`. UDP goes out at once; a stream message goes over the flow named
    /// in `to`, else an open connection to the address, else a new one. When delivery fails,
    /// `inbound.on_send_error(token)` is called (if a token was given).
    pub fn send(&self, to: &Peer, data: Bytes, token: Option<Vec<u8>>, inbound: &Arc<dyn Inbound>) {
        if to.transport != Transport::Udp
            && let Some(t) = self.tap.load().as_ref()
            && t.wants_messages()
        {
            t.tap(TapEvent {
                direction: crate::telemetry::Direction::Out,
                data: data.clone(),
                peer: *to,
                local: None,
                at: SystemTime::now(),
            });
        }
        // Replies on a connection the sbc opens pass the tap too (same handler, wrapped).
        let inbound = if std::ptr::addr_eq(Arc::as_ptr(inbound), Arc::as_ptr(&self.inbound.0)) {
            &self.inbound.1
        } else {
            inbound
        };
        match to.transport {
            Transport::Udp => self.send_udp(to.addr, data),
            Transport::Tcp => self.tcp.send(to, data, token, inbound),
            Transport::Tls => self.tls.send(to, data, token, inbound),
            Transport::Ws | Transport::Wss => self.ws.send(to, data, token, inbound),
        }
    }

    fn send_udp(&self, to: SocketAddr, data: Bytes) {
        let Some((local, sock)) = self
            .udp
            .iter()
            .find(|(a, _)| a.is_ipv4() == to.is_ipv4())
            .or_else(|| self.udp.first())
        else {
            tracing::warn!(%to, "no UDP listener to send from");
            return;
        };
        if let Some(t) = self.tap.load().as_ref()
            && t.wants_messages()
        {
            t.tap(TapEvent {
                direction: crate::telemetry::Direction::Out,
                data: data.clone(),
                peer: Peer {
                    transport: Transport::Udp,
                    addr: to,
                    flow: None,
                },
                local: Some(*local),
                at: SystemTime::now(),
            });
        }
        // A UDP send only waits when the 4 MiB send buffer is full.
        if let Err(e) = sock.send_to(&data, to) {
            // ICMP errors from earlier datagrams surface here on some systems: harmless.
            tracing::debug!(%to, error = %e, "udp send failed");
        }
    }

    /// Puts an observer of every message received and sent in place (or removes it).
    pub fn set_tap(&self, tap: Option<Box<dyn Tap>>) {
        self.tap.store(tap.map(Arc::new));
    }

    /// Open stream connections by transport (`ws` counts ws and wss).
    pub fn open_by_transport(&self) -> [(Transport, usize); 3] {
        [
            (Transport::Tcp, self.tcp.open()),
            (Transport::Tls, self.tls.open()),
            (Transport::Ws, self.ws.open()),
        ]
    }

    /// Whether the connection `p` names is still open (UDP: always).
    pub fn is_open(&self, p: &Peer) -> bool {
        let Some(id) = p.flow else {
            return p.transport == Transport::Udp;
        };
        match p.transport {
            Transport::Udp => true,
            Transport::Tcp => self.tcp.is_open(id),
            Transport::Tls => self.tls.is_open(id),
            Transport::Ws | Transport::Wss => self.ws.is_open(id),
        }
    }

    /// Open stream connections.
    pub fn open_connections(&self) -> usize {
        self.tcp.open() + self.tls.open() + self.ws.open()
    }
}

async fn bind_tcp(l: &Listener) -> Result<tokio::net::TcpListener, TransportError> {
    tokio::net::TcpListener::bind(l.address)
        .await
        .map_err(|source| TransportError::Bind {
            transport: l.transport,
            addr: l.address,
            source,
        })
}

fn udp_loop(sock: &std::net::UdpSocket, max: usize, inbound: &dyn Inbound) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if n > max {
                    inbound.on_dropped("too_large");
                    continue;
                }
                if n <= 4 && buf[..n].iter().all(|b| matches!(b, b'\r' | b'\n' | 0)) {
                    // Keep-alive datagrams (CRLF or NUL) from NATed clients.
                    continue;
                }
                let data = Bytes::copy_from_slice(&buf[..n]);
                inbound.on_message(
                    data,
                    Peer {
                        transport: Transport::Udp,
                        addr: from,
                        flow: None,
                    },
                );
            }
            Err(e) => {
                // ECONNREFUSED from an ICMP port-unreachable of an earlier send, and the like.
                tracing::trace!(error = %e, "udp recv error");
            }
        }
    }
}

/// One open stream connection: where to write.
struct Flow {
    tx: mpsc::Sender<Bytes>,
}

/// Per-source connection counting shared by the accept loop and the connection tasks.
#[derive(Default)]
struct ConnCounts {
    by_ip: HashMap<IpAddr, u32>,
    total: u32,
}

static NEXT_FLOW: AtomicU64 = AtomicU64::new(1);

fn next_flow() -> FlowId {
    NEXT_FLOW.fetch_add(1, Ordering::Relaxed)
}

type FlowTable = Mutex<HashMap<FlowId, Flow>>;

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tap_tests;
