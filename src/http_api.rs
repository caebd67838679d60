//! The local HTTP API: health and readiness probes, Prometheus metrics, registering and
//! inspecting carts, and an events cursor for downstream systems.
//!
//! Off unless `http.listen` is set; loopback by default. When a bearer token is configured
//! every endpoint but the probes requires it, compared in constant time. Request bodies are
//! limited in size, and every malformed request gets a 400 with a JSON error naming the
//! problem.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::checks::{DAY, MILLISECOND, MINUTE, Problems, SECOND};
use crate::clock::Clock;
use crate::confirm::{ConfirmError, ConfirmService};
use crate::items::{ChangeError, ItemsService};
use crate::liveness::DaemonHealth;
use crate::metrics::Metrics;
use crate::model::TrackRequest;
use crate::provider::Registry;
use crate::provider::imaterialise::items::{ItemAction, ItemsError};
use crate::secret::Secret;
use crate::store::{Store, TrackOutcome, UntrackOutcome};
use crate::upstream::Mode;

/// Most carts one `POST /v1/carts` may register.
const MAX_CARTS_PER_REQUEST: usize = 10_000;

/// The services the API offers, as the current config builds them; a reload replaces them.
#[derive(Debug, Clone, Default)]
pub struct Services {
    /// Every provider, for registering carts and reading ids.
    pub providers: Registry,
    /// Item changes, when the i.materialise provider is enabled.
    pub items: Option<Arc<ItemsService>>,
    /// Titelive confirmations, when that provider is enabled.
    pub confirm: Option<Arc<ConfirmService>>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// The clock.
    pub clock: Clock,
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
    /// The bearer token, if one is required.
    pub token: Option<Secret>,
    /// Item changes and confirmations.
    pub services: Arc<RwLock<Services>>,
    /// Whether sweeps are working, for `/readyz`.
    pub health: Arc<DaemonHealth>,
}

impl ApiState {
    fn services(&self) -> Services {
        self.services.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// What one connection may take: a client that sends its headers too slowly, or holds a
/// connection idle, is disconnected, and connections beyond the limit are refused, so no
/// client can exhaust the daemon's file descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Connections open at once.
    pub max_connections: usize,
    /// Time to receive a request's headers.
    pub header_timeout: Duration,
    /// Time a connection may sit without a byte either way.
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits `[http]` sets.
    pub fn from_config(config: &HttpConfig) -> Limits {
        Limits {
            max_body_bytes: usize::try_from(config.max_body_bytes).unwrap_or(usize::MAX),
            max_connections: config.max_connections as usize,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// An error answer: a status and a JSON body `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> ApiError {
        tracing::warn!(error = %error, "HTTP API: database error");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {error}"))
    }
}

/// The router with every endpoint, for tests and for [`serve`].
pub fn router(state: ApiState, max_body_bytes: usize) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/carts", axum::routing::post(register_carts))
        .route("/v1/carts/{cart_id}", get(show_cart).delete(untrack_cart))
        .route("/v1/carts/{cart_id}/items", axum::routing::post(add_items).delete(remove_items))
        .route("/v1/carts/{cart_id}/confirm", axum::routing::post(confirm_cart))
        .route("/v1/events", get(list_events))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`, within `limits`: connections beyond the
/// limit are closed at once, and each connection is closed when its headers are too slow or
/// it sits idle too long. Requests in progress when `shutdown` comes are finished.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState, limits: Limits, shutdown: CancellationToken) {
    let address = listener.local_addr().ok();
    tracing::info!(address = %address.map(|a| a.to_string()).unwrap_or_default(), "HTTP API listening");
    let app = router(state, limits.max_body_bytes);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let connections = tokio_util::task::TaskTracker::new();
    let mut refused_reported = false;
    loop {
        let (stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::warn!(error = %error, "HTTP API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !std::mem::replace(&mut refused_reported, true) {
                tracing::warn!(
                    limit = limits.max_connections,
                    "HTTP API connection limit reached; refusing new connections"
                );
            }
            continue;
        };
        refused_reported = false;
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_read_timeout(Some(limits.idle_timeout));
        stream.set_write_timeout(Some(limits.idle_timeout));
        let io = hyper_util::rt::TokioIo::new(Box::pin(stream));
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            tower::Service::call(&mut app.clone(), request)
        });
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let connection = builder.serve_connection(io, service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Binds the API's address.
///
/// Fails when the address is in use or not allowed.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())) {
        next.run(request).await
    } else {
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        response
    }
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<ApiState>) -> Response {
    let mut problems = Vec::new();
    if let Some(problem) = state.health.problem() {
        problems.push(problem);
    }
    if let Err(error) = state.store.ping().await {
        problems.push(format!("database: {error}"));
    }
    match state.store.upstream_records().await {
        Ok(records) => {
            for record in records.iter().filter(|record| record.snapshot.mode == Mode::AuthPaused) {
                problems.push(format!("{}: the partner rejects the apiCode", record.provider));
            }
        }
        Err(error) => problems.push(format!("database: {error}")),
    }
    if problems.is_empty() {
        axum::Json(json!({ "status": "ready" })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "not ready", "problems": problems })))
            .into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let summary = state.store.summary(state.clock.now()).await?;
    let text = state.metrics.render(&summary);
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

/// Reads a JSON body, turning every kind of bad body into a 4xx with a JSON error.
fn json_body(body: Result<Bytes, BytesRejection>, headers: &HeaderMap) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let content_type =
        headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("application/json");
    if !content_type.starts_with("application/json") {
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the body as application/json"));
    }
    serde_json::from_slice(&body).map_err(|error| ApiError::bad_request(format!("the body is not valid JSON: {error}")))
}

/// Reads `{"cartId", "reference"}`, `{"carts": [...]}` of those or of strings, or a list.
fn track_requests(body: &Value, providers: &Registry) -> Result<Vec<TrackRequest>, ApiError> {
    let items: Vec<&Value> = match body {
        Value::Array(items) => items.iter().collect(),
        Value::Object(object) if object.contains_key("carts") => match &object["carts"] {
            Value::Array(items) => items.iter().collect(),
            _ => return Err(ApiError::bad_request("`carts` must be a list")),
        },
        Value::Object(_) => vec![body],
        _ => return Err(ApiError::bad_request("expected {\"cartId\": ...}, {\"carts\": [...]} or a list of ids")),
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("no carts given"));
    }
    if items.len() > MAX_CARTS_PER_REQUEST {
        return Err(ApiError::bad_request(format!("at most {MAX_CARTS_PER_REQUEST} carts per request")));
    }
    let mut requests = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let mut text_field = |object: &serde_json::Map<String, Value>, name: &str| match object.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                problems.push(format!("carts[{index}].{name} must be a string"));
                None
            }
        };
        let (id, reference, provider, domain) = match item {
            Value::String(id) => (Some(id.clone()), None, None, None),
            Value::Object(object) => (
                text_field(object, "cartId"),
                text_field(object, "reference"),
                text_field(object, "provider"),
                text_field(object, "domain"),
            ),
            _ => (None, None, None, None),
        };
        let provider = provider.as_deref().unwrap_or(crate::provider::imaterialise::PROVIDER);
        match id.map(|id| providers.track_request(provider, &id, domain.as_deref(), reference)) {
            Some(Ok(request)) => requests.push(request),
            Some(Err(error)) => problems.push(format!("carts[{index}]: {error}")),
            None => problems.push(format!("carts[{index}] has no cartId")),
        }
    }
    if problems.is_empty() {
        Ok(requests)
    } else {
        Err(ApiError::bad_request(format!("nothing was registered: {}", problems.join("; "))))
    }
}

async fn register_carts(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body, &headers)?;
    let requests = track_requests(&body, &state.services().providers)?;
    let now = state.clock.now();
    let outcomes = state.store.track(requests, now, now).await?;
    let carts: Vec<Value> = outcomes
        .into_iter()
        .map(|(cart_id, outcome)| {
            let (outcome, state, replaced) = match outcome {
                TrackOutcome::Added => ("added", None, None),
                TrackOutcome::AlreadyTracked { replaced } => ("already_tracked", None, replaced),
                TrackOutcome::Resumed(state) => ("resumed", Some(state), None),
                TrackOutcome::Finished(state) => ("finished", Some(state), None),
            };
            json!({ "cartId": cart_id.as_str(), "outcome": outcome, "state": state, "replacedReference": replaced })
        })
        .collect();
    Ok(axum::Json(json!({ "carts": carts })).into_response())
}

fn path_cart_id(state: &ApiState, text: &str) -> Result<String, ApiError> {
    state.services().providers.public_id(text).map_err(ApiError::bad_request)
}

async fn untrack_cart(State(state): State<ApiState>, Path(cart_id): Path<String>) -> Result<Response, ApiError> {
    let cart_id = path_cart_id(&state, &cart_id)?;
    let outcome =
        state.store.untrack(vec![cart_id.clone()], state.clock.now()).await?.pop().map(|(_, outcome)| outcome);
    match outcome {
        Some(UntrackOutcome::Untracked) => {
            Ok(axum::Json(json!({ "cartId": cart_id.as_str(), "outcome": "untracked" })).into_response())
        }
        Some(UntrackOutcome::NotTracking(current)) => {
            Ok(axum::Json(json!({ "cartId": cart_id.as_str(), "outcome": "not_tracking", "state": current }))
                .into_response())
        }
        Some(UntrackOutcome::Unknown) | None => {
            Err(ApiError::new(StatusCode::NOT_FOUND, format!("cart {cart_id} is not registered")))
        }
    }
}

async fn show_cart(State(state): State<ApiState>, Path(cart_id): Path<String>) -> Result<Response, ApiError> {
    let cart_id = path_cart_id(&state, &cart_id)?;
    let detail = state.store.cart_detail(cart_id.clone()).await?;
    let detail =
        detail.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("cart {cart_id} is not registered")))?;
    Ok(axum::Json(crate::render::cart_detail_json(&detail)).into_response())
}

async fn add_items(
    state: State<ApiState>,
    path: Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    change_items(state, path, headers, body, ItemAction::Add).await
}

async fn remove_items(
    state: State<ApiState>,
    path: Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    change_items(state, path, headers, body, ItemAction::Remove).await
}

/// `{"items": ["<cart item id>", ...], "force": false}`
async fn change_items(
    State(state): State<ApiState>,
    Path(cart_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    action: ItemAction,
) -> Result<Response, ApiError> {
    let service = state
        .services()
        .items
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the i.materialise provider is not enabled"))?;
    let body = json_body(body, &headers)?;
    let items: Vec<String> = match body.get("items") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request("`items` must be a list of cart item ids"))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(ApiError::bad_request("expected {\"items\": [\"<cart item id>\", ...]}")),
    };
    let force = match body.get("force") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return Err(ApiError::bad_request("`force` must be true or false")),
    };
    match service.change(action, &cart_id, &items, force).await {
        Ok(outcome) => Ok(axum::Json(json!({
            "cartId": cart_id.trim().to_ascii_lowercase(),
            "action": action.as_str(),
            "items": outcome.items,
            "refused": outcome.refused,
            "eventId": outcome.event_id,
            "refreshed": outcome.refreshed,
        }))
        .into_response()),
        Err(ChangeError::Malformed(message)) => Err(ApiError::bad_request(message)),
        Err(error @ ChangeError::Refused(_)) => Err(ApiError::new(StatusCode::CONFLICT, error.to_string())),
        Err(ChangeError::Rejected(ItemsError::Refused(errors))) => {
            let codes: Vec<Option<i64>> = errors.iter().map(|error| error.code).collect();
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            Ok((StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({ "error": message, "codes": codes })))
                .into_response())
        }
        Err(error @ (ChangeError::Rejected(_) | ChangeError::Upstream(_))) => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, error.to_string()))
        }
        Err(ChangeError::Store(error)) => Err(error.into()),
    }
}

/// Confirms a Titelive cart; an optional body `{"domain": "00000"}`.
async fn confirm_cart(
    State(state): State<ApiState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let service = state
        .services()
        .confirm
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "the Titelive provider is not enabled"))?;
    let body = body.map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
    let domain = if body.is_empty() {
        None
    } else {
        let value = json_body(Ok(body), &headers)?;
        match value.get("domain") {
            None | Some(Value::Null) => None,
            Some(Value::String(domain)) => Some(domain.clone()),
            Some(_) => return Err(ApiError::bad_request("`domain` must be a string")),
        }
    };
    match service.confirm(&token, domain.as_deref()).await {
        Ok((cart_id, order)) => Ok(axum::Json(json!({ "cartId": cart_id, "order": order })).into_response()),
        Err(ConfirmError::Malformed(message)) => Err(ApiError::bad_request(message)),
        Err(error @ ConfirmError::Refused(_)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string()))
        }
        Err(error @ ConfirmError::Upstream(_)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, error.to_string())),
        Err(ConfirmError::Store(error)) => Err(error.into()),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<String>,
    limit: Option<String>,
}

async fn list_events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(text) => text.parse::<i64>().ok().filter(|after| *after >= 0).ok_or_else(|| {
            ApiError::bad_request(format!("`after` must be a sequence number (0 or more), got {text:?}"))
        })?,
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => 100,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|limit| (1..=1000).contains(limit))
            .ok_or_else(|| ApiError::bad_request(format!("`limit` must be between 1 and 1000, got {text:?}")))?,
    };
    let events = state.store.events_after(after, limit).await?;
    let next_after = events.last().map_or(after, |event| event.seq);
    let events: Vec<Value> = events
        .iter()
        .map(|event| serde_json::from_str(&crate::sinks::log::event_line(event)).unwrap_or(Value::Null))
        .collect();
    Ok(axum::Json(json!({ "events": events, "nextAfter": next_after })).into_response())
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpConfig {
    /// Address to listen on; empty for off.
    pub listen: String,
    /// Bearer token.
    pub token: Secret,
    /// A file holding the bearer token.
    pub token_file: PathBuf,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Connections open at once; more are refused.
    pub max_connections: u32,
    /// Time a client has to send a request's headers.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Time a connection may sit without a byte either way before it is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl HttpConfig {
    /// The address to listen on, if the API is on and the address valid.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

impl HttpConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut Problems) {
        if !self.listen.trim().is_empty() {
            match self.address() {
                None => problems.add(
                    "http.listen",
                    format!("not an address with a port, such as \"127.0.0.1:8787\": {:?}", self.listen),
                ),
                Some(address) if !address.ip().is_loopback() && self.token.is_empty() => problems.add(
                    "http.listen",
                    format!("listening on {address}, which is not loopback, needs http.token (or http.token_file)"),
                ),
                Some(_) => {}
            }
        }
        problems.number("http.max_body_bytes", self.max_body_bytes, 1024..=1 << 30);
        problems.number("http.max_connections", self.max_connections, 1..=10_000);
        problems.duration("http.header_timeout", self.header_timeout, 100 * MILLISECOND, 10 * MINUTE);
        problems.duration("http.idle_timeout", self.idle_timeout, SECOND, DAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_shape_is_accepted_and_bad_ids_named() {
        let providers = crate::config::Config::default().providers();
        let track_requests = |body: &Value| track_requests(body, &providers);
        let a = "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a";
        assert_eq!(
            track_requests(&json!({ "cartId": a.to_uppercase(), "reference": "r" })).unwrap()[0].reference.as_deref(),
            Some("r")
        );
        assert_eq!(track_requests(&json!([a, a])).unwrap().len(), 2);
        assert_eq!(track_requests(&json!({ "carts": [{ "cartId": a }, a] })).unwrap().len(), 2);
        let error = track_requests(&json!({ "carts": [a, "nope", {}] })).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.contains("carts[1]: malformed cart id \"nope\"")
                && error.message.contains("carts[2] has no cartId"),
            "{}",
            error.message
        );
        assert!(track_requests(&json!(42)).is_err());
        assert!(track_requests(&json!([])).is_err());
    }
}
