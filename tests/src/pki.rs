//! A throw-away PKI made by the test with the `openssl` command: a CA, a server certificate
//! for `127.0.0.1` and `localhost`, a client certificate the CA signed, and one signed by
//! another CA (which a mutual-TLS listener must refuse).
//!
//! EC P-256 keys in PKCS#8 PEM, which rustls, Node and Kamailio's OpenSSL all read.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TempDir;

/// The files of one test PKI, inside the test's temp dir.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate that signed `server` and `client`.
    pub ca: PathBuf,
    /// Server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// Client certificate signed by `ca` (CN `good-client`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// Another CA, unknown to the sbc.
    pub other_ca: PathBuf,
    /// Client certificate signed by `other_ca` (CN `stranger`).
    pub stranger_cert: PathBuf,
    /// Its key.
    pub stranger_key: PathBuf,
}

/// Whether `openssl` is installed (see [`crate::require_tool`]).
pub fn tools() -> bool {
    crate::require_tool("openssl")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

const KEY: &[&str] = &[
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

fn make_ca(dir: &Path, name: &str, cn: &str) {
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(KEY);
    let (key, crt, subj) = (
        format!("{name}.key"),
        format!("{name}.crt"),
        format!("/CN={cn}"),
    );
    args.extend_from_slice(&[
        "-keyout",
        &key,
        "-out",
        &crt,
        "-days",
        "2",
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
}

fn make_leaf(dir: &Path, name: &str, cn: &str, ca: &str, ext: &str) {
    let (key, csr, crt, subj, ext_file) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("/CN={cn}"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&ext_file), ext).expect("write extension file");
    let mut args = vec!["req"];
    args.extend_from_slice(KEY);
    args.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    // A random serial per certificate, so two PKIs never issue the same one.
    let serial = format!("0x{:x}", rand_serial());
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-extfile",
            &ext_file,
            "-out",
            &crt,
        ],
    );
}

fn rand_serial() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

const SERVER_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:client.test\n";

impl Pki {
    /// Makes the whole PKI in `dir` (a few hundred milliseconds of openssl).
    pub fn new(dir: &TempDir) -> Pki {
        Pki::new_in(dir, "pki")
    }

    /// Makes a PKI of its own in the subdirectory `name` (a second one, for rotations).
    pub fn new_in(dir: &TempDir, name: &str) -> Pki {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("create pki dir");
        make_ca(&d, "ca", "kubesbc e2e test CA");
        make_ca(&d, "other-ca", "some other CA");
        make_leaf(&d, "server", "localhost", "ca", SERVER_EXT);
        make_leaf(&d, "client", "good-client", "ca", CLIENT_EXT);
        make_leaf(&d, "stranger", "stranger", "other-ca", CLIENT_EXT);
        Pki {
            ca: d.join("ca.crt"),
            server_cert: d.join("server.crt"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.crt"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.crt"),
            stranger_cert: d.join("stranger.crt"),
            stranger_key: d.join("stranger.key"),
        }
    }
}

/// `path` as a string for command lines and config files.
pub fn s(path: &Path) -> String {
    path.display().to_string()
}

/// What `openssl s_client` got back for one SIP request over TLS.
#[derive(Debug, Clone)]
pub struct TlsExchange {
    /// Everything the server sent after the handshake (the SIP response, if any).
    pub stdout: String,
    /// s_client's own report (handshake, verification, alerts).
    pub stderr: String,
}

impl TlsExchange {
    /// The status line of the SIP response, if one came.
    pub fn status_line(&self) -> Option<&str> {
        self.stdout.lines().find(|l| l.starts_with("SIP/2.0 "))
    }
}

/// An `openssl s_client` connection kept open: what the server sends is collected as it
/// arrives. Stopped by PID on drop.
#[derive(Debug)]
pub struct SClient {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    err: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

fn collect(
    r: Option<impl std::io::Read + Send + 'static>,
    into: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(mut r) = r else { return };
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            if let Ok(mut o) = into.lock() {
                o.extend_from_slice(&chunk[..n]);
            }
        }
    })
}

impl SClient {
    /// Connects to `addr` (verifying the server against `ca`, SNI `localhost`, presenting
    /// `client` when given).
    pub fn connect(
        addr: std::net::SocketAddr,
        ca: &Path,
        client: Option<(&Path, &Path)>,
    ) -> SClient {
        use std::process::Stdio;
        assert!(addr.ip().is_loopback(), "only loopback targets");
        let mut cmd = Command::new("openssl");
        cmd.args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca);
        if let Some((cert, key)) = client {
            cmd.arg("-cert").arg(cert).arg("-key").arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run openssl s_client: {e}"));
        let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let err = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take(), out.clone()),
            collect(child.stderr.take(), err.clone()),
        ];
        SClient {
            stdin: child.stdin.take(),
            child,
            out,
            readers,
            err,
        }
    }

    /// Writes `bytes` to the connection (-quiet implies -ign_eof: stdin stays open).
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write as _;
        if let Some(w) = self.stdin.as_mut() {
            let _ = w.write_all(bytes);
            let _ = w.flush();
        }
    }

    /// What the server sent so far.
    pub fn received(&self) -> String {
        self.out
            .lock()
            .map(|o| String::from_utf8_lossy(&o).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the server has sent `n` SIP status lines, or s_client ended, or `timeout`
    /// passed.
    pub fn wait_responses(&mut self, n: usize, timeout: std::time::Duration) {
        let _ = crate::wait_for(timeout, || {
            let got = self.received().matches("SIP/2.0 ").count();
            let ended = self.child.try_wait().ok().flatten().is_some();
            (got >= n || ended).then_some(())
        });
    }

    /// Stops s_client and returns what it got.
    pub fn finish(mut self) -> TlsExchange {
        self.stop();
        TlsExchange {
            stdout: self.received(),
            stderr: self
                .err
                .lock()
                .map(|o| String::from_utf8_lossy(&o).into_owned())
                .unwrap_or_default(),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stdin = None;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects to `addr` with `openssl s_client` (see [`SClient::connect`]), writes `request`
/// and returns what came back within `timeout`.
pub fn openssl_exchange(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    request: &[u8],
    timeout: std::time::Duration,
) -> TlsExchange {
    let mut c = SClient::connect(addr, ca, client);
    c.send(request);
    c.wait_responses(1, timeout);
    c.finish()
}
