//! `cartwatch webhooks`: the endpoints, and enabling one its receiver disabled.

use std::path::PathBuf;

use cartwatch::config::Purpose;
use chrono::Utc;

use super::events::check_endpoint;
use super::{EXIT_DATABASE, Failure, loaded, open_existing_store};

pub async fn list_webhooks(config_path: Option<PathBuf>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let summary = store.summary(Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    let webhooks: Vec<_> = summary.sinks.iter().filter(|sink| sink.sink != cartwatch::sinks::LOG_SINK).collect();
    if webhooks.is_empty() {
        crate::say!("no webhook endpoints configured");
    }
    for sink in webhooks {
        crate::say!("{}", cartwatch::render::render_sink_line(sink));
    }
    Ok(())
}

pub async fn enable_webhook(config_path: Option<PathBuf>, name: String) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    match store.enable_sink(name.clone(), Utc::now()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))? {
        Some(true) => crate::say!("{name}: enabled; a running daemon sends what was queued for it within a second"),
        Some(false) => crate::say!("{name}: was not disabled"),
        None => {
            check_endpoint(store.as_ref(), Some(&name)).await?;
        }
    }
    Ok(())
}
