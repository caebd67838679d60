//! Diagnostics: human-readable text on a terminal, JSON lines otherwise, on standard error
//! (standard output belongs to the log sink's events); under systemd, straight to the
//! journal, each line with its priority and its fields (`CART_ID`, `PROVIDER`...).

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The journal's identifier for diagnostics. The unit gives standard output, where the log
/// sink writes events, another one (`cartwatch-events`), so each can be followed alone.
pub const JOURNAL_IDENTIFIER: &str = "cartwatch";

/// Whether standard error is the journal: systemd sets `JOURNAL_STREAM` to the `DEV:INODE`
/// of the stream it connected, which a redirect elsewhere no longer matches.
fn is_journal(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let Some((device, inode)) = journal_stream.and_then(|value| value.trim().split_once(':')) else {
        return false;
    };
    stderr.is_some_and(|(dev, ino)| device.parse() == Ok(dev) && inode.parse() == Ok(ino))
}

/// The device and inode of standard error.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned().ok()?);
    let metadata = file.metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// The filter for `level`: cartwatch's own lines at that level (every target starting with
/// `cartwatch`, the simulator's included), the libraries it uses at `warn` (their INFO lines
/// are about their own machinery, not about carts).
fn filter_for(level: tracing::level_filters::LevelFilter) -> String {
    let ours = level.to_string().to_ascii_lowercase();
    let theirs = level.min(tracing::level_filters::LevelFilter::WARN).to_string().to_ascii_lowercase();
    format!("{theirs},cartwatch={ours}")
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured level with
/// full filter syntax. Colours only on a terminal. Does nothing if a subscriber is already
/// installed (as in tests).
pub fn init(config: &LoggingConfig) {
    let filter = configured_filter(config);
    let journal = std::env::var("JOURNAL_STREAM").ok();
    if is_journal(journal.as_deref(), stderr_identity()) {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_syslog_identifier(JOURNAL_IDENTIFIER.to_owned()).with_field_prefix(None);
                let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
                return;
            }
            Err(error) => eprintln!("cannot write to the journal ({error}); diagnostics go to standard error"),
        }
    }
    let terminal = std::io::stderr().is_terminal();
    init_stream(config, filter, BoxMakeWriter::new(std::io::stderr), terminal);
}

/// Installs the same subscriber as [`init`] off a terminal, writing to `file`: how the
/// benchmarks measure with the daemon's own logging.
pub fn init_to_file(config: &LoggingConfig, file: std::fs::File) {
    init_stream(config, configured_filter(config), BoxMakeWriter::new(std::sync::Mutex::new(file)), false);
}

/// The filter for the configured level, or `RUST_LOG`'s directives when set.
fn configured_filter(config: &LoggingConfig) -> EnvFilter {
    let level = LoggingConfig::parse_level(&config.level).unwrap_or(tracing::level_filters::LevelFilter::INFO);
    match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder().parse_lossy(directives),
        _ => EnvFilter::builder().parse_lossy(filter_for(level)),
    }
}

/// Diagnostics as text or JSON lines (JSON off a terminal unless the config says text).
fn init_stream(config: &LoggingConfig, filter: EnvFilter, writer: BoxMakeWriter, terminal: bool) {
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = if json {
        builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init()
    } else {
        builder.with_target(false).with_ansi(terminal).try_init()
    };
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggingConfig {
    /// Default level filter.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl LoggingConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut crate::checks::Problems) {
        if LoggingConfig::parse_level(&self.level).is_none() {
            problems
                .add("logging.level", format!("must be one of error, warn, info, debug, trace; got {:?}", self.level));
        }
    }

    /// Maps a level name to a tracing level filter.
    pub fn parse_level(name: &str) -> Option<tracing::level_filters::LevelFilter> {
        match name.trim().to_ascii_lowercase().as_str() {
            "error" => Some(tracing::level_filters::LevelFilter::ERROR),
            "warn" | "warning" => Some(tracing::level_filters::LevelFilter::WARN),
            "info" => Some(tracing::level_filters::LevelFilter::INFO),
            "debug" => Some(tracing::level_filters::LevelFilter::DEBUG),
            "trace" => Some(tracing::level_filters::LevelFilter::TRACE),
            "off" => Some(tracing::level_filters::LevelFilter::OFF),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn libraries_stay_at_warn_unless_cartwatch_is_quieter() {
        assert_eq!(filter_for(LevelFilter::INFO), "warn,cartwatch=info");
        assert_eq!(filter_for(LevelFilter::DEBUG), "warn,cartwatch=debug");
        assert_eq!(filter_for(LevelFilter::ERROR), "error,cartwatch=error");
    }

    #[test]
    fn the_journal_is_used_only_when_standard_error_is_the_stream_systemd_named() {
        assert!(is_journal(Some("8:12345"), Some((8, 12345))));
        assert!(!is_journal(Some("8:12345"), Some((8, 99))), "redirected elsewhere");
        assert!(!is_journal(None, Some((8, 12345))), "not under systemd");
        assert!(!is_journal(Some("garbage"), Some((8, 12345))));
        assert!(!is_journal(Some("8:12345"), None));
        let (device, inode) = stderr_identity().expect("standard error has an identity");
        assert!(is_journal(Some(&format!("{device}:{inode}")), stderr_identity()));
    }
}
