//! A throw-away `redis-server` on an ephemeral loopback port, stopped by PID on drop.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, free_port, loopback, require_tool, tail_file, wait_for};

/// A running `redis-server --port P --save '' --appendonly no`.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl RedisServer {
    /// Starts one; `None` (after a loud skip) when redis-server is not installed, a panic
    /// under `CI=true`.
    pub fn start(dir: &TempDir) -> Option<RedisServer> {
        if !require_tool("redis-server") {
            return None;
        }
        let port = free_port();
        let log = dir.path().join(format!("redis-{port}.log"));
        let f = File::create(&log).expect("create redis log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let mut r = RedisServer {
            child,
            addr: loopback(port),
            log,
        };
        let up = wait_for(Duration::from_secs(5), || {
            r.command(&["PING"])
                .filter(|p| p.starts_with("+PONG"))
                .map(drop)
        });
        if up.is_none() {
            r.stop();
            panic!(
                "redis-server did not answer PING:\n{}",
                tail_file(&r.log, 2000)
            );
        }
        Some(r)
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Sends one command and returns the raw reply (RESP text), `None` if unreachable.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
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

    /// Stops the server (SIGKILL by PID) and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
