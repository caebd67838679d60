//! `cartwatch status`: every cart in summary, or one in detail.

use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use cartwatch::config::{Config, Purpose};
use cartwatch::model::{Cart, CartState, StatusModel};
use cartwatch::reconcile::{Context, situation};
use cartwatch::store::Store;
use cartwatch::time::format_ts;
use chrono::Utc;

use super::{EXIT_DATABASE, EXIT_REJECTED, Failure, loaded, open_existing_store};

/// When the cart is polled next and why: the plan the daemon sizes from this database,
/// asked about this cart as it is now.
async fn next_poll(store: &dyn Store, config: &Config, cart: &Cart) -> Result<String, Failure> {
    let now = Utc::now();
    let when = match (cart.state, cart.next_poll_at) {
        (CartState::Tracking, Some(at)) if at <= now => "now (it is due)".to_owned(),
        (CartState::Tracking, Some(at)) => format!(
            "{} (in {})",
            format_ts(at),
            humantime::format_duration(Duration::from_secs((at - now).num_seconds().max(0) as u64))
        ),
        (CartState::Tracking, None) => "at the next sweep (registered by hand)".to_owned(),
        (state, _) => return Ok(format!("\nNot polled any more: {}\n", state.as_str())),
    };
    let Some(provider) = config.providers().get(&cart.provider) else {
        return Ok(format!("\nNext poll {when}; its provider {} is not configured\n", cart.provider));
    };
    let planned = super::plan::planned(store, config, &provider).await?;
    let rules = config.rules().with_plan(planned.plan.clone());
    let model = Arc::clone(&provider) as Arc<dyn StatusModel>;
    let context = Context { now, rules: Arc::new(rules), model };
    let why = planned.plan.explain(&situation(cart, &context));
    Ok(format!(
        "\nNext poll {when}\n  then {why}\n  (±{:.0}% jitter; the plan is sized anew every {}: `cartwatch plan`)\n",
        config.cadence.jitter * 100.0,
        humantime::format_duration(config.plan.refresh)
    ))
}

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
            crate::say_raw!("{}", next_poll(store.as_ref(), &loaded.config, &detail.cart).await?);
        }
        None => {
            let summary = store.summary(Utc::now()).await.map_err(database)?;
            crate::say_raw!("{}", cartwatch::render::render_summary(&summary));
            for provider in loaded.config.providers().enabled() {
                let planned = super::plan::planned(store.as_ref(), &loaded.config, &provider).await?;
                crate::say_raw!("{}\n", super::plan::render_figures(provider.name(), &planned));
            }
        }
    }
    Ok(())
}
