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

use super::{DataFault, Fault, RequestRecord, SimState, lock};
use crate::wire::{Status, canonical_guid, get_ci, text_of, xml_texts};
use chrono::Utc;

pub(super) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/web-api/cartstatus/statuses", post(statuses))
        .route("/web-api/cart/{cart_id}/items", post(cart_items).delete(cart_items))
        .route("/_sim/stats", axum::routing::get(sim_stats))
        .route("/_sim/arrivals", axum::routing::get(sim_arrivals))
        .route("/_sim/carts", axum::routing::get(sim_carts))
        .route("/_sim/truth", axum::routing::get(sim_truth))
        .route("/_sim/items", axum::routing::get(sim_items).post(sim_new_item))
        .with_state(state)
}

/// Request figures, for a benchmark that runs the simulator as its own process.
async fn sim_stats(State(state): State<Arc<SimState>>) -> Response {
    let stats = &state.stats;
    axum::Json(json!({
        "requests": stats.requests.load(Ordering::Relaxed),
        "faults": stats.faults.load(Ordering::Relaxed),
        "cartLookups": stats.cart_lookups.load(Ordering::Relaxed),
        "busyMicros": stats.busy_micros.load(Ordering::Relaxed),
        "inFlight": stats.in_flight.load(Ordering::Relaxed),
        "firstRequestUnixMicros": stats.first_request_unix_micros.load(Ordering::SeqCst),
    }))
    .into_response()
}

/// When each status request arrived, in microseconds after the first, with how many cart
/// ids it asked about: for a benchmark that measures request rates from outside.
async fn sim_arrivals(State(state): State<Arc<SimState>>) -> Response {
    let log = lock(&state.request_log);
    let first = log.first().map(|record| record.at);
    let arrivals: Vec<Value> = log
        .iter()
        .map(|record| {
            let after = first.map_or(0, |first| record.at.duration_since(first).as_micros() as u64);
            json!([after, record.cart_ids])
        })
        .collect();
    axum::Json(json!({ "arrivals": arrivals })).into_response()
}

/// The cart ids and session tokens it knows.
async fn sim_carts(State(state): State<Arc<SimState>>) -> Response {
    let mut carts: Vec<String> = lock(&state.carts).keys().cloned().collect();
    carts.sort();
    let mut sessions: Vec<String> = lock(&state.sessions).keys().cloned().collect();
    sessions.sort();
    axum::Json(json!({ "carts": carts, "unknown": state.unknown, "sessions": sessions })).into_response()
}

/// The cart item catalogue.
async fn sim_items(State(state): State<Arc<SimState>>) -> Response {
    let items: Vec<Value> =
        state.items().into_iter().map(|(id, expired)| json!({ "cartItemId": id, "expired": expired })).collect();
    axum::Json(json!({ "items": items })).into_response()
}

/// Adds a cart item to the catalogue: `{"expired": true}` for one the API refuses with 107.
async fn sim_new_item(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let expired =
        serde_json::from_slice::<Value>(&body).ok().and_then(|value| value["expired"].as_bool()).unwrap_or(false);
    let id = state.new_item(expired);
    (axum::http::StatusCode::CREATED, axum::Json(json!({ "cartItemId": id, "expired": expired }))).into_response()
}

/// Every status every cart entered.
async fn sim_truth(State(state): State<Arc<SimState>>) -> Response {
    let truth: Vec<Value> = lock(&state.truth)
        .iter()
        .map(|t| json!({ "cartId": t.cart_id, "from": t.from, "to": t.to, "orderId": t.order_id, "at": t.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true) }))
        .collect();
    axum::Json(json!({ "truth": truth })).into_response()
}

async fn statuses(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let started = Instant::now();
    if state.stats.requests.fetch_add(1, Ordering::Relaxed) == 0 {
        let now = Utc::now().timestamp_micros().max(0) as u64;
        let _ = state.stats.first_request_unix_micros.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    }
    let _in_flight = InFlight::enter(&state.stats.in_flight);
    let mut record = RequestRecord { at: started, cart_ids: 0, asked: Vec::new(), outcome: "ok" };
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
    record.asked = cart_ids.iter().filter_map(|id| canonical_guid(id)).collect();
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
        let cart_id = requested.trim().to_ascii_lowercase();
        let Some(served) = state.serve(&cart_id) else {
            entries.push(Entry::NotFound { cart_id: requested.clone() });
            continue;
        };
        let mut created_raw = served.created_raw;
        let mut order_id = served.order_id;
        if faults.data_fault(DataFault::ZeroDate, state.draw()) {
            created_raw = if state.draw() < 0.5 { "0001-01-01T00:00:00" } else { "1900-01-01T00:00:00" }.into();
        }
        if faults.data_fault(DataFault::NoOrderId, state.draw()) {
            order_id = None;
        }
        if faults.data_fault(DataFault::StaleDuplicate, state.draw())
            && let Some(before) = &served.before
        {
            entries.push(Entry::Status {
                cart_id: cart_id.clone(),
                status: spelling(before, state.draw()),
                order_id: None,
                created_raw: created_raw.clone(),
            });
        }
        entries.push(Entry::Status { cart_id, status: spelling(&served.status, state.draw()), order_id, created_raw });
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
fn spelling(status: &Status, sample: f64) -> String {
    match status {
        Status::NotOrdered if sample < 0.3 => "Not Ordered".into(),
        Status::CheckedOut if sample < 0.3 => "Checked Out".into(),
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
        return xml_texts(body, "cartid").filter(|ids| !ids.is_empty());
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let carts = get_ci(&value, "carts")?.as_array()?;
    carts
        .iter()
        .map(|cart| get_ci(cart, "cartid").and_then(text_of))
        .collect::<Option<Vec<_>>>()
        .filter(|ids| !ids.is_empty())
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

/// `POST` (add) and `DELETE` (remove) `/web-api/cart/{cartid}/items`, with the documented
/// error codes. A change is all or nothing; a successful one makes the cart Pending.
pub(super) async fn cart_items(
    State(state): State<Arc<SimState>>,
    axum::extract::Path(cart_id): axum::extract::Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.item_requests.fetch_add(1, Ordering::Relaxed);
    let xml = wants_xml(&headers);
    let api_code = headers.get("apicode").and_then(|value| value.to_str().ok()).unwrap_or_default();
    if !api_code.trim().eq_ignore_ascii_case(lock(&state.api_code).as_str()) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let adding = method == axum::http::Method::POST;
    let Some(item_ids) = requested_items(&body, xml) else {
        return item_refusal(xml, None, 103, "CartItemID is of wrong format");
    };
    let cart_id = cart_id.trim().to_ascii_lowercase();
    let mut carts = lock(&state.carts);
    let Some(cart) = carts.get_mut(&cart_id) else {
        return item_refusal(xml, None, 102, "Specified Cart was not found or wrong format.");
    };
    if cart.foreign {
        return item_refusal(xml, None, 101, "Specified Cart does not belong to partner.");
    }
    if cart.expired {
        return item_refusal(xml, None, 111, "Cannot add/remove items. Specified Cart has expired.");
    }
    match cart.status() {
        Status::Ordered => {
            return item_refusal(xml, None, 105, "Cannot add/remove items. Specified Cart was already ordered.");
        }
        Status::CheckedOut => {
            return item_refusal(
                xml,
                None,
                110,
                "Cannot add/remove items. Specified Cart was already checked out or ordered.",
            );
        }
        _ => {}
    }
    let catalog = lock(&state.catalog).clone();
    let mut refusals = Vec::new();
    for item in &item_ids {
        let canonical = canonical_guid(item).ok_or(());
        let refusal = match (&canonical, canonical.as_ref().ok().and_then(|id| catalog.get(id))) {
            (Err(_), _) => Some((103, "CartItemID is of wrong format".to_owned())),
            (Ok(_), None) => Some((106, "Not found".to_owned())),
            (Ok(_), Some(true)) => {
                Some((107, "CartItem validity period expired on 2014-11-26T16:54:34.937".to_owned()))
            }
            (Ok(id), Some(false)) if adding && cart.items.contains(id) => {
                Some((108, "CartItem already added to cart".to_owned()))
            }
            (Ok(id), Some(false)) if !adding && !cart.items.contains(id) => {
                Some((109, "CartItem not found in cart".to_owned()))
            }
            _ => None,
        };
        if let Some((code, message)) = refusal {
            refusals.push((item.clone(), code, message));
        }
    }
    if !refusals.is_empty() {
        return item_refusals(xml, &refusals);
    }
    let canonical: Vec<String> = item_ids.iter().filter_map(|item| canonical_guid(item)).collect();
    for item in &canonical {
        if adding {
            cart.items.insert(item.clone());
        } else {
            cart.items.remove(item);
        }
    }
    let becomes_pending = *cart.status() == Status::NotOrdered;
    drop(carts);
    if becomes_pending {
        state.force_status(&cart_id, Status::Pending);
    }
    let items: Vec<Value> = canonical
        .iter()
        .enumerate()
        .map(|(index, item)| {
            // Prices as the partner writes them: decimals with four places, as JSON numbers.
            let price = format!("{}.{:04}", 10 + index, 2500 + index);
            json!({
                "cartItemID": item,
                "myCartItemReference": format!("item-{}", index + 1),
                "toolID": "2054608d-b469-4cab-adeb-cf1c0569e7a1",
                "modelID": "06515f8e-5d08-4fcb-912a-b87380d69927",
                "fileUnits": "mm",
                "fileScaleFactor": serde_json::Number::from_string_unchecked("1.0000000000".into()),
                "materialID": "035f4772-da8a-400b-8be4-2dd344b28ddb",
                "finishID": "bba2bebb-8895-4049-aeb0-ab651cee2597",
                "quantity": 1,
                "mySalesUnitPrice": serde_json::Number::from_string_unchecked(price.clone()),
                "iMatUnitPrice": serde_json::Number::from_string_unchecked("12.5000".into()),
                "currency": "EUR",
                "validUntil": "2030-11-26T16:54:34.937",
            })
        })
        .collect();
    if xml {
        let mut body = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><CartItemsResponse><CartItems>");
        for item in &items {
            body.push_str("<CartItem>");
            for (key, value) in item.as_object().into_iter().flatten() {
                let element = format!("{}{}", key[..1].to_ascii_uppercase(), &key[1..]);
                let text = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
                body.push_str(&format!("<{element}>{}</{element}>", quick_xml::escape::escape(text.as_str())));
            }
            body.push_str("</CartItem>");
        }
        body.push_str("</CartItems></CartItemsResponse>");
        return (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response();
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json!({ "cartItems": items }).to_string())
        .into_response()
}

fn requested_items(body: &[u8], xml: bool) -> Option<Vec<String>> {
    if xml {
        return xml_texts(body, "cartitemid").filter(|ids| !ids.is_empty());
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let items = get_ci(&value, "cartitems")?.as_array()?;
    items
        .iter()
        .map(|item| get_ci(item, "cartitemid").and_then(text_of))
        .collect::<Option<Vec<_>>>()
        .filter(|ids| !ids.is_empty())
}

fn item_refusal(xml: bool, item: Option<&str>, code: i64, message: &str) -> Response {
    item_refusals(xml, &[(item.unwrap_or_default().to_owned(), code, message.to_owned())])
}

/// The documented refusal: 403 with the errors per item.
fn item_refusals(xml: bool, refusals: &[(String, i64, String)]) -> Response {
    if xml {
        let mut body = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><CartItemsResponse><CartItems>");
        for (item, code, message) in refusals {
            body.push_str(&format!(
                "<CartItem><Error><Message>{}</Message><Code>{code}</Code></Error><CartItemID>{}</CartItemID></CartItem>",
                quick_xml::escape::escape(message.as_str()),
                quick_xml::escape::escape(item.as_str())
            ));
        }
        body.push_str("</CartItems></CartItemsResponse>");
        return (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response();
    }
    let entries: Vec<Value> = refusals
        .iter()
        .map(|(item, code, message)| json!({ "error": { "message": message, "code": code }, "cartItemID": item }))
        .collect();
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/json")], json!({ "cartItems": entries }).to_string())
        .into_response()
}
