//! The outbox's records as every part of the program sees them: an event as stored, a
//! delivery waiting to be attempted and what came of it, one sink's delivery state, and a
//! sink as configured. The store keeps them; the sinks and the delivery loop work with them.

use chrono::{DateTime, Utc};

/// A sink as configured, synchronised into the `sinks` table at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// Unique name, such as `log` or `webhook:erp`.
    pub name: String,
    /// `log` or `webhook`.
    pub kind: String,
    /// Where it sends (a path or a URL); a change re-enables a sink disabled by `410 Gone`.
    pub target: String,
    /// The event types it wants; `None` for all.
    pub event_types: Option<Vec<String>>,
}

/// An event as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredEvent {
    /// Position in the outbox; a cursor for followers.
    pub seq: i64,
    /// The stable event id.
    pub event_id: String,
    /// The type name.
    pub event_type: String,
    /// The cart, if any.
    pub cart_id: Option<String>,
    /// When it was detected.
    pub created_at: String,
    /// The JSON body.
    pub payload: String,
}

/// A delivery waiting to be attempted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    /// The event.
    pub event: StoredEvent,
    /// Attempts made so far.
    pub attempts: u32,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// Delivered.
    Delivered {
        /// The event.
        event_seq: i64,
        /// The receiver's HTTP status, if any.
        status: Option<u16>,
    },
    /// Failed; try again at `at`.
    Retry {
        /// The event.
        event_seq: i64,
        /// When to try again.
        at: DateTime<Utc>,
        /// The receiver's HTTP status, if any.
        status: Option<u16>,
        /// What went wrong, truncated.
        error: String,
    },
    /// Failed for the last time: dead-lettered.
    Dead {
        /// The event.
        event_seq: i64,
        /// The receiver's HTTP status, if any.
        status: Option<u16>,
        /// What went wrong, truncated.
        error: String,
    },
}

/// One sink's delivery state for one event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryState {
    /// The sink.
    pub sink: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt, while pending.
    pub next_attempt_at: Option<String>,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
    /// The last error, truncated.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<String>,
    /// When it was given up.
    pub dead_at: Option<String>,
}

/// A dead letter: an event a sink gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The event.
    pub event: StoredEvent,
    /// Its delivery state on that sink.
    pub delivery: DeliveryState,
}
