//! The simulator's i.materialise Cart Status endpoint, in JSON and XML.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::{Fault, RequestRecord, SimState, lock};
use crate::provider::imaterialise::wire::{get_ci, json_text};
use crate::status::CartStatus;

pub(super) fn router(state: Arc<SimState>) -> Router {
    Router::new().route("/web-api/cartstatus/statuses", post(statuses)).with_state(state)
}

async fn statuses(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::enter(&state.stats.in_flight);
    let mut record = RequestRecord { at: started, cart_ids: 0, outcome: "ok" };
    let response = answer(&state, &headers, &body, &mut record).await;
    lock(&state.request_log).push(record);
    state.stats.busy_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    response
}

async fn answer(state: &SimState, headers: &HeaderMap, body: &[u8], record: &mut RequestRecord) -> Response {
    if !state.settings.latency.is_zero()
        && state.shutdown.run_until_cancelled(tokio::time::sleep(state.settings.latency)).await.is_none()
    {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let xml = wants_xml(headers);
    let api_code = headers.get("apicode").and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !api_code.trim().eq_ignore_ascii_case(lock(&state.api_code).as_str()) {
        record.outcome = "unauthorized";
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let fault = lock(&state.faults).choose(state.draw());
    if let Some(fault) = fault {
        state.stats.faults.fetch_add(1, Ordering::Relaxed);
        record.outcome = fault.label();
        return match fault {
            Fault::Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
            Fault::Code1 => general_error(xml, 1, "Unknown error"),
            Fault::Http500 => {
                (StatusCode::INTERNAL_SERVER_ERROR, "<html><body>Internal Server Error</body></html>").into_response()
            }
            Fault::Throttled(seconds) => {
                (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, seconds.to_string())], "busy").into_response()
            }
            Fault::Timeout => {
                state.shutdown.run_until_cancelled(tokio::time::sleep(state.settings.hang_for)).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
            Fault::Malformed => {
                (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{\"carts\":[{\"cartID\":")
                    .into_response()
            }
        };
    }
    let Some(cart_ids) = requested_ids(body, xml) else {
        record.outcome = "code501";
        return general_error(xml, 501, "Wrong request body. Check if all parameters are set correctly.");
    };
    record.cart_ids = cart_ids.len();
    let faults = lock(&state.faults).clone();
    if cart_ids.len() > faults.max_ids {
        record.outcome = "code102";
        return general_error(xml, 102, "You can check no more than 10 CartIDs per one request.");
    }
    if faults.poison_cart.as_ref().is_some_and(|poison| cart_ids.iter().any(|id| id.eq_ignore_ascii_case(poison))) {
        record.outcome = "code501";
        return general_error(xml, 501, "Wrong request body. Check if all parameters are set correctly.");
    }
    state.stats.cart_lookups.fetch_add(cart_ids.len() as u64, Ordering::Relaxed);
    let mut entries = Vec::with_capacity(cart_ids.len());
    for requested in &cart_ids {
        if faults.omit_cart.as_ref().is_some_and(|omit| requested.eq_ignore_ascii_case(omit)) {
            continue;
        }
        let entry = match state.serve(&requested.trim().to_ascii_lowercase()) {
            Some((status, order_id, created_raw)) => Entry::Status {
                cart_id: requested.trim().to_ascii_lowercase(),
                status: spelling(&status, state.draw()),
                order_id,
                created_raw,
            },
            None => Entry::NotFound { cart_id: requested.clone() },
        };
        entries.push(entry);
    }
    if let Some(extra) = &faults.extra_cart {
        entries.push(Entry::Status {
            cart_id: extra.clone(),
            status: "Pending".into(),
            order_id: None,
            created_raw: "2017-06-13T16:28:47".into(),
        });
    }
    if xml { xml_response(&entries) } else { json_response(&entries) }
}

/// Counts a request in flight until dropped, even when the client goes away mid-request.
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicU64) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Entry {
    Status { cart_id: String, status: String, order_id: Option<String>, created_raw: String },
    NotFound { cart_id: String },
}

/// The document spells statuses both ways; so does the simulator.
fn spelling(status: &CartStatus, sample: f64) -> String {
    match status {
        CartStatus::NotOrdered if sample < 0.3 => "Not Ordered".into(),
        CartStatus::CheckedOut if sample < 0.3 => "Checked Out".into(),
        other => other.as_str().to_owned(),
    }
}

fn wants_xml(headers: &HeaderMap) -> bool {
    [header::ACCEPT, header::CONTENT_TYPE]
        .iter()
        .any(|name| headers.get(name).and_then(|value| value.to_str().ok()).is_some_and(|value| value.contains("xml")))
}

fn requested_ids(body: &[u8], xml: bool) -> Option<Vec<String>> {
    if xml {
        let root = crate::xml_tree::parse(body).ok()?;
        let mut ids = Vec::new();
        collect_xml_ids(&root, &mut ids);
        return (!ids.is_empty()).then_some(ids);
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let carts = get_ci(&value, "carts")?.as_array()?;
    carts
        .iter()
        .map(|cart| get_ci(cart, "cartid").and_then(json_text))
        .collect::<Option<Vec<_>>>()
        .filter(|ids| !ids.is_empty())
}

fn collect_xml_ids(node: &crate::xml_tree::Node, ids: &mut Vec<String>) {
    for child in &node.children {
        if child.name == "cartid" {
            ids.push(child.text.trim().to_owned());
        } else {
            collect_xml_ids(child, ids);
        }
    }
}

fn general_error(xml: bool, code: i64, message: &str) -> Response {
    if xml {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><CartStatusResponse><Error><Code>{code}</Code><Message>{}</Message></Error></CartStatusResponse>",
            quick_xml::escape::escape(message)
        );
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": { "code": code, "message": message } }).to_string(),
    )
        .into_response()
}

fn json_response(entries: &[Entry]) -> Response {
    let carts: Vec<Value> = entries
        .iter()
        .map(|entry| match entry {
            Entry::Status { cart_id, status, order_id, created_raw } => {
                let mut cart = json!({ "cartID": cart_id, "cartCreationDateTime": created_raw, "cartStatus": status });
                if let Some(order_id) = order_id {
                    cart["orderID"] = json!(order_id);
                }
                cart
            }
            Entry::NotFound { cart_id } => json!({
                "cartID": cart_id,
                "cartError": { "message": "Specified Cart was not found or wrong format.", "code": 101 }
            }),
        })
        .collect();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json; charset=utf-8")], json!({ "carts": carts }).to_string())
        .into_response()
}

fn xml_response(entries: &[Entry]) -> Response {
    let escape = |text: &str| quick_xml::escape::escape(text).into_owned();
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><CartStatusResponse xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"><Carts>",
    );
    for entry in entries {
        match entry {
            Entry::Status { cart_id, status, order_id, created_raw } => {
                body.push_str(&format!("<Cart><CartID>{}</CartID><CartCreationDateTime>{}</CartCreationDateTime>", escape(cart_id), escape(created_raw)));
                if let Some(order_id) = order_id {
                    body.push_str(&format!("<OrderID>{}</OrderID>", escape(order_id)));
                }
                body.push_str(&format!("<CartStatus>{}</CartStatus></Cart>", escape(status)));
            }
            Entry::NotFound { cart_id } => body.push_str(&format!(
                "<Cart><CartID>{}</CartID><CartError><Message>Specified Cart was not found or wrong format.</Message><Code>101</Code></CartError></Cart>",
                escape(cart_id)
            )),
        }
    }
    body.push_str("</Carts></CartStatusResponse>");
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}
