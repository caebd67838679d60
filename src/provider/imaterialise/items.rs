//! The i.materialise Add/Remove Cart Item API: `POST` (add) and `DELETE` (remove) on
//! `/web-api/cart/{cartid}/items`, in JSON or XML, with every documented error code mapped to
//! a typed error. Prices are exact decimals.

use std::str::FromStr;
use std::sync::RwLock;

use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use serde_json::Value;

use super::{ImaterialiseConfig, WireFormat, is_xml_answer, send};
use crate::cart_id::{CartId, ItemId, shorten};
use crate::model::UpstreamError;
use crate::net::{content_type as response_content_type, read_limited};
use crate::provider::json::{exact_decimal, get_ci, json_code, json_decimal, json_text};
use crate::provider::{api_url, status_error};
use crate::secret::Secret;
use crate::xml_tree::{self, Node};

/// Add or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemAction {
    /// `POST`: add items.
    Add,
    /// `DELETE`: remove items.
    Remove,
}

impl ItemAction {
    /// `add` or `remove`, as stored in the item history.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemAction::Add => "add",
            ItemAction::Remove => "remove",
        }
    }
}

/// A cart item as the API describes it after a change.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CartItem {
    /// The item.
    pub cart_item_id: String,
    /// The partner's reference given at item creation.
    pub my_cart_item_reference: Option<String>,
    /// Tool used to create the item.
    pub tool_id: Option<String>,
    /// Model.
    pub model_id: Option<String>,
    /// `mm` or `inch`.
    pub file_units: Option<String>,
    /// Model scale factor.
    pub file_scale_factor: Option<Decimal>,
    /// Material.
    pub material_id: Option<String>,
    /// Finish.
    pub finish_id: Option<String>,
    /// Pieces.
    pub quantity: Option<i64>,
    /// The shop's sales price per piece.
    pub my_sales_unit_price: Option<Decimal>,
    /// i.materialise's price per piece.
    pub imat_unit_price: Option<Decimal>,
    /// Currency code.
    pub currency: Option<String>,
    /// Expiry of the item, as sent.
    pub valid_until: Option<String>,
    /// Expiry parsed (no zone).
    #[serde(skip)]
    pub valid_until_parsed: Option<NaiveDateTime>,
}

/// What a documented error code means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemErrorKind {
    /// 101: the cart belongs to another partner.
    NotPartnersCart,
    /// 102: the cart was not found or its id has the wrong format.
    CartNotFound,
    /// 103: the item id has the wrong format.
    BadItemId,
    /// 105: the cart was already ordered.
    AlreadyOrdered,
    /// 106: not found.
    NotFound,
    /// 107: the item's validity expired (on the date given, as sent).
    ItemExpired(Option<String>),
    /// 108: the item is already in the cart.
    AlreadyInCart,
    /// 109: the item is not in the cart.
    NotInCart,
    /// 110: the cart was already checked out or ordered.
    CheckedOutOrOrdered,
    /// 111: the cart has expired.
    CartExpired,
    /// A code the document does not list.
    Other(Option<i64>),
}

impl ItemErrorKind {
    /// Maps a code (and its message, for 107's date).
    pub fn from_code(code: Option<i64>, message: &str) -> ItemErrorKind {
        match code {
            Some(101) => ItemErrorKind::NotPartnersCart,
            Some(102) => ItemErrorKind::CartNotFound,
            Some(103) => ItemErrorKind::BadItemId,
            Some(105) => ItemErrorKind::AlreadyOrdered,
            Some(106) => ItemErrorKind::NotFound,
            Some(107) => ItemErrorKind::ItemExpired(
                message
                    .rsplit_once(" on ")
                    .map(|(_, date)| date.trim().trim_end_matches('.').to_owned())
                    .filter(|d| !d.is_empty()),
            ),
            Some(108) => ItemErrorKind::AlreadyInCart,
            Some(109) => ItemErrorKind::NotInCart,
            Some(110) => ItemErrorKind::CheckedOutOrOrdered,
            Some(111) => ItemErrorKind::CartExpired,
            other => ItemErrorKind::Other(other),
        }
    }

    /// A clear explanation for people.
    pub fn explain(&self) -> String {
        match self {
            ItemErrorKind::NotPartnersCart => "the cart does not belong to this partner account (101)".into(),
            ItemErrorKind::CartNotFound => "the partner does not know this cart (102)".into(),
            ItemErrorKind::BadItemId => "the partner says the cart item id has the wrong format (103)".into(),
            ItemErrorKind::AlreadyOrdered => "the cart was already ordered; items can no longer change (105)".into(),
            ItemErrorKind::NotFound => "the partner does not know this cart item (106)".into(),
            ItemErrorKind::ItemExpired(Some(date)) => {
                format!("the cart item's validity period expired on {date} (107)")
            }
            ItemErrorKind::ItemExpired(None) => "the cart item's validity period has expired (107)".into(),
            ItemErrorKind::AlreadyInCart => "the cart item is already in the cart (108)".into(),
            ItemErrorKind::NotInCart => "the cart item is not in the cart (109)".into(),
            ItemErrorKind::CheckedOutOrOrdered => {
                "the cart was already checked out or ordered; items can no longer change (110)".into()
            }
            ItemErrorKind::CartExpired => "the cart has expired (111)".into(),
            ItemErrorKind::Other(Some(code)) => format!("the partner refused the change with error {code}"),
            ItemErrorKind::Other(None) => "the partner refused the change".into(),
        }
    }
}

/// One refusal from the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemError {
    /// What it means.
    pub kind: ItemErrorKind,
    /// The code as sent.
    pub code: Option<i64>,
    /// The message as sent.
    pub message: String,
    /// The item it is about, if any.
    pub cart_item_id: Option<String>,
}

impl std::fmt::Display for ItemError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cart_item_id {
            Some(item) => write!(f, "item {item}: {}", self.kind.explain()),
            None => f.write_str(&self.kind.explain()),
        }
    }
}

/// A decoded answer: the items the change touched and the refusals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ItemsReply {
    /// Items without an error.
    pub items: Vec<CartItem>,
    /// Refusals (per item or general).
    pub errors: Vec<ItemError>,
}

/// Why a change did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemsError {
    /// The partner refused the change (documented codes 101..111 or another).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Refused(Vec<ItemError>),
    /// The request failed as a whole.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Encodes the JSON request body.
pub fn encode_json_request(items: &[ItemId]) -> String {
    let items: Vec<Value> = items.iter().map(|id| serde_json::json!({ "CartItemID": id.as_str() })).collect();
    serde_json::json!({ "CartItems": items }).to_string()
}

/// Encodes the XML request body, .NET style; element names are inferred.
pub fn encode_xml_request(items: &[ItemId]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CartItemsRequest \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"><CartItems>",
    );
    for id in items {
        xml.push_str("<CartItem><CartItemID>");
        xml.push_str(&quick_xml::escape::escape(id.as_str()));
        xml.push_str("</CartItemID></CartItem>");
    }
    xml.push_str("</CartItems></CartItemsRequest>");
    xml
}

/// An item from its fields, read by lower-case name whichever the wire format: `text` for
/// plain fields, `decimal` for the exact ones.
fn cart_item(
    cart_item_id: String,
    text: impl Fn(&str) -> Option<String>,
    decimal: impl Fn(&str) -> Option<Decimal>,
    quantity: Option<i64>,
) -> CartItem {
    let valid_until = text("validuntil");
    CartItem {
        cart_item_id,
        my_cart_item_reference: text("mycartitemreference"),
        tool_id: text("toolid"),
        model_id: text("modelid"),
        file_units: text("fileunits"),
        file_scale_factor: decimal("filescalefactor"),
        material_id: text("materialid"),
        finish_id: text("finishid"),
        quantity,
        my_sales_unit_price: decimal("mysalesunitprice"),
        imat_unit_price: decimal("imatunitprice"),
        currency: text("currency"),
        valid_until_parsed: valid_until.as_deref().and_then(crate::time::parse_naive),
        valid_until,
    }
}

fn json_error(value: &Value, cart_item_id: Option<String>) -> Option<ItemError> {
    if !value.is_object() {
        return None;
    }
    let code = get_ci(value, "code").and_then(json_code);
    let message = get_ci(value, "message").and_then(json_text).unwrap_or_default();
    Some(ItemError { kind: ItemErrorKind::from_code(code, &message), code, message, cart_item_id })
}

/// Decodes a JSON answer.
///
/// Fails when the body is not JSON or holds neither items nor an error.
pub fn decode_json(body: &[u8]) -> Result<ItemsReply, String> {
    let root: Value = serde_json::from_slice(body).map_err(|error| format!("not valid JSON: {error}"))?;
    let mut reply = ItemsReply::default();
    if let Some(error) = get_ci(&root, "error").and_then(|error| json_error(error, None)) {
        reply.errors.push(error);
    }
    match get_ci(&root, "cartitems") {
        Some(Value::Array(entries)) => {
            for entry in entries {
                let field = |name: &str| get_ci(entry, name).and_then(json_text).filter(|text| !text.trim().is_empty());
                let cart_item_id = field("cartitemid");
                if let Some(error) = get_ci(entry, "error").and_then(|error| json_error(error, cart_item_id.clone())) {
                    reply.errors.push(error);
                    continue;
                }
                let Some(cart_item_id) = cart_item_id else { continue };
                let quantity = get_ci(entry, "quantity").and_then(json_code);
                let decimal = |name: &str| get_ci(entry, name).and_then(json_decimal);
                reply.items.push(cart_item(cart_item_id, field, decimal, quantity));
            }
        }
        Some(Value::Null) | None if !reply.errors.is_empty() => {}
        _ => return Err(format!("neither cartItems nor an error: {}", shorten(&root.to_string(), 120))),
    }
    Ok(reply)
}

/// Decodes an XML answer: item records are elements with a `CartItemID` child.
///
/// Fails when the body is not well-formed XML or holds neither items nor an error.
pub fn decode_xml(body: &[u8]) -> Result<ItemsReply, String> {
    let root = xml_tree::parse(body)?;
    let mut reply = ItemsReply::default();
    let mut records = Vec::new();
    collect_items(&root, &mut records, &mut reply);
    for record in records {
        let field = |name: &str| record.child_text(name).filter(|text| !text.is_empty());
        let cart_item_id = field("cartitemid");
        if let Some(error) = record.child("error") {
            reply.errors.push(xml_error(error, cart_item_id));
            continue;
        }
        let Some(cart_item_id) = cart_item_id else { continue };
        let quantity = field("quantity").and_then(|text| text.parse().ok());
        let decimal = |name: &str| field(name).as_deref().and_then(exact_decimal);
        reply.items.push(cart_item(cart_item_id, field, decimal, quantity));
    }
    if reply.items.is_empty() && reply.errors.is_empty() && !contains(&root, "cartitems") {
        return Err(format!("neither cart items nor an error in <{}>", root.name));
    }
    Ok(reply)
}

fn collect_items<'a>(node: &'a Node, records: &mut Vec<&'a Node>, reply: &mut ItemsReply) {
    for child in &node.children {
        if child.child("cartitemid").is_some() {
            records.push(child);
        } else if child.name == "error" {
            reply.errors.push(xml_error(child, None));
        } else {
            collect_items(child, records, reply);
        }
    }
}

fn contains(node: &Node, name: &str) -> bool {
    node.name == name || node.children.iter().any(|child| contains(child, name))
}

fn xml_error(node: &Node, cart_item_id: Option<String>) -> ItemError {
    let code = node.child_text("code").and_then(|text| text.parse().ok());
    let message = node.child_text("message").unwrap_or_default();
    ItemError { kind: ItemErrorKind::from_code(code, &message), code, message, cart_item_id }
}

/// The Add/Remove Cart Item client.
pub struct ItemsClient {
    http: reqwest::Client,
    base_url: String,
    api_code: RwLock<Secret>,
    format: WireFormat,
    max_response_bytes: u64,
}

impl std::fmt::Debug for ItemsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemsClient").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

impl ItemsClient {
    /// Builds a client from config.
    ///
    /// Fails when the HTTP client cannot be built.
    pub fn new(config: &ImaterialiseConfig) -> Result<ItemsClient, UpstreamError> {
        Ok(ItemsClient {
            http: crate::net::client(config.request_timeout, config.connect_timeout)
                .map_err(UpstreamError::from_net)?,
            base_url: config.base_url.clone(),
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

    /// Adds or removes `items` on `cart`. Returns the items the answer lists; items the
    /// partner refused are in [`ItemsError::Refused`] (when every one was refused, or the
    /// answer was a 4xx) or in the reply's `errors` (when only some were).
    ///
    /// Fails when the request fails as a whole or the partner refuses the change.
    pub async fn change(&self, action: ItemAction, cart: &CartId, items: &[ItemId]) -> Result<ItemsReply, ItemsError> {
        let url = api_url(&self.base_url, &["web-api", "cart", cart.as_str(), "items"])?;
        let body = match self.format {
            WireFormat::Json => encode_json_request(items),
            WireFormat::Xml => encode_xml_request(items),
        };
        let method = match action {
            ItemAction::Add => reqwest::Method::POST,
            ItemAction::Remove => reqwest::Method::DELETE,
        };
        let response = send(&self.http, method, url, &self.api_code, self.format, body).await?;
        let status = response.status();
        if matches!(status_error(&response), UpstreamError::Unauthorized | UpstreamError::Throttled { .. }) {
            return Err(status_error(&response).into());
        }
        let failure = (!status.is_success()).then(|| status_error(&response));
        let content_type = response_content_type(&response);
        let body = read_limited(response, self.max_response_bytes).await.map_err(UpstreamError::from_net)?;
        let decoded = decode(&body, self.format, &content_type);
        match (failure, decoded) {
            (None, Ok(reply)) if reply.items.is_empty() && !reply.errors.is_empty() => {
                Err(ItemsError::Refused(reply.errors))
            }
            (None, Ok(reply)) => Ok(reply),
            (None, Err(error)) => Err(UpstreamError::Decode(error).into()),
            // 403 (and any other failure status) with the documented error body.
            (Some(_), Ok(reply)) if !reply.errors.is_empty() => Err(ItemsError::Refused(reply.errors)),
            (Some(error), _) => Err(error.into()),
        }
    }
}

/// Decodes by content type, then by the first character, then by the requested format.
pub fn decode(body: &[u8], requested: WireFormat, content_type: &str) -> Result<ItemsReply, String> {
    if is_xml_answer(body, requested, content_type) { decode_xml(body) } else { decode_json(body) }
}

impl FromStr for ItemAction {
    type Err = String;

    fn from_str(text: &str) -> Result<ItemAction, String> {
        match text {
            "add" => Ok(ItemAction::Add),
            "remove" => Ok(ItemAction::Remove),
            other => Err(format!("unknown item action {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_example_decodes_with_exact_prices() {
        let body = br#"{"cartItems":[{"cartItemID":"333095fc-6ab2-4c30-b0d1-baecfd708f69","myCartItemReference":"some reference","toolID":"2054608d-b469-4cab-adeb-cf1c0569e7a1","modelID":"06515f8e-5d08-4fcb-912a-b87380d69927","fileUnits":"mm","fileScaleFactor":1.0000000000,"materialID":"035f4772-da8a-400b-8be4-2dd344b28ddb","finishID":"bba2bebb-8895-4049-aeb0-ab651cee2597","quantity":1,"mySalesUnitPrice":15.0000,"iMatUnitPrice":12.5000,"currency":"EUR","validUntil":"2014-11-26T16:54:34.937"}]}"#;
        let reply = decode_json(body).unwrap();
        let item = &reply.items[0];
        assert_eq!(item.my_sales_unit_price.unwrap().to_string(), "15.0000");
        assert_eq!(item.imat_unit_price.unwrap().to_string(), "12.5000");
        assert_eq!(item.file_scale_factor.unwrap().to_string(), "1.0000000000");
        assert_eq!(item.quantity, Some(1));
        assert_eq!(item.currency.as_deref(), Some("EUR"));
        assert!(item.valid_until_parsed.is_some());
    }

    #[test]
    fn prices_that_binary_floating_point_would_round_stay_exact() {
        assert_eq!(exact_decimal("0.1").unwrap() + exact_decimal("0.2").unwrap(), exact_decimal("0.3").unwrap());
        assert_eq!(exact_decimal("12345678901234.5678").unwrap().to_string(), "12345678901234.5678");
        assert_eq!(exact_decimal("1.5e2").unwrap().to_string(), "150");
        assert_eq!(exact_decimal("abc"), None);
    }

    #[track_caller]
    fn check(code: i64, message: &str, expected: ItemErrorKind) {
        assert_eq!(ItemErrorKind::from_code(Some(code), message), expected);
    }

    #[test]
    fn every_documented_code() {
        check(101, "Specified Cart does not belong to partner.", ItemErrorKind::NotPartnersCart);
        check(102, "Specified Cart was not found or wrong format.", ItemErrorKind::CartNotFound);
        check(103, "CartItemID is of wrong format", ItemErrorKind::BadItemId);
        check(105, "Cannot add/remove items. Specified Cart was already ordered.", ItemErrorKind::AlreadyOrdered);
        check(106, "Not found", ItemErrorKind::NotFound);
        check(
            107,
            "CartItem validity period expired on 2014-11-26T16:54:34",
            ItemErrorKind::ItemExpired(Some("2014-11-26T16:54:34".into())),
        );
        check(108, "CartItem already added to cart", ItemErrorKind::AlreadyInCart);
        check(109, "CartItem not found in cart", ItemErrorKind::NotInCart);
        check(
            110,
            "Cannot add/remove items. Specified Cart was already checked out or ordered.",
            ItemErrorKind::CheckedOutOrOrdered,
        );
        check(111, "Cannot add/remove items. Specified Cart has expired.", ItemErrorKind::CartExpired);
        check(999, "?", ItemErrorKind::Other(Some(999)));
        assert!(ItemErrorKind::ItemExpired(Some("2014-11-26".into())).explain().contains("expired on 2014-11-26"));
    }
}
