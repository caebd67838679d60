//! Where events go. Each sink has its own delivery state in the store; the delivery loop in
//! [`crate::delivery`] feeds it pending events in order.

pub mod log;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::store::{DeliveryResult, PendingDelivery, SinkSpec};
use log::{LogSink, LogTarget};

/// A configured sink.
#[derive(Debug, Clone)]
pub enum Sink {
    /// JSON lines.
    Log(LogSink),
}

impl Sink {
    /// The name its delivery rows are kept under.
    pub fn name(&self) -> &str {
        match self {
            Sink::Log(_) => "log",
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
        }
    }

    /// How many pending deliveries to hand it at once.
    pub fn batch_limit(&self) -> u32 {
        match self {
            Sink::Log(_) => 2000,
        }
    }

    /// Attempts a batch; one result per delivery.
    pub async fn deliver(&self, batch: Vec<PendingDelivery>, now: DateTime<Utc>) -> Vec<DeliveryResult> {
        match self {
            Sink::Log(sink) => sink.deliver(batch, now).await,
        }
    }
}

/// The sinks the config enables.
pub fn from_config(config: &Config) -> Vec<Sink> {
    let mut sinks = Vec::new();
    let log = &config.sinks.log;
    if log.enabled {
        let target =
            if log.path.as_os_str().is_empty() { LogTarget::Stdout } else { LogTarget::File(log.path.clone()) };
        sinks.push(Sink::Log(LogSink::new(target)));
    }
    sinks
}
