//! `cartwatch check-config`: the effective config, validated, secrets redacted.

use std::path::PathBuf;

use cartwatch::config::Purpose;

use super::{Failure, loaded};

pub fn check_config(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    match &loaded.file {
        Some(file) => crate::say!("# config file: {}", file.display()),
        None => crate::say!("# no config file; built-in defaults and the environment"),
    }
    for warning in &loaded.warnings {
        crate::say!("# warning: {warning}");
    }
    crate::say!("# the config is valid\n");
    crate::say_raw!("{}", loaded.config.to_redacted_toml());
    Ok(())
}
