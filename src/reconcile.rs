//! The heart of cartwatch: given a cart as stored and what the partner just said about it,
//! decide the cart's new record, the transition to record and the events to announce.
//!
//! A pure function, called by the store inside the transaction that writes its result, with
//! the cart as it is at that moment (not as it was when the sweep read it). What the
//! provider's statuses mean comes in the [`Context`], as its [`StatusModel`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use crate::cart_id::shorten;
use crate::events::{CartEventData, EventType};
use crate::model::{Cart, CartReport, CartState, Ending, StatusModel};
use crate::plan::{Plan, Situation};
use crate::policy::{BackoffConfig, CadenceConfig, Exponential, spread};
use crate::time::add;

/// What happened to a cart in one poll, as the sweep saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum PollOutcome {
    /// The partner answered about this cart.
    Report(CartReport),
    /// The request carrying this cart failed as a whole (after any splitting).
    Failed(String),
}

/// What the config says about decisions, whichever the provider.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Polling cadence.
    pub cadence: CadenceConfig,
    /// Backoff for per-cart failures.
    pub retry: Exponential,
    /// Not-found answers in a row before giving up.
    pub not_found_after: u32,
    /// Event types to write.
    pub emit: BTreeSet<EventType>,
    /// How long until each cart is polled again: the `[cadence]` tiers until the daemon
    /// replaces it with a plan sized from the recorded history.
    pub plan: Plan,
}

impl Rules {
    /// The rules these settings make.
    pub fn new(cadence: &CadenceConfig, backoff: &BackoffConfig, emit: BTreeSet<EventType>) -> Rules {
        Rules {
            cadence: cadence.clone(),
            retry: crate::policy::transient_backoff(backoff),
            not_found_after: backoff.not_found_after,
            emit,
            plan: Plan::Tiers(cadence.clone()),
        }
    }

    /// The same rules following `plan`.
    pub fn with_plan(&self, plan: Plan) -> Rules {
        Rules { plan, ..self.clone() }
    }
}

/// Everything `decide` needs besides the cart and the outcome.
#[derive(Debug, Clone)]
pub struct Context {
    /// The time of the decision.
    pub now: DateTime<Utc>,
    /// The rules from the config.
    pub rules: Arc<Rules>,
    /// What the cart's provider's statuses mean.
    pub model: Arc<dyn StatusModel>,
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
    /// The cart to write.
    pub cart: Cart,
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
pub fn decide(cart: &Cart, outcome: &PollOutcome, context: &Context, unit: f64) -> Option<Decision> {
    if cart.state != CartState::Tracking {
        return None;
    }
    let now = context.now;
    let model = context.model.as_ref();
    let rules = context.rules.as_ref();
    let mut next = cart.clone();
    let mut transition = None;
    let mut unknown_status = None;
    let mut event_types = Vec::new();
    let previous_poll = cart.last_polled_at;
    match outcome {
        PollOutcome::Report(CartReport::Status(observed)) => {
            let observed = observed.bounded();
            next.last_polled_at = Some(now);
            next.consecutive_errors = 0;
            next.last_error = None;
            next.status_detail = observed.detail.clone();
            if observed.created_at_raw.is_some() {
                next.created_at_raw = observed.created_at_raw.clone();
                // Only a plausible date replaces the one kept for cadence and expiry.
                if let Some(created) = observed.created_at.filter(|created| plausible_creation(*created, cart, context))
                {
                    next.created_at = Some(created);
                }
            }
            if !observed.known_status {
                unknown_status = Some(observed.status.clone());
            }
            let was_ordered = cart.status.as_deref().is_some_and(|status| model.ending(status) == Ending::Ordered);
            let ending = model.ending(&observed.status);
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
                if cart.status.as_deref() != Some(observed.status.as_str()) {
                    if let Some(event_type) = model.transition_event(cart.status.as_deref(), &observed.status) {
                        event_types.push(event_type);
                    }
                    transition = Some(Transition { from: cart.status.clone(), to: observed.status.clone() });
                    next.previous_status = cart.status.clone();
                    next.status = Some(observed.status.clone());
                    next.status_changed_at = Some(now);
                }
                if ending == Ending::Ordered {
                    next.order_id = observed.order_id.clone().or(next.order_id);
                    next.order_status = observed.order_status.clone().or(next.order_status);
                    next.order_total = observed.order_total.clone().or(next.order_total);
                    if next.order_id.is_some() || !model.orders_carry_an_id() {
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
                    schedule_or_expire(&mut next, previous_poll, context, unit, &mut event_types);
                }
            }
        }
        PollOutcome::Report(CartReport::NotFound(message)) => {
            next.last_polled_at = Some(now);
            next.consecutive_not_found = next.consecutive_not_found.saturating_add(1);
            next.last_error = Some(format!("partner error 101: {}", shorten(message, MAX_MESSAGE_CHARS)));
            if next.consecutive_not_found >= rules.not_found_after {
                finish(&mut next, CartState::NotFound, now);
                event_types.push(EventType::CartNotFound);
            } else {
                schedule_or_expire(&mut next, previous_poll, context, unit, &mut event_types);
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
    event_types.retain(|event_type| rules.emit.contains(event_type));
    // Most polls announce nothing; the event data is built only for those that do.
    let events = if event_types.is_empty() {
        Vec::new()
    } else {
        let previous = if transition.is_some() { cart.status.clone() } else { next.previous_status.clone() };
        let data = event_data(&next, previous);
        event_types.into_iter().map(|event_type| (event_type, data.clone())).collect()
    };
    Some(Decision { cart: next, transition, events, unknown_status })
}

/// What `status_detail` says while an ordered cart waits for its OrderID.
pub const AWAITING_ORDER_ID: &str = "ordered; waiting for the partner to send the OrderID";

/// Longest partner message kept in `last_error`.
const MAX_MESSAGE_CHARS: usize = 300;

/// Builds the event data for a cart.
pub fn event_data(cart: &Cart, previous_status: Option<String>) -> CartEventData {
    CartEventData {
        cart_id: cart.cart_id.clone(),
        status: cart.status.clone(),
        previous_status,
        order_id: cart.order_id.clone(),
        cart_created_at: cart.created_at_raw.clone(),
        reference: cart.reference.clone(),
        provider: cart.provider.clone(),
    }
}

fn finish(cart: &mut Cart, state: CartState, now: DateTime<Utc>) {
    cart.state = state;
    cart.next_poll_at = None;
    cart.finished_at = Some(now);
}

/// The earliest creation date believed: carts were not made with these APIs before 2000.
fn earliest_plausible() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1).unwrap_or_default().and_hms_opt(0, 0, 0).unwrap_or_default()
}

/// Whether a creation date the partner sent can be right: not before 2000 (an unset .NET
/// `DateTime` is `0001-01-01`), not more than a day in the future, and not older than the
/// start of tracking by more than the maximum age (a cart that old would have been expired
/// before it was registered). Dates have no zone and are read as UTC.
pub fn plausible_creation(created: NaiveDateTime, cart: &Cart, context: &Context) -> bool {
    let max_age = crate::time::to_chrono(context.rules.cadence.max_age);
    created >= earliest_plausible()
        && created.and_utc() <= context.now + chrono::Duration::days(1)
        && created.and_utc() >= cart.tracked_since - max_age
}

/// The stored creation date, if it is plausible.
fn stored_creation(cart: &Cart, context: &Context) -> Option<DateTime<Utc>> {
    cart.created_at.filter(|created| plausible_creation(*created, cart, context)).map(|created| created.and_utc())
}

/// The age of a cart for its cadence: from the partner's creation date if it is plausible,
/// else from the start of tracking.
pub fn cart_age(cart: &Cart, context: &Context) -> Duration {
    let created = stored_creation(cart, context).unwrap_or(cart.tracked_since);
    (context.now - created).to_std().unwrap_or(Duration::ZERO)
}

/// When a cart that is not ordered expires: the maximum age after the later of the start of
/// tracking and its plausible creation date.
pub fn expires_at(cart: &Cart, context: &Context) -> DateTime<Utc> {
    let anchor = stored_creation(cart, context).map_or(cart.tracked_since, |created| created.max(cart.tracked_since));
    add(anchor, context.rules.cadence.max_age)
}

/// Whether the cart has consistent evidence of being past its maximum age: this poll and the
/// one before it both came after the deadline.
fn past_max_age(cart: &Cart, previous_poll: Option<DateTime<Utc>>, context: &Context) -> bool {
    let deadline = expires_at(cart, context);
    context.now >= deadline && previous_poll.is_some_and(|previous| previous >= deadline)
}

/// Schedules the next poll by the cart's age and status, or expires the cart. `previous_poll`
/// is when it was polled before this answer.
fn schedule_or_expire(
    cart: &mut Cart,
    previous_poll: Option<DateTime<Utc>>,
    context: &Context,
    unit: f64,
    event_types: &mut Vec<EventType>,
) {
    if past_max_age(cart, previous_poll, context) {
        finish(cart, CartState::Expired, context.now);
        event_types.push(EventType::CartExpired);
        return;
    }
    let interval = context.rules.plan.interval(&situation(cart, context));
    cart.next_poll_at = Some(add(context.now, spread(interval, context.rules.cadence.jitter, unit)));
}

/// What the polling plan needs to know about a cart: its status, and its age, counted from
/// the status change when an order is near (the order follows the checkout, whenever that
/// was) and from its creation otherwise.
pub fn situation<'a>(cart: &'a Cart, context: &Context) -> Situation<'a> {
    let status = cart.status.as_deref();
    let order_is_near = status.is_some_and(|status| context.model.order_is_near(status));
    let age = match (order_is_near, cart.status_changed_at) {
        (true, Some(changed)) => (context.now - changed).to_std().unwrap_or(Duration::ZERO),
        _ => cart_age(cart, context),
    };
    Situation { status, age, order_is_near }
}

/// A cart the partner calls ordered but without its OrderID: polled as closely as a
/// checked-out one until the OrderID arrives. Should the maximum age pass first, the order is
/// announced without it rather than not at all.
fn await_order_id(
    cart: &mut Cart,
    previous_poll: Option<DateTime<Utc>>,
    context: &Context,
    unit: f64,
    event_types: &mut Vec<EventType>,
) {
    if past_max_age(cart, previous_poll, context) {
        tracing::error!(cart_id = %cart.cart_id, "the partner never sent this order's OrderID; announcing the order without it");
        cart.status_detail = Some("ordered; the partner never sent the OrderID".into());
        finish(cart, CartState::Ordered, context.now);
        event_types.push(EventType::CartOrdered);
        return;
    }
    let cadence = &context.rules.cadence;
    cart.next_poll_at = Some(add(context.now, spread(cadence.checked_out_every, cadence.jitter, unit)));
}

/// The partner says the cart's session is gone. Believed only after `not_found_after`
/// answers in a row; until then the status stays as it was.
fn session_gone(
    cart: &mut Cart,
    status: &str,
    context: &Context,
    unit: f64,
    transition: &mut Option<Transition>,
    event_types: &mut Vec<EventType>,
) {
    let not_found_after = context.rules.not_found_after;
    cart.consecutive_not_found = cart.consecutive_not_found.saturating_add(1);
    if cart.consecutive_not_found < not_found_after {
        cart.last_error = Some(format!(
            "the partner reports {status} ({} of {not_found_after} answers in a row before tracking ends)",
            cart.consecutive_not_found
        ));
        let cadence = &context.rules.cadence;
        cart.next_poll_at = Some(add(context.now, spread(cadence.checked_out_every, cadence.jitter, unit)));
        return;
    }
    if cart.status.as_deref() != Some(status) {
        *transition = Some(Transition { from: cart.status.clone(), to: status.to_owned() });
        cart.previous_status = cart.status.replace(status.to_owned());
        cart.status_changed_at = Some(context.now);
    }
    finish(cart, CartState::Expired, context.now);
    event_types.push(EventType::CartSessionExpired);
}

fn retry_later(cart: &mut Cart, message: String, context: &Context, unit: f64) {
    let attempt = cart.consecutive_errors;
    cart.consecutive_errors = cart.consecutive_errors.saturating_add(1);
    cart.last_error = Some(message);
    let delay = context.rules.retry.full_jitter(attempt, unit).max(Duration::from_secs(1));
    cart.next_poll_at = Some(add(context.now, delay));
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Status models and rules for tests of the decisions and of the store.

    use super::*;
    use chrono::TimeZone;

    /// A model like i.materialise's: NotOrdered, Pending, CheckedOut, Ordered.
    #[derive(Debug)]
    pub struct Shop;

    pub const FLOW: [&str; 4] = ["NotOrdered", "Pending", "CheckedOut", "Ordered"];

    impl StatusModel for Shop {
        fn name(&self) -> &'static str {
            "shop"
        }
        fn rank(&self, status: &str) -> Option<u8> {
            FLOW.iter().position(|known| *known == status).map(|rank| rank as u8)
        }
        fn announces(&self, status: &str) -> Option<EventType> {
            match status {
                "Ordered" => Some(EventType::CartOrdered),
                "CheckedOut" => Some(EventType::CartCheckedOut),
                "Pending" => Some(EventType::CartPending),
                _ => None,
            }
        }
        fn ending(&self, status: &str) -> Ending {
            if status == "Ordered" { Ending::Ordered } else { Ending::Continue }
        }
        fn order_is_near(&self, status: &str) -> bool {
            status == "CheckedOut"
        }
        fn orders_carry_an_id(&self) -> bool {
            true
        }
    }

    /// A model like Titelive's: valid is near an order, a lost session ends, orders have no id.
    #[derive(Debug)]
    pub struct Session;

    impl StatusModel for Session {
        fn name(&self) -> &'static str {
            "session"
        }
        fn rank(&self, status: &str) -> Option<u8> {
            match status {
                "NoCart" => Some(0),
                "Valid" => Some(2),
                "Ordered" => Some(3),
                "NoSession" => None,
                _ => Some(1),
            }
        }
        fn announces(&self, status: &str) -> Option<EventType> {
            match status {
                "Valid" => Some(EventType::CartReady),
                "Ordered" => Some(EventType::CartOrdered),
                "NoSession" => Some(EventType::CartSessionExpired),
                _ => None,
            }
        }
        fn ending(&self, status: &str) -> Ending {
            match status {
                "Ordered" => Ending::Ordered,
                "NoSession" => Ending::Expired,
                _ => Ending::Continue,
            }
        }
        fn order_is_near(&self, status: &str) -> bool {
            status == "Valid"
        }
        fn orders_carry_an_id(&self) -> bool {
            false
        }
    }

    /// The documented rules, giving up after 3 not-found answers, with every event.
    pub fn rules() -> Rules {
        let backoff = BackoffConfig { not_found_after: 3, ..crate::policy::fixtures::backoff() };
        let emit = [
            EventType::CartCheckedOut,
            EventType::CartOrdered,
            EventType::CartNotFound,
            EventType::CartExpired,
            EventType::CartReady,
            EventType::CartSessionExpired,
        ];
        Rules::new(&crate::policy::fixtures::cadence(), &backoff, emit.into_iter().collect())
    }

    /// A decision at 2026-11-25T08:00:00Z about a [`Shop`] cart.
    pub fn context() -> Context {
        Context {
            now: Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap(),
            rules: Arc::new(rules()),
            model: Arc::new(Shop),
        }
    }

    /// A decision at `now` about a [`Shop`] cart.
    pub fn context_at(now: DateTime<Utc>) -> Context {
        Context { now, rules: Arc::new(rules()), model: Arc::new(Shop) }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::model::Observation;

    fn t(text: &str) -> DateTime<Utc> {
        crate::time::parse_ts(text).unwrap()
    }

    fn with_rules(context: &Context, change: impl FnOnce(&mut Rules)) -> Context {
        let mut rules = (*context.rules).clone();
        change(&mut rules);
        Context { rules: Arc::new(rules), ..context.clone() }
    }

    fn row(status: Option<&str>) -> Cart {
        Cart {
            key: 1,
            cart_id: "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".into(),
            provider: "shop".into(),
            account: String::new(),
            reference: Some("order-form-17".into()),
            state: CartState::Tracking,
            status: status.map(str::to_owned),
            previous_status: None,
            status_detail: None,
            order_id: None,
            order_status: None,
            order_total: None,
            created_at_raw: None,
            created_at: None,
            registered_at: t("2026-11-25T07:30:00.000Z"),
            tracked_since: t("2026-11-25T07:30:00.000Z"),
            next_poll_at: Some(t("2026-11-25T08:00:00.000Z")),
            last_polled_at: None,
            status_changed_at: None,
            consecutive_errors: 0,
            consecutive_not_found: 0,
            last_error: None,
            finished_at: None,
        }
    }

    fn reported(status: &str, order_id: Option<&str>) -> PollOutcome {
        let known = FLOW.contains(&status);
        PollOutcome::Report(CartReport::Status(Observation {
            known_status: known,
            status: status.to_owned(),
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
        assert_eq!(decision.cart.state, CartState::Ordered);
        assert_eq!(decision.cart.next_poll_at, None);
        assert_eq!(decision.cart.order_id.as_deref(), Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c"));
        let data = &decision.events[0].1;
        assert_eq!(data.reference.as_deref(), Some("order-form-17"));
        assert_eq!(data.cart_created_at.as_deref(), Some("2026-11-25T07:00:00"));
    }

    #[test]
    fn checked_out_is_announced_and_polled_at_the_fastest_tier() {
        let decision = decide(&row(Some("Pending")), &reported("CheckedOut", None), &context(), 0.5).unwrap();
        assert_eq!(event_types(&decision), [EventType::CartCheckedOut]);
        assert_eq!(decision.cart.next_poll_at, Some(t("2026-11-25T08:01:00.000Z")));
    }

    #[test]
    fn unchanged_status_records_nothing() {
        let decision = decide(&row(Some("Pending")), &reported("Pending", None), &context(), 0.5).unwrap();
        assert_eq!(decision.transition, None);
        assert!(decision.events.is_empty());
    }

    #[test]
    fn pending_and_reopened_are_recorded_but_not_emitted_by_default() {
        let decision = decide(&row(Some("CheckedOut")), &reported("Pending", None), &context(), 0.5).unwrap();
        assert!(decision.transition.is_some());
        assert!(decision.events.is_empty());
        let context = with_rules(&context(), |rules| {
            rules.emit.insert(EventType::CartReopened);
        });
        let decision = decide(&row(Some("CheckedOut")), &reported("Pending", None), &context, 0.5).unwrap();
        assert_eq!(event_types(&decision), [EventType::CartReopened]);
    }

    #[test]
    fn unknown_status_is_kept_verbatim_and_flagged() {
        let decision = decide(&row(Some("Pending")), &reported("On Hold", None), &context(), 0.5).unwrap();
        assert_eq!(decision.cart.status.as_deref(), Some("On Hold"));
        assert_eq!(decision.unknown_status.as_deref(), Some("On Hold"));
        assert_eq!(decision.cart.state, CartState::Tracking);
    }

    #[test]
    fn not_found_after_n_in_a_row() {
        let context = context();
        let not_found =
            PollOutcome::Report(CartReport::NotFound("Specified Cart was not found or wrong format.".into()));
        let mut current = row(None);
        for _ in 0..2 {
            current = decide(&current, &not_found, &context, 0.5).unwrap().cart;
            assert_eq!(current.state, CartState::Tracking);
        }
        let decision = decide(&current, &not_found, &context, 0.5).unwrap();
        assert_eq!(decision.cart.state, CartState::NotFound);
        assert_eq!(event_types(&decision), [EventType::CartNotFound]);
        // A status in between resets the count.
        let mut current = row(None);
        current.consecutive_not_found = 2;
        current = decide(&current, &reported("Pending", None), &context, 0.5).unwrap().cart;
        assert_eq!(current.consecutive_not_found, 0);
    }

    #[test]
    fn failures_back_off_per_cart() {
        let context = context();
        let mut current = row(Some("Pending"));
        current.consecutive_errors = 3;
        let decision = decide(&current, &PollOutcome::Failed("the request timed out".into()), &context, 0.5).unwrap();
        assert_eq!(decision.cart.consecutive_errors, 4);
        // attempt 3: ceiling 40 s, half of it with unit 0.5
        assert_eq!(decision.cart.next_poll_at, Some(t("2026-11-25T08:00:20.000Z")));
        assert_eq!(decision.cart.last_error.as_deref(), Some("the request timed out"));
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

    fn max_age(seconds: u64) -> Context {
        with_rules(&context(), |rules| rules.cadence.max_age = Duration::from_secs(seconds))
    }

    #[test]
    fn expiry_needs_two_polls_past_the_deadline_counted_from_tracking() {
        let context = max_age(3600);
        let outcome = with_created(reported("Pending", None), None);
        // Tracked at 07:30; the deadline is 08:30.
        let mut current = row(Some("Pending"));
        current.registered_at = t("2026-10-01T00:00:00.000Z");
        current = decide(&current, &outcome, &at(&context, 29 * 60), 0.5).unwrap().cart;
        assert_eq!(current.state, CartState::Tracking, "before the deadline");
        current = decide(&current, &outcome, &at(&context, 31 * 60), 0.5).unwrap().cart;
        assert_eq!(current.state, CartState::Tracking, "the first poll past the deadline is not enough");
        let decision = decide(&current, &outcome, &at(&context, 36 * 60), 0.5).unwrap();
        assert_eq!(decision.cart.state, CartState::Expired);
        assert_eq!(event_types(&decision), [EventType::CartExpired]);
    }

    #[test]
    fn creation_dates_that_cannot_be_right_are_kept_but_not_used() {
        let context = max_age(3600);
        for raw in ["0001-01-01T00:00:00", "1900-01-01T00:00:00", "2026-11-28T08:00:00", "2026-10-01T00:00:00"] {
            let outcome = with_created(reported("Pending", None), Some(raw));
            let mut current = row(Some("Pending"));
            for minutes in [1, 2, 3] {
                current = decide(&current, &outcome, &at(&context, minutes * 60), 0.5).unwrap().cart;
            }
            assert_eq!(current.state, CartState::Tracking, "{raw}");
            assert_eq!(current.created_at_raw.as_deref(), Some(raw), "kept as sent");
            assert_eq!(current.created_at, None, "{raw} is not used");
            // Young by its tracking time: polled every minute.
            assert_eq!(current.next_poll_at, Some(t("2026-11-25T08:04:00.000Z")), "{raw}");
        }
        // A plausible date older than tracking drives the cadence and the expiry.
        let outcome = with_created(reported("Pending", None), Some("2026-11-25T06:00:00"));
        let decision = decide(&row(Some("Pending")), &outcome, &self::context(), 0.5).unwrap();
        assert_eq!(decision.cart.created_at, crate::time::parse_naive("2026-11-25T06:00:00"));
        assert_eq!(decision.cart.next_poll_at, Some(t("2026-11-25T08:05:00.000Z")), "two hours old");
    }

    #[test]
    fn a_titelive_like_cart_with_the_documents_own_date_does_not_expire() {
        let context = Context { model: Arc::new(Session), ..max_age(24 * 3600) };
        let outcome = PollOutcome::Report(CartReport::Status(Observation {
            status: "NoPaymentMethod".into(),
            known_status: true,
            created_at_raw: Some("2016-03-03 11:39:45".into()),
            created_at: crate::time::parse_naive("2016-03-03 11:39:45"),
            ..Observation::default()
        }));
        let mut current = row(Some("NoPaymentMethod"));
        for minutes in [1, 2, 3] {
            current = decide(&current, &outcome, &at(&context, minutes * 60), 0.5).unwrap().cart;
        }
        assert_eq!(current.state, CartState::Tracking);
        assert_eq!(current.created_at_raw.as_deref(), Some("2016-03-03 11:39:45"));
    }

    #[test]
    fn ordered_without_an_order_id_is_polled_until_the_id_comes_and_announced_then() {
        let context = context();
        let waiting = decide(&row(Some("CheckedOut")), &reported("Ordered", None), &context, 0.5).unwrap();
        assert_eq!(waiting.cart.state, CartState::Tracking);
        assert_eq!(waiting.cart.status.as_deref(), Some("Ordered"));
        assert_eq!(waiting.cart.status_detail.as_deref(), Some(AWAITING_ORDER_ID));
        assert_eq!(waiting.transition, Some(Transition { from: Some("CheckedOut".into()), to: "Ordered".into() }));
        assert!(waiting.events.is_empty(), "no cart.ordered without an OrderID");
        assert_eq!(waiting.cart.next_poll_at, Some(t("2026-11-25T08:01:00.000Z")), "polled closely");

        // A stale answer cannot undo the order.
        let stale = decide(&waiting.cart, &reported("CheckedOut", None), &at(&context, 60), 0.5).unwrap();
        assert_eq!((stale.cart.status.as_deref(), stale.transition.as_ref()), (Some("Ordered"), None));
        assert!(stale.cart.last_error.as_deref().unwrap().contains("cannot be undone"));
        assert!(stale.events.is_empty());

        let order_id = "7cf9f78f-6631-44be-905a-94cee7a2cd9c";
        let found = decide(&stale.cart, &reported("Ordered", Some(order_id)), &at(&context, 120), 0.5).unwrap();
        assert_eq!(found.cart.state, CartState::Ordered);
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
        assert!(decision.cart.status.as_deref().unwrap().chars().count() <= crate::model::MAX_STATUS_CHARS + 1);
        let decision =
            decide(&row(None), &PollOutcome::Report(CartReport::Error(Some(7), long.clone())), &context(), 0.5)
                .unwrap();
        assert!(decision.cart.last_error.unwrap().len() < 1000);
        // What fits is used as sent, without a copy; a single long string makes one.
        let fitting =
            Observation { status: "Pending".into(), detail: Some("é".repeat(300)), ..Observation::default() };
        assert!(matches!(fitting.bounded(), std::borrow::Cow::Borrowed(_)));
        let too_long = Observation { detail: Some("é".repeat(301)), ..fitting };
        assert_eq!(too_long.bounded().detail.as_deref().map(|detail| detail.chars().count()), Some(301));
        assert!(too_long.bounded().detail.as_deref().is_some_and(|detail| detail.ends_with('…')));
    }

    #[test]
    fn session_statuses_announce_ready_ordered_and_a_lost_session_only_when_repeated() {
        let context = Context { model: Arc::new(Session), ..context() };
        let observed = |status: &str| {
            PollOutcome::Report(CartReport::Status(Observation {
                status: status.into(),
                known_status: true,
                ..Observation::default()
            }))
        };
        let decision = decide(&row(Some("NoPaymentMethod")), &observed("Valid"), &context, 0.5).unwrap();
        assert_eq!(event_types(&decision), [EventType::CartReady]);
        assert_eq!(decision.cart.next_poll_at, Some(t("2026-11-25T08:01:00.000Z")), "a valid cart is polled fast");
        let decision = decide(&row(Some("Valid")), &observed("Ordered"), &context, 0.5).unwrap();
        assert_eq!((event_types(&decision), decision.cart.state), (vec![EventType::CartOrdered], CartState::Ordered));
        // A lost session is believed after `not_found_after` answers in a row.
        let mut current = row(Some("Valid"));
        for _ in 1..context.rules.not_found_after {
            let decision = decide(&current, &observed("NoSession"), &context, 0.5).unwrap();
            assert_eq!((decision.cart.state, decision.transition.as_ref()), (CartState::Tracking, None));
            assert!(decision.events.is_empty());
            current = decision.cart;
        }
        let decision = decide(&current, &observed("NoSession"), &context, 0.5).unwrap();
        assert_eq!(
            (event_types(&decision), decision.cart.state),
            (vec![EventType::CartSessionExpired], CartState::Expired)
        );
        assert_eq!(decision.cart.status.as_deref(), Some("NoSession"));
        let decision = decide(&row(None), &observed("NoProducts"), &context, 0.5).unwrap();
        assert!(decision.events.is_empty(), "a missing requirement is recorded, not announced");
        assert!(decision.transition.is_some());
    }

    #[test]
    fn carts_no_longer_tracked_are_left_alone() {
        let mut current = row(Some("Pending"));
        current.state = CartState::Untracked;
        assert_eq!(decide(&current, &reported("Ordered", None), &context(), 0.5), None);
    }
}
