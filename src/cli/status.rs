//! `cartwatch status`: every cart in summary, or one in detail.

use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use cartwatch::config::{Config, Purpose};
use cartwatch::model::{Cart, CartState, StatusModel};
use cartwatch::reconcile::{Context, situation};
use cartwatch::store::{Store, Summary};
use cartwatch::time::format_ts;
use chrono::Utc;
use serde_json::json;

use super::{EXIT_DATABASE, EXIT_REJECTED, Failure, loaded, open_existing_store};

/// When a cart is polled next and why.
struct NextPoll {
    /// Its stored `next_poll_at`, if it is still polled.
    at: Option<chrono::DateTime<Utc>>,
    /// The plan's reason for the interval after that poll.
    why: Option<String>,
}

/// When the cart is polled next and why: the plan the daemon sizes from this database,
/// asked about this cart as it is now. `None` when it is not polled any more.
async fn next_poll(store: &dyn Store, config: &Config, cart: &Cart) -> Result<Option<NextPoll>, Failure> {
    if cart.state != CartState::Tracking {
        return Ok(None);
    }
    let Some(provider) = config.providers().get(&cart.provider) else {
        return Ok(Some(NextPoll { at: cart.next_poll_at, why: None }));
    };
    let planned = super::plan::planned(store, config, &provider).await?;
    let rules = config.rules().with_plan(planned.plan.clone());
    let model = Arc::clone(&provider) as Arc<dyn StatusModel>;
    let context = Context { now: Utc::now(), rules: Arc::new(rules), model };
    Ok(Some(NextPoll { at: cart.next_poll_at, why: Some(planned.plan.explain(&situation(cart, &context))) }))
}

fn render_next_poll(next: Option<&NextPoll>, cart: &Cart, config: &Config) -> String {
    let Some(next) = next else { return format!("\nNot polled any more: {}\n", cart.state.as_str()) };
    let now = Utc::now();
    let when = match next.at {
        Some(at) if at <= now => "now (it is due)".to_owned(),
        Some(at) => format!(
            "{} (in {})",
            format_ts(at),
            humantime::format_duration(Duration::from_secs((at - now).num_seconds().max(0) as u64))
        ),
        None => "at the next sweep (registered by hand)".to_owned(),
    };
    match &next.why {
        Some(why) => format!(
            "\nNext poll {when}\n  then {why}\n  (±{:.0}% jitter; the plan is sized anew every {}: `cartwatch plan`)\n",
            config.cadence.jitter * 100.0,
            humantime::format_duration(config.plan.refresh)
        ),
        None => format!("\nNext poll {when}; its provider {} is not configured\n", cart.provider),
    }
}

pub async fn status(config_path: Option<PathBuf>, cart_id: Option<String>, json: bool) -> Result<(), Failure> {
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
            let next = next_poll(store.as_ref(), &loaded.config, &detail.cart).await?;
            if json {
                let mut value = cartwatch::render::cart_detail_json(&detail);
                value["nextPoll"] = match &next {
                    Some(next) => json!({ "at": next.at.map(format_ts), "why": next.why }),
                    None => serde_json::Value::Null,
                };
                crate::say!("{value}");
            } else {
                crate::say_raw!("{}", cartwatch::render::render_cart_detail(&detail));
                crate::say_raw!("{}", render_next_poll(next.as_ref(), &detail.cart, &loaded.config));
            }
        }
        None => {
            let summary = store.summary(Utc::now()).await.map_err(database)?;
            let mut plans = Vec::new();
            for provider in loaded.config.providers().enabled() {
                let planned = super::plan::planned(store.as_ref(), &loaded.config, &provider).await?;
                plans.push((provider, planned));
            }
            if json {
                let mut value = summary_json(&summary);
                value["plans"] = plans
                    .iter()
                    .map(|(provider, planned)| super::plan::plan_json(provider.as_ref(), planned, false))
                    .collect();
                crate::say!("{value}");
            } else {
                crate::say_raw!("{}", cartwatch::render::render_summary(&summary));
                for (provider, planned) in &plans {
                    crate::say_raw!("{}\n", super::plan::render_figures(provider.name(), planned));
                }
            }
        }
    }
    Ok(())
}

/// The summary as one JSON object, camelCase like the webhook payloads.
fn summary_json(summary: &Summary) -> serde_json::Value {
    let time = |instant: Option<chrono::DateTime<Utc>>| instant.map(format_ts);
    json!({
        "carts": summary.carts.iter().map(|(state, status, carts)| json!({ "state": state, "status": status, "carts": carts })).collect::<Vec<_>>(),
        "dueNow": summary.due_now,
        "events": summary.events,
        "upstreams": summary.upstreams.iter().map(|record| json!({
            "provider": record.provider,
            "mode": record.snapshot.mode.as_str(),
            "since": time(record.snapshot.since),
            "nextProbeAt": time(record.snapshot.next_probe_at),
            "consecutiveFailures": record.snapshot.consecutive_failures,
            "batchSize": record.snapshot.batch_size,
            "lastSuccessAt": time(record.last_success_at),
            "lastErrorAt": time(record.last_error_at),
            "lastError": record.last_error,
        })).collect::<Vec<_>>(),
        "sinks": summary.sinks,
        "lastSweep": summary.last_sweep,
        "invalid": summary.invalid.iter().map(|(cart_id, reason)| json!({ "cartId": cart_id, "reason": reason })).collect::<Vec<_>>(),
        "members": summary.members,
    })
}
