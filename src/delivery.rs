//! Delivery: one pass over a sink's due deliveries (attempt them, record every outcome), and
//! the per-sink loop that repeats it, sleeping until the next retry is due or new events
//! arrive. `poll-once` and the daemon's loops share the same pass.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::events::{EventType, NewEvent, WebhookEventData};
use crate::metrics::Metrics;
use crate::outbox::DeliveryResult;
use crate::sinks::Sink;
use crate::store::{OutboxStore, RETRY_BUDGET, StoreError, retrying};
use crate::time::parse_ts;

/// The longest the loop sleeps without looking for work, so events written by another
/// process (the CLI, `sqlite3`) and an endpoint enabled again by a command are picked up
/// promptly.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Deliveries attempted.
    pub attempted: usize,
    /// Of those, delivered.
    pub delivered: usize,
    /// Set when the receiver asked to be disabled (`410 Gone`), with the reason.
    pub disabled: Option<String>,
}

/// Why a pass ended without recording anything.
#[derive(Debug)]
pub enum PassError {
    /// The sink is disabled (its receiver answered `410 Gone`); the reason is given.
    Disabled(String),
    /// The database could not be read or written.
    Store(StoreError),
    /// `abort` was cancelled while attempts were in flight; they will be made again.
    Aborted,
}

/// Attempts one batch of `sink`'s due deliveries and records the outcomes. Returns `None`
/// when nothing is due. A batch in flight when `abort` is cancelled is dropped unrecorded:
/// its deliveries are attempted again later, with the same ids.
///
/// Fails when the sink is disabled, the database fails, or the pass is aborted.
pub async fn deliver_pass(
    store: &dyn OutboxStore,
    sink: &Sink,
    metrics: &Metrics,
    clock: &Clock,
    abort: &CancellationToken,
) -> Result<Option<Pass>, PassError> {
    let name = sink.name().to_owned();
    if let Some(reason) = store.sink_disabled(name.clone()).await.map_err(PassError::Store)? {
        return Err(PassError::Disabled(reason));
    }
    let now = clock.now();
    let pending = store
        .pending_deliveries(name.clone(), now, sink.batch_limit(), sink.sequential())
        .await
        .map_err(PassError::Store)?;
    if pending.is_empty() {
        return Ok(None);
    }
    let attempted = pending.len();
    let attempts: HashMap<i64, Attempted> = pending
        .iter()
        .map(|delivery| {
            let event = &delivery.event;
            let attempted = Attempted {
                event_id: event.event_id.clone(),
                event_type: event.event_type.clone(),
                cart_id: event.cart_id.clone(),
                written: parse_ts(&event.created_at),
                attempts: delivery.attempts + 1,
            };
            (event.seq, attempted)
        })
        .collect();
    let started = std::time::Instant::now();
    let outcome = abort.run_until_cancelled(sink.deliver(pending, now)).await.ok_or(PassError::Aborted)?;
    metrics.delivery_pass(&name, started.elapsed());
    let delivered_at = clock.now();
    let mut delivered = 0;
    for result in &outcome.results {
        let label = match result {
            DeliveryResult::Delivered { event_seq, .. } => {
                delivered += 1;
                if let Some(written) = attempts.get(event_seq).and_then(|attempt| attempt.written) {
                    metrics.delivered_after(&name, (delivered_at - written).to_std().unwrap_or_default());
                }
                "delivered"
            }
            DeliveryResult::Retry { .. } => "retry",
            DeliveryResult::Dead { .. } => "dead",
        };
        metrics.delivery(&name, label);
    }
    let results = outcome.results;
    let announcements = dead_letter_announcements(sink, &results, &attempts, delivered_at);
    // Not recorded means attempted again later: a duplicate, never a loss.
    retrying("record deliveries", RETRY_BUDGET, abort, || {
        store.record_deliveries(name.clone(), results.clone(), announcements.clone(), clock.now())
    })
    .await
    .map_err(PassError::Store)?;
    if let Some(reason) = &outcome.disable {
        error!(sink = %name, reason = %reason, "the receiver answered 410 Gone: this endpoint is DISABLED; events for it are queued and sent, in order, once it is enabled again (change its url and reload, or `cartwatch webhooks enable {name}`)");
        let announcement = sink.announces(EventType::WebhookEndpointDisabled).then(|| {
            let data = WebhookEventData {
                endpoint: name.clone(),
                message: format!(
                    "webhook {name} is disabled: {reason}. Its events are kept and sent, in order, once it is \
                     enabled again (change its url and reload, or run `cartwatch webhooks enable {name}`)"
                ),
                event_id: None,
                event_type: None,
                cart_id: None,
                attempts: None,
                last_status: Some(410),
                error: reason.clone(),
            };
            NewEvent::webhook(EventType::WebhookEndpointDisabled, &data, delivered_at)
        });
        retrying("disable the endpoint", RETRY_BUDGET, abort, || {
            store.disable_sink(name.clone(), reason.clone(), announcement.clone(), clock.now())
        })
        .await
        .map_err(PassError::Store)?;
    }
    Ok(Some(Pass { attempted, delivered, disabled: outcome.disable }))
}

/// What the metrics and an announcement need of an event handed to a sink.
struct Attempted {
    event_id: String,
    event_type: String,
    cart_id: Option<String>,
    /// When the event was written.
    written: Option<DateTime<Utc>>,
    /// Attempts made, this one included.
    attempts: u32,
}

/// A `webhook.dead_lettered` event for each delivery in `results` the sink gave up on, when
/// it announces them; never for a `webhook.*` event, so failing endpoints do not announce
/// each other's failures back and forth.
fn dead_letter_announcements(
    sink: &Sink,
    results: &[DeliveryResult],
    attempts: &HashMap<i64, Attempted>,
    now: DateTime<Utc>,
) -> Vec<(i64, NewEvent)> {
    if !sink.announces(EventType::WebhookDeadLettered) {
        return Vec::new();
    }
    let name = sink.name();
    results
        .iter()
        .filter_map(|result| {
            let DeliveryResult::Dead { event_seq, status, error } = result else { return None };
            let event = attempts.get(event_seq)?;
            if EventType::parse(&event.event_type).is_some_and(EventType::is_operational) {
                return None;
            }
            let holds = match &event.cart_id {
                Some(cart_id) => format!("; cart {cart_id}'s later events wait for it on this endpoint"),
                None => String::new(),
            };
            let data = WebhookEventData {
                endpoint: name.to_owned(),
                message: format!(
                    "webhook {name} gave up on event {} ({}) after {} attempts{holds}. \
                     Send it again with `cartwatch events redeliver --endpoint {name} {}`, or give it up with \
                     `cartwatch events skip {}`",
                    event.event_id, event.event_type, event.attempts, event.event_id, event.event_id
                ),
                event_id: Some(event.event_id.clone()),
                event_type: Some(event.event_type.clone()),
                cart_id: event.cart_id.clone(),
                attempts: Some(event.attempts),
                last_status: *status,
                error: error.clone(),
            };
            Some((*event_seq, NewEvent::webhook(EventType::WebhookDeadLettered, &data, now)))
        })
        .collect()
}

/// Delivers everything of `sink` that is due now, without waiting for retries: passes until
/// one delivers less than it attempted or nothing is left. Returns the deliveries attempted
/// and delivered.
pub async fn drain_once(
    store: &dyn OutboxStore,
    sink: &Sink,
    metrics: &Metrics,
    clock: &Clock,
    abort: &CancellationToken,
) -> Pass {
    let mut total = Pass::default();
    loop {
        match deliver_pass(store, sink, metrics, clock, abort).await {
            Ok(Some(pass)) => {
                total.attempted += pass.attempted;
                total.delivered += pass.delivered;
                if pass.delivered < pass.attempted || pass.disabled.is_some() {
                    total.disabled = pass.disabled;
                    return total;
                }
            }
            Ok(None) | Err(PassError::Aborted) => return total,
            Err(PassError::Disabled(reason)) => {
                warn!(sink = sink.name(), reason = %reason, "this endpoint is disabled; its events stay queued");
                total.disabled = Some(reason);
                return total;
            }
            Err(PassError::Store(error)) => {
                warn!(sink = sink.name(), error = %error, "cannot deliver now");
                return total;
            }
        }
    }
}

/// A sink whose settings a reload can replace while its loop runs: each pass uses the sink
/// the slot holds when it starts.
#[derive(Debug, Clone)]
pub struct SinkSlot(Arc<RwLock<Arc<Sink>>>);

impl SinkSlot {
    /// A slot holding `sink`.
    pub fn new(sink: Arc<Sink>) -> SinkSlot {
        SinkSlot(Arc::new(RwLock::new(sink)))
    }

    /// The sink now.
    pub fn get(&self) -> Arc<Sink> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `sink` in its place, for the next pass.
    pub fn replace(&self, sink: Arc<Sink>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = sink;
    }
}

/// Delivers events to the sink in `slot` until `shutdown`, which lets the batch in flight
/// finish and be recorded; `abort` drops it instead (its deliveries are made again later). A
/// disabled sink waits, checking every second, until it is enabled again.
pub async fn delivery_loop(
    store: Arc<dyn OutboxStore>,
    slot: SinkSlot,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let name = slot.get().name().to_owned();
    let mut disabled_reported = false;
    while !shutdown.is_cancelled() {
        let woken = wake.notified();
        let sink = slot.get();
        let idle = match deliver_pass(store.as_ref(), &sink, &metrics, &clock, &abort).await {
            Ok(Some(_)) => {
                disabled_reported = false;
                continue;
            }
            Ok(None) => {
                if std::mem::take(&mut disabled_reported) {
                    info!(sink = %name, "this endpoint is enabled again; sending what was queued for it");
                }
                // Sleep until the next retry is due, new events arrive, or the idle poll.
                let next_due = store.next_delivery_due(name.clone(), clock.now()).await.ok().flatten();
                next_due.and_then(|due| (due - clock.now()).to_std().ok()).map_or(IDLE_POLL, |wait| wait.min(IDLE_POLL))
            }
            Err(PassError::Disabled(reason)) => {
                if !disabled_reported {
                    error!(sink = %name, reason = %reason, "this endpoint is DISABLED: events for it are queued; change its url and reload, or run `cartwatch webhooks enable {name}`");
                    disabled_reported = true;
                }
                IDLE_POLL
            }
            Err(PassError::Store(error)) => {
                warn!(sink = %name, error = %error, "cannot deliver now; retrying");
                IDLE_POLL
            }
            Err(PassError::Aborted) => return,
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = woken => {}
            () = clock.sleep(idle) => {}
        }
    }
}
