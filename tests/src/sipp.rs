//! sipp processes: UAS backends and UAC call generators, with their counts.
//!
//! Every sipp runs in the foreground (`-nostdin`), is owned by a [`Sipp`] guard (SIGTERM, then
//! SIGKILL, by PID on drop) and writes its statistics (`-trace_stat`) and message log
//! (`-trace_msg`) into the test's temp dir, from which the counts are read.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{LOOPBACK, TempDir, send_signal, tail_file, wait_for};

/// The transport sipp uses, with one socket (`-t u1` / `-t t1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SippTransport {
    /// `-t u1`.
    Udp,
    /// `-t t1`.
    Tcp,
}

impl SippTransport {
    fn flag(self) -> &'static str {
        match self {
            SippTransport::Udp => "u1",
            SippTransport::Tcp => "t1",
        }
    }

    /// `;transport=tcp` for URIs towards a backend of this transport, or nothing for UDP.
    pub fn uri_param(self) -> &'static str {
        match self {
            SippTransport::Udp => "",
            SippTransport::Tcp => ";transport=tcp",
        }
    }
}

/// Options of a UAC run.
#[derive(Debug, Clone)]
pub struct UacOptions {
    /// Calls per second (`-r`).
    pub rate: u32,
    /// Calls to place, then exit (`-m`).
    pub calls: u32,
    /// Milliseconds between ACK and BYE (`-d`).
    pub hold_ms: u32,
    /// Global bound on the run (`-timeout`), seconds.
    pub timeout_s: u32,
    /// The Request-URI's user part (`-s`); `None`: sipp's default, `service`.
    pub service: Option<String>,
}

impl Default for UacOptions {
    fn default() -> Self {
        UacOptions {
            rate: 20,
            calls: 20,
            hold_ms: 100,
            timeout_s: 60,
            service: None,
        }
    }
}

impl UacOptions {
    /// `calls` calls at `rate` per second, each held 100 ms, the run bounded by the time its
    /// calls need plus 40 s.
    pub fn new(calls: u32, rate: u32) -> UacOptions {
        UacOptions {
            rate,
            calls,
            hold_ms: 100,
            timeout_s: calls / rate.max(1) + 40,
            service: None,
        }
    }

    /// Holds each call `ms` milliseconds between ACK and BYE.
    pub fn with_hold_ms(self, ms: u32) -> UacOptions {
        UacOptions {
            hold_ms: ms,
            ..self
        }
    }

    /// Calls `user` (the Request-URI's user part, sipp's `-s`).
    pub fn with_service(self, user: &str) -> UacOptions {
        UacOptions {
            service: Some(user.to_owned()),
            ..self
        }
    }

    /// Bounds the whole run by `secs` seconds.
    pub fn with_timeout_s(self, secs: u32) -> UacOptions {
        UacOptions {
            timeout_s: secs,
            ..self
        }
    }
}

/// A running sipp process.
#[derive(Debug)]
pub struct Sipp {
    name: String,
    child: Option<Child>,
    exit: Option<i32>,
    port: u16,
    out: PathBuf,
    stat: PathBuf,
    msg: PathBuf,
    err: PathBuf,
}

impl Sipp {
    /// Starts a sipp UAS (backend) running `scenario` on 127.0.0.1:`port`, and waits until the
    /// port is bound.
    pub fn uas(
        dir: &TempDir,
        name: &str,
        scenario: &Path,
        port: u16,
        transport: SippTransport,
    ) -> Sipp {
        Sipp::uas_on(dir, name, scenario, LOOPBACK, port, transport)
    }

    /// Like [`Sipp::uas`], on another loopback address (127.0.0.11: a backend the proxy can
    /// tell apart from others by its address alone).
    pub fn uas_on(
        dir: &TempDir,
        name: &str,
        scenario: &Path,
        ip: std::net::Ipv4Addr,
        port: u16,
        transport: SippTransport,
    ) -> Sipp {
        assert!(ip.is_loopback(), "only loopback addresses");
        let mut s = Sipp::spawn_on(dir, name, scenario, ip, port, transport, &[]);
        let bound = wait_for(Duration::from_secs(5), || {
            s.check_alive();
            port_bound(ip, port, transport).then_some(())
        });
        if bound.is_none() {
            panic!(
                "sipp {name} did not bind {ip}:{port} within 5 s; output:\n{}",
                tail_file(&s.out, 4000)
            );
        }
        s
    }

    /// Starts a sipp UAC sending calls of `scenario` to `target` from 127.0.0.1:`port`.
    pub fn uac(
        dir: &TempDir,
        name: &str,
        scenario: &Path,
        port: u16,
        target: SocketAddr,
        transport: SippTransport,
        opts: &UacOptions,
    ) -> Sipp {
        assert!(target.ip().is_loopback(), "only loopback targets");
        Sipp::spawn(
            dir,
            name,
            scenario,
            port,
            transport,
            &uac_args(target, opts),
        )
    }

    /// Like [`Sipp::uac`], sending from `local_ip` (another loopback address, such as
    /// 127.0.0.2, so that the proxy sees a different source).
    #[allow(clippy::too_many_arguments)]
    pub fn uac_from(
        dir: &TempDir,
        name: &str,
        scenario: &Path,
        local_ip: std::net::Ipv4Addr,
        port: u16,
        target: SocketAddr,
        transport: SippTransport,
        opts: &UacOptions,
    ) -> Sipp {
        assert!(local_ip.is_loopback(), "only loopback sources");
        assert!(target.ip().is_loopback(), "only loopback targets");
        let args = uac_args(target, opts);
        Sipp::spawn_on(dir, name, scenario, local_ip, port, transport, &args)
    }

    fn spawn(
        dir: &TempDir,
        name: &str,
        scenario: &Path,
        port: u16,
        transport: SippTransport,
        extra: &[String],
    ) -> Sipp {
        Sipp::spawn_on(dir, name, scenario, LOOPBACK, port, transport, extra)
    }

    fn spawn_on(
        dir: &TempDir,
        name: &str,
        scenario: &Path,
        ip: std::net::Ipv4Addr,
        port: u16,
        transport: SippTransport,
        extra: &[String],
    ) -> Sipp {
        assert!(scenario.exists(), "missing scenario {}", scenario.display());
        let p = |ext: &str| dir.path().join(format!("{name}.{ext}"));
        let (out, stat, msg, err) = (p("out"), p("csv"), p("msg"), p("err"));
        let out_file = File::create(&out).expect("create sipp output file");
        let err_file = out_file.try_clone().expect("clone file handle");
        let mut cmd = Command::new("sipp");
        cmd.current_dir(dir.path())
            .args(extra)
            .arg("-sf")
            .arg(scenario)
            .args(["-i", &ip.to_string(), "-p", &port.to_string()])
            .args(["-t", transport.flag()])
            // Media ports: sipp binds four even without RTP; keep them off the defaults
            // shared by every sipp on the box, and off the SIP ports of other tests.
            .args(["-mp", &crate::free_media_ports(ip).to_string()])
            .args([
                "-nostdin",
                "-trace_stat",
                "-fd",
                "1",
                "-trace_msg",
                "-trace_err",
            ])
            .arg("-stf")
            .arg(&stat)
            .arg("-message_file")
            .arg(&msg)
            .arg("-error_file")
            .arg(&err)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_file))
            .stderr(Stdio::from(err_file));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sipp ({e}); is sip-tester installed?"));
        Sipp {
            name: name.to_owned(),
            child: Some(child),
            exit: None,
            port,
            out,
            stat,
            msg,
            err,
        }
    }

    /// The PID of the sipp process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port it listens on / sends from.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn check_alive(&mut self) {
        if let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            panic!(
                "sipp {} exited early ({st}); output:\n{}",
                self.name,
                tail_file(&self.out, 4000)
            );
        }
    }

    /// Waits for sipp to exit by itself (a UAC after its calls); kills it and panics with its
    /// output after `timeout`. Returns sipp's exit code (0: every call succeeded).
    pub fn wait(&mut self, timeout: Duration) -> i32 {
        if let Some(code) = self.exit {
            return code;
        }
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            return -1;
        };
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    let code = st.code().unwrap_or(-1);
                    self.exit = Some(code);
                    return code;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    self.stop();
                    panic!(
                        "sipp {} still running after {timeout:?}; output:\n{}",
                        self.name,
                        tail_file(&self.out, 4000)
                    );
                }
            }
        }
    }

    /// Stops sipp: SIGTERM (sipp then writes its final statistics), SIGKILL after 3 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(st)) = child.try_wait() {
            self.exit = st.code();
            return;
        }
        send_signal(i64::from(child.id()), "TERM");
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.exit = Some(st.code().unwrap_or(-1));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.exit = Some(-1);
    }

    /// Kills sipp at once (SIGKILL): a backend that dies without a word.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.exit = Some(-9);
        }
    }

    /// Call counters from the last line of sipp's statistics file.
    pub fn stats(&self) -> CallStats {
        CallStats::from_csv(&std::fs::read_to_string(&self.stat).unwrap_or_default())
    }

    /// The messages sipp sent and received so far.
    pub fn messages(&self) -> MessageLog {
        MessageLog::parse(&std::fs::read_to_string(&self.msg).unwrap_or_default())
    }

    /// sipp's console output, its error log and the tail of its message log, for reports.
    pub fn report(&self) -> String {
        format!(
            "==== sipp {} (port {}) output ====\n{}\n==== errors ====\n{}\n==== last messages ====\n{}",
            self.name,
            self.port,
            tail_file(&self.out, 3000),
            tail_file(&self.err, 3000),
            tail_file(&self.msg, 3000)
        )
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

fn uac_args(target: SocketAddr, opts: &UacOptions) -> Vec<String> {
    let mut args = vec![
        target.to_string(),
        "-r".into(),
        opts.rate.to_string(),
        "-m".into(),
        opts.calls.to_string(),
        "-d".into(),
        opts.hold_ms.to_string(),
        "-timeout".into(),
        format!("{}s", opts.timeout_s),
        "-timeout_error".into(),
    ];
    if let Some(user) = &opts.service {
        args.extend(["-s".into(), user.clone()]);
    }
    args
}

fn port_bound(ip: std::net::Ipv4Addr, port: u16, transport: SippTransport) -> bool {
    match transport {
        SippTransport::Udp => UdpSocket::bind((ip, port)).is_err(),
        SippTransport::Tcp => TcpListener::bind((ip, port)).is_err(),
    }
}

/// Cumulative call counters of one sipp run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls created (UAC) or received (UAS).
    pub created: u64,
    /// Calls that went through the scenario to its end.
    pub successful: u64,
    /// Calls that failed.
    pub failed: u64,
}

impl CallStats {
    fn from_csv(text: &str) -> CallStats {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else {
            return CallStats::default();
        };
        let Some(last) = lines.next_back() else {
            return CallStats::default();
        };
        let cols: Vec<&str> = header.split(';').collect();
        let vals: Vec<&str> = last.split(';').collect();
        let get = |name: &str| {
            cols.iter()
                .position(|c| *c == name)
                .and_then(|i| vals.get(i))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        CallStats {
            created: get("TotalCallCreated"),
            successful: get("SuccessfulCall(C)"),
            failed: get("FailedCall(C)"),
        }
    }
}

/// One message from sipp's message log.
#[derive(Debug, Clone)]
pub struct LoggedMessage {
    /// Received (`true`) or sent.
    pub received: bool,
    /// The request line or status line.
    pub start_line: String,
    /// Header lines, in order, as `(name, value)`.
    pub headers: Vec<(String, String)>,
}

impl LoggedMessage {
    /// The method of a request (`INVITE`), or `None` for a response.
    pub fn method(&self) -> Option<&str> {
        if self.start_line.starts_with("SIP/2.0") {
            None
        } else {
            self.start_line.split(' ').next()
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.start_line
            .strip_prefix("SIP/2.0 ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    /// Every value of header `name` (case-insensitive; `i`/`v`/`r` compact forms included
    /// for Call-ID, Via and Route/Record-Route are not compact in sipp's output).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let compact = match name.to_ascii_lowercase().as_str() {
            "call-id" => Some("i"),
            "via" => Some("v"),
            _ => None,
        };
        self.headers
            .iter()
            .filter(|(n, _)| {
                n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c))
            })
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.header_values("Call-ID").first().copied()
    }
}

/// sipp's message log (`-trace_msg`), parsed.
#[derive(Debug, Clone, Default)]
pub struct MessageLog {
    /// Messages in log order.
    pub messages: Vec<LoggedMessage>,
}

impl MessageLog {
    /// Parses the text of a message log.
    pub fn parse(text: &str) -> MessageLog {
        let mut messages = Vec::new();
        for block in text.split("-----------------------------------------------") {
            let mut lines = block.lines();
            let _stamp = lines.next();
            let Some(kind) = lines.next() else { continue };
            let received = kind.contains("received");
            if !received && !kind.contains("sent") {
                continue;
            }
            let mut lines = lines.skip_while(|l| l.trim().is_empty());
            let Some(start_line) = lines.next() else {
                continue;
            };
            let headers = lines
                .take_while(|l| !l.trim().is_empty())
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect();
            messages.push(LoggedMessage {
                received,
                start_line: start_line.trim().to_owned(),
                headers,
            });
        }
        MessageLog { messages }
    }

    /// Received requests of `method`.
    pub fn received_requests<'a>(
        &'a self,
        method: &'a str,
    ) -> impl Iterator<Item = &'a LoggedMessage> + 'a {
        self.messages
            .iter()
            .filter(move |m| m.received && m.method() == Some(method))
    }

    /// Sent requests of `method`.
    pub fn sent_requests<'a>(
        &'a self,
        method: &'a str,
    ) -> impl Iterator<Item = &'a LoggedMessage> + 'a {
        self.messages
            .iter()
            .filter(move |m| !m.received && m.method() == Some(method))
    }

    /// Distinct Call-IDs of received requests of `method` (retransmissions counted once).
    pub fn calls_received(&self, method: &str) -> BTreeSet<String> {
        self.received_requests(method)
            .filter_map(|m| m.call_id().map(str::to_owned))
            .collect()
    }

    /// Distinct Call-IDs of received responses with status `code`.
    pub fn responses_received(&self, code: u16) -> BTreeSet<String> {
        self.messages
            .iter()
            .filter(|m| m.received && m.status() == Some(code))
            .filter_map(|m| m.call_id().map(str::to_owned))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_final_counters_from_stat_file() {
        let csv = "StartTime;TotalCallCreated;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C)\n\
                   x;0;0;0;0;0\n\
                   x;10;2;9;1;1\n";
        let s = CallStats::from_csv(csv);
        assert_eq!(
            s,
            CallStats {
                created: 10,
                successful: 9,
                failed: 1
            }
        );
    }

    #[test]
    fn parses_message_log_blocks() {
        let log = "----------------------------------------------- 2026-11-24 06:31:12.050462\n\
UDP message received [527] bytes :\n\nINVITE sip:s@127.0.0.1:1 SIP/2.0\nVia: SIP/2.0/UDP a;branch=1\nCall-ID: c1\n\nv=0\n\n\
----------------------------------------------- 2026-11-24 06:31:12.050544\n\
UDP message sent (313 bytes):\n\nSIP/2.0 180 Ringing\nCall-ID: c1\n\n\
----------------------------------------------- 2026-11-24 06:31:12.050544\n\
UDP message received [313] bytes :\n\nINVITE sip:s@127.0.0.1:1 SIP/2.0\ni: c1\n\n";
        let m = MessageLog::parse(log);
        assert_eq!(m.messages.len(), 3);
        assert_eq!(m.received_requests("INVITE").count(), 2);
        assert_eq!(m.calls_received("INVITE").len(), 1);
        assert_eq!(m.messages[1].status(), Some(180));
        assert_eq!(m.messages[0].header_values("via").len(), 1);
    }
}
