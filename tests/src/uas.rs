//! A PBX written for the tests, over UDP: it answers the sbc's OPTIONS probes, INVITEs (200 with its
//! Contact and the Record-Route set copied), BYEs and other requests (200) on its own thread,
//! answers each to its top Via (so a response goes back through the replica that relayed the
//! request, wherever the INVITE came from), and hands every message it received to the test.
//! Unlike sipp it can send an in-dialog request of its own to any replica
//! ([`Pbx::send_to`]), which is what the replica tests need.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sip::{header, response_to, top_via_addr};

/// A running test PBX; stopped when dropped.
pub struct Pbx {
    socket: UdpSocket,
    rx: Receiver<(String, SocketAddr)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pbx {
    /// A PBX on `ip` (a loopback address, 127.0.0.0/8 or ::1) and a free port.
    pub fn start(ip: impl Into<IpAddr>) -> Pbx {
        Pbx::start_ignoring(ip, |_| false)
    }

    /// A PBX that receives, but never answers, the requests for which `ignore` holds (a
    /// backend that lost one INVITE).
    pub fn start_ignoring(ip: impl Into<IpAddr>, ignore: fn(&str) -> bool) -> Pbx {
        let ip = ip.into();
        assert!(ip.is_loopback(), "only loopback addresses");
        let socket = UdpSocket::bind((ip, crate::free_port())).expect("bind the test PBX");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (socket.try_clone().expect("clone socket"), stop.clone());
        let thread = std::thread::spawn(move || serve(&s, &tx, &st, ignore));
        Pbx {
            socket,
            rx,
            stop,
            thread: Some(thread),
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("local addr")
    }

    /// Its dispatcher URI.
    pub fn uri(&self) -> String {
        format!("sip:{}", self.addr())
    }

    /// Sends `bytes` to `to` (a request of its own, or an ACK).
    pub fn send_to(&self, bytes: &[u8], to: SocketAddr) {
        self.socket.send_to(bytes, to).expect("udp send");
    }

    /// The next message received (the sbc's probes excepted) for which `want` holds, within
    /// `timeout`; the others before it are dropped.
    pub fn next(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (msg, _) = self.rx.recv_timeout(left).ok()?;
            if want(&msg) {
                return Some(msg);
            }
        }
    }

    /// Every message received so far (the sbc's probes excepted), without waiting.
    pub fn drain(&self) -> Vec<String> {
        self.rx.try_iter().map(|(m, _)| m).collect()
    }
}

impl Drop for Pbx {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the sbc's OPTIONS probes' Call-IDs begin: those are answered and not handed on.
const PROBE_CALL_ID: &str = "kSprobe.";

fn serve(
    socket: &UdpSocket,
    tx: &Sender<(String, SocketAddr)>,
    stop: &AtomicBool,
    ignore: fn(&str) -> bool,
) {
    let mut buf = vec![0u8; 65_536];
    let contact = format!("<sip:pbx@{}>", socket.local_addr().expect("local addr"));
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        if msg.starts_with("SIP/2.0 ") {
            let _ = tx.send((msg, from));
            continue;
        }
        let method = msg.split(' ').next().unwrap_or_default().to_owned();
        let answer = (method != "ACK" && !ignore(&msg)).then(|| {
            let tag = header(&msg, "Call-ID").map_or_else(|| "pbx".to_owned(), tag_of);
            let with_contact = (method == "INVITE").then_some(contact.as_str());
            (
                response_to(&msg, 200, "OK", &tag, with_contact),
                top_via_addr(&msg).unwrap_or(from),
            )
        });
        // Handed to the test before the answer leaves: whoever got the answer finds the
        // request here.
        let probe = method == "OPTIONS"
            && header(&msg, "Call-ID").is_some_and(|c| c.starts_with(PROBE_CALL_ID));
        if !probe {
            let _ = tx.send((msg, from));
        }
        if let Some((resp, to)) = answer {
            let _ = socket.send_to(resp.as_bytes(), to);
        }
    }
}

/// A To-tag that stays the same for every response in one call.
fn tag_of(call_id: &str) -> String {
    let h = call_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("pbx{h:x}")
}
