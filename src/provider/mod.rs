//! The partner platforms carts live on, behind one seam: a [`Provider`] knows its ids, its
//! batch size, its status model and how to build its [`BatchClient`]; the [`Registry`] holds
//! every provider as configured and turns what users type into registrations.
//!
//! Adding a provider is a folder beside `imaterialise` and `titelive` implementing these two
//! traits, one line in `Config::providers`, one config section, and a fake in the simulator.

pub mod imaterialise;
pub mod json;
pub mod titelive;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use reqwest::Url;

use crate::checks::{MILLISECOND, MINUTE, Problems, check_base_url};
use crate::model::{BatchReply, PollTarget, StatusModel, TrackRequest, UpstreamError};

/// The settings every provider's client has, in one place.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// Cart ids per request (at most the provider's [`Provider::max_batch`]).
    pub batch_size: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// Requests started per second; 0 for no limit.
    pub requests_per_second: f64,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
}

impl ClientSettings {
    /// Checks the settings of the `[section]` they come from, with its base URL.
    pub fn check(&self, section: &str, base_url: &str, problems: &mut Problems) {
        let key = |field: &str| format!("{section}.{field}");
        if let Err(message) = check_base_url(base_url) {
            problems.add(&key("base_url"), message);
        }
        problems.number(&key("concurrency"), self.concurrency, 1..=256);
        problems.rate(&key("requests_per_second"), self.requests_per_second);
        problems.duration(&key("request_timeout"), self.request_timeout, 100 * MILLISECOND, 10 * MINUTE);
        problems.duration(&key("connect_timeout"), self.connect_timeout, 100 * MILLISECOND, 10 * MINUTE);
        problems.number(&key("max_response_bytes"), self.max_response_bytes, 1024..=1 << 30);
    }
}

/// Asks a partner about a batch of carts.
pub trait BatchClient: Send + Sync + std::fmt::Debug {
    /// Asks about `carts` (at most the provider's batch size) in one go, and matches the
    /// answer to them: one report per cart, in order.
    ///
    /// Fails when the request as a whole failed.
    fn fetch<'a>(&'a self, carts: &'a [PollTarget]) -> BoxFuture<'a, Result<BatchReply, UpstreamError>>;
}

/// A partner platform, as configured.
pub trait Provider: StatusModel {
    /// Whether the config asks for its carts to be polled.
    fn enabled(&self) -> bool;

    /// The most cart ids one request may carry.
    fn max_batch(&self) -> usize;

    /// Its client's settings.
    fn client_settings(&self) -> ClientSettings;

    /// Reads a cart id as a user gives it at registration, and returns its public id with
    /// what polling sends instead, when that is a secret. Returns a message naming the
    /// problem otherwise.
    fn register_id(&self, text: &str) -> Result<(String, Option<String>), String>;

    /// The public id `text` names on this provider, if it names one: an id in any spelling,
    /// or the id of what [`register_id`](Self::register_id) would take.
    fn public_id(&self, text: &str) -> Option<String>;

    /// Whether a stored cart's id is in the form `register_id` gives, with the token that
    /// goes with it.
    fn stored_id_is_canonical(&self, cart_id: &str, session_token: Option<&str>) -> bool;

    /// The account a cart is registered in: `given`, else this provider's default; empty when
    /// the provider has no accounts. Returns a message naming the problem otherwise.
    fn account(&self, given: Option<&str>) -> Result<String, String>;

    /// Builds its client from its settings.
    ///
    /// Fails when the HTTP client cannot be built.
    fn client(&self) -> Result<Arc<dyn BatchClient>, UpstreamError>;

    /// Risky but allowed settings, worth a line in the log.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Joins path segments onto a base URL, keeping any path prefix the base already has.
pub fn api_url(base_url: &str, segments: &[&str]) -> Result<Url, UpstreamError> {
    let mut url = crate::checks::check_base_url(base_url).map_err(UpstreamError::Connection)?;
    url.path_segments_mut()
        .map_err(|_| UpstreamError::Connection(format!("base URL cannot take a path: {base_url}")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Classifies the HTTP status of a response that is not a success, reading `Retry-After`.
pub fn status_error(response: &reqwest::Response) -> UpstreamError {
    let status = response.status();
    let retry_after = crate::net::parse_retry_after(response.headers().get(reqwest::header::RETRY_AFTER));
    match status {
        reqwest::StatusCode::UNAUTHORIZED => UpstreamError::Unauthorized,
        reqwest::StatusCode::TOO_MANY_REQUESTS => UpstreamError::Throttled { status: status.as_u16(), retry_after },
        reqwest::StatusCode::SERVICE_UNAVAILABLE if retry_after.is_some() => {
            UpstreamError::Throttled { status: status.as_u16(), retry_after }
        }
        other => UpstreamError::Http { status: other.as_u16() },
    }
}

/// Every provider cartwatch knows, as configured (enabled or not).
#[derive(Debug, Clone, Default)]
pub struct Registry(Vec<Arc<dyn Provider>>);

impl Registry {
    /// A registry of `providers`.
    pub fn new(providers: Vec<Arc<dyn Provider>>) -> Registry {
        Registry(providers)
    }

    /// Every provider.
    pub fn all(&self) -> &[Arc<dyn Provider>] {
        &self.0
    }

    /// The providers whose carts are polled.
    pub fn enabled(&self) -> Vec<Arc<dyn Provider>> {
        self.0.iter().filter(|provider| provider.enabled()).cloned().collect()
    }

    /// The provider named `name`, in any case.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.0.iter().find(|provider| provider.name().eq_ignore_ascii_case(name.trim())).cloned()
    }

    /// The providers' names, for messages.
    pub fn names(&self) -> String {
        self.0.iter().map(|provider| provider.name()).collect::<Vec<_>>().join(", ")
    }

    /// A registration of the cart `text` names on the provider `provider`, in `account` (or
    /// the provider's default). The CLI and the HTTP API both register through this.
    ///
    /// Fails with a message naming the problem: an unknown provider, a malformed id, a
    /// missing or malformed account.
    pub fn track_request(
        &self,
        provider: &str,
        text: &str,
        account: Option<&str>,
        reference: Option<String>,
    ) -> Result<TrackRequest, String> {
        let found = self
            .get(provider)
            .ok_or_else(|| format!("unknown provider {provider:?}; known providers: {}", self.names()))?;
        let account = found.account(account)?;
        let (cart_id, session_token) = found.register_id(text)?;
        Ok(TrackRequest { provider: found.name().to_owned(), cart_id, session_token, account, reference })
    }

    /// The public id a user means by `text`, whichever provider's: a GUID in any spelling, a
    /// Titelive cart id, or a Titelive session token.
    ///
    /// Fails with a message naming the problem when no provider recognises it.
    pub fn public_id(&self, text: &str) -> Result<String, String> {
        self.0.iter().find_map(|provider| provider.public_id(text)).ok_or_else(|| {
            format!(
                "malformed cart id {:?}: it is not an id of any provider ({})",
                crate::cart_id::shorten(text.trim(), 60),
                self.names()
            )
        })
    }
}
