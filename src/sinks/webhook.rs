//! The webhook sink: events POSTed as JSON with Standard Webhooks headers and signatures,
//! retried on a schedule, dead-lettered when the schedule is spent.
//!
//! Signatures come from the `standardwebhooks` crate (`v1,<base64 HMAC-SHA256 of
//! id.timestamp.body>`); during a secret rotation every request carries one signature per
//! secret, space-separated, as the specification allows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use standardwebhooks::Webhook;

use crate::cart_id::shorten;
use crate::config::{DeliveryConfig, WebhookConfig};
use crate::provider::{parse_retry_after, transport_error};
use crate::secret::Secret;
use crate::store::{DeliveryResult, PendingDelivery};

/// Longest error text kept per delivery.
const MAX_ERROR_CHARS: usize = 300;

/// Most of a failed response's body read for the error text.
const MAX_ERROR_BODY: usize = 512;

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
        let url = crate::config::check_base_url(&config.url).map_err(fail)?;
        let mut signers =
            vec![signer(&config.secret).ok_or_else(|| fail("the secret is not a valid whsec_ secret".into()))?];
        if !config.previous_secret.is_empty() {
            signers
                .push(signer(&config.previous_secret).ok_or_else(|| fail("the previous secret is not valid".into()))?);
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cartwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| fail(format!("cannot build the HTTP client: {error}")))?;
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
        })
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
                    error: shorten(&transport_error(error).to_string(), MAX_ERROR_CHARS),
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
        if let Ok(body) = crate::provider::read_limited(response, 64 * 1024).await {
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)]).trim().to_owned();
            if !text.is_empty() {
                error.push_str(": ");
                error.push_str(&text);
            }
        }
        Attempt::Failure { status: Some(status.as_u16()), error: shorten(&error, MAX_ERROR_CHARS), retry_after }
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
}
