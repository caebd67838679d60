//! `cartwatch confirm`: turning a Titelive cart into an order.

use std::path::PathBuf;
use std::sync::Arc;

use cartwatch::clock::Clock;
use cartwatch::config::Purpose;
use cartwatch::confirm::{ConfirmError, ConfirmService};
use cartwatch::provider::titelive::Titelive;

use super::{EXIT_DATABASE, EXIT_PARTNER_REFUSED, EXIT_REJECTED, EXIT_UPSTREAM, Failure, loaded, open_store};

pub async fn confirm(config_path: Option<PathBuf>, token: String, domain: Option<String>) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    cartwatch::logging::init(&loaded.config.logging);
    let store = open_store(&loaded.config).await?;
    let config = loaded.config;
    let provider = Arc::new(Titelive::new(config.titelive.clone()));
    let service = ConfirmService::new(store, provider, Arc::new(config.rules()), Clock::system())
        .map_err(|error| Failure::new(EXIT_UPSTREAM, error))?;
    let (cart_id, order) = service.confirm(&token, domain.as_deref()).await.map_err(|error| {
        let code = match &error {
            ConfirmError::Malformed(_) => EXIT_REJECTED,
            ConfirmError::Refused(_) => EXIT_PARTNER_REFUSED,
            ConfirmError::Upstream(_) => EXIT_UPSTREAM,
            ConfirmError::Store(_) => EXIT_DATABASE,
        };
        Failure::new(code, error)
    })?;
    crate::say!(
        "cart {cart_id}: order {} created (status {}, total {}); cart.ordered written",
        order.id.as_deref().unwrap_or("?"),
        order.status.map_or("?".to_owned(), |status| status.to_string()),
        order.total_price.map_or("?".to_owned(), |total| total.to_string()),
    );
    Ok(())
}
