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
        let d = dir.path().join("pki");
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

/// Connects to `addr` with `openssl s_client` (verifying the server against `ca`, SNI
/// `localhost`, presenting `client` when given), writes `request` and returns what came back
/// within `timeout`. s_client is stopped by PID.
pub fn openssl_exchange(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    request: &[u8],
    timeout: std::time::Duration,
) -> TlsExchange {
    use std::io::{Read as _, Write as _};
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
    // Kept open until the end: -quiet implies -ign_eof, and the server's answer is read below.
    let mut stdin = child.stdin.take();
    if let Some(w) = stdin.as_mut() {
        let _ = w.write_all(request);
        let _ = w.flush();
    }
    let read_all = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let out_reader = {
        let out = out.clone();
        let stdout = child.stdout.take();
        std::thread::spawn(move || {
            let Some(mut r) = stdout else { return };
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if let Ok(mut o) = out.lock() {
                    o.extend_from_slice(&chunk[..n]);
                }
            }
        })
    };
    let err_reader = read_all(
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
    );
    let answered = |o: &std::sync::Mutex<Vec<u8>>| {
        o.lock()
            .map(|o| o.windows(4).any(|w| w == b"\r\n\r\n"))
            .unwrap_or(false)
    };
    let _ = crate::wait_for(timeout, || {
        (answered(&out) || child.try_wait().ok().flatten().is_some()).then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    let _ = out_reader.join();
    let stdout = out
        .lock()
        .map(|o| String::from_utf8_lossy(&o).into_owned())
        .unwrap_or_default();
    TlsExchange {
        stdout,
        stderr: err_reader.join().unwrap_or_default(),
    }
}
