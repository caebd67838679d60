//! `cartwatch status`: every cart in summary, or one in detail.

use std::path::PathBuf;

use cartwatch::config::Purpose;
use chrono::Utc;

use super::{EXIT_DATABASE, EXIT_REJECTED, Failure, loaded, open_existing_store};

pub async fn status(config_path: Option<PathBuf>, cart_id: Option<String>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let database = |error| Failure::new(EXIT_DATABASE, error);
    match cart_id {
        Some(text) => {
            let providers = loaded.config.providers();
            let cart_id =
                providers.public_id(&text).map_err(|error| Failure::new(EXIT_REJECTED, anyhow::anyhow!(error)))?;
            let detail = store.cart_detail(cart_id.clone()).await.map_err(database)?;
            let detail = detail
                .ok_or_else(|| Failure::new(EXIT_REJECTED, anyhow::anyhow!("cart {cart_id} is not in the database")))?;
            crate::say_raw!("{}", cartwatch::render::render_cart_detail(&detail));
        }
        None => {
            let summary = store.summary(Utc::now()).await.map_err(database)?;
            crate::say_raw!("{}", cartwatch::render::render_summary(&summary));
        }
    }
    Ok(())
}
