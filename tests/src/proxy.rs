//! The proxy under test: our `sbc`, or Kamailio standing in for it.
//!
//! `KUBESBC_E2E_PROXY=kamailio` selects Kamailio (with `tests/kamailio/dispatcher.cfg`); anything
//! else, or nothing, selects the `sbc` binary built next to the test executable
//! (`target/debug/sbc`; `KUBESBC_SBC_BIN` overrides the path). `KUBESBC_E2E_KAMAILIO_CFG`
//! replaces the Kamailio config (to check that a broken proxy fails the tests).

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{TempDir, free_port, http, loopback, send_signal, sip, tail_file, wait_for};

/// Which proxy the e2e tests drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// Our `sbc` binary.
    Sbc,
    /// Debian's `kamailio` with `tests/kamailio/dispatcher.cfg`.
    Kamailio,
}

impl ProxyKind {
    /// The kind selected by `KUBESBC_E2E_PROXY` (default: sbc).
    pub fn from_env() -> ProxyKind {
        match std::env::var("KUBESBC_E2E_PROXY").as_deref() {
            Ok("kamailio") => ProxyKind::Kamailio,
            _ => ProxyKind::Sbc,
        }
    }

    /// Checks the tools this kind needs (see [`crate::require_tool`]).
    pub fn require_tools(self) -> bool {
        match self {
            ProxyKind::Sbc => true,
            ProxyKind::Kamailio => crate::require_tool("kamailio") && crate::require_tool("kamcmd"),
        }
    }
}

/// For tests of behaviour only our sbc has (exact reason phrases, config files, drain): under
/// Kamailio prints a loud SKIP line and returns `false`.
pub fn sbc_only() -> bool {
    if ProxyKind::from_env() == ProxyKind::Sbc {
        return true;
    }
    crate::loud_skip("sbc-only contract, not run with KUBESBC_E2E_PROXY=kamailio");
    false
}

/// A destination of the dispatcher list the proxy is started with.
#[derive(Debug, Clone)]
pub struct DispatcherDest {
    /// Set id.
    pub set: u32,
    /// SIP URI, `sip:127.0.0.1:5071` or `sip:127.0.0.1:5071;transport=tcp`.
    pub uri: String,
}

impl DispatcherDest {
    /// A destination of set 1 at `127.0.0.1:port` (`;transport=tcp` when `tcp`).
    pub fn local(port: u16, tcp: bool) -> DispatcherDest {
        DispatcherDest {
            set: 1,
            uri: format!(
                "sip:127.0.0.1:{port}{}",
                if tcp { ";transport=tcp" } else { "" }
            ),
        }
    }
}

/// How to start the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The SIP port (UDP and TCP); `None`: a free one.
    pub sip_port: Option<u16>,
    /// The Kamailio-format dispatcher list (written to a file).
    pub destinations: Vec<DispatcherDest>,
    /// Milliseconds between OPTIONS probes (Kamailio: rounded up to whole seconds).
    pub probe_interval_ms: u64,
    /// Milliseconds before a silent destination counts as failed (sbc only; Kamailio's
    /// config uses 2 s).
    pub reply_timeout_ms: u64,
    /// Further arguments for the sbc.
    pub extra_sbc_args: Vec<String>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            sip_port: None,
            destinations: Vec::new(),
            probe_interval_ms: 500,
            reply_timeout_ms: 1000,
            extra_sbc_args: Vec::new(),
        }
    }
}

/// Kamailio's `dispatcher.list` text for `dests`.
pub fn dispatcher_list(dests: &[DispatcherDest]) -> String {
    let mut s = String::from("# setid destination flags priority attrs\n");
    for d in dests {
        s.push_str(&format!("{} {} 0 0\n", d.set, d.uri));
    }
    s
}

/// A running proxy, stopped by PID on drop.
#[derive(Debug)]
pub struct Proxy {
    kind: ProxyKind,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    sip_port: u16,
    admin: Option<SocketAddr>,
    ctl_sock: Option<String>,
    log: PathBuf,
}

/// Path of the `sbc` binary: `KUBESBC_SBC_BIN`, else `target/<profile>/sbc` next to the test
/// executable (which lives in `target/<profile>/deps/`).
pub fn sbc_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBESBC_SBC_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps");
    dir.join("sbc")
}

fn require_sbc_binary() -> PathBuf {
    let bin = sbc_binary();
    assert!(
        bin.is_file(),
        "sbc binary not found at {}: build it first with `cargo build -p kubesbc-sbc --bin sbc` \
         (scripts/test.sh does), or set KUBESBC_SBC_BIN",
        bin.display()
    );
    bin
}

/// Output of an sbc run that was expected to end by itself.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code (`None`: killed by a signal or by the timeout).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `sbc ARGS` to completion (killed after `timeout`) and returns its output.
pub fn run_sbc(dir: &TempDir, args: &[&str], timeout: Duration) -> RunOutput {
    let bin = require_sbc_binary();
    let out = dir.path().join("run.stdout");
    let err = dir.path().join("run.stderr");
    let mut child = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("create stdout file"))
        .stderr(File::create(&err).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let deadline = Instant::now() + timeout;
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    RunOutput {
        code,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

impl Proxy {
    /// Starts the proxy selected by `KUBESBC_E2E_PROXY` with a dispatcher list, listening on
    /// UDP and TCP on one fresh loopback port, and waits until it answers.
    pub fn start(dir: &TempDir, opts: &ProxyOptions) -> Proxy {
        let list = dir.write("dispatcher.list", &dispatcher_list(&opts.destinations));
        match ProxyKind::from_env() {
            ProxyKind::Sbc => {
                let port = opts.sip_port.unwrap_or_else(free_port);
                let admin = loopback(free_port());
                let mut args: Vec<String> = vec![
                    "--listen".into(),
                    format!("udp:127.0.0.1:{port}"),
                    "--listen".into(),
                    format!("tcp:127.0.0.1:{port}"),
                    "--dispatcher-list".into(),
                    list.display().to_string(),
                    "--admin".into(),
                    admin.to_string(),
                    "--probe-interval-ms".into(),
                    opts.probe_interval_ms.to_string(),
                    "--reply-timeout-ms".into(),
                    opts.reply_timeout_ms.to_string(),
                ];
                args.extend(opts.extra_sbc_args.iter().cloned());
                Proxy::start_sbc(dir, &args, port, admin)
            }
            ProxyKind::Kamailio => Proxy::start_kamailio(dir, &list, opts),
        }
    }

    /// The sbc of the configuration `config` (written to `dir/sbc.yaml`) on `sip_port`, its
    /// admin endpoint on a free loopback port.
    pub fn start_sbc_config(dir: &TempDir, config: &str, sip_port: u16) -> Proxy {
        let file = dir.write("sbc.yaml", config);
        Proxy::start_sbc_file(dir, &file, sip_port)
    }

    /// The sbc of the configuration file `file` on `sip_port`, its admin endpoint on a free
    /// loopback port (a fresh one per start: a restarted replica never races its old one).
    pub fn start_sbc_file(dir: &TempDir, file: &Path, sip_port: u16) -> Proxy {
        let admin = crate::loopback(crate::free_port());
        let args = [
            "--config".to_owned(),
            file.display().to_string(),
            "--admin".to_owned(),
            admin.to_string(),
        ];
        Proxy::start_sbc(dir, &args, sip_port, admin)
    }

    /// Starts `sbc ARGS` whose SIP port is `sip_port` (UDP and TCP) and admin endpoint `admin`,
    /// and waits until `/healthz` answers 200 or an OPTIONS gets 200.
    pub fn start_sbc(dir: &TempDir, args: &[String], sip_port: u16, admin: SocketAddr) -> Proxy {
        let bin = require_sbc_binary();
        let log = dir.path().join("sbc.log");
        let f = File::create(&log).expect("create sbc log");
        let child = Command::new(&bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut p = Proxy {
            kind: ProxyKind::Sbc,
            child: Some(child),
            exit: None,
            sip_port,
            admin: Some(admin),
            ctl_sock: None,
            log,
        };
        eprintln!(
            "started sbc pid {:?}: {} {}",
            p.pid(),
            bin.display(),
            args.join(" ")
        );
        p.wait_answering();
        p
    }

    fn start_kamailio(dir: &TempDir, list: &Path, opts: &ProxyOptions) -> Proxy {
        let port = opts.sip_port.unwrap_or_else(free_port);
        // KUBESBC_E2E_KAMAILIO_CFG: another config, e.g. a deliberately broken one to check
        // that the tests catch it.
        let cfg = std::env::var_os("KUBESBC_E2E_KAMAILIO_CFG")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::crate_dir().join("kamailio").join("dispatcher.cfg"));
        let ctl = format!("unix:{}/kamailio.ctl", dir.path().display());
        let log = dir.path().join("kamailio.log");
        let f = File::create(&log).expect("create kamailio log");
        let ping_s = opts.probe_interval_ms.div_ceil(1000).max(1);
        let kamailio = crate::which("kamailio").expect("kamailio installed");
        let mut cmd = Command::new(kamailio);
        cmd.arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-w")
            .arg(dir.path())
            .arg("-Y")
            .arg(dir.path())
            .args(["-A", &format!("LISTEN_PORT={port}")])
            .args(["-A", &format!("DS_LIST=\"{}\"", list.display())])
            .args(["-A", &format!("CTL_SOCK=\"{ctl}\"")])
            .args(["-A", &format!("DS_PING_INTERVAL={ping_s}")])
            .args(["-A", "WORKERS=2", "-A", "TCP_WORKERS=2"])
            .current_dir(dir.path())
            // Its own process group: Kamailio forks workers, and the group is stopped at once.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f);
        eprintln!("starting kamailio: {cmd:?}");
        let child = cmd.spawn().expect("start kamailio");
        let mut p = Proxy {
            kind: ProxyKind::Kamailio,
            child: Some(child),
            exit: None,
            sip_port: port,
            admin: None,
            ctl_sock: Some(ctl),
            log,
        };
        p.wait_answering();
        p
    }

    fn wait_answering(&mut self) {
        let addr = self.sip_addr();
        let admin = self.admin;
        let ok = wait_for(Duration::from_secs(15), || {
            if let Some(st) = self.try_exit() {
                panic!(
                    "{:?} exited during startup ({st}); log:\n{}",
                    self.kind,
                    self.log_tail()
                );
            }
            let healthy = admin.is_some_and(|a| {
                http::get(a, "/healthz", Duration::from_millis(300))
                    .is_some_and(|r| r.status == 200)
            });
            (healthy
                || sip::options_ping(addr, Duration::from_millis(300))
                    .is_some_and(|r| r.code == 200))
            .then_some(())
        });
        if ok.is_none() {
            panic!(
                "{:?} did not answer /healthz nor OPTIONS on {addr} within 15 s; log:\n{}",
                self.kind,
                self.log_tail()
            );
        }
    }

    /// Which proxy this is.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The PID of the proxy's main process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `127.0.0.1:PORT` of its SIP listeners (UDP and TCP).
    pub fn sip_addr(&self) -> SocketAddr {
        loopback(self.sip_port)
    }

    /// The admin endpoint (sbc only).
    pub fn admin(&self) -> SocketAddr {
        self.admin
            .expect("the admin endpoint exists only for the sbc")
    }

    /// `sbc ctl dispatcher list --admin ADDR`, or `kamcmd dispatcher.list` for Kamailio.
    pub fn dispatcher_listing(&self) -> String {
        let out = match self.kind {
            ProxyKind::Sbc => Command::new(sbc_binary())
                .args(["ctl", "dispatcher", "list", "--admin"])
                .arg(self.admin().to_string())
                .output(),
            ProxyKind::Kamailio => Command::new("kamcmd")
                .arg("-s")
                .arg(self.ctl_sock.as_deref().unwrap_or_default())
                .arg("dispatcher.list")
                .output(),
        };
        match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(cannot run the dispatcher listing: {e})"),
        }
    }

    /// The flags (`AP`, `IP`, ...) the dispatcher listing shows for `uri`.
    pub fn destination_flags(&self, uri: &str) -> Option<String> {
        destination_flags(&self.dispatcher_listing(), uri)
    }

    /// Waits until the listing shows `uri` active (`up`) or inactive/disabled (`!up`);
    /// panics with the listing after `timeout`.
    pub fn wait_destination(&self, uri: &str, up: bool, timeout: Duration) {
        let ok = wait_for(timeout, || {
            let flags = self.destination_flags(uri)?;
            let is_up = flags.starts_with('A');
            let is_down = flags.starts_with('I') || flags.starts_with('D');
            ((up && is_up) || (!up && is_down)).then_some(())
        });
        if ok.is_none() {
            panic!(
                "destination {uri} not {} within {timeout:?}; listing:\n{}",
                if up { "up" } else { "down" },
                self.dispatcher_listing()
            );
        }
    }

    /// The text of `/metrics` (sbc only), empty when the endpoint does not answer.
    pub fn metrics(&self) -> String {
        http::get(self.admin(), "/metrics", Duration::from_secs(3))
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// The value of the first sample of `series` in `/metrics` (a full series name with
    /// labels, or a bare name).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Asserts that `/metrics` contains each of `samples` (series with labels, and a value
    /// where the test fixes one).
    pub fn assert_metrics_contain(&self, samples: &[&str]) {
        let metrics = self.metrics();
        for sample in samples {
            assert!(
                metrics.contains(sample),
                "no {sample} in /metrics:\n{metrics}"
            );
        }
    }

    /// Waits until the proxy's log contains `needle` and returns the log's end; panics with
    /// it after `timeout`.
    pub fn wait_logged(&self, needle: &str, timeout: Duration) -> String {
        wait_for(timeout, || {
            let log = self.log_tail();
            log.contains(needle).then_some(log)
        })
        .unwrap_or_else(|| {
            panic!(
                "no {needle:?} logged within {timeout:?}:\n{}",
                self.log_tail()
            )
        })
    }

    /// Sends SIGTERM (to the process group for Kamailio).
    pub fn terminate(&self) {
        if let Some(pid) = self.pid() {
            let pid = i64::from(pid);
            match self.kind {
                ProxyKind::Sbc => send_signal(pid, "TERM"),
                ProxyKind::Kamailio => send_signal(-pid, "TERM"),
            }
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.exit = Some(st);
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.try_exit())
    }

    /// The end of the proxy's log.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 12_000)
    }

    /// Stops the proxy: SIGTERM, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if self.try_exit().is_none() {
            self.terminate();
            if self.wait_exit(Duration::from_secs(5)).is_none()
                && let Some(pid) = self.pid()
            {
                let pid = i64::from(pid);
                send_signal(
                    if self.kind == ProxyKind::Kamailio {
                        -pid
                    } else {
                        pid
                    },
                    "KILL",
                );
                let _ = self.wait_exit(Duration::from_secs(2));
            }
        }
        self.child = None;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("==== {:?} log ====\n{}", self.kind, self.log_tail());
        }
    }
}

/// Finds the flags of `uri` in a dispatcher listing, in kamcmd's tree format (`URI: ...` then
/// `FLAGS: AP`) or in a table with the flags on the URI's line.
pub fn destination_flags(listing: &str, uri: &str) -> Option<String> {
    let lines: Vec<&str> = listing.lines().collect();
    let at = lines.iter().position(|l| contains_uri(l, uri))?;
    lines
        .iter()
        .skip(at)
        .take(4)
        .enumerate()
        // Past the URI's own line, stop at the next destination.
        .take_while(|(i, l)| *i == 0 || !l.contains("sip:"))
        .flat_map(|(_, l)| l.split(|c: char| c.is_whitespace() || c == ',' || c == '|'))
        .map(|t| t.trim_matches(|c: char| c == '"' || c == ':'))
        .find(|t| is_flags(t))
        .map(str::to_owned)
}

fn contains_uri(line: &str, uri: &str) -> bool {
    line.match_indices(uri).any(|(i, _)| {
        !line
            .get(i + uri.len()..)
            .and_then(|r| r.chars().next())
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn is_flags(t: &str) -> bool {
    let b = t.as_bytes();
    matches!(b.first(), Some(b'A' | b'I' | b'D' | b'T'))
        && b.len() <= 2
        && b.get(1).is_none_or(|c| matches!(c, b'P' | b'X'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_flags_in_kamcmd_tree_and_in_tables() {
        let kam = "{\n\tSET: {\n\t\tTARGETS: {\n\t\t\tDEST: {\n\t\t\t\tURI: sip:127.0.0.1:25071\n\t\t\t\tFLAGS: AP\n\t\t\t\tPRIORITY: 0\n\t\t\t}\n\t\t\tDEST: {\n\t\t\t\tURI: sip:127.0.0.1:25072\n\t\t\t\tFLAGS: IP\n";
        let table = "SET URI FLAGS PRIORITY\n1 sip:127.0.0.1:5071;transport=tcp IP 0\n1 sip:127.0.0.1:5072 AP 0\n";
        let cases = [
            (kam, "sip:127.0.0.1:25071", Some("AP")),
            (kam, "sip:127.0.0.1:25072", Some("IP")),
            (kam, "sip:127.0.0.1:2507", None),
            (table, "sip:127.0.0.1:5071", Some("IP")),
            (table, "sip:127.0.0.1:5072", Some("AP")),
        ];
        for (listing, uri, flags) in cases {
            assert_eq!(destination_flags(listing, uri).as_deref(), flags, "{uri}");
        }
    }
}
