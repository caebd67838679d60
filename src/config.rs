//! Configuration: the embedded default file, the user's file and the environment, layered into
//! typed structs, then validated with one message per problem.
//!
//! `config/cartwatch.toml` is both the documentation of every key and the built-in default.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::events::EventType;
use crate::secret::Secret;

/// The documented default configuration, embedded so a fresh install needs no file.
pub const DEFAULT_TOML: &str = include_str!("../config/cartwatch.toml");

/// Where `run` looks for a config file when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/cartwatch/cartwatch.toml";

/// The prefix of environment variables that override keys: `CARTWATCH__SECTION__KEY`.
pub const ENV_PREFIX: &str = "CARTWATCH";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// The SQLite database.
    pub database: DatabaseConfig,
    /// When and how sweeps run.
    pub sweep: SweepConfig,
    /// The i.materialise Cart Status API.
    pub imaterialise: ImaterialiseConfig,
    /// The Titelive MediaWeb cart API.
    pub titelive: TiteliveConfig,
    /// How often carts are polled, by age and status.
    pub cadence: CadenceConfig,
    /// How the daemon backs off when the upstream misbehaves.
    pub backoff: BackoffConfig,
    /// Changing cart items.
    pub items: ItemsConfig,
    /// Which events are written.
    pub events: EventsConfig,
    /// Webhook retry schedule.
    pub delivery: DeliveryConfig,
    /// Webhook endpoints by name.
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// Where events go.
    pub sinks: SinksConfig,
    /// The local HTTP API.
    pub http: HttpConfig,
    /// Diagnostics.
    pub logging: LoggingConfig,
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpConfig {
    /// Address to listen on; empty for off.
    pub listen: String,
    /// Bearer token.
    pub token: Secret,
    /// A file holding the bearer token.
    pub token_file: PathBuf,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Connections open at once; more are refused.
    pub max_connections: u32,
    /// Time a client has to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a connection may sit without a byte either way before it is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl HttpConfig {
    /// The address to listen on, if the API is on and the address valid.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseConfig {
    /// The SQLite file.
    pub path: PathBuf,
    /// How long a statement waits for another connection's lock.
    #[serde(with = "humantime_serde")]
    pub busy_timeout: Duration,
}

/// `[sweep]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepConfig {
    /// Cron expression with a seconds field.
    pub cron: String,
    /// IANA zone the cron expression is read in.
    pub timezone: String,
    /// Due carts read from the database per page.
    pub page_size: u32,
}

/// Request and response encoding for the i.materialise APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// `application/json`
    Json,
    /// `text/xml`
    Xml,
}

/// `[imaterialise]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImaterialiseConfig {
    /// Whether this provider is polled.
    pub enabled: bool,
    /// Base URL, without the `/web-api/...` path.
    #[serde(serialize_with = "crate::secret::serialize_redacted_url")]
    pub base_url: String,
    /// The apiCode GUID, when given inline or by environment.
    pub api_code: Secret,
    /// A file holding the apiCode.
    pub api_code_file: PathBuf,
    /// Wire format.
    pub format: WireFormat,
    /// Cart IDs per request, 1..=10.
    pub batch_size: u32,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Requests started per second; 0 for no limit.
    pub requests_per_second: f64,
    /// Whole-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
}

/// `[titelive]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TiteliveConfig {
    /// Whether this provider is polled.
    pub enabled: bool,
    /// Base URL, without the `/api/json/...` path.
    #[serde(serialize_with = "crate::secret::serialize_redacted_url")]
    pub base_url: String,
    /// Domain code used when `track` names none.
    pub default_domain: String,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Requests started per second; 0 for no limit.
    pub requests_per_second: f64,
    /// Whole-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
}

/// What a poller needs to know about its provider, whichever it is.
#[derive(Debug, Clone, PartialEq)]
pub struct PollerSettings {
    /// The provider.
    pub provider: crate::provider::Provider,
    /// Cart ids per request.
    pub batch_size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Requests per second; 0 for no limit.
    pub requests_per_second: f64,
    /// Request timeout.
    pub request_timeout: Duration,
}

/// One age tier of the polling cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CadenceTier {
    /// Applies to carts younger than this.
    #[serde(with = "humantime_serde")]
    pub younger_than: Duration,
    /// Poll interval for those carts.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

/// `[cadence]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CadenceConfig {
    /// Age tiers, youngest first.
    pub tiers: Vec<CadenceTier>,
    /// Interval past the last tier.
    #[serde(with = "humantime_serde")]
    pub older_every: Duration,
    /// Interval for CheckedOut carts.
    #[serde(with = "humantime_serde")]
    pub checked_out_every: Duration,
    /// Age at which an unordered cart expires.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Fraction by which intervals are spread either way.
    pub jitter: f64,
}

/// `[backoff]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackoffConfig {
    /// First delay after a transient failure.
    #[serde(with = "humantime_serde")]
    pub transient_initial: Duration,
    /// Cap of the transient delay.
    #[serde(with = "humantime_serde")]
    pub transient_max: Duration,
    /// Failed requests in a row before the circuit opens.
    pub circuit_after: u32,
    /// First probe delay after a 401.
    #[serde(with = "humantime_serde")]
    pub auth_initial: Duration,
    /// Cap of the 401 probe delay.
    #[serde(with = "humantime_serde")]
    pub auth_max: Duration,
    /// Consecutive not-found answers before a cart is given up.
    pub not_found_after: u32,
}

/// `[items]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemsConfig {
    /// A known status older than this is refreshed before a change.
    #[serde(with = "humantime_serde")]
    pub status_max_age: Duration,
}

/// `[events]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsConfig {
    /// Event type names to write.
    pub emit: Vec<String>,
}

/// `[delivery]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryConfig {
    /// Delays before each attempt; the last failure makes a dead letter.
    pub schedule: Vec<humantime_serde::Serde<Duration>>,
    /// Fraction by which each delay is spread either way.
    pub jitter: f64,
}

impl DeliveryConfig {
    /// The schedule as plain durations.
    pub fn schedule(&self) -> Vec<Duration> {
        self.schedule.iter().map(|delay| **delay).collect()
    }
}

/// `[webhooks.NAME]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    #[serde(serialize_with = "crate::secret::serialize_redacted_url")]
    pub url: String,
    /// The signing secret, `whsec_` and base64.
    pub secret: Secret,
    /// A file holding the signing secret.
    pub secret_file: PathBuf,
    /// The previous secret during a rotation.
    pub previous_secret: Secret,
    /// A file holding the previous secret.
    pub previous_secret_file: PathBuf,
    /// Event types to send; empty for all.
    pub event_types: Vec<String>,
    /// Per-attempt timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: u32,
    /// Allow plain http to a non-loopback host.
    pub allow_http: bool,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            url: String::new(),
            secret: Secret::new(""),
            secret_file: PathBuf::new(),
            previous_secret: Secret::new(""),
            previous_secret_file: PathBuf::new(),
            event_types: Vec::new(),
            timeout: Duration::from_secs(15),
            concurrency: 16,
            allow_http: false,
        }
    }
}

/// `[sinks]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinksConfig {
    /// `[sinks.log]`
    pub log: LogSinkConfig,
}

/// `[sinks.log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSinkConfig {
    /// Whether events are written as JSON lines.
    pub enabled: bool,
    /// A file to append to; empty for standard output.
    pub path: PathBuf,
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

/// What a command needs from the config, which decides which problems are fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Commands that only touch the database (`track`, `status`, `events`).
    Database,
    /// Commands that talk to the partner or deliver events (`run`, `poll-once`, `items`).
    Upstream,
}

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

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` does not exist or cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a value has the wrong type.
    #[error("config is not valid: {0}")]
    Syntax(String),
    /// The values do not make a usable config; one problem per entry.
    #[error("config has {} problem(s):\n{}", .0.len(), list_problems(.0))]
    Invalid(Vec<Problem>),
}

fn list_problems(problems: &[Problem]) -> String {
    problems.iter().map(|problem| format!("  - {problem}")).collect::<Vec<_>>().join("\n")
}

/// A loaded config with the non-fatal observations about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The effective config, secrets from files already read.
    pub config: Config,
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Risky but allowed combinations.
    pub warnings: Vec<String>,
}

impl Default for Config {
    /// The embedded defaults alone.
    fn default() -> Config {
        let builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        let merged = builder.build().expect("the embedded default config is valid TOML");
        merged.try_deserialize().expect("the embedded default config matches the Config struct")
    }
}

/// Loads the config from the embedded defaults, `path` (required when `explicit`), and the
/// given environment variables, then validates it for `purpose`.
///
/// Fails when the file cannot be read, a value has the wrong type, a key is unknown, or a
/// value is invalid; every problem found is reported, not only the first.
pub fn load(
    path: &Path,
    explicit: bool,
    environment: HashMap<String, String>,
    purpose: Purpose,
) -> Result<Loaded, ConfigError> {
    let file_exists = path.exists();
    if explicit && !file_exists {
        return Err(ConfigError::Unreadable {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let mut builder =
        config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
    if file_exists {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Unreadable { path: path.to_owned(), source })?;
        // Parsed here first, so a syntax error is reported without the line it is on: that
        // line may hold a secret.
        if let Err(error) = toml::from_str::<toml::Table>(&text) {
            return Err(ConfigError::Syntax(describe_toml_error(&error, &text, path)));
        }
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    let environment: HashMap<String, String> =
        environment.into_iter().filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__"))).collect();
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("events.emit")
            .source(Some(environment)),
    );
    let merged = builder
        .build()
        .map_err(|error| ConfigError::Syntax(describe_config_error(&error, file_exists.then_some(path))))?;

    let mut unknown_keys = BTreeSet::new();
    let deserialized: Result<Config, _> = serde_ignored::deserialize(merged, |ignored| {
        unknown_keys.insert(ignored.to_string());
    });
    let mut config = deserialized
        .map_err(|error| ConfigError::Syntax(describe_config_error(&error, file_exists.then_some(path))))?;

    let mut problems: Vec<Problem> = unknown_keys
        .into_iter()
        .map(|key| Problem { key, message: "unknown key (check the spelling against config/cartwatch.toml)".into() })
        .collect();
    resolve_secret_files(&mut config, &mut problems);
    problems.extend(config.problems(purpose));
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    let warnings = config.warnings();
    Ok(Loaded { config, file: file_exists.then(|| path.to_owned()), warnings })
}

fn describe_config_error(error: &config::ConfigError, file: Option<&Path>) -> String {
    let message = error.to_string();
    // A value of the wrong type is quoted in the message; a secret's must not be.
    let message = match SECRET_KEYS.iter().find(|key| message.contains(*key)) {
        Some(key) => format!("the value of {key} has the wrong type (the value is not shown)"),
        None => message,
    };
    match file {
        Some(path) => format!("{message} (in {} or the environment)", path.display()),
        None => message,
    }
}

/// The keys whose values are secrets, or may hold one (a URL with a password).
const SECRET_KEYS: [&str; 5] = ["api_code", "token", "secret", "password", "url"];

/// A TOML syntax error as a message that names the file, line and column and what is wrong,
/// but never quotes the line, which may set a secret.
fn describe_toml_error(error: &toml::de::Error, text: &str, path: &Path) -> String {
    let (line, column) = error.span().map_or((0, 0), |span| {
        let before = &text[..span.start.min(text.len())];
        (before.matches('\n').count() + 1, before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1)
    });
    let line_text = text.lines().nth(line.saturating_sub(1)).unwrap_or_default();
    let secret_line = SECRET_KEYS.iter().any(|key| line_text.contains(key));
    let what = if secret_line {
        "not valid TOML (the line is not shown: it sets a secret or a URL)".to_owned()
    } else {
        format!("not valid TOML: {}", error.message().trim())
    };
    format!("{}, line {line}, column {column}: {what}", path.display())
}

/// Reads `*_file` secrets into their inline fields, so the rest of the program sees one value.
fn resolve_secret_files(config: &mut Config, problems: &mut Vec<Problem>) {
    let imaterialise = &mut config.imaterialise;
    if let Some(secret) = read_secret_file(
        "imaterialise.api_code_file",
        &imaterialise.api_code_file,
        !imaterialise.api_code.is_empty(),
        problems,
    ) {
        imaterialise.api_code = secret;
    }
    let http = &mut config.http;
    if let Some(token) = read_secret_file("http.token_file", &http.token_file, !http.token.is_empty(), problems) {
        http.token = token;
    }
    for (name, webhook) in &mut config.webhooks {
        let key = format!("webhooks.{name}.secret_file");
        if let Some(secret) = read_secret_file(&key, &webhook.secret_file, !webhook.secret.is_empty(), problems) {
            webhook.secret = secret;
        }
        let key = format!("webhooks.{name}.previous_secret_file");
        let inline = !webhook.previous_secret.is_empty();
        if let Some(secret) = read_secret_file(&key, &webhook.previous_secret_file, inline, problems) {
            webhook.previous_secret = secret;
        }
    }
}

/// Reads one secret file. Reports a problem when the file cannot be read or when the inline
/// value is set as well, since then it is unclear which one is meant.
pub(crate) fn read_secret_file(
    key: &str,
    path: &Path,
    inline_is_set: bool,
    problems: &mut Vec<Problem>,
) -> Option<Secret> {
    if path.as_os_str().is_empty() {
        return None;
    }
    if inline_is_set {
        problems.push(Problem { key: key.into(), message: "set either the value or the file, not both".into() });
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(text) => Some(Secret::new(text.trim())),
        Err(error) => {
            problems.push(Problem { key: key.into(), message: format!("cannot read {}: {error}", path.display()) });
            None
        }
    }
}

/// Collects problems, with the range checks every section shares.
#[derive(Debug, Default)]
pub struct Problems(Vec<Problem>);

/// Durations are kept within these bounds unless a key says otherwise: long enough to mean
/// something, short enough that no arithmetic on them can overflow.
const LONGEST: Duration = Duration::from_secs(3650 * 24 * 3600);

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

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

impl DatabaseConfig {
    fn check(&self, problems: &mut Problems) {
        if self.path.as_os_str().is_empty() {
            problems.add("database.path", "must not be empty");
        }
        problems.duration("database.busy_timeout", self.busy_timeout, 10 * MILLISECOND, 10 * MINUTE);
    }
}

impl SweepConfig {
    fn check(&self, problems: &mut Problems) {
        if let Err(message) = crate::schedule::parse_cron(&self.cron) {
            problems.add("sweep.cron", message);
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            problems.add(
                "sweep.timezone",
                format!("unknown time zone {:?}; use an IANA name such as \"Europe/Brussels\"", self.timezone),
            );
        }
        problems.number("sweep.page_size", self.page_size, 1..=100_000);
    }
}

/// The client settings both providers share, checked the same way.
fn check_client(
    problems: &mut Problems,
    section: &str,
    base_url: &str,
    concurrency: u32,
    requests_per_second: f64,
    timeouts: (Duration, Duration),
    max_response_bytes: u64,
) {
    let key = |field: &str| format!("{section}.{field}");
    if let Err(message) = check_base_url(base_url) {
        problems.add(&key("base_url"), message);
    }
    problems.number(&key("concurrency"), concurrency, 1..=256);
    problems.rate(&key("requests_per_second"), requests_per_second);
    problems.duration(&key("request_timeout"), timeouts.0, 100 * MILLISECOND, 10 * MINUTE);
    problems.duration(&key("connect_timeout"), timeouts.1, 100 * MILLISECOND, 10 * MINUTE);
    problems.number(&key("max_response_bytes"), max_response_bytes, 1024..=1 << 30);
}

impl ImaterialiseConfig {
    fn check(&self, purpose: Purpose, problems: &mut Problems) {
        check_client(
            problems,
            "imaterialise",
            &self.base_url,
            self.concurrency,
            self.requests_per_second,
            (self.request_timeout, self.connect_timeout),
            self.max_response_bytes,
        );
        if !(1..=10).contains(&self.batch_size) {
            problems.add(
                "imaterialise.batch_size",
                format!("must be between 1 and 10 (the API's limit), got {}", self.batch_size),
            );
        }
        if purpose == Purpose::Upstream && self.enabled {
            if self.api_code.is_empty() {
                problems.add(
                    "imaterialise.api_code",
                    "missing apiCode: set imaterialise.api_code_file, or the environment variable CARTWATCH__IMATERIALISE__API_CODE",
                );
            } else if uuid::Uuid::try_parse(self.api_code.expose().trim()).is_err() {
                problems.add("imaterialise.api_code", "must be a GUID (the value is not shown)");
            }
        }
    }
}

impl TiteliveConfig {
    fn check(&self, problems: &mut Problems) {
        check_client(
            problems,
            "titelive",
            &self.base_url,
            self.concurrency,
            self.requests_per_second,
            (self.request_timeout, self.connect_timeout),
            self.max_response_bytes,
        );
        if !self.default_domain.is_empty()
            && let Err(message) = crate::provider::titelive::check_domain(&self.default_domain)
        {
            problems.add("titelive.default_domain", message);
        }
    }
}

impl CadenceConfig {
    fn check(&self, problems: &mut Problems) {
        let mut previous_age = Duration::ZERO;
        for (index, tier) in self.tiers.iter().enumerate() {
            let key = format!("cadence.tiers[{index}]");
            if tier.younger_than <= previous_age {
                problems.add(&key, "tiers must be listed youngest first, each `younger_than` larger than the last");
            }
            problems.duration(&format!("{key}.younger_than"), tier.younger_than, SECOND, LONGEST);
            problems.duration(&format!("{key}.every"), tier.every, SECOND, 365 * DAY);
            previous_age = tier.younger_than;
        }
        problems.duration("cadence.older_every", self.older_every, SECOND, 365 * DAY);
        problems.duration("cadence.checked_out_every", self.checked_out_every, SECOND, 365 * DAY);
        problems.duration("cadence.max_age", self.max_age, SECOND, LONGEST);
        problems.fraction("cadence.jitter", self.jitter);
    }
}

impl BackoffConfig {
    fn check(&self, problems: &mut Problems) {
        problems.duration("backoff.transient_initial", self.transient_initial, MILLISECOND, DAY);
        problems.duration("backoff.transient_max", self.transient_max, MILLISECOND, 7 * DAY);
        if self.transient_max < self.transient_initial {
            problems.add("backoff.transient_max", "must not be shorter than backoff.transient_initial");
        }
        problems.duration("backoff.auth_initial", self.auth_initial, MILLISECOND, DAY);
        problems.duration("backoff.auth_max", self.auth_max, MILLISECOND, 7 * DAY);
        if self.auth_max < self.auth_initial {
            problems.add("backoff.auth_max", "must not be shorter than backoff.auth_initial");
        }
        problems.number("backoff.circuit_after", self.circuit_after, 1..=1000);
        // One answer alone never ends the tracking of a cart.
        problems.number("backoff.not_found_after", self.not_found_after, 2..=1000);
    }
}

impl DeliveryConfig {
    fn check(&self, problems: &mut Problems) {
        let schedule = self.schedule();
        if schedule.is_empty() {
            problems.add("delivery.schedule", "needs at least one delay (the first attempt, usually \"0s\")");
        }
        if schedule.len() > 100 {
            problems.add("delivery.schedule", format!("has {} delays; at most 100", schedule.len()));
        }
        for (index, delay) in schedule.iter().enumerate() {
            problems.duration(&format!("delivery.schedule[{index}]"), *delay, Duration::ZERO, 30 * DAY);
        }
        problems.fraction("delivery.jitter", self.jitter);
    }
}

impl HttpConfig {
    fn check(&self, problems: &mut Problems) {
        if !self.listen.trim().is_empty() {
            match self.address() {
                None => problems.add(
                    "http.listen",
                    format!("not an address with a port, such as \"127.0.0.1:8787\": {:?}", self.listen),
                ),
                Some(address) if !address.ip().is_loopback() && self.token.is_empty() => problems.add(
                    "http.listen",
                    format!("listening on {address}, which is not loopback, needs http.token (or http.token_file)"),
                ),
                Some(_) => {}
            }
        }
        problems.number("http.max_body_bytes", self.max_body_bytes, 1024..=1 << 30);
        problems.number("http.max_connections", self.max_connections, 1..=10_000);
        problems.duration("http.header_timeout", self.header_timeout, 100 * MILLISECOND, 10 * MINUTE);
        problems.duration("http.idle_timeout", self.idle_timeout, SECOND, DAY);
    }
}

impl Config {
    /// Every problem that makes this config unusable for `purpose`, each section checked by
    /// its own type.
    pub fn problems(&self, purpose: Purpose) -> Vec<Problem> {
        let mut problems = Problems::default();
        self.database.check(&mut problems);
        self.sweep.check(&mut problems);
        self.imaterialise.check(purpose, &mut problems);
        self.titelive.check(&mut problems);
        if purpose == Purpose::Upstream && !self.imaterialise.enabled && !self.titelive.enabled {
            problems.add("imaterialise.enabled", "no provider is enabled: enable imaterialise or titelive");
        }
        self.cadence.check(&mut problems);
        self.backoff.check(&mut problems);
        problems.duration("items.status_max_age", self.items.status_max_age, Duration::ZERO, 30 * DAY);
        self.delivery.check(&mut problems);
        for (name, webhook) in &self.webhooks {
            webhook.check(name, purpose, &mut problems);
        }
        self.http.check(&mut problems);
        for name in &self.events.emit {
            if EventType::parse(name).is_none() {
                problems.add(
                    "events.emit",
                    format!(
                        "unknown event type {name:?}; known types: {}",
                        EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
        if LoggingConfig::parse_level(&self.logging.level).is_none() {
            problems.add(
                "logging.level",
                format!("must be one of error, warn, info, debug, trace; got {:?}", self.logging.level),
            );
        }
        problems.into_vec()
    }
}

impl WebhookConfig {
    fn check(&self, name: &str, purpose: Purpose, problems: &mut Problems) {
        let key = |field: &str| format!("webhooks.{name}.{field}");
        if name.is_empty() || name == "log" || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.add(
                &key("url"),
                format!("the endpoint name {name:?} must be letters, digits, - or _ and not \"log\""),
            );
        }
        match check_base_url(&self.url) {
            Ok(url) if url.scheme() == "http" && !is_loopback_host(&url) && !self.allow_http => problems.add(
                &key("url"),
                format!(
                    "plain http to {} is refused; use https, or set allow_http = true",
                    url.host_str().unwrap_or("")
                ),
            ),
            Ok(_) => {}
            Err(_) if self.url.is_empty() => problems.add(&key("url"), "missing: every webhook needs a url"),
            Err(message) => problems.add(&key("url"), message),
        }
        if self.secret.is_empty() && purpose == Purpose::Upstream {
            problems.add(
                &key("secret"),
                format!("missing: set secret_file, or CARTWATCH__WEBHOOKS__{}__SECRET", name.to_ascii_uppercase()),
            );
        }
        for (field, secret) in [("secret", &self.secret), ("previous_secret", &self.previous_secret)] {
            if !secret.is_empty() && crate::sinks::webhook::signer(secret).is_none() {
                problems.add(&key(field), "must be whsec_ followed by base64 (the value is not shown)");
            }
        }
        for event_type in &self.event_types {
            if EventType::parse(event_type).is_none() {
                problems.add(&key("event_types"), format!("unknown event type {event_type:?}"));
            }
        }
        problems.duration(&key("timeout"), self.timeout, 100 * MILLISECOND, 10 * MINUTE);
        problems.number(&key("concurrency"), self.concurrency, 1..=1024);
    }
}

impl Config {
    /// Risky but allowed settings, worth a line in the log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Ok(url) = Url::parse(&self.imaterialise.base_url)
            && url.scheme() == "http"
            && !is_loopback_host(&url)
        {
            warnings.push(format!(
                "imaterialise.base_url uses plain http to a non-loopback host ({}); the apiCode would cross the network unencrypted",
                url.host_str().unwrap_or("")
            ));
        }
        if self.imaterialise.requests_per_second == 0.0 {
            warnings.push("imaterialise.requests_per_second is 0: requests are limited only by concurrency".into());
        }
        if !self.sinks.log.enabled && self.webhooks.is_empty() {
            warnings.push("sinks.log is disabled and no other sink is configured: events stay in the outbox".into());
        }
        warnings
    }

    /// The providers to poll.
    pub fn enabled_providers(&self) -> Vec<crate::provider::Provider> {
        let mut providers = Vec::new();
        if self.imaterialise.enabled {
            providers.push(crate::provider::Provider::Imaterialise);
        }
        if self.titelive.enabled {
            providers.push(crate::provider::Provider::Titelive);
        }
        providers
    }

    /// What a poller of `provider` needs from this config.
    pub fn poller_settings(&self, provider: crate::provider::Provider) -> PollerSettings {
        match provider {
            crate::provider::Provider::Imaterialise => PollerSettings {
                provider,
                batch_size: self.imaterialise.batch_size.clamp(1, 10) as usize,
                concurrency: self.imaterialise.concurrency as usize,
                requests_per_second: self.imaterialise.requests_per_second,
                request_timeout: self.imaterialise.request_timeout,
            },
            crate::provider::Provider::Titelive => PollerSettings {
                provider,
                batch_size: 1,
                concurrency: self.titelive.concurrency as usize,
                requests_per_second: self.titelive.requests_per_second,
                request_timeout: self.titelive.request_timeout,
            },
        }
    }

    /// The effective config as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot render config: {error}\n"))
    }

    /// The set of event types configured to be written.
    pub fn emitted_event_types(&self) -> BTreeSet<EventType> {
        self.events.emit.iter().filter_map(|name| EventType::parse(name)).collect()
    }
}

impl LoggingConfig {
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

/// Checks that a base URL is an absolute http(s) URL with a host and no query.
pub(crate) fn check_base_url(text: &str) -> Result<Url, String> {
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
pub(crate) fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, environment: &[(&str, &str)], purpose: Purpose) -> Result<Loaded, ConfigError> {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cartwatch.toml");
        std::fs::write(&path, text).unwrap();
        let environment = environment.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        load(&path, true, environment, purpose)
    }

    fn problems_of(result: Result<Loaded, ConfigError>) -> Vec<Problem> {
        match result {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    const API_CODE: &str = "0f7c3c55-5d5b-4a4e-9a52-b1b5d4b0e6a7";

    #[test]
    fn embedded_defaults_are_valid_for_database_commands() {
        let config = Config::default();
        assert_eq!(config.imaterialise.batch_size, 10);
        assert!(config.problems(Purpose::Database).is_empty(), "{:?}", config.problems(Purpose::Database));
    }

    #[test]
    fn missing_api_code_is_reported_for_upstream_commands_only() {
        let problems = Config::default().problems(Purpose::Upstream);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "imaterialise.api_code");
        assert!(problems[0].message.contains("missing apiCode"));
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let loaded = load_text(
            "[imaterialise]\nbatch_size = 5\nconcurrency = 2\n",
            &[("CARTWATCH__IMATERIALISE__CONCURRENCY", "3"), ("CARTWATCH__IMATERIALISE__API_CODE", API_CODE)],
            Purpose::Upstream,
        )
        .unwrap();
        assert_eq!(loaded.config.imaterialise.batch_size, 5);
        assert_eq!(loaded.config.imaterialise.concurrency, 3);
        assert_eq!(loaded.config.imaterialise.api_code.expose(), API_CODE);
    }

    #[test]
    fn api_code_from_a_credentials_file() {
        let directory = tempfile::tempdir().unwrap();
        let secret_path = directory.path().join("api-code");
        std::fs::write(&secret_path, format!("{API_CODE}\n")).unwrap();
        let text = format!("[imaterialise]\napi_code_file = {:?}\n", secret_path.display().to_string());
        let loaded = load_text(&text, &[], Purpose::Upstream).unwrap();
        assert_eq!(loaded.config.imaterialise.api_code.expose(), API_CODE);
        assert!(!loaded.config.to_redacted_toml().contains(API_CODE));
    }

    #[test]
    fn each_problem_gets_its_own_message() {
        let problems = problems_of(load_text(
            "[imaterialise]\nbase_url = \"ftp://x\"\nbatch_size = 12\nbacth = 1\n[sweep]\ncron = \"every minute\"\n",
            &[],
            Purpose::Upstream,
        ));
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "imaterialise.bacth",
                "sweep.cron",
                "imaterialise.base_url",
                "imaterialise.batch_size",
                "imaterialise.api_code"
            ]
        );
        assert!(problems[3].message.contains("between 1 and 10"));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let error = load_text("[imaterialise]\nbatch_size = \"ten\"\n", &[], Purpose::Database).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("batch_size"), "{message}");
    }

    #[test]
    fn broken_toml_is_reported_with_the_file() {
        let error = load_text("[imaterialise\nbatch_size = 1\n", &[], Purpose::Database).unwrap_err();
        assert!(matches!(error, ConfigError::Syntax(_)), "{error:?}");
        assert!(error.to_string().contains("cartwatch.toml"), "{error}");
    }

    #[test]
    fn a_syntax_error_on_a_secret_line_does_not_show_the_secret() {
        for text in [
            "[imaterialise]\napi_code = 0f7c3c55-5d5b-4a4e-9a52-b1b5d4b0e6a7\n",
            "[http]\ntoken = \"s3cr3t-t0k3n\n",
            "[webhooks.erp]\nurl = \"https://user:hunter2@example.com/x\n",
        ] {
            let error = load_text(text, &[], Purpose::Database).unwrap_err().to_string();
            assert!(!error.contains("0f7c3c55") && !error.contains("s3cr3t") && !error.contains("hunter2"), "{error}");
            assert!(error.contains("line 2") && error.contains("cartwatch.toml"), "{error}");
        }
        let error = load_text("[imaterialise]\napi_code = 12345\n", &[], Purpose::Upstream).unwrap_err().to_string();
        assert!(!error.contains("12345") && error.contains("api_code"), "{error}");
    }

    #[test]
    fn both_inline_and_file_secret_is_a_problem() {
        let text = format!("[imaterialise]\napi_code = {API_CODE:?}\napi_code_file = \"/nonexistent\"\n");
        let problems = problems_of(load_text(&text, &[], Purpose::Upstream));
        assert_eq!(problems[0].key, "imaterialise.api_code_file");
    }

    #[test]
    fn explicit_missing_file_is_an_error_but_default_path_is_optional() {
        let missing = Path::new("/nonexistent/cartwatch.toml");
        assert!(matches!(load(missing, true, HashMap::new(), Purpose::Database), Err(ConfigError::Unreadable { .. })));
        assert!(load(missing, false, HashMap::new(), Purpose::Database).is_ok());
    }

    #[test]
    fn unknown_event_types_and_levels_are_problems() {
        let problems = problems_of(load_text(
            "[events]\nemit = [\"cart.orderd\"]\n[logging]\nlevel = \"loud\"\n",
            &[],
            Purpose::Database,
        ));
        assert_eq!(problems.len(), 2);
        assert!(problems[0].message.contains("cart.orderd"));
    }

    #[test]
    fn values_that_could_overflow_are_out_of_range() {
        let problems = problems_of(load_text(
            "[imaterialise]\nrequests_per_second = 1e-300\n[cadence]\nolder_every = \"500000000000d\"\n\
             [backoff]\nnot_found_after = 1\n[delivery]\nschedule = [\"0s\", \"9999d\"]\n",
            &[],
            Purpose::Database,
        ));
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "imaterialise.requests_per_second",
                "cadence.older_every",
                "backoff.not_found_after",
                "delivery.schedule[1]"
            ]
        );
        assert!(problems[0].message.contains("between 0.001 and 10000"), "{}", problems[0].message);
    }

    #[test]
    fn plain_http_to_a_remote_host_is_a_warning() {
        let loaded = load_text("[imaterialise]\nbase_url = \"http://example.com\"\n", &[], Purpose::Database).unwrap();
        assert!(loaded.warnings.iter().any(|w| w.contains("unencrypted")));
    }
}
