//! Kamailio as a peer of the sbc (not as the proxy under test): a TLS backend in front of a
//! sipp UAS, or a TLS client forwarding a sipp caller's calls to the sbc. Configs live in
//! `tests/kamailio/`; the TLS module's settings are written by the test from its PKI.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::pki::{Pki, s};
use crate::{TempDir, loopback, send_signal, tail_file, wait_for};

/// Whether kamailio and its TLS module are installed (see [`crate::require_tool`]).
pub fn tls_tools() -> bool {
    if !crate::require_tool("kamailio") {
        return false;
    }
    if tls_module().is_some() {
        return true;
    }
    let msg =
        "Kamailio's tls.so is not installed (kamailio-tls-modules; ./scripts/install-deps.sh)";
    if crate::in_ci() {
        panic!("{msg}; CI=true makes this a failure");
    }
    crate::loud_skip(msg);
    false
}

fn tls_module() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/kamailio/modules",
        "/usr/lib/kamailio/modules",
    ]
    .iter()
    .chain(
        [
            "/usr/lib/aarch64-linux-gnu/kamailio/modules",
            "/usr/local/lib64/kamailio/modules",
        ]
        .iter(),
    )
    .map(|d| PathBuf::from(d).join("tls.so"))
    .find(|p| p.is_file())
}

/// Which certificate the Kamailio TLS client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    /// The good client certificate (signed by the test CA).
    Good,
    /// The one signed by another CA.
    Stranger,
}

/// Writes Kamailio's `tls.cfg`: the server side presents the test's server certificate; the
/// client side verifies servers against the test CA and presents `client`.
pub fn tls_cfg(dir: &TempDir, name: &str, pki: &Pki, client: ClientCert) -> PathBuf {
    let (cert, key) = match client {
        ClientCert::Good => (&pki.client_cert, &pki.client_key),
        ClientCert::Stranger => (&pki.stranger_cert, &pki.stranger_key),
    };
    dir.write(
        &format!("{name}-tls.cfg"),
        &format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n\
             certificate = {}\nprivate_key = {}\nca_list = {}\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
             certificate = {}\nprivate_key = {}\nca_list = {}\n",
            s(&pki.server_cert),
            s(&pki.server_key),
            s(&pki.ca),
            s(cert),
            s(key),
            s(&pki.ca),
        ),
    )
}

/// A running Kamailio, its process group stopped on drop.
#[derive(Debug)]
pub struct Kamailio {
    child: Option<Child>,
    log: PathBuf,
}

impl Kamailio {
    /// Starts `kamailio -f tests/kamailio/<cfg>` with `defines` (`NAME=VALUE`, strings quoted
    /// by the caller) and waits until TCP port `ready_port` on 127.0.0.1 accepts connections.
    pub fn start(
        dir: &TempDir,
        name: &str,
        cfg: &str,
        defines: &[String],
        ready_port: u16,
    ) -> Self {
        let cfg = crate::crate_dir().join("kamailio").join(cfg);
        let log = dir.path().join(format!("{name}.log"));
        let f = File::create(&log).expect("create kamailio log");
        let run = dir.path().join(name);
        std::fs::create_dir_all(&run).expect("create kamailio run dir");
        let kamailio = crate::which("kamailio").expect("kamailio installed");
        let mut cmd = Command::new(kamailio);
        cmd.arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-w")
            .arg(&run)
            .arg("-Y")
            .arg(&run);
        for d in defines {
            cmd.args(["-A", d]);
        }
        // Its own process group: Kamailio forks workers, and the group is stopped at once.
        cmd.current_dir(&run)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone log handle"))
            .stderr(f);
        eprintln!("starting kamailio {name}: {cmd:?}");
        let child = cmd.spawn().expect("start kamailio");
        let mut k = Kamailio {
            child: Some(child),
            log,
        };
        let up = wait_for(Duration::from_secs(10), || {
            if let Some(c) = k.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("kamailio {name} exited ({st}):\n{}", k.log_tail());
            }
            std::net::TcpStream::connect_timeout(&loopback(ready_port), Duration::from_millis(200))
                .ok()
                .map(|_| ())
        });
        if up.is_none() {
            panic!(
                "kamailio {name} did not listen on {ready_port} within 10 s:\n{}",
                k.log_tail()
            );
        }
        k
    }

    /// The end of its log.
    pub fn log_tail(&self) -> String {
        tail_file(&self.log, 12_000)
    }

    /// Waits until its log contains `needle`; `false` after `timeout`.
    pub fn logged(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.log_tail().contains(needle).then_some(())).is_some()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = i64::from(c.id());
            send_signal(-pid, "TERM");
            if wait_for(Duration::from_secs(5), || c.try_wait().ok().flatten()).is_none() {
                send_signal(-pid, "KILL");
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("==== kamailio log ====\n{}", self.log_tail());
        }
    }
}
