//! A `redis-server` for the store tests: Debian's binary on a fresh loopback port, without
//! persistence, stopped by PID on drop (and restartable on the same port, for outage tests).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, free_port, loopback, tail_file, wait_for};

/// A running (or deliberately stopped) redis-server.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port and waits until it accepts connections.
    /// Call [`crate::require_tool`]`("redis-server")` first.
    pub fn start(dir: &TempDir) -> RedisServer {
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            log: dir.path().join("redis.log"),
        };
        r.restart();
        r
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
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        eprintln!(
            "started redis-server pid {} on port {}",
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
                "redis-server did not listen on {addr}; log:\n{}",
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
