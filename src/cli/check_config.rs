//! `cartwatch check-config`: the effective config, validated, secrets redacted; and, for a
//! PostgreSQL store, whether the database answers.

use std::path::PathBuf;
use std::time::Duration;

use cartwatch::config::Purpose;

use super::{EXIT_DATABASE, Failure, loaded};

/// How long `check-config` waits for a PostgreSQL server.
const REACH_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn check_config(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    match &loaded.file {
        Some(file) => crate::say!("# config file: {}", file.display()),
        None => crate::say!("# no config file; built-in defaults and the environment"),
    }
    for warning in &loaded.warnings {
        crate::say!("# warning: {warning}");
    }
    let database = &loaded.config.database;
    if database.is_postgres() {
        let target = database.target();
        let reached = tokio::time::timeout(REACH_TIMEOUT, cartwatch::store::open(database, false)).await;
        match reached {
            Ok(Ok(_)) => crate::say!("# the database {target} answers; its schema is up to date"),
            Ok(Err(error)) => return Err(Failure::new(EXIT_DATABASE, error)),
            Err(_) => {
                return Err(Failure::new(
                    EXIT_DATABASE,
                    anyhow::anyhow!("the database {target} did not answer within {}s", REACH_TIMEOUT.as_secs()),
                ));
            }
        }
    }
    crate::say!("# the config is valid\n");
    crate::say_raw!("{}", loaded.config.to_redacted_toml());
    Ok(())
}
