//! The provider-neutral poll model: what a tracked cart is, what a poll of it observed, how
//! a request can fail, and what a provider's statuses mean. The decisions, the store, the
//! sweep and every provider speak these types; none of them knows another provider's.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::events::EventType;

/// The lifecycle of a tracked cart, stored in `carts.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CartState {
    /// Polled on its cadence.
    Tracking,
    /// Ordered; the OrderID is recorded and polling ended.
    Ordered,
    /// Reported not found too many times in a row; polling ended.
    NotFound,
    /// Reached the maximum age without an order, or its session ended; polling ended.
    Expired,
    /// Removed from tracking by the operator; kept for history.
    Untracked,
    /// A row whose id is malformed (typically inserted by hand); never sent upstream.
    Invalid,
}

impl CartState {
    /// Every state, for summaries.
    pub const ALL: [CartState; 6] = [
        CartState::Tracking,
        CartState::Ordered,
        CartState::NotFound,
        CartState::Expired,
        CartState::Untracked,
        CartState::Invalid,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CartState::Tracking => "tracking",
            CartState::Ordered => "ordered",
            CartState::NotFound => "not_found",
            CartState::Expired => "expired",
            CartState::Untracked => "untracked",
            CartState::Invalid => "invalid",
        }
    }

    /// Reads a stored name; `None` for anything else.
    pub fn parse(text: &str) -> Option<CartState> {
        CartState::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

impl std::fmt::Display for CartState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tracked cart, as the store holds it, read into typed values once at the store's edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Cart {
    /// Row key.
    pub key: i64,
    /// The cart's public id, canonical for its provider.
    pub cart_id: String,
    /// Which partner API (a provider's [`StatusModel::name`]).
    pub provider: String,
    /// The partner account the cart lives in (Titelive: the shop's domain code).
    pub account: String,
    /// The shop's reference.
    pub reference: Option<String>,
    /// Lifecycle state.
    pub state: CartState,
    /// Last status seen, canonical spelling.
    pub status: Option<String>,
    /// The status before `status`; `None` when `status` was the first seen.
    pub previous_status: Option<String>,
    /// More about the status (Titelive: which requirement is missing).
    pub status_detail: Option<String>,
    /// The OrderID, once ordered.
    pub order_id: Option<String>,
    /// The order's status, when the partner gave it.
    pub order_status: Option<String>,
    /// The order's total, exact decimal text, when the partner gave it.
    pub order_total: Option<String>,
    /// The partner's creation date as it was last sent.
    pub created_at_raw: Option<String>,
    /// The last plausible creation date the partner sent, without zone.
    pub created_at: Option<NaiveDateTime>,
    /// When the cart was registered.
    pub registered_at: DateTime<Utc>,
    /// When tracking last (re)started: registration, or `track` resuming a finished cart.
    pub tracked_since: DateTime<Utc>,
    /// Next poll; `None` for "never" (or "not checked yet" for a row inserted by hand).
    pub next_poll_at: Option<DateTime<Utc>>,
    /// Last poll that reached the partner.
    pub last_polled_at: Option<DateTime<Utc>>,
    /// When `status` last changed.
    pub status_changed_at: Option<DateTime<Utc>>,
    /// Failed polls in a row.
    pub consecutive_errors: u32,
    /// Not-found (or no-session) answers in a row.
    pub consecutive_not_found: u32,
    /// The last problem, for people.
    pub last_error: Option<String>,
    /// When the cart left `tracking`.
    pub finished_at: Option<DateTime<Utc>>,
}

/// What polling needs to ask the partner about one cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollTarget {
    /// Row key.
    pub key: i64,
    /// The public id.
    pub cart_id: String,
    /// The partner account (Titelive domain).
    pub account: String,
    /// What the request carries instead of the id, when that is a secret (Titelive's token).
    pub session_token: Option<String>,
}

/// One cart to register, its id already in its provider's canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackRequest {
    /// The provider's name.
    pub provider: String,
    /// The cart's public id.
    pub cart_id: String,
    /// What polling sends instead of the id, when that is a secret (Titelive's session token).
    pub session_token: Option<String>,
    /// The partner account (Titelive: the domain code); empty when the provider has none.
    pub account: String,
    /// The shop's reference, if any.
    pub reference: Option<String>,
}

/// What a poll observed about one cart, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The status, in the provider's canonical spelling (unknown values verbatim).
    pub status: String,
    /// Whether the provider documents this status.
    pub known_status: bool,
    /// More about the status, for people (Titelive: which requirement is missing).
    pub detail: Option<String>,
    /// The partner's order id, when the cart became an order.
    pub order_id: Option<String>,
    /// The order's status, when known.
    pub order_status: Option<String>,
    /// The order's total, as an exact decimal, when known.
    pub order_total: Option<String>,
    /// The creation date exactly as sent.
    pub created_at_raw: Option<String>,
    /// The creation date parsed (no zone).
    pub created_at: Option<NaiveDateTime>,
}

/// Longest status (or order status, total, date) kept from an answer; longer ones are cut.
pub const MAX_STATUS_CHARS: usize = 64;

/// Longest OrderID kept; the documents' OrderIDs are 36-character GUIDs.
pub const MAX_ORDER_ID_CHARS: usize = 100;

/// Longest status detail kept.
pub const MAX_DETAIL_CHARS: usize = 300;

impl Observation {
    /// The observation with every string the partner sent cut to a sensible length, so a
    /// broken or hostile answer cannot fill the database, the events or a terminal.
    pub fn bounded(&self) -> std::borrow::Cow<'_, Observation> {
        use crate::cart_id::fits;
        let fits_opt = |text: &Option<String>, max| text.as_deref().is_none_or(|text| fits(text, max));
        // Nearly every answer fits: it is used as it is, without a copy.
        if fits(&self.status, MAX_STATUS_CHARS)
            && fits_opt(&self.detail, MAX_DETAIL_CHARS)
            && fits_opt(&self.order_id, MAX_ORDER_ID_CHARS)
            && fits_opt(&self.order_status, MAX_STATUS_CHARS)
            && fits_opt(&self.order_total, MAX_STATUS_CHARS)
            && fits_opt(&self.created_at_raw, MAX_STATUS_CHARS)
        {
            return std::borrow::Cow::Borrowed(self);
        }
        let cut = |text: &Option<String>, max| text.as_deref().map(|text| crate::cart_id::shorten(text, max));
        std::borrow::Cow::Owned(Observation {
            status: crate::cart_id::shorten(&self.status, MAX_STATUS_CHARS),
            known_status: self.known_status,
            detail: cut(&self.detail, MAX_DETAIL_CHARS),
            order_id: cut(&self.order_id, MAX_ORDER_ID_CHARS),
            order_status: cut(&self.order_status, MAX_STATUS_CHARS),
            order_total: cut(&self.order_total, MAX_STATUS_CHARS),
            created_at_raw: cut(&self.created_at_raw, MAX_STATUS_CHARS),
            created_at: self.created_at,
        })
    }
}

/// What the partner said about one requested cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartReport {
    /// A status.
    Status(Observation),
    /// The partner does not know the cart (i.materialise per-cart 101).
    NotFound(String),
    /// Another per-cart error: code and message.
    Error(Option<i64>, String),
    /// An entry for the cart that made no sense.
    Malformed(String),
    /// The cart was requested but the answer did not mention it.
    Missing,
}

/// The answer to one batch, matched to the requested carts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReply {
    /// One report per requested cart, in request order, by cart id.
    pub reports: Vec<(String, CartReport)>,
    /// Cart ids in the answer that were not requested, as the answer wrote them.
    pub unexpected: Vec<String>,
    /// Requested carts the answer listed more than once (the most advanced entry was kept).
    pub duplicated: Vec<String>,
    /// Entries without a cart id.
    pub unidentified: usize,
}

impl BatchReply {
    /// A reply of exactly these reports, for clients that ask one cart per request.
    pub fn of(reports: Vec<(String, CartReport)>) -> BatchReply {
        BatchReply { reports, unexpected: Vec::new(), duplicated: Vec::new(), unidentified: 0 }
    }
}

/// Why a request to a partner API failed as a whole.
///
/// Which variants are retryable, and how, is decided by [`crate::policy`]; the comments say
/// what the policy does with each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// HTTP 401: wrong or empty apiCode. Pauses the whole upstream.
    #[error("the partner rejected the apiCode (HTTP 401)")]
    Unauthorized,
    /// HTTP 429, or 503 with `Retry-After`: wait at least that long.
    #[error("the partner is throttling requests (HTTP {status}{})", retry_after_text(*.retry_after))]
    Throttled {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` delay, if given.
        retry_after: Option<Duration>,
    },
    /// Any other non-success HTTP status. Transient.
    #[error("the partner answered HTTP {status}")]
    Http {
        /// The HTTP status.
        status: u16,
    },
    /// No complete answer within the request timeout. Transient.
    #[error("the request timed out")]
    Timeout,
    /// The connection could not be made or broke. Transient.
    #[error("cannot reach the partner: {0}")]
    Connection(String),
    /// The response body exceeded the configured limit. Transient.
    #[error("the response is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The body could not be decoded. Transient.
    #[error("cannot decode the response: {0}")]
    Decode(String),
    /// The API answered with a general error object. Code 1 is transient, 501 splits the
    /// batch, 102 halves the batch size.
    #[error("the partner reported error {}: {message}", code.map_or("without a code".to_owned(), |c| c.to_string()))]
    Api {
        /// The documented code.
        code: Option<i64>,
        /// The message as sent.
        message: String,
    },
}

fn retry_after_text(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(delay) => format!(", retry after {}", humantime::format_duration(delay)),
        None => String::new(),
    }
}

impl UpstreamError {
    /// A short stable label for metrics and the database: `auth`, `throttled`, `http_5xx`...
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Unauthorized => "auth",
            UpstreamError::Throttled { .. } => "throttled",
            UpstreamError::Http { status } if *status >= 500 => "http_5xx",
            UpstreamError::Http { .. } => "http_4xx",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Connection(_) => "connection",
            UpstreamError::TooLarge { .. } => "too_large",
            UpstreamError::Decode(_) => "decode",
            UpstreamError::Api { .. } => "api_error",
        }
    }

    /// The error a transport failure of the shared HTTP plumbing means for a partner request.
    pub fn from_net(error: crate::net::NetError) -> UpstreamError {
        match error {
            crate::net::NetError::Timeout => UpstreamError::Timeout,
            crate::net::NetError::Connection(message) => UpstreamError::Connection(message),
            crate::net::NetError::TooLarge { limit } => UpstreamError::TooLarge { limit },
        }
    }
}

/// How reaching a status ends polling, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Polling goes on.
    Continue,
    /// The cart became an order.
    Ordered,
    /// The cart can no longer be followed (a dead session); believed only when repeated.
    Expired,
}

/// What a provider's statuses mean: the part of a provider the decisions need.
pub trait StatusModel: Send + Sync + std::fmt::Debug {
    /// The provider's name, stored with its carts and sent in events.
    fn name(&self) -> &'static str;

    /// Position of a status along the normal flow, to tell a step back; `None` when the
    /// status is not on it.
    fn rank(&self, status: &str) -> Option<u8>;

    /// The event reaching `status` announces (moving backwards aside), if any.
    fn announces(&self, status: &str) -> Option<EventType>;

    /// Whether reaching `status` ends polling, and how.
    fn ending(&self, status: &str) -> Ending;

    /// Whether a cart in `status` is polled at the fastest tier whatever its age, because an
    /// order is near.
    fn order_is_near(&self, status: &str) -> bool;

    /// Whether an order always comes with its id on this provider, so that an "ordered"
    /// answer without one means the id is still to come.
    fn orders_carry_an_id(&self) -> bool;

    /// The event a status change announces, if any. `from` is `None` for a first sighting.
    /// A step back that does not end polling is `cart.reopened`.
    fn transition_event(&self, from: Option<&str>, to: &str) -> Option<EventType> {
        if let (Some(from_rank), Some(to_rank)) = (from.and_then(|from| self.rank(from)), self.rank(to))
            && to_rank < from_rank
            && self.ending(to) == Ending::Continue
        {
            return Some(EventType::CartReopened);
        }
        self.announces(to)
    }
}
