//! Checking settings: one collector of problems (the key and what is wrong), the range
//! checks every section shares, and URL checks. Each component's settings type checks itself
//! with these, next to its own definition.

use std::time::Duration;

use reqwest::Url;

/// A problem found while loading or validating the config: the key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, such as `imaterialise.batch_size`.
    pub key: String,
    /// What is wrong, lower case.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// What a command needs from the config, which decides which problems are fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Commands that only touch the database (`track`, `status`, `events`).
    Database,
    /// Commands that talk to the partner or deliver events (`run`, `poll-once`, `items`).
    Upstream,
}

/// Collects problems, with the range checks every section shares.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

/// Durations are kept within these bounds unless a key says otherwise: long enough to mean
/// something, short enough that no arithmetic on them can overflow.
pub const LONGEST: Duration = Duration::from_secs(3650 * 24 * 3600);

impl Problems {
    /// Records a problem with `key`.
    pub fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(Problem { key: key.into(), message: message.into() });
    }

    /// Checks that a duration lies within `min..=max`.
    pub fn duration(&mut self, key: &str, value: Duration, min: Duration, max: Duration) {
        if value < min || value > max {
            self.add(
                key,
                format!(
                    "must be between {} and {}, got {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max),
                    humantime::format_duration(value)
                ),
            );
        }
    }

    /// Checks that a number lies within `range`.
    pub fn number<T: PartialOrd + std::fmt::Display>(
        &mut self,
        key: &str,
        value: T,
        range: std::ops::RangeInclusive<T>,
    ) {
        if !range.contains(&value) {
            self.add(key, format!("must be between {} and {}, got {value}", range.start(), range.end()));
        }
    }

    /// Checks a requests-per-second limit: 0 for none, else between 0.001 and 10000.
    pub fn rate(&mut self, key: &str, value: f64) {
        if !(value == 0.0 || (0.001..=10_000.0).contains(&value)) {
            self.add(key, format!("must be 0 (no limit) or between 0.001 and 10000, got {value}"));
        }
    }

    /// Checks a jitter fraction.
    pub fn fraction(&mut self, key: &str, value: f64) {
        if !(0.0..=0.5).contains(&value) {
            self.add(key, format!("must be between 0 and 0.5, got {value}"));
        }
    }

    /// The problems found.
    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

/// One millisecond, for writing ranges.
pub const MILLISECOND: Duration = Duration::from_millis(1);
/// One second.
pub const SECOND: Duration = Duration::from_secs(1);
/// One minute.
pub const MINUTE: Duration = Duration::from_secs(60);
/// One day.
pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// Checks that a base URL is an absolute http(s) URL with a host and no query.
pub fn check_base_url(text: &str) -> Result<Url, String> {
    // Messages quote the URL without any credentials in it.
    let shown = crate::secret::redact_url(text);
    let url = Url::parse(text).map_err(|error| format!("not a valid URL ({error}): {shown:?}"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!("must start with https:// (or http:// for a local simulator), got {shown:?}"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("has no host: {shown:?}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not have a query or fragment: {shown:?}"));
    }
    Ok(url)
}

/// Whether a URL points at this machine.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}
