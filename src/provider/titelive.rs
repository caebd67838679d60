//! The Titelive MediaWeb cart API: `GET {base}/api/json/{domain}/cart/` (get),
//! `.../cart/check`, `POST .../cart/confirm`, a 26-character session `token` header, and the
//! `{"response": {"success", "code", "message", "object"}}` envelope.
//!
//! cartwatch tracks session tokens, polls `check`, and takes the check result as the cart's
//! status: `Valid`, which requirement is missing, `Ordered`, `NoCart` or `NoSession`. The
//! code lists of the three endpoints differ (confirm numbers 22 and 23 differently from
//! check), so codes are always read for their own endpoint.

use std::fmt;

use chrono::NaiveDateTime;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::cart_id::shorten;
use crate::provider::imaterialise::items::json_decimal;
use crate::provider::imaterialise::wire::{get_ci, json_code, json_text};
use crate::provider::{
    CartReport, Observation, UpstreamError, http_client, read_limited, status_error, transport_error,
};

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

/// The public id of a Titelive cart: `tl_` and the first 32 hexadecimal digits of the
/// SHA-256 of its session token. The token is a credential for the customer's session
/// (whoever holds it can confirm the cart), so it is kept only where polling needs it; logs,
/// output, the HTTP API and events name the cart by this id, which anyone holding the token
/// can compute and nobody can turn back into the token.
pub fn derived_id(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.trim().as_bytes());
    let mut id = String::with_capacity(35);
    id.push_str(DERIVED_ID_PREFIX);
    for byte in &digest[..16] {
        let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{byte:02x}"));
    }
    id
}

/// What every Titelive cart id starts with.
pub const DERIVED_ID_PREFIX: &str = "tl_";

/// Whether `text` is a Titelive cart id as [`derived_id`] makes them.
pub fn is_derived_id(text: &str) -> bool {
    text.strip_prefix(DERIVED_ID_PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
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

/// A code of the `check` endpoint (its own list; `get` uses the same numbers for 0–10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckCode {
    /// 0: the cart is valid.
    Valid,
    /// 1: domain code missing or malformed.
    DomainMalformed,
    /// 2: required field empty.
    RequiredFieldEmpty,
    /// 3: required field malformed.
    RequiredFieldMalformed,
    /// 4: there is no session with this token.
    NoSession,
    /// 10: the cart does not exist (get: no cart at this time).
    NoCart,
    /// 11: the cart already became an order.
    AlreadyOrder,
    /// 12: the cart contains no products.
    NoProducts,
    /// 13: the cart does not belong to the shop.
    NotShopsCart,
    /// 14: the cart belongs to an unregistered user and no email address was given.
    NoEmail,
    /// 15: facturation (invoice) address not set.
    InvoiceAddressNotSet,
    /// 16: facturation address does not exist.
    InvoiceAddressUnknown,
    /// 17: delivery type not set.
    DeliveryTypeNotSet,
    /// 18: delivery type does not exist.
    DeliveryTypeUnknown,
    /// 19: delivery address not set.
    DeliveryAddressNotSet,
    /// 20: "facturation address does not exist" says the document again; by its place in the
    /// list it is the delivery address.
    DeliveryAddressUnknown,
    /// 21: delivery in shop set while no shop was selected.
    ShopNotSelected,
    /// 22 (check) : the shop to deliver in does not exist.
    ShopUnknown,
    /// 23 (check), 22 (confirm): payment method not set.
    PaymentMethodNotSet,
    /// 24 (check), 23 (confirm): payment method does not exist.
    PaymentMethodUnknown,
    /// 25 (check): payment in shop needs delivery in shop.
    ShopPaymentNeedsShopDelivery,
    /// 99: uncaught exception on the partner's side.
    Uncaught,
    /// A code the lists do not have.
    Undocumented(i64),
}

/// Which endpoint a code came from; confirm numbers payment codes differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET .../cart/`
    Get,
    /// `GET .../cart/check`
    Check,
    /// `POST .../cart/confirm`
    Confirm,
}

impl CheckCode {
    /// The codes that name a missing or wrong requirement.
    pub const ALL_MISSING: [CheckCode; 14] = [
        CheckCode::NoProducts,
        CheckCode::NotShopsCart,
        CheckCode::NoEmail,
        CheckCode::InvoiceAddressNotSet,
        CheckCode::InvoiceAddressUnknown,
        CheckCode::DeliveryTypeNotSet,
        CheckCode::DeliveryTypeUnknown,
        CheckCode::DeliveryAddressNotSet,
        CheckCode::DeliveryAddressUnknown,
        CheckCode::ShopNotSelected,
        CheckCode::ShopUnknown,
        CheckCode::PaymentMethodNotSet,
        CheckCode::PaymentMethodUnknown,
        CheckCode::ShopPaymentNeedsShopDelivery,
    ];

    /// Reads a code as the list of `endpoint` defines it.
    pub fn from_number(endpoint: Endpoint, code: i64) -> CheckCode {
        match (endpoint, code) {
            (_, 0) => CheckCode::Valid,
            (_, 1) => CheckCode::DomainMalformed,
            (_, 2) => CheckCode::RequiredFieldEmpty,
            (_, 3) => CheckCode::RequiredFieldMalformed,
            (_, 4) => CheckCode::NoSession,
            (_, 10) => CheckCode::NoCart,
            (Endpoint::Get, other) => CheckCode::Undocumented(other),
            (_, 11) => CheckCode::AlreadyOrder,
            (_, 12) => CheckCode::NoProducts,
            (_, 13) => CheckCode::NotShopsCart,
            (_, 14) => CheckCode::NoEmail,
            (_, 15) => CheckCode::InvoiceAddressNotSet,
            (_, 16) => CheckCode::InvoiceAddressUnknown,
            (_, 17) => CheckCode::DeliveryTypeNotSet,
            (_, 18) => CheckCode::DeliveryTypeUnknown,
            (_, 19) => CheckCode::DeliveryAddressNotSet,
            (_, 20) => CheckCode::DeliveryAddressUnknown,
            (_, 21) => CheckCode::ShopNotSelected,
            (Endpoint::Check, 22) => CheckCode::ShopUnknown,
            (Endpoint::Check, 23) | (Endpoint::Confirm, 22) => CheckCode::PaymentMethodNotSet,
            (Endpoint::Check, 24) | (Endpoint::Confirm, 23) => CheckCode::PaymentMethodUnknown,
            (Endpoint::Check, 25) => CheckCode::ShopPaymentNeedsShopDelivery,
            (_, 99) => CheckCode::Uncaught,
            (_, other) => CheckCode::Undocumented(other),
        }
    }

    /// The status a cart has when `check` answers this code; `None` for codes about the
    /// request rather than the cart.
    pub fn status(self) -> Option<&'static str> {
        Some(match self {
            CheckCode::Valid => STATUS_VALID,
            CheckCode::NoSession => STATUS_NO_SESSION,
            CheckCode::NoCart => STATUS_NO_CART,
            CheckCode::AlreadyOrder => STATUS_ORDERED,
            CheckCode::NoProducts => "NoProducts",
            CheckCode::NotShopsCart => "NotShopsCart",
            CheckCode::NoEmail => "NoEmail",
            CheckCode::InvoiceAddressNotSet => "NoInvoiceAddress",
            CheckCode::InvoiceAddressUnknown => "UnknownInvoiceAddress",
            CheckCode::DeliveryTypeNotSet => "NoDeliveryType",
            CheckCode::DeliveryTypeUnknown => "UnknownDeliveryType",
            CheckCode::DeliveryAddressNotSet => "NoDeliveryAddress",
            CheckCode::DeliveryAddressUnknown => "UnknownDeliveryAddress",
            CheckCode::ShopNotSelected => "NoShopSelected",
            CheckCode::ShopUnknown => "UnknownShop",
            CheckCode::PaymentMethodNotSet => "NoPaymentMethod",
            CheckCode::PaymentMethodUnknown => "UnknownPaymentMethod",
            CheckCode::ShopPaymentNeedsShopDelivery => "ShopPaymentNeedsShopDelivery",
            CheckCode::DomainMalformed
            | CheckCode::RequiredFieldEmpty
            | CheckCode::RequiredFieldMalformed
            | CheckCode::Uncaught
            | CheckCode::Undocumented(_) => {
                return None;
            }
        })
    }

    /// What the code means, for people.
    pub fn describe(self) -> String {
        match self {
            CheckCode::Valid => "the cart is valid".into(),
            CheckCode::DomainMalformed => "domain code missing or malformed (1)".into(),
            CheckCode::RequiredFieldEmpty => "a required field is empty (2)".into(),
            CheckCode::RequiredFieldMalformed => "a required field is malformed (3)".into(),
            CheckCode::NoSession => "there is no session with this token (4)".into(),
            CheckCode::NoCart => "there is no cart (10)".into(),
            CheckCode::AlreadyOrder => "the cart already became an order (11)".into(),
            CheckCode::NoProducts => "the cart contains no products (12)".into(),
            CheckCode::NotShopsCart => "the cart does not belong to the shop (13)".into(),
            CheckCode::NoEmail => "the cart belongs to an unregistered user and no email address was given (14)".into(),
            CheckCode::InvoiceAddressNotSet => "the invoice address is not set (15)".into(),
            CheckCode::InvoiceAddressUnknown => "the invoice address does not exist (16)".into(),
            CheckCode::DeliveryTypeNotSet => "the delivery type is not set (17)".into(),
            CheckCode::DeliveryTypeUnknown => "the delivery type does not exist (18)".into(),
            CheckCode::DeliveryAddressNotSet => "the delivery address is not set (19)".into(),
            CheckCode::DeliveryAddressUnknown => "the delivery address does not exist (20)".into(),
            CheckCode::ShopNotSelected => "delivery in shop is set but no shop was selected (21)".into(),
            CheckCode::ShopUnknown => "the shop to deliver in does not exist".into(),
            CheckCode::PaymentMethodNotSet => "the payment method is not set".into(),
            CheckCode::PaymentMethodUnknown => "the payment method does not exist".into(),
            CheckCode::ShopPaymentNeedsShopDelivery => "payment in shop needs delivery in shop (25)".into(),
            CheckCode::Uncaught => "uncaught exception on the partner's side (99)".into(),
            CheckCode::Undocumented(code) => format!("undocumented code {code}"),
        }
    }
}

/// A postal address.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// First address line (the API spells it `adressLine1`).
    pub address_line1: Option<String>,
    /// House number.
    pub number: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Country id.
    pub country: Option<i64>,
}

/// A cart or order line.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// Line id.
    pub id: Option<i64>,
    /// EAN, as text (it is too long to be a safe number everywhere).
    pub ean: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// Author.
    pub author: Option<String>,
    /// Unit price, exact.
    pub price: Option<Decimal>,
    /// Quantity.
    pub quantity: Option<i64>,
    /// Product form code.
    pub product_form: Option<String>,
}

/// A cart as `get` and `check` return it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TiteliveCart {
    /// Customer id.
    pub customer: Option<i64>,
    /// Number of products.
    pub products_quantity: Option<i64>,
    /// Price, exact.
    pub price: Option<Decimal>,
    /// Total price, exact.
    pub total_price: Option<Decimal>,
    /// Creation date as sent (`YYYY-MM-DD HH:MM:SS`).
    pub creation_date: Option<String>,
    /// Creation date parsed.
    #[serde(skip)]
    pub creation_date_parsed: Option<NaiveDateTime>,
    /// Delivery type id.
    pub delivery_type: Option<i64>,
    /// Payment method id.
    pub payment_method: Option<i64>,
    /// Lines.
    pub lines: Vec<Line>,
    /// Delivery address.
    pub delivery_address: Option<Address>,
    /// Invoice address.
    pub invoice_address: Option<Address>,
}

/// An order as `confirm` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TiteliveOrder {
    /// Order id, as text.
    pub id: Option<String>,
    /// Customer id.
    pub customer: Option<i64>,
    /// Price, exact.
    pub price: Option<Decimal>,
    /// Total price, exact.
    pub total_price: Option<Decimal>,
    /// Order status (1: pending).
    pub status: Option<i64>,
    /// Creation date as sent.
    pub creation_date: Option<String>,
    /// Creation date parsed.
    #[serde(skip)]
    pub creation_date_parsed: Option<NaiveDateTime>,
    /// Delivery type id.
    pub delivery_type: Option<i64>,
    /// Payment method id.
    pub payment_method: Option<i64>,
    /// Lines.
    pub lines: Vec<Line>,
    /// Delivery address (flattened `delivery*` fields).
    pub delivery: Address,
    /// Invoice address (flattened `invoice*` fields).
    pub invoice: Address,
}

/// The response envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `success`.
    pub success: bool,
    /// `code`, when readable.
    pub code: Option<i64>,
    /// `message`.
    pub message: String,
    /// `object`, when present.
    pub object: Option<Value>,
}

/// Decodes the envelope.
///
/// Fails when the body is not JSON or has no `response` object with a code.
pub fn decode_envelope(body: &[u8]) -> Result<Envelope, String> {
    let root: Value = serde_json::from_slice(body).map_err(|error| format!("not valid JSON: {error}"))?;
    let response = get_ci(&root, "response")
        .filter(|value| value.is_object())
        .ok_or_else(|| format!("no \"response\" object: {}", shorten(&root.to_string(), 120)))?;
    let code = get_ci(response, "code").and_then(json_code);
    let success = match get_ci(response, "success") {
        Some(Value::Bool(flag)) => *flag,
        Some(other) => json_text(other).is_some_and(|text| text == "1" || text.eq_ignore_ascii_case("true")),
        None => code == Some(0),
    };
    if code.is_none() && get_ci(response, "success").is_none() {
        return Err("the response has neither a code nor a success flag".into());
    }
    Ok(Envelope {
        success,
        code,
        message: get_ci(response, "message").and_then(json_text).unwrap_or_default(),
        object: get_ci(response, "object").filter(|value| !value.is_null()).cloned(),
    })
}

fn text(value: &Value, key: &str) -> Option<String> {
    get_ci(value, key).and_then(json_text).filter(|text| !text.trim().is_empty())
}

fn integer(value: &Value, key: &str) -> Option<i64> {
    get_ci(value, key).and_then(json_code)
}

fn decimal(value: &Value, key: &str) -> Option<Decimal> {
    get_ci(value, key).and_then(json_decimal)
}

/// An address object (`firstName`...).
fn address(value: &Value) -> Address {
    // Keys match case-insensitively, so the unprefixed names are the prefixed ones' tails.
    prefixed_address(value, "")
}

/// An address flattened into an order with a prefix (`deliveryFirstName`...).
fn prefixed_address(value: &Value, prefix: &str) -> Address {
    let key = |name: &str| format!("{prefix}{name}");
    Address {
        first_name: text(value, &key("FirstName")),
        last_name: text(value, &key("LastName")),
        address_line1: text(value, &key("AdressLine1")).or_else(|| text(value, &key("AddressLine1"))),
        number: text(value, &key("Number")),
        postcode: text(value, &key("Postcode")),
        city: text(value, &key("City")),
        country: integer(value, &key("Country")),
    }
}

/// Lines come as `{"line": [...]}`, a bare list, or a single object.
fn lines(value: &Value) -> Vec<Line> {
    let Some(lines) = get_ci(value, "lines") else { return Vec::new() };
    let items: Vec<&Value> = match lines {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => match get_ci(lines, "line") {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(single @ Value::Object(_)) => vec![single],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter(|item| item.is_object())
        .map(|item| Line {
            id: integer(item, "id"),
            ean: text(item, "ean"),
            title: text(item, "title"),
            author: text(item, "author"),
            price: decimal(item, "price"),
            quantity: integer(item, "quantity"),
            product_form: text(item, "productForm"),
        })
        .collect()
}

/// Reads `object.cart`.
pub fn cart_of(object: &Value) -> Option<TiteliveCart> {
    let cart = get_ci(object, "cart").filter(|value| value.is_object())?;
    let creation_date = text(cart, "creationDate");
    Some(TiteliveCart {
        customer: integer(cart, "customer"),
        products_quantity: integer(cart, "productsQuantity"),
        price: decimal(cart, "price"),
        total_price: decimal(cart, "totalPrice"),
        creation_date_parsed: creation_date.as_deref().and_then(crate::time::parse_naive),
        creation_date,
        delivery_type: integer(cart, "deliveryType"),
        payment_method: integer(cart, "paymentMethod"),
        lines: lines(cart),
        delivery_address: get_ci(cart, "deliveryAddress").filter(|v| v.is_object()).map(address),
        invoice_address: get_ci(cart, "invoiceAddress").filter(|v| v.is_object()).map(address),
    })
}

/// Reads `object.order`.
pub fn order_of(object: &Value) -> Option<TiteliveOrder> {
    let order = get_ci(object, "order").filter(|value| value.is_object())?;
    let creation_date = text(order, "creationDate");
    Some(TiteliveOrder {
        id: text(order, "id"),
        customer: integer(order, "customer"),
        price: decimal(order, "price"),
        total_price: decimal(order, "totalPrice"),
        status: integer(order, "status"),
        creation_date_parsed: creation_date.as_deref().and_then(crate::time::parse_naive),
        creation_date,
        delivery_type: integer(order, "deliveryType"),
        payment_method: integer(order, "paymentMethod"),
        lines: lines(order),
        delivery: prefixed_address(order, "delivery"),
        invoice: prefixed_address(order, "invoice"),
    })
}

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
    pub fn new(config: &crate::config::TiteliveConfig) -> Result<TiteliveClient, UpstreamError> {
        Ok(TiteliveClient {
            http: http_client(config.request_timeout, config.connect_timeout)?,
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
        let url = crate::provider::imaterialise::api_url(&self.base_url, &["api", "json", &domain, "cart", endpoint])?;
        let mut token_header =
            HeaderValue::from_str(token.as_str()).map_err(|_| UpstreamError::Decode("unusable token".into()))?;
        token_header.set_sensitive(true);
        let mut request =
            self.http.request(method.clone(), url).header("token", token_header).header(ACCEPT, "application/json");
        if method == reqwest::Method::POST {
            request = request.header(CONTENT_TYPE, "application/x-www-form-urlencoded").body("");
        }
        let response = request.send().await.map_err(transport_error)?;
        let failure = (!response.status().is_success()).then(|| status_error(&response));
        if let Some(error @ (UpstreamError::Unauthorized | UpstreamError::Throttled { .. })) = &failure {
            return Err(error.clone());
        }
        let body = read_limited(response, self.max_response_bytes).await?;
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
