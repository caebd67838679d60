//! The i.materialise provider: its settings, its status model (`NotOrdered`, `Pending`,
//! `CheckedOut`, `Ordered`), and the Cart Status API client, one request per batch of at most
//! 10 cart IDs with the answer matched back to the requested carts. `items` is the
//! Add/Remove Cart Item API.

pub mod items;
pub mod status;
pub mod wire;

use std::borrow::Cow;
use std::sync::RwLock;

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::cart_id::CartId;
use crate::checks::{Problems, Purpose, is_loopback_host};
use crate::events::EventType;
use crate::model::{BatchReply, CartReport, Ending, Observation, PollTarget, StatusModel, UpstreamError};
use crate::net::{content_type, read_limited};
use crate::provider::{BatchClient, ClientSettings, Provider, api_url, status_error};
use crate::secret::Secret;
use status::CartStatus;
use wire::{DecodeError, EntryOutcome, StatusReply};

/// The provider name stored with carts and sent in events.
pub const PROVIDER: &str = "imaterialise";

/// The API's own limit on cart IDs per request.
pub const MAX_BATCH: usize = 10;

/// The i.materialise provider, as configured.
#[derive(Debug)]
pub struct Imaterialise {
    settings: ImaterialiseConfig,
}

impl Imaterialise {
    /// The provider with these settings.
    pub fn new(settings: ImaterialiseConfig) -> Imaterialise {
        Imaterialise { settings }
    }

    /// Its settings.
    pub fn settings(&self) -> &ImaterialiseConfig {
        &self.settings
    }
}

impl StatusModel for Imaterialise {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn rank(&self, status: &str) -> Option<u8> {
        CartStatus::parse(status).rank()
    }

    fn announces(&self, status: &str) -> Option<EventType> {
        match CartStatus::parse(status) {
            CartStatus::Ordered => Some(EventType::CartOrdered),
            CartStatus::CheckedOut => Some(EventType::CartCheckedOut),
            CartStatus::Pending => Some(EventType::CartPending),
            CartStatus::NotOrdered | CartStatus::Other(_) => None,
        }
    }

    fn ending(&self, status: &str) -> Ending {
        match CartStatus::parse(status) {
            CartStatus::Ordered => Ending::Ordered,
            _ => Ending::Continue,
        }
    }

    fn order_is_near(&self, status: &str) -> bool {
        CartStatus::parse(status) == CartStatus::CheckedOut
    }

    fn orders_carry_an_id(&self) -> bool {
        true
    }
}

impl Provider for Imaterialise {
    fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn client_settings(&self) -> ClientSettings {
        self.settings.client_settings()
    }

    fn register_id(&self, text: &str) -> Result<(String, Option<String>), String> {
        CartId::parse(text).map(|id| (id.to_string(), None)).map_err(|error| error.to_string())
    }

    fn public_id(&self, text: &str) -> Option<String> {
        CartId::parse(text).ok().map(|id| id.to_string())
    }

    fn stored_id_is_canonical(&self, cart_id: &str, session_token: Option<&str>) -> bool {
        session_token.is_none() && crate::cart_id::is_canonical(cart_id)
    }

    fn account(&self, _given: Option<&str>) -> Result<String, String> {
        Ok(String::new())
    }

    fn client(&self) -> Result<Arc<dyn BatchClient>, UpstreamError> {
        Ok(Arc::new(StatusClient::new(&self.settings)?))
    }

    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Ok(url) = reqwest::Url::parse(&self.settings.base_url)
            && url.scheme() == "http"
            && !is_loopback_host(&url)
        {
            warnings.push(format!(
                "imaterialise.base_url uses plain http to a non-loopback host ({}); the apiCode would cross the network unencrypted",
                url.host_str().unwrap_or("")
            ));
        }
        if self.settings.enabled && self.settings.requests_per_second == 0.0 {
            warnings.push("imaterialise.requests_per_second is 0: requests are limited only by concurrency".into());
        }
        warnings
    }
}

/// A Cart Status API client.
pub struct StatusClient {
    http: reqwest::Client,
    endpoint: Url,
    api_code: RwLock<Secret>,
    format: WireFormat,
    max_response_bytes: u64,
}

impl std::fmt::Debug for StatusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl StatusClient {
    /// Builds a client from config.
    ///
    /// Fails when the base URL is invalid or the HTTP client cannot be built.
    pub fn new(config: &ImaterialiseConfig) -> Result<StatusClient, UpstreamError> {
        let endpoint = api_url(&config.base_url, &["web-api", "cartstatus", "statuses"])?;
        Ok(StatusClient {
            http: crate::net::client(config.request_timeout, config.connect_timeout)
                .map_err(UpstreamError::from_net)?,
            endpoint,
            api_code: RwLock::new(config.api_code.clone()),
            format: config.format,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// Replaces the apiCode, as after a config reload.
    pub fn set_api_code(&self, api_code: Secret) {
        if let Ok(mut current) = self.api_code.write() {
            *current = api_code;
        }
    }

    /// Asks for the statuses of up to [`MAX_BATCH`] carts.
    ///
    /// Fails when the request as a whole failed: transport, HTTP status, undecodable or
    /// oversized body, or a general error object.
    pub async fn fetch_ids(&self, cart_ids: &[CartId]) -> Result<BatchReply, UpstreamError> {
        let body = match self.format {
            WireFormat::Json => wire::encode_json_request(cart_ids),
            WireFormat::Xml => wire::encode_xml_request(cart_ids),
        };
        let response =
            send(&self.http, reqwest::Method::POST, self.endpoint.clone(), &self.api_code, self.format, body).await?;
        let status = response.status();
        if status.is_success() {
            let response_type = content_type(&response);
            let body = read_limited(response, self.max_response_bytes).await.map_err(UpstreamError::from_net)?;
            let reply = decode(&body, self.format, &response_type).map_err(|e| UpstreamError::Decode(e.to_string()))?;
            if let Some(error) = reply.general_error {
                return Err(UpstreamError::Api { code: error.code, message: error.message });
            }
            return Ok(match_reply(cart_ids, reply));
        }
        let error = status_error(&response);
        if matches!(error, UpstreamError::Http { .. }) {
            // Some servers send the documented error object with a failure status; prefer the
            // code it carries, since the policy for 501 and 102 differs from plain HTTP errors.
            let response_type = content_type(&response);
            if let Ok(body) = read_limited(response, self.max_response_bytes).await
                && let Ok(StatusReply { general_error: Some(api_error), .. }) =
                    decode(&body, self.format, &response_type)
            {
                return Err(UpstreamError::Api { code: api_error.code, message: api_error.message });
            }
        }
        Err(error)
    }
}

/// Sends one request the way both i.materialise APIs take it: the `apiCode` header, and the
/// body's format in `Content-Type` and `Accept`.
pub(crate) async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: Url,
    api_code: &RwLock<Secret>,
    format: WireFormat,
    body: String,
) -> Result<reqwest::Response, UpstreamError> {
    let (content_type, accept) = match format {
        WireFormat::Json => ("application/json", "application/json"),
        WireFormat::Xml => ("text/xml; charset=utf-8", "text/xml"),
    };
    http.request(method, url)
        .header("apiCode", api_code_header(api_code)?)
        .header(ACCEPT, accept)
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .map_err(|error| UpstreamError::from_net(crate::net::transport_error(error)))
}

impl BatchClient for StatusClient {
    fn fetch<'a>(&'a self, carts: &'a [PollTarget]) -> BoxFuture<'a, Result<BatchReply, UpstreamError>> {
        Box::pin(async move {
            let ids: Vec<CartId> = carts.iter().filter_map(|cart| CartId::from_canonical(&cart.cart_id)).collect();
            self.fetch_ids(&ids).await
        })
    }
}

/// Decodes by the response's content type, falling back to the body's first character and
/// then to the requested format, since servers are not always honest about content types.
pub fn decode(body: &[u8], requested: WireFormat, content_type: &str) -> Result<StatusReply, DecodeError> {
    if is_xml_answer(body, requested, content_type) { wire::decode_xml(body) } else { wire::decode_json(body) }
}

/// Whether an answer is XML: by its content type, else by its first character, else by the
/// format that was asked for.
pub(crate) fn is_xml_answer(body: &[u8], requested: WireFormat, content_type: &str) -> bool {
    if content_type.contains("xml") {
        return true;
    }
    if content_type.contains("json") {
        return false;
    }
    match body.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'<') => true,
        Some(b'{' | b'[') => false,
        _ => requested == WireFormat::Xml,
    }
}

/// The `apiCode` header, marked sensitive so no debug output of the request shows it.
///
/// Fails (as an authentication failure) when the apiCode cannot be a header value.
fn api_code_header(api_code: &RwLock<Secret>) -> Result<HeaderValue, UpstreamError> {
    let api_code = api_code.read().map(|code| code.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    let mut header = HeaderValue::from_str(api_code.expose().trim()).map_err(|_| UpstreamError::Unauthorized)?;
    header.set_sensitive(true);
    Ok(header)
}

/// Turns a response entry into the provider-neutral report: per-cart 101 means not found.
fn report(outcome: EntryOutcome) -> CartReport {
    match outcome {
        EntryOutcome::Status(reported) => CartReport::Status(Observation {
            known_status: !matches!(reported.status, CartStatus::Other(_)),
            status: reported.status.as_str().to_owned(),
            order_id: reported.order_id,
            created_at_raw: reported.created_at_raw,
            created_at: reported.created_at,
            ..Observation::default()
        }),
        EntryOutcome::Error(error) if error.code == Some(101) => CartReport::NotFound(error.message),
        EntryOutcome::Error(error) => CartReport::Error(error.code, error.message),
        EntryOutcome::Malformed(reason) => CartReport::Malformed(reason),
    }
}

/// How far along the normal flow a report puts a cart, to choose between two entries for the
/// same cart in one answer: any status beats an error, a later status an earlier one, and an
/// order with its OrderID one without.
fn advancement(report: &CartReport) -> (u8, u8) {
    match report {
        CartReport::Status(observed) => {
            let rank = CartStatus::parse(&observed.status).rank().map_or(0, |rank| rank * 2 + 1);
            (3, rank + u8::from(observed.order_id.is_some()))
        }
        CartReport::NotFound(_) => (2, 0),
        CartReport::Error(..) => (1, 0),
        CartReport::Malformed(_) | CartReport::Missing => (0, 0),
    }
}

/// Matches response entries to requested ids, case-insensitively and tolerating any GUID
/// spelling. Every requested cart gets exactly one report. When the answer lists a cart more
/// than once (a stale copy beside a fresh one), the most advanced entry is kept, so a stale
/// copy can never step a cart backwards.
pub fn match_reply(requested: &[CartId], reply: StatusReply) -> BatchReply {
    let mut reports: Vec<Option<CartReport>> = vec![None; requested.len()];
    let mut unexpected = Vec::new();
    let mut duplicated = Vec::new();
    for (order, entry) in reply.entries.into_iter().enumerate() {
        // Nearly every answer spells the id canonically: then it is looked up as it is.
        let canonical: Cow<'_, str> = if crate::cart_id::is_canonical(&entry.cart_id) {
            Cow::Borrowed(&entry.cart_id)
        } else {
            Cow::Owned(
                CartId::parse(&entry.cart_id)
                    .map(CartId::into_string)
                    .unwrap_or_else(|_| entry.cart_id.trim().to_ascii_lowercase()),
            )
        };
        // A batch holds at most `MAX_BATCH` ids, and answers list them in the order asked:
        // the entry's own place first, then the others.
        let is_it = |id: &CartId| id.as_str() == canonical.as_ref();
        let position = requested.get(order).filter(|id| is_it(id)).map(|_| order);
        let Some(position) = position.or_else(|| requested.iter().position(is_it)) else {
            unexpected.push(entry.cart_id);
            continue;
        };
        let candidate = report(entry.outcome);
        match &reports[position] {
            None => reports[position] = Some(candidate),
            Some(kept) => {
                if advancement(&candidate) > advancement(kept) {
                    reports[position] = Some(candidate);
                }
                if !duplicated.iter().any(|id| id == canonical.as_ref()) {
                    duplicated.push(canonical.into_owned());
                }
            }
        }
    }
    BatchReply {
        reports: requested
            .iter()
            .map(|id| id.as_str().to_owned())
            .zip(reports.into_iter().map(|report| report.unwrap_or(CartReport::Missing)))
            .collect(),
        unexpected,
        duplicated,
        unidentified: reply.unidentified_entries,
    }
}

/// Request and response encoding for the i.materialise APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// `application/json`
    Json,
    /// `text/xml`
    Xml,
}

/// `[imaterialise]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImaterialiseConfig {
    /// Whether this provider is polled.
    pub enabled: bool,
    /// Base URL, without the `/web-api/...` path.
    #[serde(serialize_with = "crate::secret::serialize_redacted_url")]
    pub base_url: String,
    /// The apiCode GUID, when given inline or by environment.
    pub api_code: Secret,
    /// A file holding the apiCode.
    pub api_code_file: PathBuf,
    /// Wire format.
    pub format: WireFormat,
    /// Cart IDs per request, 1..=10.
    pub batch_size: u32,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Requests started per second; 0 for no limit.
    pub requests_per_second: f64,
    /// Whole-request timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: u64,
}

impl ImaterialiseConfig {
    /// The settings its client shares with every provider's.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            batch_size: self.batch_size.clamp(1, MAX_BATCH as u32) as usize,
            concurrency: self.concurrency as usize,
            requests_per_second: self.requests_per_second,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            max_response_bytes: self.max_response_bytes,
        }
    }

    /// Records every problem of this section in `problems`.
    pub fn check(&self, purpose: Purpose, problems: &mut Problems) {
        self.client_settings().check("imaterialise", &self.base_url, problems);
        if !(1..=10).contains(&self.batch_size) {
            problems.add(
                "imaterialise.batch_size",
                format!("must be between 1 and 10 (the API's limit), got {}", self.batch_size),
            );
        }
        if purpose == Purpose::Upstream && self.enabled {
            if self.api_code.is_empty() {
                problems.add(
                    "imaterialise.api_code",
                    "missing apiCode: set imaterialise.api_code_file, or the environment variable CARTWATCH__IMATERIALISE__API_CODE",
                );
            } else if uuid::Uuid::try_parse(self.api_code.expose().trim()).is_err() {
                problems.add("imaterialise.api_code", "must be a GUID (the value is not shown)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_keeps_a_base_path() {
        assert_eq!(
            api_url("https://i.materialise.com", &["web-api", "cartstatus", "statuses"]).unwrap().as_str(),
            "https://i.materialise.com/web-api/cartstatus/statuses"
        );
        assert_eq!(
            api_url("http://127.0.0.1:8080/prefix/", &["web-api", "cartstatus", "statuses"]).unwrap().as_str(),
            "http://127.0.0.1:8080/prefix/web-api/cartstatus/statuses"
        );
    }

    #[test]
    fn matching_is_case_insensitive_and_total() {
        let a = CartId::parse("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a").unwrap();
        let b = CartId::parse("bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b").unwrap();
        let reply = wire::decode_json(
            br#"{"carts":[{"cartID":"921A2046-66A5-4C5F-B9A6-4BC646FA5E5A","cartStatus":"Pending"},{"cartID":"59dcca18-05e7-4f5c-8b4e-89e987ea1e51","cartStatus":"Pending"}]}"#,
        )
        .unwrap();
        let matched = match_reply(&[a.clone(), b.clone()], reply);
        assert!(matches!(matched.reports[0], (ref id, CartReport::Status(_)) if *id == a.as_str()));
        assert_eq!(matched.reports[1], (b.to_string(), CartReport::Missing));
        assert_eq!(matched.unexpected, ["59dcca18-05e7-4f5c-8b4e-89e987ea1e51"]);
        assert!(matched.duplicated.is_empty());
    }

    #[test]
    fn a_duplicated_cart_keeps_its_most_advanced_entry() {
        let a = CartId::parse("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a").unwrap();
        let entry = |status: &str, order: &str| {
            let order = if order.is_empty() { String::new() } else { format!(r#","orderID":"{order}""#) };
            format!(r#"{{"cartID":"{a}","cartStatus":"{status}"{order}}}"#)
        };
        let order_id = "7cf9f78f-6631-44be-905a-94cee7a2cd9c";
        for (first, second, expected, with_order) in [
            (entry("Pending", ""), entry("CheckedOut", ""), "CheckedOut", false),
            (entry("CheckedOut", ""), entry("Pending", ""), "CheckedOut", false),
            (entry("Ordered", ""), entry("Ordered", order_id), "Ordered", true),
            (entry("Ordered", order_id), entry("CheckedOut", ""), "Ordered", true),
        ] {
            let body = format!(r#"{{"carts":[{first},{second}]}}"#);
            let matched = match_reply(std::slice::from_ref(&a), wire::decode_json(body.as_bytes()).unwrap());
            let CartReport::Status(observed) = &matched.reports[0].1 else { panic!("{matched:?}") };
            assert_eq!((observed.status.as_str(), observed.order_id.is_some()), (expected, with_order), "{body}");
            assert_eq!(matched.duplicated, [a.to_string()]);
            assert!(matched.unexpected.is_empty());
        }
    }

    #[test]
    fn debug_output_has_no_api_code() {
        let config = ImaterialiseConfig {
            enabled: true,
            base_url: "https://imatsandbox.materialise.net".into(),
            api_code: Secret::new("0f7c3c55-5d5b-4a4e-9a52-b1b5d4b0e6a7"),
            api_code_file: PathBuf::new(),
            format: WireFormat::Json,
            batch_size: 10,
            concurrency: 4,
            requests_per_second: 5.0,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 1 << 20,
        };
        let client = StatusClient::new(&config).unwrap();
        assert!(!format!("{client:?}").contains("0f7c3c55"));
    }
}
