//! Listeners and connections: UDP sockets, TCP connections with Content-Length framing and
//! CRLF keep-alives, and the flow table that sends a reply back over the connection its
//! request came in on (or reuses one towards a backend).

mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kubesbc_crds::config::{Limits, Listener, Transport};
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
    /// A transport we do not serve yet.
    #[error("transport {0} is not supported yet")]
    Unsupported(Transport),
}

/// The bound listeners and open connections.
pub struct Transports {
    udp: Vec<(SocketAddr, Arc<std::net::UdpSocket>)>,
    tcp: Arc<tcp::TcpSide>,
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
        let mut udp = Vec::new();
        let mut tcp_listeners = Vec::new();
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
                Transport::Tcp => {
                    let sock =
                        tokio::net::TcpListener::bind(l.address)
                            .await
                            .map_err(|source| TransportError::Bind {
                                transport: l.transport,
                                addr: l.address,
                                source,
                            })?;
                    tcp_listeners.push(sock);
                }
                other => return Err(TransportError::Unsupported(other)),
            }
        }
        let t = Arc::new(Transports {
            udp,
            tcp: Arc::new(tcp::TcpSide::new(limits.clone())),
        });
        let handle = tokio::runtime::Handle::current();
        for (i, (addr, sock)) in t.udp.iter().enumerate() {
            let (sock, inbound, handle) = (sock.clone(), inbound.clone(), handle.clone());
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
        for l in tcp_listeners {
            if let Ok(a) = l.local_addr() {
                t.tcp.add_local(a);
            }
            tokio::spawn(tcp::accept_loop(t.tcp.clone(), l, inbound.clone()));
        }
        Ok(t)
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
        v
    }

    /// Sends `data` to `to`. UDP goes out at once; a stream message goes over the flow named
    /// in `to`, else an open connection to the address, else a new one. When delivery fails,
    /// `inbound.on_send_error(token)` is called (if a token was given).
    pub fn send(&self, to: &Peer, data: Bytes, token: Option<Vec<u8>>, inbound: &Arc<dyn Inbound>) {
        match to.transport {
            Transport::Udp => self.send_udp(to.addr, data),
            _ => self.tcp.send(to, data, token, inbound),
        }
    }

    fn send_udp(&self, to: SocketAddr, data: Bytes) {
        let Some((_, sock)) = self
            .udp
            .iter()
            .find(|(a, _)| a.is_ipv4() == to.is_ipv4())
            .or_else(|| self.udp.first())
        else {
            tracing::warn!(%to, "no UDP listener to send from");
            return;
        };
        // A UDP send only waits when the 4 MiB send buffer is full.
        if let Err(e) = sock.send_to(&data, to) {
            // ICMP errors from earlier datagrams surface here on some systems: harmless.
            tracing::debug!(%to, error = %e, "udp send failed");
        }
    }

    /// Open stream connections.
    pub fn open_connections(&self) -> usize {
        self.tcp.open()
    }
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
