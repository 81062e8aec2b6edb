//! A real rtpengine for the media tests: Debian's `rtpengine-daemon` binary in userspace
//! (`--table=-1`, no kernel module, no iptables), on loopback, with its ng control port from
//! [`crate::free_port`] and RTP ports from a private block in 10000..20000 (below the range
//! `free_port` hands out and below the packaged daemon's 30000..40000), started in the
//! foreground and stopped by PID on drop.
//!
//! `--config-file=none` keeps it from reading `/etc/rtpengine/rtpengine.conf`, whose
//! `listen-cli`/`listen-http` ports would collide between parallel tests and with the
//! packaged service; `--delete-delay=0` makes a deleted call disappear at once, so a query
//! after delete sees nothing.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use crate::{LOOPBACK, TempDir, free_port, loopback, tail_file};

/// RTP ports per rtpengine (an RTP/RTCP pair per stream, a few calls per test).
const BLOCK: u16 = 100;

/// A running (or deliberately killed) rtpengine.
#[derive(Debug)]
pub struct Rtpengine {
    child: Option<Child>,
    ng_port: u16,
    ports: RangeInclusive<u16>,
    log: PathBuf,
}

/// A block of `BLOCK` loopback UDP ports in 10000..20000 that are free right now.
fn port_block() -> RangeInclusive<u16> {
    static N: AtomicU32 = AtomicU32::new(0);
    let seed = crate::port_seed(&N, 37);
    let blocks = (20_000 - 10_000) / u32::from(BLOCK);
    for i in 0..blocks {
        let base = 10_000 + ((seed.wrapping_add(i)) % blocks) as u16 * BLOCK;
        let range = base..=base + BLOCK - 1;
        if range
            .clone()
            .step_by(7)
            .all(|p| UdpSocket::bind((LOOPBACK, p)).is_ok())
        {
            return range;
        }
    }
    panic!("no free block of {BLOCK} UDP ports in 10000..20000");
}

impl Rtpengine {
    /// Starts rtpengine and waits until it answers `ping` on its ng port. Call
    /// [`crate::require_tool`]`("rtpengine")` first.
    pub fn start(dir: &TempDir) -> Rtpengine {
        let mut r = Rtpengine {
            child: None,
            ng_port: free_port(),
            ports: port_block(),
            log: dir.path().join(format!("rtpengine-{}.log", free_port())),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let f = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("rtpengine log");
        let child = Command::new(crate::which("rtpengine").unwrap_or_else(|| "rtpengine".into()))
            .arg("--config-file=none")
            .arg("--table=-1")
            .arg("--interface=127.0.0.1")
            .arg(format!("--listen-ng=127.0.0.1:{}", self.ng_port))
            .arg(format!("--port-min={}", self.ports.start()))
            .arg(format!("--port-max={}", self.ports.end()))
            .args(["--foreground", "--log-stderr", "--log-level=6"])
            .args(["--delete-delay=0", "--num-threads=2", "--timeout=60"])
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rtpengine: {e}"));
        eprintln!(
            "started rtpengine pid {} ng 127.0.0.1:{} rtp {:?}",
            child.id(),
            self.ng_port,
            self.ports
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "rtpengine exited with {status}; log:\n{}",
                    tail_file(&self.log, 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "rtpengine did not answer ping on {}; log:\n{}",
            self.ng_addr(),
            tail_file(&self.log, 4000)
        );
    }

    /// One raw ng `ping` (independent of the client under test).
    pub fn ping(&self) -> bool {
        let Ok(s) = UdpSocket::bind((LOOPBACK, 0)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        if s.send_to(b"probe d7:command4:pinge", self.ng_addr())
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 256];
        matches!(s.recv_from(&mut buf), Ok((n, _)) if buf[..n].ends_with(b"4:ponge"))
    }

    /// The ng control address.
    pub fn ng_addr(&self) -> SocketAddr {
        loopback(self.ng_port)
    }

    /// `127.0.0.1:PORT` as the sbc's configuration writes it.
    pub fn ng_name(&self) -> String {
        self.ng_addr().to_string()
    }

    /// The RTP port range it allocates from.
    pub fn ports(&self) -> RangeInclusive<u16> {
        self.ports.clone()
    }

    /// The PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The end of its log (for failure messages).
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 6000)
    }

    /// Kills it at once (SIGKILL by PID): an outage mid-call.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("rtpengine log:\n{}", self.log_tail());
        }
        self.kill();
    }
}
