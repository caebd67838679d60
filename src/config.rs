//! Configuration: the embedded default file, the user's file and the environment, layered into
//! typed structs, then validated with one message per problem.
//!
//! `config/cartwatch.toml` is both the documentation of every key and the built-in default.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::Problems;
pub use crate::checks::{Problem, Purpose};
use crate::events::EventType;
pub use crate::events::EventsConfig;
pub use crate::http_api::HttpConfig;
pub use crate::items::ItemsConfig;
pub use crate::logging::{LogFormat, LoggingConfig};
pub use crate::plan::{PlanConfig, PlanMode};
pub use crate::policy::{BackoffConfig, CadenceConfig, CadenceTier};
use crate::provider::Registry;
pub use crate::provider::imaterialise::{Imaterialise, ImaterialiseConfig, WireFormat};
pub use crate::provider::titelive::{Titelive, TiteliveConfig};
use crate::reconcile::Rules;
use crate::secret::Secret;
pub use crate::sinks::log::LogSinkConfig;
pub use crate::sinks::webhook::{DeliveryConfig, WebhookConfig};
pub use crate::store::DatabaseConfig;
pub use crate::sweep::SweepConfig;

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
    /// How long until each cart is polled again: a budget, or the cadence tiers.
    pub plan: PlanConfig,
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

/// `[sinks]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SinksConfig {
    /// `[sinks.log]`
    pub log: LogSinkConfig,
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
    let database = &mut config.database;
    if let Some(url) = read_secret_file("database.url_file", &database.url_file, !database.url.is_empty(), problems) {
        database.url = url;
    }
    if let Some(password) = read_secret_file("database.password_file", &database.password_file, false, problems) {
        match crate::store::postgres::with_password(database.url.expose(), password.expose()) {
            Ok(url) => database.url = Secret::new(url),
            Err(message) => problems.push(Problem { key: "database.password_file".into(), message }),
        }
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
    match std::fs::read_to_string(path) {
        // An empty file gives nothing (the unit's empty fallback credential, say).
        Ok(text) if text.trim().is_empty() => None,
        Ok(_) if inline_is_set => {
            problems.push(Problem { key: key.into(), message: "set either the value or the file, not both".into() });
            None
        }
        Ok(text) => Some(Secret::new(text.trim())),
        Err(error) => {
            problems.push(Problem { key: key.into(), message: format!("cannot read {}: {error}", path.display()) });
            None
        }
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
        if purpose == Purpose::Upstream && self.providers().enabled().is_empty() {
            problems.add("imaterialise.enabled", "no provider is enabled: enable imaterialise or titelive");
        }
        self.cadence.check(&mut problems);
        self.plan.check(&mut problems);
        self.backoff.check(&mut problems);
        self.items.check(&mut problems);
        self.delivery.check(&mut problems);
        for (name, webhook) in &self.webhooks {
            webhook.check(name, purpose, &mut problems);
        }
        self.http.check(&mut problems);
        self.events.check(&mut problems);
        self.logging.check(&mut problems);
        problems.into_vec()
    }

    /// Risky but allowed settings, worth a line in the log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> =
            self.providers().all().iter().flat_map(|provider| provider.warnings()).collect();
        if !self.sinks.log.enabled && self.webhooks.is_empty() {
            warnings.push("sinks.log is disabled and no other sink is configured: events stay in the outbox".into());
        }
        warnings
    }

    /// Every provider cartwatch knows, with its settings from this config. A new provider is
    /// one more line here.
    pub fn providers(&self) -> Registry {
        Registry::new(vec![
            Arc::new(Imaterialise::new(self.imaterialise.clone())),
            Arc::new(Titelive::new(self.titelive.clone())),
        ])
    }

    /// The decision rules: cadence, backoff, events to write.
    pub fn rules(&self) -> Rules {
        Rules::new(&self.cadence, &self.backoff, self.emitted_event_types())
    }

    /// What the sinks are built from.
    pub fn sink_settings(&self) -> crate::sinks::SinkSettings {
        crate::sinks::SinkSettings {
            log: self.sinks.log.clone(),
            webhooks: self.webhooks.clone(),
            delivery: self.delivery.clone(),
            emit: self.emitted_event_types(),
        }
    }

    /// What the daemon runs with.
    pub fn daemon_settings(&self) -> crate::daemon::Settings {
        crate::daemon::Settings {
            database: self.database.clone(),
            providers: self.providers(),
            rules: Arc::new(self.rules()),
            backoff: self.backoff.clone(),
            plan: self.plan.clone(),
            sweep: self.sweep.clone(),
            sinks: self.sink_settings(),
        }
    }

    /// A config that polls the i.materialise API at `base_url` with `api_code` every second
    /// into the database at `database`: for the demo, and tests against a simulator.
    pub fn polling_every_second(base_url: &str, api_code: &str, database: &Path) -> Config {
        let mut config = Config::default();
        config.database.path = database.to_owned();
        config.sweep.cron = "* * * * * *".into();
        config.imaterialise.base_url = base_url.to_owned();
        config.imaterialise.api_code = Secret::new(api_code);
        config.imaterialise.requests_per_second = 0.0;
        config.imaterialise.request_timeout = Duration::from_secs(5);
        let second = Duration::from_secs(1);
        config.cadence.tiers = vec![CadenceTier { younger_than: Duration::from_secs(30 * 24 * 3600), every: second }];
        config.cadence.older_every = second;
        config.cadence.checked_out_every = second;
        config.cadence.jitter = 0.0;
        config.plan.mode = PlanMode::Tiers;
        config.backoff.transient_initial = Duration::from_millis(500);
        config.backoff.transient_max = Duration::from_secs(4);
        config.backoff.auth_initial = Duration::from_secs(1);
        config.backoff.auth_max = Duration::from_secs(4);
        config.backoff.not_found_after = 3;
        config.logging.level = "warn".into();
        config
    }

    /// The effective config as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot render config: {error}\n"))
    }

    /// The set of event types configured to be written.
    pub fn emitted_event_types(&self) -> BTreeSet<EventType> {
        self.events.types()
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

    /// Tests of the decisions use fixed settings; they must be the documented defaults.
    #[test]
    fn the_test_fixtures_are_the_documented_defaults() {
        let config = Config::default();
        assert_eq!(config.cadence, crate::policy::fixtures::cadence());
        assert_eq!(config.backoff, crate::policy::fixtures::backoff());
        assert_eq!(config.delivery.schedule(), crate::policy::fixtures::delivery_schedule());
    }

    #[test]
    fn plain_http_to_a_remote_host_is_a_warning() {
        let loaded = load_text("[imaterialise]\nbase_url = \"http://example.com\"\n", &[], Purpose::Database).unwrap();
        assert!(loaded.warnings.iter().any(|w| w.contains("unencrypted")));
    }
}
