//! The log sink: every event as one JSON line on standard output or appended to a file.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::outbox::{DeliveryResult, PendingDelivery, StoredEvent};

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (journald under systemd).
    Stdout,
    /// A file, appended to and created if missing.
    File(PathBuf),
}

/// The log sink.
#[derive(Debug, Clone)]
pub struct LogSink {
    target: LogTarget,
}

/// How long a failed write waits before the next try.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl LogSink {
    /// A sink writing to `target`.
    pub fn new(target: LogTarget) -> LogSink {
        LogSink { target }
    }

    /// The target's description for the `sinks` table.
    pub fn target_text(&self) -> String {
        match &self.target {
            LogTarget::Stdout => "stdout".into(),
            LogTarget::File(path) => path.display().to_string(),
        }
    }

    /// Writes a batch of events, in order, and flushes. Either every line is written and the
    /// batch is delivered, or the write failed and the whole batch is retried (some lines may
    /// then appear twice: delivery is at least once, and the event id tells duplicates apart).
    pub async fn deliver(&self, batch: Vec<PendingDelivery>, now: DateTime<Utc>) -> Vec<DeliveryResult> {
        let target = self.target.clone();
        let seqs: Vec<i64> = batch.iter().map(|delivery| delivery.event.seq).collect();
        let written = tokio::task::spawn_blocking(move || write_lines(&target, &batch))
            .await
            .unwrap_or_else(|error| Err(std::io::Error::other(error.to_string())));
        match written {
            Ok(()) => seqs.into_iter().map(|event_seq| DeliveryResult::Delivered { event_seq, status: None }).collect(),
            Err(error) => {
                tracing::error!(error = %error, "cannot write events to the log sink; retrying");
                let at = crate::time::add(now, RETRY_AFTER);
                seqs.into_iter()
                    .map(|event_seq| DeliveryResult::Retry { event_seq, at, status: None, error: error.to_string() })
                    .collect()
            }
        }
    }
}

fn write_lines(target: &LogTarget, batch: &[PendingDelivery]) -> std::io::Result<()> {
    let mut buffer = Vec::with_capacity(batch.iter().map(|d| d.event.payload.len() + 80).sum());
    for delivery in batch {
        buffer.extend_from_slice(event_line(&delivery.event).as_bytes());
        buffer.push(b'\n');
    }
    match target {
        LogTarget::Stdout => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&buffer)?;
            stdout.flush()
        }
        LogTarget::File(path) => {
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            file.write_all(&buffer)?;
            file.flush()
        }
    }
}

/// One event as a JSON line: the payload with the event id and outbox position in front.
pub fn event_line(event: &StoredEvent) -> String {
    let payload = event.payload.trim();
    let id = serde_json::to_string(&event.event_id).unwrap_or_else(|_| "\"\"".into());
    match payload.strip_prefix('{') {
        // The payload was written by cartwatch as a JSON object; splice rather than re-parse.
        Some(rest) if serde_json::from_str::<serde::de::IgnoredAny>(payload).is_ok() => {
            let separator = if rest.trim_start().starts_with('}') { "" } else { "," };
            format!("{{\"id\":{id},\"seq\":{}{separator}{rest}", event.seq)
        }
        // A payload edited by hand into something else is still logged, as a string.
        _ => serde_json::json!({ "id": event.event_id, "seq": event.seq, "payload": payload }).to_string(),
    }
}

/// `[sinks.log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogSinkConfig {
    /// Whether events are written as JSON lines.
    pub enabled: bool,
    /// A file to append to; empty for standard output.
    pub path: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str) -> StoredEvent {
        StoredEvent {
            seq: 7,
            event_id: "evt_1".into(),
            event_type: "cart.ordered".into(),
            cart_id: None,
            created_at: String::new(),
            payload: payload.into(),
        }
    }

    #[test]
    fn lines_carry_id_and_seq_and_stay_valid_json() {
        let line = event_line(&event(r#"{"type":"cart.ordered","timestamp":"t","data":{}}"#));
        assert_eq!(line, r#"{"id":"evt_1","seq":7,"type":"cart.ordered","timestamp":"t","data":{}}"#);
        assert_eq!(event_line(&event("{}")), r#"{"id":"evt_1","seq":7}"#);
        let odd = event_line(&event("not json"));
        let value: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(value["payload"], "not json");
    }
}
