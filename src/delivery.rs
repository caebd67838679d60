//! The delivery loop: one per sink, working through that sink's pending deliveries in event
//! order, recording every attempt, sleeping until the next one is due or new events arrive.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::metrics::{DeliveryLabels, Metrics};
use crate::sinks::Sink;
use crate::store::{DeliveryResult, Store, retrying};
use crate::sweep::STORE_RETRY_BUDGET;

/// The longest the loop sleeps without looking for work, so events written by another
/// process (the CLI, `sqlite3`) are picked up promptly.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Delivers events to `sink` until `shutdown`. A batch in progress when shutdown comes is
/// finished and recorded first.
pub async fn delivery_loop(
    store: Store,
    sink: Arc<Sink>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let name = sink.name().to_owned();
    if let Ok(Some(reason)) = store.sink_disabled(name.clone()).await {
        error!(sink = %name, reason = %reason, "this endpoint is disabled and receives nothing; change its url in the config to enable it again");
        return;
    }
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let woken = wake.notified();
        let now = Utc::now();
        let pending = match store.pending_deliveries(name.clone(), now, sink.batch_limit(), sink.sequential()).await {
            Ok(pending) => pending,
            Err(error) => {
                warn!(sink = %name, error = %error, "cannot read pending deliveries; retrying");
                shutdown.run_until_cancelled(tokio::time::sleep(IDLE_POLL)).await;
                continue;
            }
        };
        if pending.is_empty() {
            // Sleep until the next retry is due, new events arrive, or the idle poll.
            let next_due = store.next_delivery_due(name.clone(), Utc::now()).await.ok().flatten();
            let until_due = next_due
                .as_deref()
                .and_then(crate::time::parse_ts)
                .and_then(|due| (due - Utc::now()).to_std().ok())
                .map_or(IDLE_POLL, |wait| wait.min(IDLE_POLL));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = woken => {}
                () = tokio::time::sleep(until_due) => {}
            }
            continue;
        }
        let outcome = sink.deliver(pending, now).await;
        let results = outcome.results;
        for result in &results {
            let outcome = match result {
                DeliveryResult::Delivered { .. } => "delivered",
                DeliveryResult::Retry { .. } => "retry",
                DeliveryResult::Dead { .. } => "dead",
            };
            metrics.deliveries.get_or_create(&DeliveryLabels { sink: name.clone(), outcome: outcome.into() }).inc();
        }
        let recorded = retrying("record deliveries", STORE_RETRY_BUDGET, &shutdown, || {
            store.record_deliveries(name.clone(), results.clone(), Utc::now())
        })
        .await;
        if let Err(error) = recorded {
            // Not recorded means attempted again later: a duplicate, never a loss.
            error!(sink = %name, error = %error, "cannot record deliveries; they will be attempted again");
        }
        if let Some(reason) = outcome.disable {
            error!(sink = %name, reason = %reason, "the receiver answered 410 Gone: this endpoint is DISABLED and receives nothing more; its undelivered events stay queued. Change its url in the config to enable it again");
            let disabled = retrying("disable the endpoint", STORE_RETRY_BUDGET, &shutdown, || {
                store.disable_sink(name.clone(), reason.clone(), Utc::now())
            })
            .await;
            if let Err(error) = disabled {
                error!(sink = %name, error = %error, "cannot record that the endpoint is disabled");
            }
            return;
        }
    }
}
