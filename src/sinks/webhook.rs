//! The webhook sink: events POSTed as JSON with Standard Webhooks headers and signatures,
//! retried on a schedule, dead-lettered when the schedule is spent.
//!
//! Signatures come from the `standardwebhooks` crate (`v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`); during a secret rotation every request carries one signature per
//! secret, space-separated, as the specification allows.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use standardwebhooks::Webhook;

use crate::cart_id::shorten;
use crate::checks::{DAY, MILLISECOND, MINUTE, Problems, Purpose, check_base_url, is_loopback_host};
use crate::events::EventType;
use crate::net::{parse_retry_after, read_limited, transport_error};
use crate::outbox::{DeliveryResult, PendingDelivery};
use crate::secret::Secret;

/// Longest error text kept per delivery.
const MAX_ERROR_CHARS: usize = 300;

/// Most of a failed response's body read for the error text.
const MAX_ERROR_BODY: usize = 512;

/// The fewest random bytes a signing secret may hold (Standard Webhooks asks for 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;

/// A fresh signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> Secret {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    Secret::new(format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(bytes)))
}

/// How many bytes a `whsec_...` secret decodes to; `None` when it is not base64.
fn secret_bytes(secret: &Secret) -> Option<usize> {
    use base64::Engine as _;
    let text = secret.expose().trim();
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    base64::engine::general_purpose::STANDARD.decode(encoded).ok().map(|bytes| bytes.len())
}

/// A signer for a `whsec_...` secret; `None` when the secret is not valid base64.
pub fn signer(secret: &Secret) -> Option<Webhook> {
    let text = secret.expose().trim();
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    if encoded.is_empty() {
        return None;
    }
    Webhook::new(text).ok()
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// 2xx within the timeout.
    Success(u16),
    /// `410 Gone`: the receiver wants no more.
    Gone,
    /// Anything else.
    Failure { status: Option<u16>, error: String, retry_after: Option<Duration> },
}

/// What delivering a batch came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkOutcome {
    /// One result per delivery.
    pub results: Vec<DeliveryResult>,
    /// Set when the sink must be disabled, with the reason.
    pub disable: Option<String>,
}

/// A webhook endpoint.
pub struct WebhookSink {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    signers: Vec<Webhook>,
    timeout: Duration,
    concurrency: usize,
    schedule: Vec<Duration>,
    jitter: f64,
    event_types: Vec<String>,
    announce: BTreeSet<EventType>,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink").field("name", &self.name).field("url", &self.url()).finish_non_exhaustive()
    }
}

/// Why a webhook sink could not be built (the config was validated, so this is rare).
#[derive(Debug, thiserror::Error)]
#[error("webhook {name}: {message}")]
pub struct WebhookSetupError {
    name: String,
    message: String,
}

impl WebhookSink {
    /// Builds the sink named `name`.
    ///
    /// Fails when the URL or secret is invalid or the HTTP client cannot be built.
    pub fn new(
        name: &str,
        config: &WebhookConfig,
        delivery: &DeliveryConfig,
    ) -> Result<WebhookSink, WebhookSetupError> {
        let fail = |message: String| WebhookSetupError { name: name.to_owned(), message };
        let url = crate::checks::check_base_url(&config.url).map_err(fail)?;
        let mut signers =
            vec![signer(&config.secret).ok_or_else(|| fail("the secret is not a valid whsec_ secret".into()))?];
        if !config.previous_secret.is_empty() {
            signers
                .push(signer(&config.previous_secret).ok_or_else(|| fail("the previous secret is not valid".into()))?);
        }
        let client = crate::net::client(config.timeout, config.timeout.min(Duration::from_secs(10)))
            .map_err(|error| fail(error.to_string()))?;
        Ok(WebhookSink {
            name: name.to_owned(),
            url,
            client,
            signers,
            timeout: config.timeout,
            concurrency: config.concurrency.max(1) as usize,
            schedule: delivery.schedule(),
            jitter: delivery.jitter,
            event_types: config.event_types.clone(),
            announce: BTreeSet::new(),
        })
    }

    /// The same sink, announcing its trouble with the `webhook.*` types in `emit`.
    pub fn announcing(mut self, emit: &BTreeSet<EventType>) -> WebhookSink {
        self.announce = emit.iter().copied().filter(|event_type| event_type.is_operational()).collect();
        self
    }

    /// Whether it announces `event_type` (see [`WebhookSink::announcing`]).
    pub fn announces(&self, event_type: EventType) -> bool {
        self.announce.contains(&event_type)
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL as it may be shown and stored in the `sinks` table: a password in it is
    /// redacted.
    pub fn url(&self) -> String {
        crate::secret::redact_url(self.url.as_str())
    }

    /// The event types it wants; empty for all.
    pub fn event_types(&self) -> &[String] {
        &self.event_types
    }

    /// Attempts a batch (at most one event per cart, so order is kept) with bounded
    /// concurrency.
    pub async fn deliver(&self, batch: Vec<PendingDelivery>, now: DateTime<Utc>) -> SinkOutcome {
        let attempts: Vec<(PendingDelivery, Attempt)> = futures_util::stream::iter(batch)
            .map(|delivery| async move {
                let attempt = self.attempt(&delivery).await;
                (delivery, attempt)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut outcome = SinkOutcome::default();
        for (delivery, attempt) in attempts {
            let event_seq = delivery.event.seq;
            let result = match attempt {
                Attempt::Success(status) => DeliveryResult::Delivered { event_seq, status: Some(status) },
                Attempt::Gone => {
                    outcome.disable =
                        Some(format!("the receiver answered 410 Gone at {}", crate::time::format_ts(now)));
                    // Kept pending: if the endpoint is re-enabled, it still gets the event.
                    DeliveryResult::Retry {
                        event_seq,
                        at: now,
                        status: Some(410),
                        error: "410 Gone: the endpoint was disabled".into(),
                    }
                }
                Attempt::Failure { status, error, retry_after } => {
                    tracing::warn!(sink = %self.name, event_id = %delivery.event.event_id, cart_id = delivery.event.cart_id.as_deref().unwrap_or(""), attempt = delivery.attempts + 1, error = %error, "webhook delivery failed");
                    let delay = crate::policy::redelivery_delay(
                        &self.schedule,
                        delivery.attempts + 1,
                        self.jitter,
                        rand::random(),
                        retry_after,
                    );
                    match delay {
                        Some(delay) => {
                            DeliveryResult::Retry { event_seq, at: crate::time::add(now, delay), status, error }
                        }
                        None => {
                            tracing::error!(sink = %self.name, event_id = %delivery.event.event_id, cart_id = delivery.event.cart_id.as_deref().unwrap_or(""), "webhook delivery dead-lettered after its last attempt");
                            DeliveryResult::Dead { event_seq, status, error }
                        }
                    }
                }
            };
            outcome.results.push(result);
        }
        outcome
    }

    /// Signs `payload` for `event_id` at `timestamp` with every secret.
    pub fn signature(&self, event_id: &str, timestamp: i64, payload: &[u8]) -> String {
        self.signers
            .iter()
            .filter_map(|signer| signer.sign(event_id, timestamp, payload).ok())
            .collect::<Vec<_>>()
            .join(" ")
    }

    async fn attempt(&self, delivery: &PendingDelivery) -> Attempt {
        let event = &delivery.event;
        // The signature's timestamp is the wall clock's, whatever clock schedules the
        // attempts: receivers compare it with theirs to refuse replays.
        let timestamp = Utc::now().timestamp();
        let signature = self.signature(&event.event_id, timestamp, event.payload.as_bytes());
        let sent = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &event.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(event.payload.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                return Attempt::Failure {
                    status: None,
                    error: format!("no answer within {}", humantime::format_duration(self.timeout)),
                    retry_after: None,
                };
            }
            Err(error) => {
                return Attempt::Failure {
                    status: None,
                    error: shorten(&format!("cannot reach the receiver: {}", transport_error(error)), MAX_ERROR_CHARS),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Success(status.as_u16());
        }
        if status == StatusCode::GONE {
            return Attempt::Gone;
        }
        let retry_after = match status.as_u16() {
            429 | 502 | 503 | 504 => parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER)),
            _ => None,
        };
        let mut error = format!("HTTP {status}");
        if status.is_redirection() {
            error.push_str(" (redirects are not followed)");
        }
        if let Ok(body) = read_limited(response, 64 * 1024).await {
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).trim().to_owned();
            if !text.is_empty() {
                error.push_str(": ");
                error.push_str(&text);
            }
        }
        Attempt::Failure { status: Some(status.as_u16()), error: shorten(&error, MAX_ERROR_CHARS), retry_after }
    }
}

/// `[delivery]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryConfig {
    /// Delays before each attempt; the last failure makes a dead letter.
    pub schedule: Vec<humantime_serde::Serde<Duration>>,
    /// Fraction by which each delay is spread either way.
    pub jitter: f64,
}

impl DeliveryConfig {
    /// The schedule as plain durations.
    pub fn schedule(&self) -> Vec<Duration> {
        self.schedule.iter().map(|delay| **delay).collect()
    }
}

impl DeliveryConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        let schedule = self.schedule();
        if schedule.is_empty() {
            problems.add("delivery.schedule", "needs at least one delay (the first attempt, usually \"0s\")");
        }
        if schedule.len() > 100 {
            problems.add("delivery.schedule", format!("has {} delays; at most 100", schedule.len()));
        }
        for (index, delay) in schedule.iter().enumerate() {
            problems.duration(&format!("delivery.schedule[{index}]"), *delay, Duration::ZERO, 30 * DAY);
        }
        problems.fraction("delivery.jitter", self.jitter);
    }
}

/// `[webhooks.NAME]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    /// Where events are POSTed.
    #[serde(serialize_with = "crate::secret::serialize_redacted_url")]
    pub url: String,
    /// The signing secret, `whsec_` and base64.
    pub secret: Secret,
    /// A file holding the signing secret.
    pub secret_file: PathBuf,
    /// The previous secret during a rotation.
    pub previous_secret: Secret,
    /// A file holding the previous secret.
    pub previous_secret_file: PathBuf,
    /// Event types to send; empty for all.
    pub event_types: Vec<String>,
    /// Per-attempt timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Deliveries in flight at once.
    pub concurrency: u32,
    /// Allow plain http to a non-loopback host.
    pub allow_http: bool,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            url: String::new(),
            secret: Secret::new(""),
            secret_file: PathBuf::new(),
            previous_secret: Secret::new(""),
            previous_secret_file: PathBuf::new(),
            event_types: Vec::new(),
            timeout: Duration::from_secs(15),
            concurrency: 16,
            allow_http: false,
        }
    }
}

impl WebhookConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, name: &str, purpose: Purpose, problems: &mut Problems) {
        let key = |field: &str| format!("webhooks.{name}.{field}");
        if name.is_empty() || name == "log" || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.add(
                &key("url"),
                format!("the endpoint name {name:?} must be letters, digits, - or _ and not \"log\""),
            );
        }
        match check_base_url(&self.url) {
            Ok(url) if url.scheme() == "http" && !is_loopback_host(&url) && !self.allow_http => problems.add(
                &key("url"),
                format!(
                    "plain http to {} is refused; use https, or set allow_http = true",
                    url.host_str().unwrap_or("")
                ),
            ),
            Ok(_) => {}
            Err(_) if self.url.is_empty() => problems.add(&key("url"), "missing: every webhook needs a url"),
            Err(message) => problems.add(&key("url"), message),
        }
        if self.secret.is_empty() && purpose == Purpose::Upstream {
            problems.add(
                &key("secret"),
                format!("missing: set secret_file, or CARTWATCH__WEBHOOKS__{}__SECRET", name.to_ascii_uppercase()),
            );
        }
        for (field, secret) in [("secret", &self.secret), ("previous_secret", &self.previous_secret)] {
            if secret.is_empty() {
                continue;
            }
            match (signer(secret), secret_bytes(secret)) {
                (Some(_), Some(bytes)) if bytes >= MIN_SECRET_BYTES => {}
                (Some(_), Some(bytes)) => problems.add(
                    &key(field),
                    format!(
                        "holds {bytes} bytes; a signing secret needs at least {MIN_SECRET_BYTES} random bytes \
                         (`cartwatch webhooks new-secret` makes one; the value is not shown)"
                    ),
                ),
                _ => problems.add(&key(field), "must be whsec_ followed by base64 (the value is not shown)"),
            }
        }
        for event_type in &self.event_types {
            if EventType::parse(event_type).is_none() {
                problems.add(&key("event_types"), format!("unknown event type {event_type:?}"));
            }
        }
        problems.duration(&key("timeout"), self.timeout, 100 * MILLISECOND, 10 * MINUTE);
        problems.number(&key("concurrency"), self.concurrency, 1..=1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_must_be_base64() {
        assert!(signer(&Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_some());
        assert!(signer(&Secret::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")).is_some());
        assert!(signer(&Secret::new("whsec_not base64!")).is_none());
        assert!(signer(&Secret::new("whsec_")).is_none());
    }

    #[test]
    fn short_secrets_are_refused_and_new_ones_are_long_enough() {
        let check = |secret: &str| {
            let config = WebhookConfig {
                url: "https://erp.example/hook".into(),
                secret: Secret::new(secret),
                ..WebhookConfig::default()
            };
            let mut problems = Problems::default();
            config.check("erp", Purpose::Upstream, &mut problems);
            format!("{problems:?}")
        };
        let short = check("whsec_MTIz");
        assert!(short.contains("holds 3 bytes") && short.contains("new-secret"), "{short}");
        assert!(!short.contains("MTIz"), "the value is never shown: {short}");
        let fresh = new_secret();
        assert!(fresh.expose().starts_with("whsec_"));
        assert_eq!(secret_bytes(&fresh), Some(32));
        assert_ne!(fresh.expose(), new_secret().expose());
        assert!(!check(fresh.expose()).contains("webhooks.erp.secret"), "{}", check(fresh.expose()));
    }
}
