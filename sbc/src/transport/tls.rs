//! TLS (tokio-rustls with the ring provider, TLS 1.2 and 1.3 only): the server side of the tls
//! and wss listeners, with the certificate chain and key read from PEM files and re-read when
//! they change (a rotated `kubernetes.io/tls` Secret) without touching open connections, and
//! optional client-certificate verification (mutual TLS); and the client side towards `sips:`
//! and `;transport=tls` backends, verifying the backend's name against a configured CA bundle
//! or the system's trusted roots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use kubesbc_crds::config::{DispatcherConfig, SbcConfig, Transport};
use kubesbc_crds::policy::{BackendTlsConfig, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// How often the certificate files are read for changes. A mounted Secret changes by a
/// symlink swap, so the content is compared, not the modification time.
pub const CERT_POLL: Duration = Duration::from_secs(2);

/// The largest PEM file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A certificate, key or CA file that cannot be used; the message names the field and file.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {file}: {message}")]
pub struct TlsError {
    /// The configuration field naming the file (`tls.certFile`).
    pub field: String,
    /// The file.
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

fn fail(field: &str, file: &str, message: impl Into<String>) -> TlsError {
    TlsError {
        field: field.to_owned(),
        file: file.to_owned(),
        message: message.into(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read(field: &str, file: &str) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let f = std::fs::File::open(file).map_err(|e| fail(field, file, e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| fail(field, file, e.to_string()))?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(field, file, "larger than 1 MiB"));
    }
    Ok(buf)
}

fn certs(field: &str, file: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(field, file, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail(field, file, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn key(field: &str, file: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| fail(field, file, format!("no PEM private key in the file: {e}")))
}

fn roots(field: &str, file: &str) -> Result<RootCertStore, TlsError> {
    let pem = read(field, file)?;
    let mut store = RootCertStore::empty();
    for c in certs(field, file, &pem)? {
        store
            .add(c)
            .map_err(|e| fail(field, file, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(store)
}

/// A certificate chain and its key, checked to belong together.
fn certified_key(
    cert_field: &str,
    cert_file: &str,
    key_field: &str,
    key_file: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certs(cert_field, cert_file, &read(cert_field, cert_file)?)?;
    let k = key(key_field, key_file, &read(key_field, key_file)?)?;
    let signer = provider()
        .key_provider
        .load_private_key(k.clone_key())
        .map_err(|e| fail(key_field, key_file, format!("unusable private key: {e}")))?;
    let ck = rustls::sign::CertifiedKey::new(chain.clone(), signer);
    ck.keys_match().map_err(|e| {
        fail(
            cert_field,
            cert_file,
            format!("the certificate does not match the key in {key_file}: {e}"),
        )
    })?;
    Ok((chain, k))
}

/// Builds the server side of the tls/wss listeners from `tls` (reading every file).
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = certified_key("tls.certFile", &tls.cert_file, "tls.keyFile", &tls.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| fail("tls", "", e.to_string()))?;
    let builder = match &tls.client_ca_file {
        Some(f) => {
            let roots = roots("tls.clientCaFile", f)?;
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| fail("tls.clientCaFile", f, e.to_string()))?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| fail("tls.certFile", &tls.cert_file, e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// Builds the client side towards backends.
pub fn client_config(b: Option<&BackendTlsConfig>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match b.and_then(|b| b.ca_file.as_deref()) {
        Some(f) => roots("backendTls.caFile", f)?,
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| fail("backendTls", "", e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match b.and_then(|b| b.cert_file.as_deref().zip(b.key_file.as_deref())) {
        Some((c, k)) => {
            let (chain, key) = certified_key("backendTls.certFile", c, "backendTls.keyFile", k)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail("backendTls.certFile", c, e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// The system's trusted roots (rustls-native-certs: `/etc/ssl/certs`, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`). Unreadable entries are skipped with a log line.
fn system_roots() -> RootCertStore {
    let mut store = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's trusted roots");
    }
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no system trusted roots found: TLS backends can only be reached with backendTls.caFile"
        );
    }
    store
}

/// Loads every certificate the configuration names, as startup does: what `sbc check` and a
/// configuration reload run before accepting a version.
pub fn check(cfg: &SbcConfig) -> Result<(), TlsError> {
    if let Some(t) = &cfg.tls {
        server_config(t)?;
    }
    if cfg.backend_tls.is_some() {
        client_config(cfg.backend_tls.as_ref())?;
    }
    Ok(())
}

/// The host names of the TLS destinations of `d` by resolved address, for
/// [`super::Transports::set_tls_server_names`]. Resolves names (blocking): call it when a
/// configuration is loaded, never per request.
pub fn server_names(d: &DispatcherConfig) -> Vec<(SocketAddr, String)> {
    d.sets
        .iter()
        .flat_map(|s| s.destinations.iter())
        .filter_map(|dest| {
            let t = crate::dispatch::destination::parse_uri(&dest.uri).ok()?;
            let host = t.host.trim_matches(['[', ']']);
            if t.transport != Transport::Tls || host.parse::<std::net::IpAddr>().is_ok() {
                return None;
            }
            let target = crate::dispatch::destination::resolve(&dest.uri).ok()?;
            Some((target.addr, host.to_owned()))
        })
        .collect()
}

/// The live server configuration of the tls/wss listeners: each new connection takes the
/// version in force, so swapping it never touches an open connection.
pub(super) struct TlsServer {
    current: ArcSwap<ServerConfig>,
    files: Mutex<(TlsConfig, Vec<u8>)>,
}

impl TlsServer {
    pub(super) fn new(tls: &TlsConfig) -> Result<TlsServer, TlsError> {
        let cfg = server_config(tls)?;
        Ok(TlsServer {
            current: ArcSwap::new(cfg),
            files: Mutex::new((tls.clone(), stamp(tls))),
        })
    }

    pub(super) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Puts a new `tls` section in force (a configuration reload), or keeps the old one when
    /// its files cannot be used.
    pub(super) fn set(&self, tls: &TlsConfig) {
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if f.0 == *tls {
            return;
        }
        match server_config(tls) {
            Ok(cfg) => {
                self.current.store(cfg);
                *f = (tls.clone(), stamp(tls));
                tracing::info!(cert = %tls.cert_file, "tls: new certificate settings in force");
            }
            Err(e) => {
                tracing::error!(error = %e, "tls: {e}; the certificate in force stays");
            }
        }
    }

    /// Re-reads the files and swaps in a new certificate when their content changed.
    fn poll(&self) {
        let mut f = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&f.0);
        if now == f.1 {
            return;
        }
        match server_config(&f.0) {
            Ok(cfg) => {
                self.current.store(cfg);
                tracing::info!(cert = %f.0.cert_file, "tls: certificate files changed, new connections get the new certificate");
                f.1 = now;
            }
            Err(e) => {
                // Often half-written (the key before the certificate): retried next poll.
                tracing::warn!(error = %e, "tls: certificate files changed but cannot be used yet: {e}; the certificate in force stays");
            }
        }
    }

    /// Polls the files every [`CERT_POLL`] until the server is dropped.
    pub(super) async fn watch(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        drop(self);
        let mut tick = tokio::time::interval(CERT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(s) = weak.upgrade() else { return };
            // Small files, read off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || s.poll()).await;
        }
    }
}

/// The content of every file `tls` names, to notice a change.
fn stamp(tls: &TlsConfig) -> Vec<u8> {
    let mut v = Vec::new();
    for f in [
        Some(&tls.cert_file),
        Some(&tls.key_file),
        tls.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        v.extend_from_slice(&std::fs::read(f).unwrap_or_default());
        v.push(0);
    }
    v
}

/// The client side: one configuration, and the name each backend address is verified against.
pub(super) struct TlsClient {
    config: ArcSwap<ClientConfig>,
    names: Mutex<HashMap<SocketAddr, String>>,
}

impl TlsClient {
    pub(super) fn new(b: Option<&BackendTlsConfig>) -> Result<TlsClient, TlsError> {
        Ok(TlsClient {
            config: ArcSwap::new(client_config(b)?),
            names: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn set(&self, b: Option<&BackendTlsConfig>) {
        match client_config(b) {
            Ok(c) => self.config.store(c),
            Err(e) => tracing::error!(error = %e, "backendTls: {e}; the settings in force stay"),
        }
    }

    /// Remembers that `addr` is reached by the host name `name` (from a destination URI).
    pub(super) fn set_names(&self, names: impl IntoIterator<Item = (SocketAddr, String)>) {
        let mut m = self.names.lock().unwrap_or_else(|e| e.into_inner());
        m.clear();
        m.extend(names);
    }

    /// The name `addr`'s certificate must carry: the destination's host name when it has one,
    /// else its IP address (an `IP Address` subjectAltName).
    fn server_name(&self, addr: SocketAddr) -> ServerName<'static> {
        let m = self.names.lock().unwrap_or_else(|e| e.into_inner());
        m.get(&addr)
            .and_then(|n| ServerName::try_from(n.clone()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    pub(super) async fn connect(
        &self,
        addr: SocketAddr,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(self.config.load_full());
        connector.connect(self.server_name(addr), tcp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_field() {
        let t = TlsConfig {
            cert_file: "/nonexistent/tls.crt".into(),
            key_file: "/nonexistent/tls.key".into(),
            client_ca_file: None,
        };
        let e = server_config(&t).unwrap_err().to_string();
        assert!(e.starts_with("tls.certFile: /nonexistent/tls.crt: "), "{e}");
        let dir = std::env::temp_dir().join(format!("sbc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("garbage.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let t = TlsConfig {
            cert_file: f.display().to_string(),
            key_file: f.display().to_string(),
            client_ca_file: None,
        };
        let e = server_config(&t).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate in the file"), "{e}");
        let b = BackendTlsConfig {
            ca_file: Some(f.display().to_string()),
            ..Default::default()
        };
        let e = client_config(Some(&b)).unwrap_err().to_string();
        assert!(e.starts_with("backendTls.caFile: "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
