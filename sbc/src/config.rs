//! Loading the configuration: from a YAML file, or built from command-line flags and a
//! Kamailio `dispatcher.list`. Either way the result is validated before it is used.

use std::net::SocketAddr;
use std::path::Path;

pub use kubesbc_crds::config::*;
pub use kubesbc_crds::policy::{BackendTlsConfig, TlsConfig};

/// Why a configuration could not be loaded; the message names the file and field or line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's content is invalid.
    #[error("{file}: {source}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong, with the field path.
        source: ConfigError,
    },
    /// A `--listen` flag is not `transport:ip:port`.
    #[error("--listen {0:?}: expected transport:ip:port, e.g. udp:127.0.0.1:5060")]
    Listen(String),
    /// Neither a config file nor a listener.
    #[error("nothing to listen on: give --config FILE or at least one --listen")]
    NoListener,
    /// The flags produce an invalid configuration.
    #[error("{0}")]
    Flags(ConfigError),
    /// A certificate, key or CA file cannot be used; names the field and file.
    #[error("{0}")]
    Tls(crate::transport::TlsError),
}

/// Reads and validates a YAML configuration file.
pub fn load_file(path: &Path) -> Result<SbcConfig, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        file: file.clone(),
        source,
    })?;
    let cfg = SbcConfig::from_yaml(&text).map_err(|source| LoadError::Invalid {
        file: file.clone(),
        source,
    })?;
    check_routing(&cfg).map_err(|source| LoadError::Invalid { file, source })?;
    Ok(cfg)
}

/// Refuses routing rules the sbc cannot compile (a target whose `;transport=` it does not
/// know, for instance), naming the field, as every loaded version is checked.
pub fn check_routing(cfg: &SbcConfig) -> Result<(), ConfigError> {
    crate::routing::rules::Rules::compile(&cfg.routing)
        .map(drop)
        .map_err(|e| ConfigError::Field {
            path: format!("routing.rules[{}].{}", e.rule, e.field),
            message: e.message,
        })
}

/// Parses a `--listen` value: `udp:127.0.0.1:5060`, `tcp:[::1]:5060`.
pub fn parse_listen(spec: &str) -> Result<Listener, LoadError> {
    let (t, addr) = spec
        .split_once(':')
        .ok_or_else(|| LoadError::Listen(spec.to_owned()))?;
    let transport = Transport::from_name(t).ok_or_else(|| LoadError::Listen(spec.to_owned()))?;
    let address: SocketAddr = addr
        .parse()
        .map_err(|_| LoadError::Listen(spec.to_owned()))?;
    Ok(Listener {
        transport,
        address,
        ..Listener::default()
    })
}

/// A configuration with no file: listeners and defaults, dispatcher sets added by the caller.
pub fn from_listeners(listeners: Vec<Listener>) -> Result<SbcConfig, LoadError> {
    if listeners.is_empty() {
        return Err(LoadError::NoListener);
    }
    Ok(SbcConfig {
        listeners,
        dispatcher: DispatcherConfig::default(),
        routing: Default::default(),
        admin: AdminConfig::default(),
        limits: Limits::default(),
        relay: RelayConfig::default(),
        drain: DrainConfig::default(),
        store: None,
        access_lists: Vec::new(),
        throttles: Vec::new(),
        auth: None,
        media: None,
        tls: None,
        scanners: Default::default(),
        backend_tls: None,
        observability: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_specs() {
        let l = parse_listen("tcp:127.0.0.1:5070").unwrap();
        assert_eq!(l.transport, Transport::Tcp);
        assert_eq!(l.address.port(), 5070);
        assert!(parse_listen("[::1]:5060").is_err());
        assert_eq!(
            parse_listen("sctp:1.2.3.4:5").unwrap_err().to_string(),
            "--listen \"sctp:1.2.3.4:5\": expected transport:ip:port, e.g. udp:127.0.0.1:5060"
        );
    }

    #[test]
    fn file_errors_name_file_and_field() {
        let dir = std::env::temp_dir().join(format!("sbc-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.yaml");
        std::fs::write(&f, "listeners: []\n").unwrap();
        let err = load_file(&f).unwrap_err().to_string();
        assert!(
            err.ends_with("bad.yaml: listeners: at least one listener is required"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_media_section_loads() {
        let cfg = SbcConfig::from_yaml(
            "listeners: [{transport: udp, address: \"127.0.0.1:5060\"}]\nmedia: {rtpengine: [\"127.0.0.1:2223\"]}\n",
        )
        .unwrap();
        assert!(cfg.validate().is_ok());
        assert!(check_routing(&cfg).is_ok());
        assert_eq!(cfg.media.unwrap().rtpengine, ["127.0.0.1:2223"]);
    }
}
