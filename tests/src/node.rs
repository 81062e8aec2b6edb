//! WebSocket SIP clients we did not write, JsSIP and sip.js, run in Node from `tests/js/`
//! (package.json and package-lock.json committed; `npm ci` run here when node_modules is
//! missing, or by scripts/install-deps.sh).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{TempDir, send_signal, tail_file, wait_for};

/// `tests/js/`.
pub fn js_dir() -> PathBuf {
    crate::crate_dir().join("js")
}

/// Whether node and npm are installed and `tests/js/node_modules` is there (installed now
/// with `npm ci` when it is not). See [`crate::require_tool`] for what a missing tool does.
pub fn tools() -> bool {
    if !(crate::require_tool("node") && crate::require_tool("npm")) {
        return false;
    }
    ensure_installed();
    true
}

/// The copy of `package-lock.json` written into `node_modules` after a successful `npm ci`
/// (here or by scripts/install-deps.sh): a `node_modules` left from an older lock file (a package
/// added since) is installed again instead of failing with "Cannot find module".
const STAMP: &str = ".kubesbc-package-lock.json";

fn installed(dir: &Path) -> bool {
    match (
        std::fs::read(dir.join("package-lock.json")),
        std::fs::read(dir.join("node_modules").join(STAMP)),
    ) {
        (Ok(lock), Ok(stamp)) => lock == stamp,
        _ => false,
    }
}

/// Runs `npm ci` once: test processes run in parallel, so a lock directory (mkdir is atomic)
/// lets one install while the others wait for it.
fn ensure_installed() {
    let dir = js_dir();
    if installed(&dir) {
        return;
    }
    let lock = dir.join(".npm-ci.lock");
    if std::fs::create_dir(&lock).is_ok() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output();
        // The stamp only after a successful install, and before the lock goes, so a waiting
        // test never sees a half-installed node_modules as installed.
        let stamped = match &out {
            Ok(o) if o.status.success() => Some(std::fs::copy(
                dir.join("package-lock.json"),
                dir.join("node_modules").join(STAMP),
            )),
            _ => None,
        };
        let _ = std::fs::remove_dir(&lock);
        match out {
            Ok(o) if o.status.success() => {
                if let Some(Err(e)) = stamped {
                    panic!("cannot write {STAMP} in {}: {e}", dir.display());
                }
            }
            Ok(o) => panic!(
                "npm ci in {} failed:\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run npm: {e}"),
        }
    } else {
        let done = wait_for(Duration::from_secs(180), || {
            (installed(&dir) || !lock.exists()).then_some(())
        });
        assert!(
            done.is_some() && installed(&dir),
            "another test's npm ci in {} did not finish (remove {} if it is stale)",
            dir.display(),
            lock.display()
        );
    }
}

/// What one client script printed.
#[derive(Debug, Clone)]
pub struct ClientRun {
    /// Exit code (`None`: killed by the timeout).
    pub code: Option<i32>,
    /// The `EVENT ...` lines, in order, without the prefix.
    pub events: Vec<String>,
    /// Everything it printed.
    pub output: String,
}

impl ClientRun {
    /// Asserts that the script exited 0 and printed each of `expected`, in that order.
    pub fn assert_events(&self, expected: &[&str]) {
        let mut at = 0;
        for want in expected {
            match self.events.iter().skip(at).position(|e| e == want) {
                Some(i) => at += i + 1,
                None => panic!(
                    "no event {want:?} (in order) in {:?}; output:\n{}",
                    self.events, self.output
                ),
            }
        }
        assert_eq!(
            self.code,
            Some(0),
            "client exit code; output:\n{}",
            self.output
        );
    }
}

/// Runs `node tests/js/<script> ARGS` with `NODE_EXTRA_CA_CERTS=ca` (when given) until it
/// ends or `timeout` passes (then it is stopped by PID).
pub fn run_client(
    dir: &TempDir,
    name: &str,
    script: &str,
    args: &[&str],
    ca: Option<&Path>,
    timeout: Duration,
) -> ClientRun {
    spawn_client(dir, name, script, args, ca).wait(timeout)
}

/// A client script still running: the test talks to it meanwhile.
pub struct RunningClient {
    child: std::process::Child,
    log: PathBuf,
}

/// Starts `node tests/js/<script> ARGS` as [`run_client`] does, without waiting.
pub fn spawn_client(
    dir: &TempDir,
    name: &str,
    script: &str,
    args: &[&str],
    ca: Option<&Path>,
) -> RunningClient {
    let log = dir.path().join(format!("{name}.log"));
    let f = File::create(&log).expect("create client log");
    let mut cmd = Command::new("node");
    cmd.arg(js_dir().join(script))
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("clone log handle"))
        .stderr(f);
    if let Some(ca) = ca {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    RunningClient { child, log }
}

impl RunningClient {
    /// Waits until the script printed `EVENT <event>`; panics with its output if it did not
    /// within `timeout`.
    pub fn wait_event(&self, event: &str, timeout: Duration) {
        let line = format!("EVENT {event}");
        let seen = wait_for(timeout, || {
            tail_file(&self.log, 64_000)
                .lines()
                .any(|l| l == line)
                .then_some(())
        });
        assert!(
            seen.is_some(),
            "no {line:?}; output:\n{}",
            tail_file(&self.log, 64_000)
        );
    }

    /// Waits for the script to end (stopped by PID after `timeout`) and reads what it printed.
    pub fn wait(mut self, timeout: Duration) -> ClientRun {
        let code = match wait_for(timeout, || self.child.try_wait().ok().flatten()) {
            Some(st) => st.code(),
            None => {
                send_signal(i64::from(self.child.id()), "KILL");
                let _ = self.child.wait();
                None
            }
        };
        let output = tail_file(&self.log, 64_000);
        let events = output
            .lines()
            .filter_map(|l| l.strip_prefix("EVENT "))
            .map(str::to_owned)
            .collect();
        ClientRun {
            code,
            events,
            output,
        }
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(i64::from(self.child.id()), "KILL");
            let _ = self.child.wait();
        }
    }
}
