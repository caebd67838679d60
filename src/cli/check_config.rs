//! `cartwatch check-config`: the effective config, validated, secrets redacted; and, for a
//! PostgreSQL store, whether the database answers.

use std::path::PathBuf;
use std::time::Duration;

use cartwatch::config::{ConfigError, Purpose};
use cartwatch::store::DatabaseConfig;
use serde_json::json;

use super::{EXIT_CONFIG, EXIT_DATABASE, Failure, loaded};

/// How long `check-config` waits for a PostgreSQL server.
const REACH_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether a PostgreSQL database answers within [`REACH_TIMEOUT`] with its schema up to
/// date, and why not; `None` for the SQLite file, which the check does not open.
async fn reach(database: &DatabaseConfig) -> Option<anyhow::Result<()>> {
    if !database.is_postgres() {
        return None;
    }
    Some(match tokio::time::timeout(REACH_TIMEOUT, cartwatch::store::open(database, false)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(anyhow::anyhow!(
            "the database {} did not answer within {}s",
            database.target(),
            REACH_TIMEOUT.as_secs()
        )),
    })
}

pub async fn check_config(config_path: Option<PathBuf>, json: bool) -> Result<(), Failure> {
    if json {
        return check_config_json(config_path).await;
    }
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    match &loaded.file {
        Some(file) => crate::say!("# config file: {}", file.display()),
        None => crate::say!("# no config file; built-in defaults and the environment"),
    }
    for warning in &loaded.warnings {
        crate::say!("# warning: {warning}");
    }
    let database = &loaded.config.database;
    match reach(database).await {
        Some(Ok(())) => crate::say!("# the database {} answers; its schema is up to date", database.target()),
        Some(Err(error)) => return Err(Failure::new(EXIT_DATABASE, error)),
        None => {}
    }
    crate::say!("# the config is valid\n");
    crate::say_raw!("{}", loaded.config.to_redacted_toml());
    Ok(())
}

/// `check-config --json`: one object, `valid` with the file, warnings and the effective
/// config (its keys as in the file, secrets redacted), or the problems, each with its key.
async fn check_config_json(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = match super::load_config(config_path.as_deref(), Purpose::Upstream) {
        Ok(loaded) => loaded,
        Err(ConfigError::Invalid(problems)) => {
            let problems: Vec<_> =
                problems.iter().map(|problem| json!({ "key": problem.key, "message": problem.message })).collect();
            crate::say!("{}", json!({ "valid": false, "problems": problems }));
            return Err(Failure::quiet(EXIT_CONFIG));
        }
        Err(error) => return Err(Failure::new(EXIT_CONFIG, error)),
    };
    let database_answers = reach(&loaded.config.database).await.map(|reached| reached.is_ok());
    let config: serde_json::Value = toml::from_str::<toml::Value>(&loaded.config.to_redacted_toml())
        .ok()
        .and_then(|value| serde_json::to_value(value).ok())
        .unwrap_or_default();
    crate::say!(
        "{}",
        json!({
            "valid": true,
            "file": loaded.file.as_ref().map(|file| file.display().to_string()),
            "warnings": loaded.warnings,
            "databaseAnswers": database_answers,
            "config": config,
        })
    );
    match database_answers {
        Some(false) => Err(Failure::quiet(EXIT_DATABASE)),
        _ => Ok(()),
    }
}
