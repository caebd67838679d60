//! The heart of cartwatch: given a cart as stored and what the partner just said about it,
//! decide the cart's new row, the transition to record and the events to announce.
//!
//! A pure function, called by the store inside the transaction that writes its result, with
//! the row as it is at that moment (not as it was when the sweep read it).

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::cart_id::shorten;
use crate::config::CadenceConfig;
use crate::events::{CartEventData, EventType};
use crate::policy::{Exponential, poll_interval, spread};
use crate::provider::{CartReport, Ending, Provider};
use crate::time::{add, format_naive, format_ts, parse_ts};

/// The lifecycle of a tracked cart, stored in `carts.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartState {
    /// Polled on its cadence.
    Tracking,
    /// Ordered; the OrderID is recorded and polling ended.
    Ordered,
    /// Reported not found too many times in a row; polling ended.
    NotFound,
    /// Reached the maximum age without an order; polling ended.
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

    /// Reads a stored name; `None` for anything a person may have typed by hand.
    pub fn parse(text: &str) -> Option<CartState> {
        CartState::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// A cart row as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct CartRow {
    /// Row key.
    pub key: i64,
    /// Canonical cart id.
    pub cart_id: String,
    /// Which partner API.
    pub provider: String,
    /// The partner account the cart lives in (Titelive: the shop's domain code).
    pub account: String,
    /// The shop's reference.
    pub reference: Option<String>,
    /// Lifecycle state as stored (text, since hand edits may hold anything).
    pub state: String,
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
    /// The partner's creation date, parsed, without zone.
    pub cart_created_at: Option<String>,
    /// The partner's creation date as written.
    pub cart_created_at_raw: Option<String>,
    /// When the cart was registered.
    pub registered_at: String,
    /// When tracking last (re)started: registration, or `track` resuming a finished cart.
    pub tracked_since: String,
    /// Next poll, stored form; `None` for "never".
    pub next_poll_at: Option<String>,
    /// Last poll that reached the partner.
    pub last_polled_at: Option<String>,
    /// When `status` last changed.
    pub status_changed_at: Option<String>,
    /// Failed polls in a row.
    pub consecutive_errors: u32,
    /// Not-found answers in a row.
    pub consecutive_not_found: u32,
    /// The last problem, for people.
    pub last_error: Option<String>,
    /// When the cart left `tracking`.
    pub finished_at: Option<String>,
}

/// What happened to a cart in one poll, as the sweep saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum PollOutcome {
    /// The partner answered about this cart.
    Report(CartReport),
    /// The request carrying this cart failed as a whole (after any splitting).
    Failed(String),
}

/// Everything `decide` needs besides the row and the outcome.
#[derive(Debug, Clone)]
pub struct Context {
    /// The time of the decision.
    pub now: DateTime<Utc>,
    /// Polling cadence.
    pub cadence: CadenceConfig,
    /// Backoff for per-cart failures.
    pub retry: Exponential,
    /// Not-found answers in a row before giving up.
    pub not_found_after: u32,
    /// Event types to write.
    pub emit: BTreeSet<EventType>,
}

impl Context {
    /// The context the config describes, at `now`.
    pub fn from_config(config: &crate::config::Config, now: DateTime<Utc>) -> Context {
        Context {
            now,
            cadence: config.cadence.clone(),
            retry: crate::policy::transient_backoff(&config.backoff),
            not_found_after: config.backoff.not_found_after,
            emit: config.emitted_event_types(),
        }
    }
}

/// A status change to record in `cart_transitions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Status before; `None` when the cart had never been seen.
    pub from: Option<String>,
    /// Status after.
    pub to: String,
}

/// The outcome of `decide`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The row to write.
    pub row: CartRow,
    /// The status change, if any.
    pub transition: Option<Transition>,
    /// Events to write (already filtered by the configured set), with their data.
    pub events: Vec<(EventType, CartEventData)>,
    /// A status value the document does not list, worth a log line.
    pub unknown_status: Option<String>,
}

/// Decides what a poll outcome means for a cart. `unit` is a uniform sample in `[0, 1)` used
/// to jitter the next poll time. Returns `None` when the cart is no longer tracked, in which
/// case nothing must be written.
///
/// The partner's answers are evidence, not truth: no single answer ends the tracking of a
/// cart or loses its OrderID. A creation date that cannot be right is kept as sent but not
/// used; expiry needs two polls past the deadline; "ordered" without an OrderID keeps the
/// cart polled until the OrderID comes; a lost session must be reported several times in a
/// row; an order is never undone by a later, staler answer.
pub fn decide(row: &CartRow, outcome: &PollOutcome, context: &Context, unit: f64) -> Option<Decision> {
    if CartState::parse(&row.state) != Some(CartState::Tracking) {
        return None;
    }
    let now = context.now;
    let mut next = row.clone();
    let mut transition = None;
    let mut unknown_status = None;
    let mut event_types = Vec::new();
    let provider = Provider::parse(&row.provider).unwrap_or(Provider::Imaterialise);
    let previous_poll = row.last_polled_at.as_deref();
    match outcome {
        PollOutcome::Report(CartReport::Status(observed)) => {
            let observed = observed.bounded();
            next.last_polled_at = Some(format_ts(now));
            next.consecutive_errors = 0;
            next.last_error = None;
            next.status_detail = observed.detail.clone();
            if observed.created_at_raw.is_some() {
                next.cart_created_at_raw = observed.created_at_raw.clone();
                // Only a plausible date replaces the one kept for cadence and expiry.
                if let Some(created) = observed.created_at.filter(|created| plausible_creation(*created, row, context))
                {
                    next.cart_created_at = Some(format_naive(created));
                }
            }
            if !observed.known_status {
                unknown_status = Some(observed.status.clone());
            }
            let was_ordered = row.status.as_deref().is_some_and(|status| provider.ending(status) == Ending::Ordered);
            let ending = provider.ending(&observed.status);
            if was_ordered && ending != Ending::Ordered {
                // Only a cart still waiting for its OrderID is polled after Ordered. An order
                // cannot be undone, so an earlier status now is a stale answer.
                next.last_error = Some(format!(
                    "the partner answered {} after Ordered; an order cannot be undone, so it stays Ordered",
                    observed.status
                ));
                await_order_id(&mut next, previous_poll, context, unit, &mut event_types);
            } else if ending == Ending::Expired {
                session_gone(&mut next, &observed.status, context, unit, &mut transition, &mut event_types);
            } else {
                next.consecutive_not_found = 0;
                if row.status.as_deref() != Some(observed.status.as_str()) {
                    if let Some(event_type) = provider.transition_event(row.status.as_deref(), &observed.status) {
                        event_types.push(event_type);
                    }
                    transition = Some(Transition { from: row.status.clone(), to: observed.status.clone() });
                    next.previous_status = row.status.clone();
                    next.status = Some(observed.status.clone());
                    next.status_changed_at = Some(format_ts(now));
                }
                if ending == Ending::Ordered {
                    next.order_id = observed.order_id.clone().or(next.order_id);
                    next.order_status = observed.order_status.clone().or(next.order_status);
                    next.order_total = observed.order_total.clone().or(next.order_total);
                    if next.order_id.is_some() || !provider.orders_carry_an_id() {
                        finish(&mut next, CartState::Ordered, now);
                        if was_ordered {
                            // The OrderID arrived after the status: this is the announcement.
                            event_types.push(EventType::CartOrdered);
                        }
                    } else {
                        // No OrderID yet: the order is announced when it arrives, so that
                        // every cart.ordered carries one.
                        event_types.retain(|event_type| *event_type != EventType::CartOrdered);
                        next.status_detail = Some(AWAITING_ORDER_ID.into());
                        await_order_id(&mut next, previous_poll, context, unit, &mut event_types);
                    }
                } else {
                    schedule_or_expire(&mut next, previous_poll, provider, context, unit, &mut event_types);
                }
            }
        }
        PollOutcome::Report(CartReport::NotFound(message)) => {
            next.last_polled_at = Some(format_ts(now));
            next.consecutive_not_found = next.consecutive_not_found.saturating_add(1);
            next.last_error = Some(format!("partner error 101: {}", shorten(message, MAX_MESSAGE_CHARS)));
            if next.consecutive_not_found >= context.not_found_after {
                finish(&mut next, CartState::NotFound, now);
                event_types.push(EventType::CartNotFound);
            } else {
                schedule_or_expire(&mut next, previous_poll, provider, context, unit, &mut event_types);
            }
        }
        PollOutcome::Report(CartReport::Error(code, message)) => {
            let code = code.map_or("without a code".to_owned(), |code| code.to_string());
            let message = shorten(message, MAX_MESSAGE_CHARS);
            retry_later(&mut next, format!("partner error {code}: {message}"), context, unit);
        }
        PollOutcome::Report(CartReport::Malformed(reason)) => {
            let reason = shorten(reason, MAX_MESSAGE_CHARS);
            retry_later(&mut next, format!("unreadable entry: {reason}"), context, unit);
        }
        PollOutcome::Report(CartReport::Missing) => {
            retry_later(&mut next, "the partner's answer did not mention this cart".into(), context, unit);
        }
        PollOutcome::Failed(message) => retry_later(&mut next, shorten(message, MAX_MESSAGE_CHARS), context, unit),
    }
    event_types.retain(|event_type| context.emit.contains(event_type));
    // Most polls announce nothing; the event data is built only for those that do.
    let events = if event_types.is_empty() {
        Vec::new()
    } else {
        let previous = if transition.is_some() { row.status.clone() } else { next.previous_status.clone() };
        let data = event_data(&next, previous);
        event_types.into_iter().map(|event_type| (event_type, data.clone())).collect()
    };
    Some(Decision { row: next, transition, events, unknown_status })
}

/// What `status_detail` says while an ordered cart waits for its OrderID.
pub const AWAITING_ORDER_ID: &str = "ordered; waiting for the partner to send the OrderID";

/// Longest partner message kept in `last_error`.
const MAX_MESSAGE_CHARS: usize = 300;

/// Builds the event data for a cart row.
pub fn event_data(row: &CartRow, previous_status: Option<String>) -> CartEventData {
    CartEventData {
        cart_id: row.cart_id.clone(),
        status: row.status.clone(),
        previous_status,
        order_id: row.order_id.clone(),
        cart_created_at: row.cart_created_at_raw.clone(),
        reference: row.reference.clone(),
        provider: row.provider.clone(),
    }
}

fn finish(row: &mut CartRow, state: CartState, now: DateTime<Utc>) {
    row.state = state.as_str().to_owned();
    row.next_poll_at = None;
    row.finished_at = Some(format_ts(now));
}

/// The earliest creation date believed: carts were not made with these APIs before 2000.
fn earliest_plausible() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default().and_hms_opt(0, 0, 0).unwrap_or_default()
}

/// Whether a creation date the partner sent can be right: not before 2000 (an unset .NET
/// `DateTime` is `0001-01-01`), not more than a day in the future, and not older than the
/// start of tracking by more than the maximum age (a cart that old would have been expired
/// before it was registered). Dates have no zone and are read as UTC.
pub fn plausible_creation(created: NaiveDateTime, row: &CartRow, context: &Context) -> bool {
    let created = created.and_utc();
    let tracked_since = parse_ts(&row.tracked_since).unwrap_or(context.now);
    created.naive_utc() >= earliest_plausible()
        && created <= context.now + chrono::Duration::days(1)
        && created >= tracked_since - crate::time::to_chrono(context.cadence.max_age)
}

/// The age of a cart for its cadence: from the partner's creation date if it is plausible,
/// else from the start of tracking.
pub fn cart_age(row: &CartRow, context: &Context) -> Duration {
    let tracked_since = parse_ts(&row.tracked_since).unwrap_or(context.now);
    let created = stored_creation(row, context).unwrap_or(tracked_since);
    (context.now - created).to_std().unwrap_or(Duration::ZERO)
}

/// The stored creation date, if it is plausible.
fn stored_creation(row: &CartRow, context: &Context) -> Option<DateTime<Utc>> {
    let created = crate::time::parse_naive(row.cart_created_at.as_deref()?)?;
    plausible_creation(created, row, context).then(|| created.and_utc())
}

/// When a cart that is not ordered expires: the maximum age after the later of the start of
/// tracking and its plausible creation date.
pub fn expires_at(row: &CartRow, context: &Context) -> DateTime<Utc> {
    let tracked_since = parse_ts(&row.tracked_since).unwrap_or(context.now);
    let anchor = stored_creation(row, context).map_or(tracked_since, |created| created.max(tracked_since));
    add(anchor, context.cadence.max_age)
}

/// Whether the cart has consistent evidence of being past its maximum age: this poll and the
/// one before it both came after the deadline.
fn past_max_age(row: &CartRow, previous_poll: Option<&str>, context: &Context) -> bool {
    let deadline = expires_at(row, context);
    context.now >= deadline && previous_poll.and_then(parse_ts).is_some_and(|previous| previous >= deadline)
}

/// Schedules the next poll by the cart's age and status, or expires the cart. `previous_poll`
/// is when it was polled before this answer.
fn schedule_or_expire(
    row: &mut CartRow,
    previous_poll: Option<&str>,
    provider: Provider,
    context: &Context,
    unit: f64,
    event_types: &mut Vec<EventType>,
) {
    if past_max_age(row, previous_poll, context) {
        finish(row, CartState::Expired, context.now);
        event_types.push(EventType::CartExpired);
        return;
    }
    let order_is_near = row.status.as_deref().is_some_and(|status| provider.order_is_near(status));
    let interval = poll_interval(&context.cadence, cart_age(row, context), order_is_near);
    let delay = spread(interval, context.cadence.jitter, unit);
    row.next_poll_at = Some(format_ts(add(context.now, delay)));
}

/// A cart the partner calls ordered but without its OrderID: polled as closely as a
/// checked-out one until the OrderID arrives. Should the maximum age pass first, the order is
/// announced without it rather than not at all.
fn await_order_id(
    row: &mut CartRow,
    previous_poll: Option<&str>,
    context: &Context,
    unit: f64,
    event_types: &mut Vec<EventType>,
) {
    if past_max_age(row, previous_poll, context) {
        tracing::error!(cart_id = %row.cart_id, "the partner never sent this order's OrderID; announcing the order without it");
        row.status_detail = Some("ordered; the partner never sent the OrderID".into());
        finish(row, CartState::Ordered, context.now);
        event_types.push(EventType::CartOrdered);
        return;
    }
    let delay = spread(context.cadence.checked_out_every, context.cadence.jitter, unit);
    row.next_poll_at = Some(format_ts(add(context.now, delay)));
}

/// The partner says the cart's session is gone. Believed only after `not_found_after`
/// answers in a row; until then the status stays as it was.
fn session_gone(
    row: &mut CartRow,
    status: &str,
    context: &Context,
    unit: f64,
    transition: &mut Option<Transition>,
    event_types: &mut Vec<EventType>,
) {
    row.consecutive_not_found = row.consecutive_not_found.saturating_add(1);
    if row.consecutive_not_found < context.not_found_after {
        row.last_error = Some(format!(
            "the partner reports {status} ({} of {} answers in a row before tracking ends)",
            row.consecutive_not_found, context.not_found_after
        ));
        let delay = spread(context.cadence.checked_out_every, context.cadence.jitter, unit);
        row.next_poll_at = Some(format_ts(add(context.now, delay)));
        return;
    }
    if row.status.as_deref() != Some(status) {
        *transition = Some(Transition { from: row.status.clone(), to: status.to_owned() });
        row.previous_status = row.status.replace(status.to_owned());
        row.status_changed_at = Some(format_ts(context.now));
    }
    finish(row, CartState::Expired, context.now);
    event_types.push(EventType::CartSessionExpired);
}

fn retry_later(row: &mut CartRow, message: String, context: &Context, unit: f64) {
    let attempt = row.consecutive_errors;
    row.consecutive_errors = row.consecutive_errors.saturating_add(1);
    row.last_error = Some(message);
    let delay = context.retry.full_jitter(attempt, unit).max(Duration::from_secs(1));
    row.next_poll_at = Some(format_ts(add(context.now, delay)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::provider::Observation;
    use crate::status::CartStatus;
    use chrono::TimeZone;

    fn context() -> Context {
        let config = Config::default();
        Context {
            now: Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap(),
            cadence: config.cadence.clone(),
            retry: crate::policy::transient_backoff(&config.backoff),
            not_found_after: 3,
            emit: config.emitted_event_types(),
        }
    }

    fn row(status: Option<&str>) -> CartRow {
        CartRow {
            key: 1,
            cart_id: "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".into(),
            provider: "imaterialise".into(),
            account: String::new(),
            reference: Some("order-form-17".into()),
            state: "tracking".into(),
            status: status.map(str::to_owned),
            previous_status: None,
            status_detail: None,
            order_id: None,
            order_status: None,
            order_total: None,
            cart_created_at: None,
            cart_created_at_raw: None,
            registered_at: "2026-11-25T07:30:00.000Z".into(),
            tracked_since: "2026-11-25T07:30:00.000Z".into(),
            next_poll_at: Some("2026-11-25T08:00:00.000Z".into()),
            last_polled_at: None,
            status_changed_at: None,
            consecutive_errors: 0,
            consecutive_not_found: 0,
            last_error: None,
            finished_at: None,
        }
    }

    fn reported(status: &str, order_id: Option<&str>) -> PollOutcome {
        let parsed = CartStatus::parse(status);
        PollOutcome::Report(CartReport::Status(Observation {
            known_status: !matches!(parsed, CartStatus::Other(_)),
            status: parsed.as_str().to_owned(),
            order_id: order_id.map(str::to_owned),
            created_at_raw: Some("2026-11-25T07:00:00".into()),
            created_at: crate::time::parse_naive("2026-11-25T07:00:00"),
            ..Observation::default()
        }))
    }

    fn event_types(decision: &Decision) -> Vec<EventType> {
        decision.events.iter().map(|(event_type, _)| *event_type).collect()
    }

    #[test]
    fn first_sighting_as_ordered_still_announces_the_order() {
        let decision =
            decide(&row(None), &reported("Ordered", Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c")), &context(), 0.5)
                .unwrap();
        assert_eq!(event_types(&decision), [EventType::CartOrdered]);
        assert_eq!(decision.transition, Some(Transition { from: None, to: "Ordered".into() }));
        assert_eq!(decision.row.state, "ordered");
        assert_eq!(decision.row.next_poll_at, None);
        assert_eq!(decision.row.order_id.as_deref(), Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c"));
        let data = &decision.events[0].1;
        assert_eq!(data.reference.as_deref(), Some("order-form-17"));
        assert_eq!(data.cart_created_at.as_deref(), Some("2026-11-25T07:00:00"));
    }

    #[test]
    fn checked_out_is_announced_and_polled_at_the_fastest_tier() {
        let decision = decide(&row(Some("Pending")), &reported("Checked Out", None), &context(), 0.5).unwrap();
        assert_eq!(event_types(&decision), [EventType::CartCheckedOut]);
        assert_eq!(decision.row.next_poll_at.as_deref(), Some("2026-11-25T08:01:00.000Z"));
    }

    #[test]
    fn unchanged_status_records_nothing() {
        let decision = decide(&row(Some("Pending")), &reported("pending", None), &context(), 0.5).unwrap();
        assert_eq!(decision.transition, None);
        assert!(decision.events.is_empty());
    }

    #[test]
    fn pending_and_reopened_are_recorded_but_not_emitted_by_default() {
        let decision = decide(&row(Some("CheckedOut")), &reported("Pending", None), &context(), 0.5).unwrap();
        assert!(decision.transition.is_some());
        assert!(decision.events.is_empty());
        let mut context = context();
        context.emit.insert(EventType::CartReopened);
        let decision = decide(&row(Some("CheckedOut")), &reported("Pending", None), &context, 0.5).unwrap();
        assert_eq!(event_types(&decision), [EventType::CartReopened]);
    }

    #[test]
    fn unknown_status_is_kept_verbatim_and_flagged() {
        let decision = decide(&row(Some("Pending")), &reported("On Hold", None), &context(), 0.5).unwrap();
        assert_eq!(decision.row.status.as_deref(), Some("On Hold"));
        assert_eq!(decision.unknown_status.as_deref(), Some("On Hold"));
        assert_eq!(decision.row.state, "tracking");
    }

    #[test]
    fn not_found_after_n_in_a_row() {
        let context = context();
        let not_found =
            PollOutcome::Report(CartReport::NotFound("Specified Cart was not found or wrong format.".into()));
        let mut current = row(None);
        for _ in 0..2 {
            current = decide(&current, &not_found, &context, 0.5).unwrap().row;
            assert_eq!(current.state, "tracking");
        }
        let decision = decide(&current, &not_found, &context, 0.5).unwrap();
        assert_eq!(decision.row.state, "not_found");
        assert_eq!(event_types(&decision), [EventType::CartNotFound]);
        // A status in between resets the count.
        let mut current = row(None);
        current.consecutive_not_found = 2;
        current = decide(&current, &reported("Pending", None), &context, 0.5).unwrap().row;
        assert_eq!(current.consecutive_not_found, 0);
    }

    #[test]
    fn failures_back_off_per_cart() {
        let context = context();
        let mut current = row(Some("Pending"));
        current.consecutive_errors = 3;
        let decision = decide(&current, &PollOutcome::Failed("the request timed out".into()), &context, 0.5).unwrap();
        assert_eq!(decision.row.consecutive_errors, 4);
        // attempt 3: ceiling 40 s, half of it with unit 0.5
        assert_eq!(decision.row.next_poll_at.as_deref(), Some("2026-11-25T08:00:20.000Z"));
        assert_eq!(decision.row.last_error.as_deref(), Some("the request timed out"));
        assert!(decision.events.is_empty());
    }

    fn with_created(outcome: PollOutcome, raw: Option<&str>) -> PollOutcome {
        let PollOutcome::Report(CartReport::Status(mut observed)) = outcome else { return outcome };
        observed.created_at_raw = raw.map(str::to_owned);
        observed.created_at = raw.and_then(crate::time::parse_naive);
        PollOutcome::Report(CartReport::Status(observed))
    }

    fn at(context: &Context, seconds: i64) -> Context {
        Context { now: context.now + chrono::Duration::seconds(seconds), ..context.clone() }
    }

    #[test]
    fn expiry_needs_two_polls_past_the_deadline_counted_from_tracking() {
        let mut context = context();
        context.cadence.max_age = Duration::from_secs(3600);
        let outcome = with_created(reported("Pending", None), None);
        // Tracked at 07:30; the deadline is 08:30.
        let mut current = row(Some("Pending"));
        current.registered_at = "2026-10-01T00:00:00.000Z".into();
        current = decide(&current, &outcome, &at(&context, 29 * 60), 0.5).unwrap().row;
        assert_eq!(current.state, "tracking", "before the deadline");
        current = decide(&current, &outcome, &at(&context, 31 * 60), 0.5).unwrap().row;
        assert_eq!(current.state, "tracking", "the first poll past the deadline is not enough");
        let decision = decide(&current, &outcome, &at(&context, 36 * 60), 0.5).unwrap();
        assert_eq!(decision.row.state, "expired");
        assert_eq!(event_types(&decision), [EventType::CartExpired]);
    }

    #[test]
    fn creation_dates_that_cannot_be_right_are_kept_but_not_used() {
        let mut context = context();
        context.cadence.max_age = Duration::from_secs(3600);
        for raw in ["0001-01-01T00:00:00", "1900-01-01T00:00:00", "2026-11-28T08:00:00", "2026-10-01T00:00:00"] {
            let outcome = with_created(reported("Pending", None), Some(raw));
            let mut current = row(Some("Pending"));
            for minutes in [1, 2, 3] {
                current = decide(&current, &outcome, &at(&context, minutes * 60), 0.5).unwrap().row;
            }
            assert_eq!(current.state, "tracking", "{raw}");
            assert_eq!(current.cart_created_at_raw.as_deref(), Some(raw), "kept as sent");
            assert_eq!(current.cart_created_at, None, "{raw} is not used");
            // Young by its tracking time: polled every minute.
            assert_eq!(current.next_poll_at.as_deref(), Some("2026-11-25T08:04:00.000Z"), "{raw}");
        }
        // A plausible date older than tracking drives the cadence and the expiry.
        let outcome = with_created(reported("Pending", None), Some("2026-11-25T06:00:00"));
        let decision = decide(&row(Some("Pending")), &outcome, &self::context(), 0.5).unwrap();
        assert_eq!(decision.row.cart_created_at.as_deref(), Some("2026-11-25T06:00:00.000"));
        assert_eq!(decision.row.next_poll_at.as_deref(), Some("2026-11-25T08:05:00.000Z"), "two hours old");
    }

    #[test]
    fn a_titelive_cart_with_the_documents_own_date_does_not_expire() {
        let mut context = context();
        context.cadence.max_age = Duration::from_secs(24 * 3600);
        let titelive = CartRow { provider: "titelive".into(), ..row(Some("NoPaymentMethod")) };
        let outcome = PollOutcome::Report(CartReport::Status(Observation {
            status: "NoPaymentMethod".into(),
            known_status: true,
            created_at_raw: Some("2016-03-03 11:39:45".into()),
            created_at: crate::time::parse_naive("2016-03-03 11:39:45"),
            ..Observation::default()
        }));
        let mut current = titelive;
        for minutes in [1, 2, 3] {
            current = decide(&current, &outcome, &at(&context, minutes * 60), 0.5).unwrap().row;
        }
        assert_eq!(current.state, "tracking");
        assert_eq!(current.cart_created_at_raw.as_deref(), Some("2016-03-03 11:39:45"));
    }

    #[test]
    fn ordered_without_an_order_id_is_polled_until_the_id_comes_and_announced_then() {
        let context = context();
        let waiting = decide(&row(Some("CheckedOut")), &reported("Ordered", None), &context, 0.5).unwrap();
        assert_eq!(waiting.row.state, "tracking");
        assert_eq!(waiting.row.status.as_deref(), Some("Ordered"));
        assert_eq!(waiting.row.status_detail.as_deref(), Some(AWAITING_ORDER_ID));
        assert_eq!(waiting.transition, Some(Transition { from: Some("CheckedOut".into()), to: "Ordered".into() }));
        assert!(waiting.events.is_empty(), "no cart.ordered without an OrderID");
        assert_eq!(waiting.row.next_poll_at.as_deref(), Some("2026-11-25T08:01:00.000Z"), "polled closely");

        // A stale answer cannot undo the order.
        let stale = decide(&waiting.row, &reported("CheckedOut", None), &at(&context, 60), 0.5).unwrap();
        assert_eq!((stale.row.status.as_deref(), stale.transition.as_ref()), (Some("Ordered"), None));
        assert!(stale.row.last_error.as_deref().unwrap().contains("cannot be undone"));
        assert!(stale.events.is_empty());

        let order_id = "7cf9f78f-6631-44be-905a-94cee7a2cd9c";
        let found = decide(&stale.row, &reported("Ordered", Some(order_id)), &at(&context, 120), 0.5).unwrap();
        assert_eq!(found.row.state, "ordered");
        assert_eq!(found.transition, None);
        assert_eq!(event_types(&found), [EventType::CartOrdered]);
        let data = &found.events[0].1;
        assert_eq!(data.order_id.as_deref(), Some(order_id));
        assert_eq!(data.previous_status.as_deref(), Some("CheckedOut"), "the status before Ordered");
    }

    #[test]
    fn partner_strings_are_bounded() {
        let long = "x".repeat(200_000);
        let decision = decide(&row(Some("Pending")), &reported(&long, Some(&long)), &context(), 0.5).unwrap();
        assert!(decision.row.status.as_deref().unwrap().chars().count() <= crate::provider::MAX_STATUS_CHARS + 1);
        let decision =
            decide(&row(None), &PollOutcome::Report(CartReport::Error(Some(7), long.clone())), &context(), 0.5)
                .unwrap();
        assert!(decision.row.last_error.unwrap().len() < 1000);
    }

    #[test]
    fn titelive_statuses_announce_ready_ordered_and_session_expired() {
        let titelive = |status: Option<&str>| CartRow { provider: "titelive".into(), ..row(status) };
        let observed = |status: &str| {
            PollOutcome::Report(CartReport::Status(Observation {
                status: status.into(),
                known_status: true,
                ..Observation::default()
            }))
        };
        let decision = decide(&titelive(Some("NoPaymentMethod")), &observed("Valid"), &context(), 0.5).unwrap();
        assert_eq!(event_types(&decision), [EventType::CartReady]);
        assert_eq!(
            decision.row.next_poll_at.as_deref(),
            Some("2026-11-25T08:01:00.000Z"),
            "a valid cart is polled fast"
        );
        let decision = decide(&titelive(Some("Valid")), &observed("Ordered"), &context(), 0.5).unwrap();
        assert_eq!((event_types(&decision), decision.row.state.as_str()), (vec![EventType::CartOrdered], "ordered"));
        // A lost session is believed after `not_found_after` answers in a row.
        let mut current = titelive(Some("Valid"));
        for _ in 1..context().not_found_after {
            let decision = decide(&current, &observed("NoSession"), &context(), 0.5).unwrap();
            assert_eq!((decision.row.state.as_str(), decision.transition.as_ref()), ("tracking", None));
            assert!(decision.events.is_empty());
            current = decision.row;
        }
        let decision = decide(&current, &observed("NoSession"), &context(), 0.5).unwrap();
        assert_eq!(
            (event_types(&decision), decision.row.state.as_str()),
            (vec![EventType::CartSessionExpired], "expired")
        );
        assert_eq!(decision.row.status.as_deref(), Some("NoSession"));
        let decision = decide(&titelive(None), &observed("NoProducts"), &context(), 0.5).unwrap();
        assert!(decision.events.is_empty(), "a missing requirement is recorded, not announced");
        assert!(decision.transition.is_some());
    }

    #[test]
    fn carts_no_longer_tracked_are_left_alone() {
        let mut current = row(Some("Pending"));
        current.state = "untracked".into();
        assert_eq!(decide(&current, &reported("Ordered", None), &context(), 0.5), None);
    }
}
