//! The simulator's Titelive MediaWeb cart API: `get`, `check` and `confirm` for session
//! tokens whose carts gain products, addresses, delivery and payment over time, in valid
//! JSON (the documents' examples miss their commas).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use super::{SimState, TrueTransition, lock};
use crate::wire::{check_message, status_name as name_of};

/// A session: its cart's script of `check` codes, each with how often it is served.
pub(super) struct SimSession {
    script: Vec<(i64, u32)>,
    position: usize,
    served_here: u32,
    order_id: Option<u64>,
}

impl SimSession {
    fn code(&self) -> i64 {
        self.script[self.position].0
    }

    pub(super) fn script_start(&self) -> i64 {
        self.script[0].0
    }

    pub(super) fn settled(&self) -> bool {
        self.position + 1 == self.script.len() && self.served_here > 0
    }
}

/// The status name `check` gives a code.
pub(super) fn status_name(code: i64) -> String {
    name_of(code).to_owned()
}

/// A seeded script: most carts fill up and get ordered, some stop at valid, some sessions end.
pub(super) fn random_session(rng: &mut ChaCha8Rng, min_dwell: u32, max_dwell: u32) -> SimSession {
    let path: &[i64] = match rng.random_range(0..100) {
        0..55 => &[10, 12, 15, 17, 19, 23, 0, 11],
        55..75 => &[12, 15, 19, 0, 11],
        75..90 => &[12, 15, 0],
        _ => &[12, 15, 4],
    };
    let script = path.iter().map(|code| (*code, rng.random_range(min_dwell.max(1)..=max_dwell.max(1)))).collect();
    SimSession { script, position: 0, served_here: 0, order_id: None }
}

pub(super) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/api/json/{domain}/cart/", get(get_cart))
        .route("/api/json/{domain}/cart/check", get(check_cart))
        .route("/api/json/{domain}/cart/confirm", post(confirm_cart))
        .with_state(state)
}

fn envelope(success: bool, code: i64, message: &str, object: Option<Value>) -> Response {
    let mut response = json!({ "success": success, "code": code, "message": message });
    if let Some(object) = object {
        response["object"] = object;
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json!({ "response": response }).to_string())
        .into_response()
}

fn cart_object(code: i64) -> Value {
    // The cart gains what each later code no longer complains about.
    let filled = |needed_after: i64| code == 0 || code > needed_after;
    let address = json!({
        "id": 3, "user": 586, "addressType": 1, "firstName": "Spider", "lastName": "Man",
        "adressLine1": "Victoria Street", "number": 44, "postcode": "10025", "city": "New York",
        "country": 3, "default": false
    });
    let mut cart = json!({
        "customer": 586,
        "productsQuantity": 1,
        "price": serde_json::Number::from_string_unchecked("22.5".into()),
        "totalPrice": serde_json::Number::from_string_unchecked("22.5".into()),
        "creationDate": (Utc::now() - chrono::Duration::minutes(30)).format("%Y-%m-%d %H:%M:%S").to_string(),
        "lines": { "line": [{ "id": 2, "ean": 9789462500877u64, "title": "Kip", "author": "Marcus Bean & Ellen Hosmar",
                              "price": serde_json::Number::from_string_unchecked("22.5".into()), "quantity": 1, "productForm": "BB" }] }
    });
    if filled(15) {
        cart["invoiceAddress"] = address.clone();
    }
    if filled(17) {
        cart["deliveryType"] = json!(1);
    }
    if filled(19) {
        cart["deliveryAddress"] = address;
    }
    if filled(23) {
        cart["paymentMethod"] = json!(1);
    }
    json!({ "cart": cart })
}

/// Checks the request's domain and token; returns the token, or the code and message to
/// answer with.
fn session_token(state: &SimState, domain: &str, headers: &HeaderMap) -> Result<String, (i64, &'static str)> {
    if domain != state.settings.titelive_domain {
        return Err((1, "Domain code missing or malformed"));
    }
    let token = headers.get("token").and_then(|value| value.to_str().ok()).unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err((2, "Required field empty"));
    }
    if token.len() != 26 {
        return Err((3, "Required field malformed"));
    }
    if !lock(&state.sessions).contains_key(&token) {
        return Err((4, "There is not session with this token"));
    }
    Ok(token)
}

async fn get_cart(State(state): State<Arc<SimState>>, Path(domain): Path<String>, headers: HeaderMap) -> Response {
    let token = match session_token(&state, &domain, &headers) {
        Ok(token) => token,
        Err((code, message)) => return envelope(false, code, message, None),
    };
    let code = lock(&state.sessions).get(&token).map_or(4, SimSession::code);
    match code {
        4 => envelope(false, 4, "There is not session with this token", None),
        10 | 11 => envelope(false, 10, "no cart at this time", None),
        code => envelope(true, 0, "cart retrieved", Some(cart_object(code))),
    }
}

async fn check_cart(State(state): State<Arc<SimState>>, Path(domain): Path<String>, headers: HeaderMap) -> Response {
    state.stats.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token = match session_token(&state, &domain, &headers) {
        Ok(token) => token,
        Err((code, message)) => return envelope(false, code, message, None),
    };
    let code = {
        let mut sessions = lock(&state.sessions);
        let Some(session) = sessions.get_mut(&token) else {
            return envelope(false, 4, "There is not session with this token", None);
        };
        let code = session.code();
        session.served_here += 1;
        let dwell = session.script[session.position].1;
        if session.served_here >= dwell && session.position + 1 < session.script.len() {
            session.position += 1;
            session.served_here = 0;
            let next = session.code();
            if next == 11 {
                session.order_id.get_or_insert(1000 + session.script.len() as u64 + token.len() as u64);
            }
            lock(&state.truth).push(TrueTransition {
                cart_id: token.clone(),
                from: Some(status_name(code)),
                to: status_name(next),
                order_id: None,
                at: Utc::now(),
            });
        }
        code
    };
    let message = check_message(code);
    match code {
        0 => envelope(true, 0, "valid cart", Some(cart_object(0))),
        code => envelope(false, code, message, None),
    }
}

async fn confirm_cart(State(state): State<Arc<SimState>>, Path(domain): Path<String>, headers: HeaderMap) -> Response {
    let token = match session_token(&state, &domain, &headers) {
        Ok(token) => token,
        Err((code, message)) => return envelope(false, code, message, None),
    };
    let mut sessions = lock(&state.sessions);
    let Some(session) = sessions.get_mut(&token) else {
        return envelope(false, 4, "There is not session with this token", None);
    };
    let code = session.code();
    if code != 0 {
        // The confirm list numbers the payment codes one lower than check's.
        let confirm_code = match code {
            23 => 22,
            24 => 23,
            other => other,
        };
        return envelope(false, confirm_code, check_message(code), None);
    }
    let order_id = *session.order_id.get_or_insert(7000 + token.bytes().map(u64::from).sum::<u64>());
    session.script.truncate(session.position + 1);
    session.script.push((11, u32::MAX));
    session.position += 1;
    session.served_here = 0;
    drop(sessions);
    lock(&state.truth).push(TrueTransition {
        cart_id: token,
        from: Some(status_name(0)),
        to: status_name(11),
        order_id: Some(order_id.to_string()),
        at: Utc::now(),
    });
    let order = json!({ "order": {
        "id": order_id, "customer": 2,
        "price": serde_json::Number::from_string_unchecked("22.5".into()),
        "totalPrice": serde_json::Number::from_string_unchecked("22.5".into()),
        "status": 1, "creationDate": "2016-02-29 15:43:21", "deliveryType": 3, "paymentMethod": 1,
        "lines": { "line": [{ "id": 7, "ean": 9789462500877u64, "title": "Kip", "author": "Marcus Bean & Ellen Hosmar",
                              "price": serde_json::Number::from_string_unchecked("22.5".into()), "quantity": 1, "productForm": "BB" }] },
        "deliveryFirstName": "Thor", "deliveryLastName": "-", "deliveryAdressLine1": "-", "deliveryPostcode": "-",
        "deliveryCity": "Asgard", "deliveryCountry": 1, "invoiceFirstName": "Thor", "invoiceLastName": "-",
        "invoiceAdressLine1": "-", "invoicePostcode": "-", "invoiceCity": "Asgard", "invoiceCountry": 1
    }});
    envelope(true, 0, "order saved", Some(order))
}
