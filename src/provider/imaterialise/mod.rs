//! The i.materialise Cart Status API client: one request per batch of at most 10 cart IDs,
//! answers matched back to the requested carts.

pub mod items;
pub mod wire;

use std::collections::HashMap;
use std::sync::RwLock;

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};

use crate::cart_id::CartId;
use crate::config::{ImaterialiseConfig, WireFormat};
use crate::provider::{
    BatchReply, CartReport, Observation, UpstreamError, http_client, read_limited, status_error, transport_error,
};
use crate::secret::Secret;
use crate::status::CartStatus;
use wire::{DecodeError, EntryOutcome, StatusReply};

/// The provider name stored with carts and sent in events.
pub const PROVIDER: &str = "imaterialise";

/// The API's own limit on cart IDs per request.
pub const MAX_BATCH: usize = 10;

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
            http: http_client(config.request_timeout, config.connect_timeout)?,
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
    pub async fn fetch(&self, cart_ids: &[CartId]) -> Result<BatchReply, UpstreamError> {
        let body = match self.format {
            WireFormat::Json => wire::encode_json_request(cart_ids),
            WireFormat::Xml => wire::encode_xml_request(cart_ids),
        };
        let response =
            send(&self.http, reqwest::Method::POST, self.endpoint.clone(), &self.api_code, self.format, body).await?;
        let status = response.status();
        if status.is_success() {
            let response_type = response_content_type(&response);
            let body = read_limited(response, self.max_response_bytes).await?;
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
            let response_type = response_content_type(&response);
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
        .map_err(transport_error)
}

/// Joins path segments onto a base URL, keeping any path prefix the base already has.
pub(crate) fn api_url(base_url: &str, segments: &[&str]) -> Result<Url, UpstreamError> {
    let mut url = crate::config::check_base_url(base_url).map_err(UpstreamError::Connection)?;
    url.path_segments_mut()
        .map_err(|_| UpstreamError::Connection(format!("base URL cannot take a path: {base_url}")))?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

pub(crate) fn response_content_type(response: &reqwest::Response) -> String {
    response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or_default().to_ascii_lowercase()
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
    let index: HashMap<&str, usize> = requested.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut reports: Vec<Option<CartReport>> = vec![None; requested.len()];
    let mut unexpected = Vec::new();
    let mut duplicated = Vec::new();
    for entry in reply.entries {
        let canonical = CartId::parse(&entry.cart_id)
            .map(|id| id.to_string())
            .unwrap_or_else(|_| entry.cart_id.trim().to_ascii_lowercase());
        let Some(&position) = index.get(canonical.as_str()) else {
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
                if !duplicated.contains(&canonical) {
                    duplicated.push(canonical);
                }
            }
        }
    }
    BatchReply {
        reports: requested
            .iter()
            .map(ToString::to_string)
            .zip(reports.into_iter().map(|report| report.unwrap_or(CartReport::Missing)))
            .collect(),
        unexpected,
        duplicated,
        unidentified: reply.unidentified_entries,
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
        let mut config = crate::config::Config::default().imaterialise;
        config.api_code = Secret::new("0f7c3c55-5d5b-4a4e-9a52-b1b5d4b0e6a7");
        let client = StatusClient::new(&config).unwrap();
        assert!(!format!("{client:?}").contains("0f7c3c55"));
    }
}
