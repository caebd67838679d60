//! Where events go. Each sink has its own delivery state in the store; the delivery loop in
//! [`crate::delivery`] feeds it pending events in order.

pub mod log;
pub mod webhook;

use chrono::{DateTime, Utc};

use std::collections::{BTreeMap, BTreeSet};

use crate::events::EventType;

use crate::outbox::{PendingDelivery, SinkSpec};
use log::{LogSink, LogSinkConfig, LogTarget};
use webhook::{DeliveryConfig, WebhookConfig};
pub use webhook::{SinkOutcome, WebhookSetupError, WebhookSink};

/// The name of the log sink's delivery rows.
pub const LOG_SINK: &str = "log";

/// A configured sink.
#[derive(Debug)]
pub enum Sink {
    /// JSON lines.
    Log(LogSink),
    /// A webhook endpoint.
    Webhook(Box<WebhookSink>),
}

impl Sink {
    /// The name its delivery rows are kept under: `log`, or the webhook's name.
    pub fn name(&self) -> &str {
        match self {
            Sink::Log(_) => LOG_SINK,
            Sink::Webhook(sink) => sink.name(),
        }
    }

    /// How it is recorded in the `sinks` table.
    pub fn spec(&self) -> SinkSpec {
        match self {
            Sink::Log(sink) => SinkSpec {
                name: self.name().to_owned(),
                kind: "log".into(),
                target: sink.target_text(),
                event_types: None,
            },
            Sink::Webhook(sink) => SinkSpec {
                name: self.name().to_owned(),
                kind: "webhook".into(),
                target: sink.url(),
                event_types: (!sink.event_types().is_empty()).then(|| sink.event_types().to_vec()),
            },
        }
    }

    /// Whether it handles a batch in order, all or nothing (see
    /// [`OutboxStore::pending_deliveries`](crate::store::OutboxStore::pending_deliveries)).
    pub fn sequential(&self) -> bool {
        matches!(self, Sink::Log(_))
    }

    /// How many pending deliveries to hand it at once.
    pub fn batch_limit(&self) -> u32 {
        match self {
            Sink::Log(_) => 2000,
            Sink::Webhook(_) => 256,
        }
    }

    /// Whether it announces its own trouble of this kind (`webhook.dead_lettered`,
    /// `webhook.endpoint_disabled`) to the other sinks: a webhook does when `events.emit`
    /// lists the type; the log sink never gives up, so it has nothing to announce.
    pub fn announces(&self, event_type: EventType) -> bool {
        match self {
            Sink::Log(_) => false,
            Sink::Webhook(sink) => sink.announces(event_type),
        }
    }

    /// Attempts a batch; one result per delivery.
    pub async fn deliver(&self, batch: Vec<PendingDelivery>, now: DateTime<Utc>) -> SinkOutcome {
        match self {
            Sink::Log(sink) => SinkOutcome { results: sink.deliver(batch, now).await, disable: None },
            Sink::Webhook(sink) => sink.deliver(batch, now).await,
        }
    }
}

/// What the sinks are built from: `[sinks.log]`, `[webhooks.*]` and `[delivery]`.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// The log sink.
    pub log: LogSinkConfig,
    /// Webhook endpoints by name.
    pub webhooks: BTreeMap<String, WebhookConfig>,
    /// The webhooks' retry schedule.
    pub delivery: DeliveryConfig,
    /// The event types written (`events.emit`): the webhooks announce their trouble with
    /// the `webhook.*` ones listed.
    pub emit: BTreeSet<EventType>,
}

/// The sinks the settings enable.
///
/// Fails when a webhook cannot be set up (the config is validated first, so this means its
/// HTTP client could not be built).
pub fn build(settings: &SinkSettings) -> Result<Vec<Sink>, WebhookSetupError> {
    let mut sinks = Vec::new();
    let log = &settings.log;
    if log.enabled {
        let target =
            if log.path.as_os_str().is_empty() { LogTarget::Stdout } else { LogTarget::File(log.path.clone()) };
        sinks.push(Sink::Log(LogSink::new(target)));
    }
    for (name, webhook) in &settings.webhooks {
        let sink = WebhookSink::new(name, webhook, &settings.delivery)?;
        sinks.push(Sink::Webhook(Box::new(sink.announcing(&settings.emit))));
    }
    Ok(sinks)
}
