//! `cartwatch items`: guarded item changes, and their history.

use std::path::PathBuf;
use std::sync::Arc;

use cartwatch::cart_id::CartId;
use cartwatch::clock::Clock;
use cartwatch::config::Purpose;
use cartwatch::items::{ChangeError, ItemsService};
use cartwatch::provider::imaterialise::Imaterialise;
use cartwatch::provider::imaterialise::items::ItemAction;

use super::{
    EXIT_DATABASE, EXIT_PARTNER_REFUSED, EXIT_REFUSED, EXIT_REJECTED, EXIT_UPSTREAM, Failure, loaded,
    open_existing_store, open_store,
};

pub async fn change_items(
    config_path: Option<PathBuf>,
    action: ItemAction,
    cart_id: String,
    item_ids: Vec<String>,
    force: bool,
) -> Result<(), Failure> {
    let loaded = loaded(config_path.as_deref(), Purpose::Upstream)?;
    cartwatch::logging::init(&loaded.config.logging);
    let store = open_store(&loaded.config).await?;
    let config = loaded.config;
    let provider = Arc::new(Imaterialise::new(config.imaterialise.clone()));
    let service = ItemsService::new(store, provider, config.items.clone(), Arc::new(config.rules()), Clock::system())
        .map_err(|error| Failure::new(EXIT_UPSTREAM, error))?;
    let outcome = service.change(action, &cart_id, &item_ids, force).await.map_err(|error| {
        let code = match &error {
            ChangeError::Malformed(_) => EXIT_REJECTED,
            ChangeError::Refused(_) => EXIT_REFUSED,
            ChangeError::Rejected(_) => EXIT_PARTNER_REFUSED,
            ChangeError::Upstream(_) => EXIT_UPSTREAM,
            ChangeError::Store(_) => EXIT_DATABASE,
        };
        Failure::new(code, error)
    })?;
    let verb = match action {
        ItemAction::Add => "added to",
        ItemAction::Remove => "removed from",
    };
    if outcome.refreshed {
        crate::say!("(the cart's status was refreshed first)");
    }
    for item in &outcome.items {
        crate::say!("{}", cartwatch::render::render_cart_item(item));
    }
    for refusal in &outcome.refused {
        crate::say!("refused: {refusal}");
    }
    crate::say!(
        "{} item(s) {verb} cart {}; the cart must be re-opened in the shop's UI",
        outcome.items.len(),
        cart_id.trim().to_ascii_lowercase()
    );
    if let Some(event_id) = outcome.event_id {
        crate::say!("event {event_id} (cart.items_changed) written");
    }
    Ok(())
}

pub async fn list_items(config_path: Option<PathBuf>, cart_id: String, json: bool) -> Result<(), Failure> {
    let cart_id = CartId::parse(&cart_id).map_err(|error| Failure::new(EXIT_REJECTED, error))?;
    let loaded = loaded(config_path.as_deref(), Purpose::Database)?;
    let store = open_existing_store(&loaded.config).await?;
    let changes = store.item_history(cart_id.to_string()).await.map_err(|error| Failure::new(EXIT_DATABASE, error))?;
    if changes.is_empty() && !json {
        crate::say!("no item changes recorded for cart {cart_id}");
    }
    for change in &changes {
        match json {
            true => crate::say!("{}", serde_json::to_string(change).unwrap_or_default()),
            false => crate::say!("{}", cartwatch::render::render_item_change(change)),
        }
    }
    Ok(())
}
