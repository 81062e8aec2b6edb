//! End-to-end test support: starting sbc, sipp and servers on ephemeral loopback ports.
//!
//! Every process a test starts is owned by a guard that stops it by PID when dropped, and whose
//! log is printed when the test fails. Only 127.0.0.1 is ever a target.
//!
//! The proxy under test is the `sbc` binary built next to the test executable. With
//! `KUBESBC_E2E_PROXY=kamailio` the same tests run against a real Kamailio instead (config in
//! `tests/kamailio/dispatcher.cfg`), which proves the harness before our proxy exists.

#![forbid(unsafe_code)]

pub mod http;
pub mod kamailio;
pub mod kubeapi;
pub mod node;
pub mod pki;
pub mod proxy;
pub mod redis;
pub mod redis_ha;
pub mod rtpengine;
pub mod sip;
pub mod sipp;
pub mod testbed;
pub mod uas;
pub mod ws;

use std::collections::HashSet;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use proxy::{DispatcherDest, Proxy, ProxyKind, ProxyOptions, sbc_only};
pub use redis::RedisServer;
pub use redis_ha::{ClusterSet, SentinelSet};
pub use sipp::{CallStats, MessageLog, Sipp, SippTransport, UacOptions};
pub use testbed::{
    CallRun, Testbed, TestbedBuilder, received_invites, start_backend, start_calls,
    start_calls_from,
};

/// The loopback address every process of a test binds and targets.
pub const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Directory of this crate (`tests/`), where scenarios and the Kamailio config live.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of a sipp scenario shipped in `tests/scenarios/`.
pub fn scenario(name: &str) -> PathBuf {
    crate_dir().join("scenarios").join(name)
}

/// Whether the run is under CI, where a missing tool is a failure rather than a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that an external tool is on `PATH`.
///
/// Returns `true` when it is. When it is not: under `CI=true` the test panics; otherwise a loud
/// SKIP line is printed and `false` is returned, so the caller returns early. Never silent.
pub fn require_tool(tool: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    let msg = format!("required tool `{tool}` is not installed (run ./scripts/install-deps.sh)");
    if in_ci() {
        panic!("{msg}; CI=true makes this a failure");
    }
    loud_skip(&msg);
    false
}

/// Reports a skipped test where it cannot be missed: straight to the process's stderr (not
/// captured by the test harness) and appended to `target/<profile>/e2e-skips.log`, which
/// `scripts/test.sh` prints in its summary.
pub fn loud_skip(msg: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("an e2e test")
        .to_owned();
    let line = format!("SKIP {test}: {msg}");
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "\n**************** SKIP ****************");
    let _ = writeln!(err, "{line}");
    let _ = writeln!(err, "**************************************\n");
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("e2e-skips.log"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Checks the tools every proxy e2e test needs: sipp, and Kamailio's when it is the proxy.
pub fn e2e_tools() -> bool {
    require_tool("sipp") && ProxyKind::from_env().require_tools()
}

/// Full path of `tool` if it is an executable file in one of the `PATH` directories
/// (or in /usr/sbin and /sbin, where Debian puts kamailio).
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Ports already handed out by this process, so two guards never get the same one.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Where a search for free ports starts: from the PID, the time and `counter` (advanced by
/// `step`), so parallel test processes, and calls within one, spread out.
pub(crate) fn port_seed(counter: &AtomicU32, step: u32) -> u32 {
    std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        )
        .wrapping_add(counter.fetch_add(step, Ordering::Relaxed))
}

/// A loopback port on which both UDP and TCP are free right now.
///
/// Ports are drawn from 20000..32000, below Linux's ephemeral range (32768..60999), so the
/// kernel never hands one of them to an outgoing connection of a parallel test; the start
/// point depends on the PID and time so parallel test processes spread out.
pub fn free_port() -> u16 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seed = port_seed(&COUNTER, 7919);
    let mut guard = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = guard.get_or_insert_with(HashSet::new);
    for i in 0..12_000u32 {
        let port = 20_000 + ((seed.wrapping_add(i.wrapping_mul(13))) % 12_000) as u16;
        if taken.contains(&port) {
            continue;
        }
        let udp = UdpSocket::bind((LOOPBACK, port));
        let tcp = TcpListener::bind((LOOPBACK, port));
        if udp.is_ok() && tcp.is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000");
}

/// Blocks of four media ports: 61000..65532, above Linux's ephemeral range (the last one
/// ends at 65531, so `base + 4` is still a u16).
const MEDIA_BLOCKS: u32 = (65_532 - 61_000) / 4;

/// The first port of media block `n` (taken modulo [`MEDIA_BLOCKS`]).
fn media_block(n: u32) -> u16 {
    61_000 + u16::try_from(n % MEDIA_BLOCKS).unwrap_or(0) * 4
}

/// The first of four consecutive UDP ports free right now on `ip` and on 127.0.0.1, for the
/// media of a sipp bound to `ip` (`-mp`: it binds audio at the port and video at +2, even
/// without RTP; +1 and +3 are kept for their RTCP). From [`MEDIA_BLOCKS`], apart from
/// [`free_port`]'s 20000..32000 and rtpengine's 10000..20000, so one test's SIP port cannot
/// land on another's video socket.
pub fn free_media_ports(ip: Ipv4Addr) -> u16 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seed = port_seed(&COUNTER, 7919);
    let mut guard = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = guard.get_or_insert_with(HashSet::new);
    for i in 0..MEDIA_BLOCKS {
        let base = media_block(seed.wrapping_add(i.wrapping_mul(13)));
        let ports = base..base + 4;
        if ports.clone().any(|p| taken.contains(&p)) {
            continue;
        }
        // Held together while checking, so the four are free at the same moment, on the
        // address sipp takes and on the one most tests use.
        let bound: Vec<_> = ports
            .clone()
            .flat_map(|p| {
                let also = (ip != LOOPBACK).then_some(LOOPBACK);
                std::iter::once(ip)
                    .chain(also)
                    .map(move |a| UdpSocket::bind((a, p)))
            })
            .collect();
        if bound.iter().all(Result::is_ok) {
            taken.extend(ports);
            return base;
        }
    }
    panic!("no four free loopback ports in 61000..65532");
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((LOOPBACK, port))
}

/// A temporary directory, removed on drop unless the test is failing (then its path is printed
/// so logs can be read).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/kubesbc-e2e-<label>-<pid>-<n>`.
    pub fn new(label: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "kubesbc-e2e-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Sends `signal` (`TERM`, `KILL`, `INT`) to one process by PID, or to a process group when
/// `pid` is negative.
pub fn send_signal(pid: i64, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sleeps until 50 ms into the next wall-clock second, so that a few quick requests that
/// follow fall into one per-second window of a rate limit.
pub fn sleep_into_next_second() {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_millis();
    std::thread::sleep(Duration::from_millis(u64::from(1050 - ms)));
}

/// The last `max` bytes of a log file, for failure reports.
pub fn tail_file(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Lower-case hex MD5 of `s` (digest credentials in auth tests).
pub fn md5_hex(s: &str) -> String {
    use md5::Digest as _;
    md5::Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_media_block_fits_below_65536_and_none_overlaps_the_next() {
        let bases: Vec<u16> = (0..MEDIA_BLOCKS).map(media_block).collect();
        for w in bases.windows(2) {
            assert_eq!(w[1], w[0] + 4);
        }
        assert_eq!(bases[0], 61_000);
        let last = *bases.last().expect("blocks");
        assert!(
            last.checked_add(4).is_some(),
            "the last block is {last}..{}",
            u32::from(last) + 4
        );
        // Any seed lands on a block.
        assert_eq!(
            media_block(u32::MAX),
            bases[(u32::MAX % MEDIA_BLOCKS) as usize]
        );
    }
}
