//! Logging setup: one subscriber for the whole process.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSpec};

/// Installs the global subscriber; `RUST_LOG` overrides the configured level.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(spec: &LogSpec) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&spec.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match spec.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
