//! The partner APIs cartwatch talks to, behind one boundary: which provider a cart lives on,
//! how its ids look, what its statuses mean (which changes announce what, which end
//! polling), what a poll observed, and what every client shares: the errors a request can end
//! in, HTTP plumbing with a response size limit, and `Retry-After`.

pub mod imaterialise;
pub mod titelive;

use std::time::Duration;

use chrono::NaiveDateTime;

use crate::events::EventType;

use reqwest::{Response, StatusCode};

/// A partner platform carts can live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// i.materialise: Cart Status API, carts by GUID, batches of up to 10.
    Imaterialise,
    /// Titelive MediaWeb: carts by session token, one per request.
    Titelive,
}

/// How a status change ends polling, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Polling goes on.
    Continue,
    /// The cart became an order.
    Ordered,
    /// The cart can no longer be followed (a dead session).
    Expired,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 2] = [Provider::Imaterialise, Provider::Titelive];

    /// The name stored with carts and sent in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Imaterialise => "imaterialise",
            Provider::Titelive => "titelive",
        }
    }

    /// Reads a stored or typed name.
    pub fn parse(name: &str) -> Option<Provider> {
        Provider::ALL.into_iter().find(|provider| provider.as_str().eq_ignore_ascii_case(name.trim()))
    }

    /// Reads a cart id as a user gives it at registration, and returns its public id with,
    /// for Titelive, the session token polling needs: i.materialise carts are lower-case
    /// GUIDs; a Titelive cart is named by [`titelive::derived_id`] of its 26-character token
    /// (case kept), so the token, a customer's credential, is never shown. Returns a message
    /// naming the problem otherwise.
    pub fn register_id(self, text: &str) -> Result<(String, Option<String>), String> {
        match self {
            Provider::Imaterialise => {
                crate::cart_id::CartId::parse(text).map(|id| (id.to_string(), None)).map_err(|error| error.to_string())
            }
            Provider::Titelive => titelive::Token::parse(text)
                .map(|token| (titelive::derived_id(token.as_str()), Some(token.as_str().to_owned())))
                .map_err(|error| error.to_string()),
        }
    }

    /// Whether a stored cart's id is in the form [`register_id`](Self::register_id) gives,
    /// with the session token that goes with it.
    pub fn stored_id_is_canonical(self, cart_id: &str, session_token: Option<&str>) -> bool {
        match (self, session_token) {
            (Provider::Imaterialise, None) => crate::cart_id::CartId::from_canonical(cart_id).is_some(),
            (Provider::Titelive, Some(token)) => {
                titelive::Token::parse(token).is_ok_and(|parsed| parsed.as_str() == token)
                    && titelive::derived_id(token) == cart_id
            }
            _ => false,
        }
    }

    /// The most cart ids one request may carry.
    pub fn max_batch(self) -> usize {
        match self {
            Provider::Imaterialise => imaterialise::MAX_BATCH,
            Provider::Titelive => 1,
        }
    }

    /// The event a status change announces, if any. `from` is `None` for a first sighting.
    pub fn transition_event(self, from: Option<&str>, to: &str) -> Option<EventType> {
        let (from_rank, to_rank) = (from.and_then(|from| self.rank(from)), self.rank(to));
        if let (Some(from_rank), Some(to_rank)) = (from_rank, to_rank)
            && to_rank < from_rank
            && self.ending(to) == Ending::Continue
        {
            return Some(EventType::CartReopened);
        }
        match self {
            Provider::Imaterialise => match crate::status::CartStatus::parse(to) {
                crate::status::CartStatus::Ordered => Some(EventType::CartOrdered),
                crate::status::CartStatus::CheckedOut => Some(EventType::CartCheckedOut),
                crate::status::CartStatus::Pending => Some(EventType::CartPending),
                _ => None,
            },
            Provider::Titelive => match to {
                titelive::STATUS_VALID => Some(EventType::CartReady),
                titelive::STATUS_ORDERED => Some(EventType::CartOrdered),
                titelive::STATUS_NO_SESSION => Some(EventType::CartSessionExpired),
                _ => None,
            },
        }
    }

    /// Position of a status along the normal flow, to tell a step back; `None` when the
    /// status is not on it.
    pub fn rank(self, status: &str) -> Option<u8> {
        match self {
            Provider::Imaterialise => crate::status::CartStatus::parse(status).rank(),
            Provider::Titelive => titelive::rank(status),
        }
    }

    /// Whether reaching `status` ends polling, and how.
    pub fn ending(self, status: &str) -> Ending {
        match (self, status) {
            (Provider::Imaterialise, status)
                if crate::status::CartStatus::parse(status) == crate::status::CartStatus::Ordered =>
            {
                Ending::Ordered
            }
            (Provider::Titelive, titelive::STATUS_ORDERED) => Ending::Ordered,
            (Provider::Titelive, titelive::STATUS_NO_SESSION) => Ending::Expired,
            _ => Ending::Continue,
        }
    }

    /// Whether an order always comes with its id on this provider, so that an "ordered"
    /// answer without one means the id is still to come. Titelive's `check` never sends one.
    pub fn orders_carry_an_id(self) -> bool {
        self == Provider::Imaterialise
    }

    /// Whether a cart in `status` is polled at the fastest tier whatever its age, because
    /// an order is near.
    pub fn order_is_near(self, status: &str) -> bool {
        match self {
            Provider::Imaterialise => crate::status::CartStatus::parse(status) == crate::status::CartStatus::CheckedOut,
            Provider::Titelive => status == titelive::STATUS_VALID,
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The public id of a cart given without its provider, to look it up: a GUID (any
/// spelling), a Titelive cart id (`tl_...`), or a Titelive session token (which gives its
/// derived id). Returns a message naming the problem otherwise.
pub fn canonical_any(text: &str) -> Result<String, String> {
    if titelive::is_derived_id(text.trim()) {
        return Ok(text.trim().to_owned());
    }
    Provider::Imaterialise
        .register_id(text)
        .or_else(|_| Provider::Titelive.register_id(text))
        .map(|(cart_id, _)| cart_id)
        .map_err(|_| {
            format!(
                "malformed cart id {:?}: expected a GUID, a Titelive cart id (tl_...), or a 26-character Titelive session token",
                crate::cart_id::shorten(text.trim(), 60)
            )
        })
}

/// What a poll observed about one cart, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The status, in the provider's canonical spelling (unknown values verbatim).
    pub status: String,
    /// Whether the provider documents this status.
    pub known_status: bool,
    /// More about the status, for people (Titelive: which requirement is missing).
    pub detail: Option<String>,
    /// The partner's order id, when the cart became an order.
    pub order_id: Option<String>,
    /// The order's status, when known.
    pub order_status: Option<String>,
    /// The order's total, as an exact decimal, when known.
    pub order_total: Option<String>,
    /// The creation date exactly as sent.
    pub created_at_raw: Option<String>,
    /// The creation date parsed (no zone).
    pub created_at: Option<NaiveDateTime>,
}

/// Longest status (or order status, total, date) kept from an answer; longer ones are cut.
pub const MAX_STATUS_CHARS: usize = 64;

/// Longest OrderID kept; the documents' OrderIDs are 36-character GUIDs.
pub const MAX_ORDER_ID_CHARS: usize = 100;

/// Longest status detail kept.
pub const MAX_DETAIL_CHARS: usize = 300;

impl Observation {
    /// The observation with every string the partner sent cut to a sensible length, so a
    /// broken or hostile answer cannot fill the database, the events or a terminal.
    pub fn bounded(&self) -> Observation {
        let cut = |text: &Option<String>, max| text.as_deref().map(|text| crate::cart_id::shorten(text, max));
        Observation {
            status: crate::cart_id::shorten(&self.status, MAX_STATUS_CHARS),
            known_status: self.known_status,
            detail: cut(&self.detail, MAX_DETAIL_CHARS),
            order_id: cut(&self.order_id, MAX_ORDER_ID_CHARS),
            order_status: cut(&self.order_status, MAX_STATUS_CHARS),
            order_total: cut(&self.order_total, MAX_STATUS_CHARS),
            created_at_raw: cut(&self.created_at_raw, MAX_STATUS_CHARS),
            created_at: self.created_at,
        }
    }
}

/// What the partner said about one requested cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartReport {
    /// A status.
    Status(Observation),
    /// The partner does not know the cart (i.materialise per-cart 101).
    NotFound(String),
    /// Another per-cart error: code and message.
    Error(Option<i64>, String),
    /// An entry for the cart that made no sense.
    Malformed(String),
    /// The cart was requested but the answer did not mention it.
    Missing,
}

/// The answer to one batch, matched to the requested carts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReply {
    /// One report per requested cart, in request order, by cart id.
    pub reports: Vec<(String, CartReport)>,
    /// Cart ids in the answer that were not requested, as the answer wrote them.
    pub unexpected: Vec<String>,
    /// Requested carts the answer listed more than once (the most advanced entry was kept).
    pub duplicated: Vec<String>,
    /// Entries without a cart id.
    pub unidentified: usize,
}

/// Why a request to a partner API failed as a whole.
///
/// Which variants are retryable, and how, is decided by [`crate::policy`]; the comments say
/// what the policy does with each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// HTTP 401: wrong or empty apiCode. Pauses the whole upstream.
    #[error("the partner rejected the apiCode (HTTP 401)")]
    Unauthorized,
    /// HTTP 429, or 503 with `Retry-After`: wait at least that long.
    #[error("the partner is throttling requests (HTTP {status}{})", retry_after_text(*.retry_after))]
    Throttled {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` delay, if given.
        retry_after: Option<Duration>,
    },
    /// Any other non-success HTTP status. Transient.
    #[error("the partner answered HTTP {status}")]
    Http {
        /// The HTTP status.
        status: u16,
    },
    /// No complete answer within the request timeout. Transient.
    #[error("the request timed out")]
    Timeout,
    /// The connection could not be made or broke. Transient.
    #[error("cannot reach the partner: {0}")]
    Connection(String),
    /// The response body exceeded the configured limit. Transient.
    #[error("the response is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body could not be decoded. Transient.
    #[error("cannot decode the response: {0}")]
    Decode(String),
    /// The API answered with a general error object. Code 1 is transient, 501 splits the
    /// batch, 102 halves the batch size.
    #[error("the partner reported error {}: {message}", code.map_or("without a code".to_owned(), |c| c.to_string()))]
    Api {
        /// The documented code.
        code: Option<i64>,
        /// The message as sent.
        message: String,
    },
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(delay) => format!(", retry after {}", humantime::format_duration(delay)),
        None => String::new(),
    }
}

impl UpstreamError {
    /// A short stable label for metrics and the database: `auth`, `throttled`, `http_5xx`...
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Unauthorized => "auth",
            UpstreamError::Throttled { .. } => "throttled",
            UpstreamError::Http { status } if *status >= 500 => "http_5xx",
            UpstreamError::Http { .. } => "http_4xx",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Connection(_) => "connection",
            UpstreamError::TooLarge { .. } => "too_large",
            UpstreamError::Decode(_) => "decode",
            UpstreamError::Api { .. } => "api_error",
        }
    }
}

/// Builds the HTTP client every provider uses: rustls, no redirects, bounded timeouts.
///
/// Fails only when the TLS backend cannot be initialised.
pub fn http_client(request_timeout: Duration, connect_timeout: Duration) -> Result<reqwest::Client, UpstreamError> {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cartwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| UpstreamError::Connection(format!("cannot build the HTTP client: {error}")))
}

/// Maps a transport error to an [`UpstreamError`], without the URL (which is not secret, but
/// noisy) and never with headers.
pub fn transport_error(error: reqwest::Error) -> UpstreamError {
    if error.is_timeout() {
        UpstreamError::Timeout
    } else {
        let error = error.without_url();
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        UpstreamError::Connection(message)
    }
}

/// Reads a response body up to `limit` bytes.
///
/// Fails with [`UpstreamError::TooLarge`] as soon as the body (declared or actual) exceeds the
/// limit, so a hostile or broken server cannot make the daemon buffer without bound.
pub async fn read_limited(mut response: Response, limit: u64) -> Result<Vec<u8>, UpstreamError> {
    if response.content_length().is_some_and(|length| length > limit) {
        return Err(UpstreamError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Classifies the HTTP status of a response that is not a success, reading `Retry-After`.
pub fn status_error(response: &Response) -> UpstreamError {
    let status = response.status();
    let retry_after = parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER));
    match status {
        StatusCode::UNAUTHORIZED => UpstreamError::Unauthorized,
        StatusCode::TOO_MANY_REQUESTS => UpstreamError::Throttled { status: status.as_u16(), retry_after },
        StatusCode::SERVICE_UNAVAILABLE if retry_after.is_some() => {
            UpstreamError::Throttled { status: status.as_u16(), retry_after }
        }
        other => UpstreamError::Http { status: other.as_u16() },
    }
}

/// Reads a `Retry-After` header: delay seconds or an HTTP date. Absurd values are capped at a
/// day so a broken header cannot stop polling for longer.
pub fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    let delay = if let Ok(seconds) = text.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let when = httpdate::parse_http_date(text).ok()?;
        when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(Duration::from_secs(24 * 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after(Some(&HeaderValue::from_static("120"))), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after(Some(&HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"))),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after(Some(&HeaderValue::from_static("99999999"))), Some(Duration::from_secs(86400)));
        assert_eq!(parse_retry_after(Some(&HeaderValue::from_static("soon"))), None);
        assert_eq!(parse_retry_after(None), None);
    }
}
