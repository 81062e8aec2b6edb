//! The log subscriber of the binary.

use super::TelemetryError;

/// Installs the global tracing subscriber of the binary: compact one-line logs on stderr,
/// filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() -> Result<(), TelemetryError> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .compact()
        .try_init()
        .map_err(|e| TelemetryError::Tracing(e.to_string()))
}
