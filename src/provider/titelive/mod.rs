//! The Titelive MediaWeb provider: `GET {base}/api/json/{domain}/cart/` (get),
//! `.../cart/check`, `POST .../cart/confirm`, a 26-character session `token` header, and the
//! `{"response": {"success", "code", "message", "object"}}` envelope.
//!
//! cartwatch tracks session tokens, polls `check`, and takes the check result as the cart's
//! status: `Valid`, which requirement is missing, `Ordered`, `NoCart` or `NoSession`. A token
//! is a credential for the customer's session, so carts are named by an id derived from it
//! and the token is kept only where polling needs it.

mod client;
mod codes;
mod envelope;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cart_id::shorten;
pub use crate::cart_id::{derived_session_id as derived_id, is_derived_session_id as is_derived_id};
use crate::checks::Problems;
use crate::events::EventType;
use crate::model::{Ending, StatusModel, UpstreamError};
use crate::provider::{BatchClient, ClientSettings, Provider};
pub use client::{Answer, TiteliveClient, report};
pub use codes::{CheckCode, Endpoint};
pub use envelope::{Address, Envelope, Line, TiteliveCart, TiteliveOrder, cart_of, decode_envelope, order_of};

/// The provider name stored with carts and sent in events.
pub const PROVIDER: &str = "titelive";

/// Status: the cart has everything an order needs.
pub const STATUS_VALID: &str = "Valid";
/// Status: the cart became an order.
pub const STATUS_ORDERED: &str = "Ordered";
/// Status: the session has no cart at the moment.
pub const STATUS_NO_CART: &str = "NoCart";
/// Status: the session no longer exists.
pub const STATUS_NO_SESSION: &str = "NoSession";

/// Position of a status along the normal flow: no cart, something missing, valid, ordered.
pub fn rank(status: &str) -> Option<u8> {
    match status {
        STATUS_NO_CART => Some(0),
        STATUS_VALID => Some(2),
        STATUS_ORDERED => Some(3),
        STATUS_NO_SESSION => None,
        _ if CheckCode::ALL_MISSING.iter().any(|code| code.status() == Some(status)) => Some(1),
        _ => None,
    }
}

/// A session token: 26 visible ASCII characters, case kept.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

/// Why a text is not a session token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed Titelive session token {shown:?}: expected 26 letters or digits")]
pub struct MalformedToken {
    /// The input, shortened.
    pub shown: String,
}

impl Token {
    /// Parses a token (surrounding whitespace ignored).
    ///
    /// Fails unless it is exactly 26 visible ASCII characters.
    pub fn parse(text: &str) -> Result<Token, MalformedToken> {
        let trimmed = text.trim();
        if trimmed.len() == 26 && trimmed.bytes().all(|byte| byte.is_ascii_graphic()) {
            Ok(Token(trimmed.to_owned()))
        } else {
            Err(MalformedToken { shown: shorten(text, 40) })
        }
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A session token is a customer's credential; show only its start.
        write!(f, "Token({}…)", &self.0[..6])
    }
}

/// Checks a shop domain code such as `00000`: 1 to 32 letters, digits, `-` or `_`.
///
/// Fails with a message naming the problem.
pub fn check_domain(domain: &str) -> Result<String, String> {
    let domain = domain.trim();
    if !domain.is_empty()
        && domain.len() <= 32
        && domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(domain.to_owned())
    } else {
        Err(format!(
            "malformed Titelive domain code {:?}: expected letters or digits such as 00000",
            shorten(domain, 40)
        ))
    }
}

/// The Titelive provider, as configured.
#[derive(Debug)]
pub struct Titelive {
    settings: TiteliveConfig,
}

impl Titelive {
    /// The provider with these settings.
    pub fn new(settings: TiteliveConfig) -> Titelive {
        Titelive { settings }
    }

    /// Its settings.
    pub fn settings(&self) -> &TiteliveConfig {
        &self.settings
    }
}

impl StatusModel for Titelive {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn rank(&self, status: &str) -> Option<u8> {
        rank(status)
    }

    fn announces(&self, status: &str) -> Option<EventType> {
        match status {
            STATUS_VALID => Some(EventType::CartReady),
            STATUS_ORDERED => Some(EventType::CartOrdered),
            STATUS_NO_SESSION => Some(EventType::CartSessionExpired),
            _ => None,
        }
    }

    fn ending(&self, status: &str) -> Ending {
        match status {
            STATUS_ORDERED => Ending::Ordered,
            STATUS_NO_SESSION => Ending::Expired,
            _ => Ending::Continue,
        }
    }

    fn order_is_near(&self, status: &str) -> bool {
        status == STATUS_VALID
    }

    fn orders_carry_an_id(&self) -> bool {
        // `check` says a cart "already became an order" without saying which.
        false
    }
}

impl Provider for Titelive {
    fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn max_batch(&self) -> usize {
        1
    }

    fn client_settings(&self) -> ClientSettings {
        self.settings.client_settings()
    }

    fn register_id(&self, text: &str) -> Result<(String, Option<String>), String> {
        Token::parse(text)
            .map(|token| (derived_id(token.as_str()), Some(token.as_str().to_owned())))
            .map_err(|error| error.to_string())
    }

    fn public_id(&self, text: &str) -> Option<String> {
        let text = text.trim();
        if is_derived_id(text) {
            return Some(text.to_owned());
        }
        Token::parse(text).ok().map(|token| derived_id(token.as_str()))
    }

    fn stored_id_is_canonical(&self, cart_id: &str, session_token: Option<&str>) -> bool {
        session_token.is_some_and(|token| {
            Token::parse(token).is_ok_and(|parsed| parsed.as_str() == token) && derived_id(token) == cart_id
        })
    }

    fn account(&self, given: Option<&str>) -> Result<String, String> {
        let domain = given.map(str::to_owned).unwrap_or_else(|| self.settings.default_domain.clone());
        if domain.trim().is_empty() {
            return Err("Titelive carts need the shop's domain code: --domain CODE (or titelive.default_domain)".into());
        }
        check_domain(&domain)
    }

    fn client(&self) -> Result<Arc<dyn BatchClient>, UpstreamError> {
        Ok(Arc::new(TiteliveClient::new(&self.settings)?))
    }

    fn warnings(&self) -> Vec<String> {
        if self.settings.enabled && self.settings.requests_per_second == 0.0 {
            vec!["titelive.requests_per_second is 0: requests are limited only by concurrency".into()]
        } else {
            Vec::new()
        }
    }
}

/// `[titelive]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TiteliveConfig {
    /// Whether this provider is polled.
    pub enabled: bool,
    /// Base URL, without the `/api/json/...` path.
    #[serde(serialize_with = "crate::secret::serialize_redacted_url")]
    pub base_url: String,
    /// Domain code used when `track` names none.
    pub default_domain: String,
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

impl TiteliveConfig {
    /// The settings its client shares with every provider's.
    pub fn client_settings(&self) -> ClientSettings {
        ClientSettings {
            batch_size: 1,
            concurrency: self.concurrency as usize,
            requests_per_second: self.requests_per_second,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            max_response_bytes: self.max_response_bytes,
        }
    }

    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        self.client_settings().check("titelive", &self.base_url, problems);
        if !self.default_domain.is_empty()
            && let Err(message) = crate::provider::titelive::check_domain(&self.default_domain)
        {
            problems.add("titelive.default_domain", message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_domains() {
        assert!(Token::parse("abcdefghijklmnopqrstuvwxyz").is_ok());
        assert!(Token::parse(" 0123456789ABCDEFGHIJKLMNOP ").is_ok());
        assert!(Token::parse("short").is_err());
        assert!(Token::parse("abcdefghijklm opqrstuvwxyz").is_err());
        assert!(!format!("{:?}", Token::parse("abcdefghijklmnopqrstuvwxyz").unwrap()).contains("ghijkl"));
        assert_eq!(check_domain(" 00000 ").unwrap(), "00000");
        assert!(check_domain("../etc").is_err());
        assert!(check_domain("").is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_do_not_show_the_token() {
        let token = "AbCdEfGhIjKlMnOpQrStUvWxYz";
        let id = derived_id(token);
        assert_eq!(id, derived_id(&format!(" {token}\n")));
        assert!(is_derived_id(&id), "{id}");
        assert_eq!(id.len(), 35);
        assert!(!id.contains("AbCd"));
        assert_ne!(id, derived_id("AbCdEfGhIjKlMnOpQrStUvWxYZ"));
        assert!(!is_derived_id(token));
    }

    #[test]
    fn confirm_numbers_payment_codes_differently_from_check() {
        assert_eq!(CheckCode::from_number(Endpoint::Check, 22), CheckCode::ShopUnknown);
        assert_eq!(CheckCode::from_number(Endpoint::Confirm, 22), CheckCode::PaymentMethodNotSet);
        assert_eq!(CheckCode::from_number(Endpoint::Check, 23), CheckCode::PaymentMethodNotSet);
        assert_eq!(CheckCode::from_number(Endpoint::Confirm, 23), CheckCode::PaymentMethodUnknown);
        assert_eq!(CheckCode::from_number(Endpoint::Check, 24), CheckCode::PaymentMethodUnknown);
        assert_eq!(CheckCode::from_number(Endpoint::Confirm, 24), CheckCode::Undocumented(24));
        assert_eq!(CheckCode::from_number(Endpoint::Confirm, 25), CheckCode::Undocumented(25));
        assert_eq!(CheckCode::from_number(Endpoint::Get, 11), CheckCode::Undocumented(11));
        assert_eq!(CheckCode::from_number(Endpoint::Check, 99), CheckCode::Uncaught);
    }

    #[test]
    fn statuses_rank_along_the_flow() {
        assert_eq!(rank(STATUS_NO_CART), Some(0));
        assert_eq!(rank("NoInvoiceAddress"), Some(1));
        assert_eq!(rank(STATUS_VALID), Some(2));
        assert_eq!(rank(STATUS_ORDERED), Some(3));
        assert_eq!(rank(STATUS_NO_SESSION), None);
    }

    #[test]
    fn envelope_with_lines_in_every_shape() {
        let body = br#"{"response":{"success":true,"code":0,"message":"valid cart","object":{"cart":{"customer":586,"price":22.5,"totalPrice":22.5,"creationDate":"2016-03-03 11:39:45","lines":{"line":[{"id":2,"ean":9789462500877,"title":"Kip","price":22.5,"quantity":1,"productForm":"BB"}]}}}}}"#;
        let envelope = decode_envelope(body).unwrap();
        let cart = cart_of(envelope.object.as_ref().unwrap()).unwrap();
        assert_eq!(cart.lines[0].ean.as_deref(), Some("9789462500877"));
        assert_eq!(cart.total_price.unwrap().to_string(), "22.5");
        assert!(cart.creation_date_parsed.is_some());
        let bare = serde_json::json!({"cart": {"lines": [{"id": 1}]}});
        assert_eq!(cart_of(&bare).unwrap().lines.len(), 1);
        let single = serde_json::json!({"cart": {"lines": {"line": {"id": 1}}}});
        assert_eq!(cart_of(&single).unwrap().lines.len(), 1);
        assert!(decode_envelope(b"{\"status\":1}").is_err());
        assert!(decode_envelope(b"<html>").is_err());
    }
}
