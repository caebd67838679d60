//! The partner APIs cartwatch talks to, and what every provider client shares: the errors a
//! request can end in, HTTP plumbing with a response size limit, and `Retry-After`.

pub mod imaterialise;

use std::time::Duration;

use reqwest::{Response, StatusCode};

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
