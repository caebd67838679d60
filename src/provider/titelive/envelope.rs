//! The `{"response": {"success", "code", "message", "object"}}` envelope and the cart and
//! order objects inside it, read tolerantly (keys in any case, numbers as text or numbers,
//! prices as exact decimals). The documents' JSON examples miss their commas; real answers
//! are assumed valid.

use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::cart_id::shorten;
use crate::provider::json::{get_ci, json_code, json_decimal, json_text};

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
