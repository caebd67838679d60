//! Diagnostics: human-readable text on a terminal, JSON lines otherwise, on standard error
//! (standard output belongs to the log sink's events).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured level with
/// full filter syntax. Does nothing if a subscriber is already installed (as in tests).
pub fn init(config: &LoggingConfig) {
    let level = LoggingConfig::parse_level(&config.level).unwrap_or(tracing::level_filters::LevelFilter::INFO);
    let filter = EnvFilter::builder().with_default_directive(level.into()).from_env_lossy();
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
    } else {
        builder.with_target(false).try_init()
    };
}
