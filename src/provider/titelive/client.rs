//! The Titelive MediaWeb client: `get`, `check` and `confirm` for one session token, and
//! polling, which asks `check` and turns its answer into a report.

use futures_util::future::BoxFuture;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::codes::{CheckCode, Endpoint};
use super::envelope::{Envelope, TiteliveCart, TiteliveOrder, cart_of, decode_envelope, order_of};
use super::{TiteliveConfig, Token, check_domain};
use crate::model::{BatchReply, CartReport, Observation, PollTarget, UpstreamError};
use crate::provider::{BatchClient, api_url, status_error};

/// An answer of one endpoint: its code, message and typed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<T> {
    /// The code, read for its endpoint.
    pub code: CheckCode,
    /// The message as sent.
    pub message: String,
    /// The object, when the answer carried one.
    pub object: Option<T>,
}

/// The Titelive client.
#[derive(Debug)]
pub struct TiteliveClient {
    http: reqwest::Client,
    base_url: String,
    max_response_bytes: u64,
}

impl TiteliveClient {
    /// Builds a client.
    ///
    /// Fails when the HTTP client cannot be built.
    pub fn new(config: &TiteliveConfig) -> Result<TiteliveClient, UpstreamError> {
        Ok(TiteliveClient {
            http: crate::net::client(config.request_timeout, config.connect_timeout)
                .map_err(UpstreamError::from_net)?,
            base_url: config.base_url.clone(),
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// `GET .../cart/`: the session's cart.
    ///
    /// Fails when the request fails, the answer cannot be read, or the partner reports
    /// an uncaught exception (99).
    pub async fn get(&self, domain: &str, token: &Token) -> Result<Answer<TiteliveCart>, UpstreamError> {
        let envelope = self.call(reqwest::Method::GET, domain, token, "").await?;
        answer(Endpoint::Get, envelope, cart_of)
    }

    /// `GET .../cart/check`: whether the cart is valid, and if not what is missing.
    ///
    /// Fails like [`get`](Self::get).
    pub async fn check(&self, domain: &str, token: &Token) -> Result<Answer<TiteliveCart>, UpstreamError> {
        let envelope = self.call(reqwest::Method::GET, domain, token, "check").await?;
        answer(Endpoint::Check, envelope, cart_of)
    }

    /// `POST .../cart/confirm`: turns the cart into a pending order. Never automatic.
    ///
    /// Fails like [`get`](Self::get).
    pub async fn confirm(&self, domain: &str, token: &Token) -> Result<Answer<TiteliveOrder>, UpstreamError> {
        let envelope = self.call(reqwest::Method::POST, domain, token, "confirm").await?;
        answer(Endpoint::Confirm, envelope, order_of)
    }

    /// Polls one tracked cart: its `check` result as a report.
    ///
    /// Fails when the request fails as a whole, including code 99.
    pub async fn poll(&self, domain: &str, token: &str) -> Result<CartReport, UpstreamError> {
        let token = match Token::parse(token) {
            Ok(token) => token,
            Err(error) => return Ok(CartReport::Malformed(error.to_string())),
        };
        let answer = self.check(domain, &token).await?;
        Ok(report(answer))
    }

    async fn call(
        &self,
        method: reqwest::Method,
        domain: &str,
        token: &Token,
        endpoint: &str,
    ) -> Result<Envelope, UpstreamError> {
        let domain = check_domain(domain).map_err(UpstreamError::Connection)?;
        let url = api_url(&self.base_url, &["api", "json", &domain, "cart", endpoint])?;
        let mut token_header =
            HeaderValue::from_str(token.as_str()).map_err(|_| UpstreamError::Decode("unusable token".into()))?;
        token_header.set_sensitive(true);
        let mut request =
            self.http.request(method.clone(), url).header("token", token_header).header(ACCEPT, "application/json");
        if method == reqwest::Method::POST {
            request = request.header(CONTENT_TYPE, "application/x-www-form-urlencoded").body("");
        }
        let response =
            request.send().await.map_err(|error| UpstreamError::from_net(crate::net::transport_error(error)))?;
        let failure = (!response.status().is_success()).then(|| status_error(&response));
        if let Some(error @ (UpstreamError::Unauthorized | UpstreamError::Throttled { .. })) = &failure {
            return Err(error.clone());
        }
        let body =
            crate::net::read_limited(response, self.max_response_bytes).await.map_err(UpstreamError::from_net)?;
        match (decode_envelope(&body), failure) {
            (Ok(envelope), _) => Ok(envelope),
            (Err(_), Some(error)) => Err(error),
            (Err(message), None) => Err(UpstreamError::Decode(message)),
        }
    }
}

fn answer<T>(
    endpoint: Endpoint,
    envelope: Envelope,
    read: impl Fn(&Value) -> Option<T>,
) -> Result<Answer<T>, UpstreamError> {
    let code = match envelope.code {
        Some(code) => CheckCode::from_number(endpoint, code),
        None if envelope.success => CheckCode::Valid,
        None => CheckCode::Undocumented(-1),
    };
    if code == CheckCode::Uncaught {
        return Err(UpstreamError::Api { code: Some(99), message: envelope.message });
    }
    Ok(Answer { code, object: envelope.object.as_ref().and_then(read), message: envelope.message })
}

/// The `check` answer as a provider-neutral report.
pub fn report(answer: Answer<TiteliveCart>) -> CartReport {
    match answer.code.status() {
        Some(status) => CartReport::Status(Observation {
            status: status.to_owned(),
            known_status: true,
            detail: Some(if answer.message.is_empty() { answer.code.describe() } else { answer.message.clone() }),
            created_at_raw: answer.object.as_ref().and_then(|cart| cart.creation_date.clone()),
            created_at: answer.object.as_ref().and_then(|cart| cart.creation_date_parsed),
            order_total: answer.object.as_ref().and_then(|cart| cart.total_price).map(|total| total.to_string()),
            ..Observation::default()
        }),
        None => CartReport::Error(
            match answer.code {
                CheckCode::Undocumented(code) => Some(code),
                CheckCode::DomainMalformed => Some(1),
                CheckCode::RequiredFieldEmpty => Some(2),
                CheckCode::RequiredFieldMalformed => Some(3),
                _ => None,
            },
            format!("{}: {}", answer.code.describe(), answer.message),
        ),
    }
}

impl BatchClient for TiteliveClient {
    /// Asks `check` for each cart in turn (Titelive takes one session per request).
    fn fetch<'a>(&'a self, carts: &'a [PollTarget]) -> BoxFuture<'a, Result<BatchReply, UpstreamError>> {
        Box::pin(async move {
            let mut reports = Vec::with_capacity(carts.len());
            for cart in carts {
                let token = cart.session_token.as_deref().unwrap_or_default();
                reports.push((cart.cart_id.clone(), self.poll(&cart.account, token).await?));
            }
            Ok(BatchReply::of(reports))
        })
    }
}
