//! A `redis-server` for the store tests: Debian's binary on a fresh loopback port, without
//! persistence, stopped by PID on drop (and restartable on the same port, for outage tests).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, free_port, loopback, tail_file, wait_for};

/// A running (or deliberately stopped) redis-server (or redis-sentinel).
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    program: &'static str,
    conf: Option<PathBuf>,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port and waits until it accepts connections.
    /// Call [`crate::require_tool`]`("redis-server")` first.
    pub fn start(dir: &TempDir) -> RedisServer {
        RedisServer::start_with(dir, "redis", &[])
    }

    /// Starts redis-server with `extra` arguments (`--replicaof ...`, `--cluster-enabled
    /// yes`), logging to `<name>.log`.
    pub fn start_with(dir: &TempDir, name: &str, extra: &[&str]) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            log: dir.path().join(format!("{name}.log")),
            program: "redis-server",
            conf: None,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
        };
        r.restart();
        r
    }

    /// Starts redis-sentinel with `conf` (written to `<name>.conf`; Sentinel rewrites it).
    /// Call [`crate::require_tool`]`("redis-sentinel")` first.
    pub fn start_sentinel(dir: &TempDir, name: &str, conf: &str) -> RedisServer {
        let path = dir.path().join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("sentinel.conf");
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            log: dir.path().join(format!("{name}.log")),
            program: "redis-sentinel",
            conf: Some(path),
            extra: Vec::new(),
        };
        r.restart();
        r
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 3000)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one command and returns the raw reply (RESP text), `None` if unreachable
    /// (provisioning credentials, reading what the sbc wrote).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s =
            TcpStream::connect_timeout(&loopback(self.port), Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The `store:` section of an sbc config pointing at this server, keys prefixed `e2e:`.
    pub fn store_config(&self) -> String {
        format!("store: {{url: \"{}\", keyPrefix: \"e2e:\"}}\n", self.url())
    }

    /// Whether the sbc wrote a key matching `pattern` here. When it did not, the sbc binary
    /// has no Redis store (a branch before the store lands): a loud skip, a failure under CI.
    pub fn sbc_wrote(&self, pattern: &str) -> bool {
        let keys = self.command(&["KEYS", pattern]).unwrap_or_default();
        if !keys.starts_with("*0") {
            return true;
        }
        let msg = "the sbc wrote nothing into Redis: this build has no Redis store";
        if crate::in_ci() {
            panic!("{msg}");
        }
        crate::loud_skip(msg);
        false
    }

    /// The PID while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server at once (SIGKILL by PID): an outage.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (state is gone: no persistence).
    pub fn restart(&mut self) {
        self.stop();
        let f = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("redis log");
        let mut cmd = Command::new(self.program);
        if let Some(c) = &self.conf {
            cmd.arg(c);
        }
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        if self.program == "redis-server" {
            cmd.args(["--save", "", "--appendonly", "no"]);
            // A replica's full sync still writes dump.rdb: into the test's directory, not
            // the working directory.
            if let Some(dir) = self.log.parent() {
                cmd.arg("--dir").arg(dir);
            }
        }
        let child = cmd
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        eprintln!(
            "started {} pid {} on port {}",
            self.program,
            child.id(),
            self.port
        );
        self.child = Some(child);
        let addr = loopback(self.port);
        let up = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        });
        if up.is_none() {
            panic!(
                "{} did not listen on {addr}; log:\n{}",
                self.program,
                tail_file(&self.log, 4000)
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
