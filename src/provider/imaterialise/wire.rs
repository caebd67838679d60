//! The Cart Status API wire formats: request encoding and tolerant response decoding, in JSON
//! and XML. Pure functions of bytes, so they are fuzzed and property-tested directly.
//!
//! Decoding is deliberately forgiving about shape (key case, namespaces, unknown fields,
//! numbers written as strings) and strict about meaning: a response either decodes into
//! entries and errors, or into a [`DecodeError`] that says what was wrong.

use chrono::NaiveDateTime;
use serde_json::Value;

use super::status::CartStatus;
use crate::cart_id::{CartId, shorten};
use crate::provider::json::{get_ci, json_code, json_text};
use crate::xml_tree::{self, Node};

mod plain;

/// The status of one cart as the API reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedStatus {
    /// The status.
    pub status: CartStatus,
    /// The OrderID, when the cart was ordered.
    pub order_id: Option<String>,
    /// The creation date exactly as sent.
    pub created_at_raw: Option<String>,
    /// The creation date parsed (no zone: the partner does not say).
    pub created_at: Option<NaiveDateTime>,
}

/// An error object: general (`Error`) or per cart (`cartError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The documented code, when the response carried a readable one.
    pub code: Option<i64>,
    /// The message as sent.
    pub message: String,
}

/// What the response said about one cart.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryOutcome {
    /// A status.
    Status(ReportedStatus),
    /// A per-cart error such as 101 (not found or wrong format).
    Error(ApiError),
    /// The entry named a cart but carried neither a status nor an error.
    Malformed(String),
}

/// One entry of the `carts` list.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The cart id as the response wrote it.
    pub cart_id: String,
    /// What it says.
    pub outcome: EntryOutcome,
}

/// A decoded response body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatusReply {
    /// Per-cart entries, in response order.
    pub entries: Vec<Entry>,
    /// A general error object, present when the request as a whole failed.
    pub general_error: Option<ApiError>,
    /// Entries that could not be attributed to any cart (no cart id).
    pub unidentified_entries: usize,
}

/// Why a response body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("response is not valid JSON: {0}")]
    Json(String),
    /// Not well-formed XML.
    #[error("response is not well-formed XML: {0}")]
    Xml(String),
    /// Well-formed, but neither a carts list nor an error object.
    #[error("response has neither a carts list nor an error object: {0}")]
    Shape(String),
}

/// Encodes a JSON request: `{"Carts":[{"CartID":"..."}]}`.
pub fn encode_json_request(cart_ids: &[CartId]) -> String {
    #[derive(serde::Serialize)]
    struct Request<'a> {
        #[serde(rename = "Carts")]
        carts: Vec<Cart<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Cart<'a> {
        #[serde(rename = "CartID")]
        cart_id: &'a str,
    }
    let request = Request { carts: cart_ids.iter().map(|id| Cart { cart_id: id.as_str() }).collect() };
    // Serialising structs of strings cannot fail.
    serde_json::to_string(&request).unwrap_or_default()
}

/// Encodes an XML request in .NET `XmlSerializer` style. The element names are inferred: the
/// document's example lost them.
pub fn encode_xml_request(cart_ids: &[CartId]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CartStatusRequest \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"><Carts>",
    );
    for id in cart_ids {
        xml.push_str("<Cart><CartID>");
        xml.push_str(&quick_xml::escape::escape(id.as_str()));
        xml.push_str("</CartID></Cart>");
    }
    xml.push_str("</Carts></CartStatusRequest>");
    xml
}

/// Decodes a JSON response. Keys are matched case-insensitively.
///
/// Fails when the body is not JSON or has neither `carts` nor an error object.
pub fn decode_json(body: &[u8]) -> Result<StatusReply, DecodeError> {
    plain::decode(body).map_or_else(|| decode_json_tree(body), Ok)
}

/// Decodes a JSON response through a JSON tree: the rules for every shape of answer, which
/// [`decode_json`] follows. It reads the usual plain answer without the tree, and comes here
/// for anything else.
///
/// Fails when the body is not JSON or has neither `carts` nor an error object.
pub fn decode_json_tree(body: &[u8]) -> Result<StatusReply, DecodeError> {
    let root: Value = serde_json::from_slice(body).map_err(|error| DecodeError::Json(error.to_string()))?;
    let (carts, general_error) = match &root {
        Value::Object(_) => (
            get_ci(&root, "carts"),
            get_ci(&root, "error").or_else(|| get_ci(&root, "errors")).and_then(json_api_error),
        ),
        Value::Array(_) => (Some(&root), None),
        _ => (None, None),
    };
    let mut reply = StatusReply { general_error, ..StatusReply::default() };
    match carts {
        Some(Value::Array(items)) => {
            for item in items {
                match json_entry(item) {
                    Some(entry) => reply.entries.push(entry),
                    None => reply.unidentified_entries += 1,
                }
            }
        }
        Some(Value::Null) | None => {
            if reply.general_error.is_none() {
                return Err(DecodeError::Shape(shorten(&root.to_string(), 120)));
            }
        }
        Some(other) => {
            return Err(DecodeError::Shape(format!("`carts` is not a list: {}", shorten(&other.to_string(), 80))));
        }
    }
    Ok(reply)
}

fn json_api_error(value: &Value) -> Option<ApiError> {
    let value = match value {
        Value::Array(items) => items.first()?,
        other => other,
    };
    if !value.is_object() {
        return json_text(value).map(|message| ApiError { code: None, message });
    }
    let code = get_ci(value, "code").and_then(json_code);
    let message = get_ci(value, "message").and_then(json_text).unwrap_or_default();
    Some(ApiError { code, message })
}

fn json_entry(item: &Value) -> Option<Entry> {
    let cart_id = get_ci(item, "cartid").and_then(json_text)?;
    let error = get_ci(item, "carterror").or_else(|| get_ci(item, "error")).and_then(json_api_error);
    let status = get_ci(item, "cartstatus").and_then(json_text);
    let field = |name: &str| get_ci(item, name).and_then(json_text).filter(|text| !text.trim().is_empty());
    let outcome = entry_outcome(status, error, field("orderid"), field("cartcreationdatetime"));
    Some(Entry { cart_id, outcome })
}

fn entry_outcome(
    status: Option<String>,
    error: Option<ApiError>,
    order_id: Option<String>,
    created_at_raw: Option<String>,
) -> EntryOutcome {
    match (status, error) {
        (_, Some(error)) => EntryOutcome::Error(error),
        (Some(status), None) => EntryOutcome::Status(ReportedStatus {
            status: CartStatus::parse(&status),
            order_id: order_id.map(|id| CartId::parse(&id).map(CartId::into_string).unwrap_or(id)),
            created_at: created_at_raw.as_deref().and_then(crate::time::parse_naive),
            created_at_raw,
        }),
        (None, None) => EntryOutcome::Malformed("entry has neither cartStatus nor cartError".into()),
    }
}

/// Decodes an XML response. Cart records are found by local element name, case-insensitively,
/// anywhere in the document; namespaces and unknown elements are ignored.
///
/// Fails when the body is not well-formed XML or holds neither cart records nor an error.
pub fn decode_xml(body: &[u8]) -> Result<StatusReply, DecodeError> {
    let root = xml_tree::parse(body).map_err(DecodeError::Xml)?;
    let mut reply = StatusReply::default();
    let mut records = Vec::new();
    collect_cart_records(&root, &mut records, &mut reply);
    for record in records {
        let cart_id = record.child_text("cartid").unwrap_or_default();
        let error = record.child("carterror").or_else(|| record.child("error")).map(xml_api_error);
        let status = record.child_text("cartstatus");
        let field = |name: &str| record.child_text(name).filter(|text| !text.trim().is_empty());
        let outcome = entry_outcome(status, error, field("orderid"), field("cartcreationdatetime"));
        reply.entries.push(Entry { cart_id, outcome });
    }
    if reply.entries.is_empty() && reply.general_error.is_none() && !has_carts_list(&root) {
        return Err(DecodeError::Shape(format!("root element <{}>", root.name)));
    }
    Ok(reply)
}

/// A record is an element with a `CartID` child. Error elements outside records are general
/// errors.
fn collect_cart_records<'a>(node: &'a Node, records: &mut Vec<&'a Node>, reply: &mut StatusReply) {
    for child in &node.children {
        if child.child("cartid").is_some() {
            records.push(child);
        } else if (child.name == "error" || child.name == "errors") && reply.general_error.is_none() {
            let error = child.child("error").unwrap_or(child);
            reply.general_error = Some(xml_api_error(error));
        } else {
            collect_cart_records(child, records, reply);
        }
    }
    if node.child("cartid").is_some() && records.is_empty() && node.name != "cartid" {
        // The root itself is a single cart record.
        records.push(node);
    }
}

fn has_carts_list(node: &Node) -> bool {
    node.name == "carts" || node.children.iter().any(has_carts_list)
}

fn xml_api_error(node: &Node) -> ApiError {
    let code = node.child_text("code").and_then(|text| text.trim().parse().ok());
    let message = node
        .child_text("message")
        .unwrap_or_else(|| if node.children.is_empty() { node.text.trim().to_owned() } else { String::new() });
    ApiError { code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(texts: &[&str]) -> Vec<CartId> {
        texts.iter().map(|t| CartId::parse(t).unwrap()).collect()
    }

    #[test]
    fn json_request_is_valid_json_without_the_documents_trailing_comma() {
        let body = encode_json_request(&ids(&[
            "921A2046-66A5-4C5F-B9A6-4BC646FA5E5A",
            "BEE2C269-1DBD-4F67-B9F1-2EA2D3B4917B",
        ]));
        assert_eq!(
            body,
            r#"{"Carts":[{"CartID":"921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"},{"CartID":"bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b"}]}"#
        );
    }

    #[test]
    fn xml_request_round_trips_through_the_tolerant_reader() {
        let body = encode_xml_request(&ids(&["921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"]));
        let tree = xml_tree::parse(body.as_bytes()).unwrap();
        assert_eq!(tree.name, "cartstatusrequest");
        let cart = tree.child("carts").unwrap().child("cart").unwrap();
        assert_eq!(cart.child_text("cartid").as_deref(), Some("921a2046-66a5-4c5f-b9a6-4bc646fa5e5a"));
    }

    #[test]
    fn documents_json_example_decodes() {
        let body = br#"{ "carts":[ { "cartID":"921a2046-66a5-4c5f-b9a6-4bc646fa5e5a", "cartCreationDateTime":"2017-06-13T16:28:47", "orderID":"7cf9f78f-6631-44be-905a-94cee7a2cd9c", "cartStatus":"Ordered" }, { "cartID":"bee2c269-1dbd-4f67-b9f1-2ea2d3b4917b", "cartCreationDateTime":"2017-06-14T16:46:55.473", "cartStatus":"CheckedOut" }, { "cartID":"59dcca18-05e7-4f5c-8b4e-89e987ea1e51", "cartCreationDateTime":"2017-06-13T14:12:42.933", "cartStatus":"Pending" } ] }"#;
        let reply = decode_json(body).unwrap();
        assert_eq!(reply.entries.len(), 3);
        let EntryOutcome::Status(first) = &reply.entries[0].outcome else { panic!() };
        assert_eq!(first.status, CartStatus::Ordered);
        assert_eq!(first.order_id.as_deref(), Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c"));
        assert_eq!(first.created_at_raw.as_deref(), Some("2017-06-13T16:28:47"));
        assert!(first.created_at.is_some());
        let EntryOutcome::Status(second) = &reply.entries[1].outcome else { panic!() };
        assert_eq!(second.status, CartStatus::CheckedOut);
        assert_eq!(second.order_id, None);
    }

    #[test]
    fn per_cart_error_and_general_error() {
        let body = br#"{"carts":[{"cartID":"921A2046-66A5-4C5F-B9A6-4BC646FA5E5","cartError":{"message":"Specified Cart was not found or wrong format.","code":101}}]}"#;
        let reply = decode_json(body).unwrap();
        assert_eq!(
            reply.entries[0].outcome,
            EntryOutcome::Error(ApiError {
                code: Some(101),
                message: "Specified Cart was not found or wrong format.".into()
            })
        );
        let reply = decode_json(
            br#"{"Error":{"Code":"102","Message":"You can check no more than 10 CartIDs per one request."}}"#,
        )
        .unwrap();
        assert_eq!(reply.general_error.unwrap().code, Some(102));
        assert!(reply.entries.is_empty());
    }

    #[test]
    fn json_shape_errors() {
        assert!(matches!(decode_json(b"<html>oops</html>"), Err(DecodeError::Json(_))));
        assert!(matches!(decode_json(b"{\"status\":\"ok\"}"), Err(DecodeError::Shape(_))));
        assert!(matches!(decode_json(b"{\"carts\":42}"), Err(DecodeError::Shape(_))));
        let reply = decode_json(b"{\"carts\":[{\"cartStatus\":\"Pending\"}, 7]}").unwrap();
        assert_eq!(reply.unidentified_entries, 2);
    }

    #[test]
    fn xml_in_dotnet_style_with_namespaces() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?>
<CartStatusResponse xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <Carts>
    <Cart>
      <CartID>921a2046-66a5-4c5f-b9a6-4bc646fa5e5a</CartID>
      <CartCreationDateTime>2017-06-13T16:28:47</CartCreationDateTime>
      <OrderID>7cf9f78f-6631-44be-905a-94cee7a2cd9c</OrderID>
      <CartStatus>Ordered</CartStatus>
      <Unrelated><Deep>x</Deep></Unrelated>
    </Cart>
    <x:Cart xmlns:x="urn:whatever"><x:cartid>34ad83cc-d418-4fcd-81f5-b7f38026865f</x:cartid>
      <CartError><Message>Specified Cart was not found or wrong format.</Message><Code>101</Code></CartError></x:Cart>
  </Carts>
</CartStatusResponse>"#;
        let reply = decode_xml(body).unwrap();
        assert_eq!(reply.entries.len(), 2);
        let EntryOutcome::Status(first) = &reply.entries[0].outcome else { panic!() };
        assert_eq!(first.status, CartStatus::Ordered);
        assert_eq!(reply.entries[1].cart_id, "34ad83cc-d418-4fcd-81f5-b7f38026865f");
        assert_eq!(
            reply.entries[1].outcome,
            EntryOutcome::Error(ApiError {
                code: Some(101),
                message: "Specified Cart was not found or wrong format.".into()
            })
        );
    }

    #[test]
    fn xml_general_error_and_empty_list() {
        let reply = decode_xml(
            b"<CartStatusResponse><Error><Code>1</Code><Message>Unknown error</Message></Error></CartStatusResponse>",
        )
        .unwrap();
        assert_eq!(reply.general_error, Some(ApiError { code: Some(1), message: "Unknown error".into() }));
        let reply = decode_xml(b"<CartStatusResponse><Carts/></CartStatusResponse>").unwrap();
        assert!(reply.entries.is_empty());
        assert!(matches!(decode_xml(b"<html><body>502</body></html>"), Err(DecodeError::Shape(_))));
        assert!(matches!(decode_xml(b"<a><b></a>"), Err(DecodeError::Xml(_))));
    }
}
