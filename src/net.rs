//! HTTP plumbing every outgoing client shares, partner clients and webhook sinks alike: one
//! way to build a client (rustls, no redirects, bounded timeouts), to describe a transport
//! failure, to read a body within a size limit, and to read `Retry-After`.

use std::time::Duration;

use reqwest::Response;

/// Why a request failed before an answer could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// No complete answer within the timeout.
    #[error("the request timed out")]
    Timeout,
    /// The connection could not be made or broke.
    #[error("{0}")]
    Connection(String),
    /// The body exceeded the limit.
    #[error("the response is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
}

/// Builds an HTTP client: rustls, no redirects followed, the given timeouts.
///
/// Fails only when the TLS backend cannot be initialised.
pub fn client(request_timeout: Duration, connect_timeout: Duration) -> Result<reqwest::Client, NetError> {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cartwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| NetError::Connection(format!("cannot build the HTTP client: {error}")))
}

/// Describes a transport error without the URL (not secret, but noisy; a password in it
/// would be) and never with headers, each cause once.
pub fn transport_error(error: reqwest::Error) -> NetError {
    if error.is_timeout() {
        return NetError::Timeout;
    }
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    NetError::Connection(message)
}

/// Reads a response body up to `limit` bytes.
///
/// Fails with [`NetError::TooLarge`] as soon as the body (declared or actual) exceeds the
/// limit, so a hostile or broken server cannot make the daemon buffer without bound.
pub async fn read_limited(mut response: Response, limit: u64) -> Result<Vec<u8>, NetError> {
    if response.content_length().is_some_and(|length| length > limit) {
        return Err(NetError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(NetError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a `Retry-After` header: delay seconds or an HTTP date. Absurd values are capped at a
/// day so a broken header cannot stop work for longer.
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

/// The `Content-Type` of a response, lower case; empty when missing.
pub fn content_type(response: &Response) -> String {
    response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
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
