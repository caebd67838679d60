//! The apply step, the same for every backend: inside one transaction, read each cart as it
//! is now, [`decide`] what the poll means, write the cart, its transition and its events.
//!
//! A backend provides the transaction as a [`CartTransaction`]; SQLite's answers at once (its
//! writer thread drives this to completion in one poll), a networked database's awaits.

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::events::NewEvent;
use crate::model::Cart;
use crate::reconcile::{Context, Transition, decide};
use crate::store::{AppliedBatch, Outcome, StoreError};

/// The reads and writes the apply step needs, inside one open transaction. (No `Send` bound
/// on the futures: SQLite's borrow a connection that stays on its writer thread; a networked
/// backend's are `Send` by their own type.)
pub trait CartTransaction {
    /// Locks and reads, in one go, the carts about to be decided (a networked backend saves
    /// a round trip per cart; SQLite needs nothing).
    fn prefetch(&mut self, keys: &[i64]) -> impl Future<Output = Result<(), StoreError>> {
        let _ = keys;
        async { Ok(()) }
    }

    /// Writes what was put off until the end of the batch (a networked backend writes every
    /// cart of the batch in one statement).
    fn finish(&mut self) -> impl Future<Output = Result<(), StoreError>> {
        async { Ok(()) }
    }

    /// The cart with row key `key`, as it is now.
    fn cart(&mut self, key: i64) -> impl Future<Output = Result<Option<Cart>, StoreError>>;

    /// Writes `after` over `before`; a backend may write only what changed.
    fn write_cart(&mut self, before: &Cart, after: &Cart) -> impl Future<Output = Result<(), StoreError>>;

    /// Records a status change of `cart`, announced by `event_id` if an event was written.
    fn insert_transition(
        &mut self,
        cart: &Cart,
        transition: &Transition,
        detected_at: DateTime<Utc>,
        event_id: Option<&str>,
    ) -> impl Future<Output = Result<(), StoreError>>;

    /// Writes an event with the cart's next sequence number and one delivery per configured
    /// sink that wants it.
    fn insert_event(&mut self, event: &NewEvent) -> impl Future<Output = Result<(), StoreError>>;
}

/// Applies a batch's poll outcomes inside `transaction`: each cart's new record, its
/// transition and its events. A cart no longer tracked (or gone) is skipped and counted.
///
/// Fails when the transaction fails; the caller rolls it back, and nothing is written.
pub async fn apply_outcomes<T: CartTransaction>(
    transaction: &mut T,
    outcomes: &[Outcome],
    context: &Context,
) -> Result<AppliedBatch, StoreError> {
    let mut applied = AppliedBatch::default();
    let keys: Vec<i64> = outcomes.iter().map(|(key, ..)| *key).collect();
    transaction.prefetch(&keys).await?;
    for (key, outcome, unit) in outcomes {
        let Some(current) = transaction.cart(*key).await? else {
            applied.skipped += 1;
            continue;
        };
        let Some(decision) = decide(&current, outcome, context, *unit) else {
            applied.skipped += 1;
            continue;
        };
        let cart = &decision.cart;
        transaction.write_cart(&current, cart).await?;
        let mut first_event_id = None;
        for (event_type, data) in &decision.events {
            let event = NewEvent::cart(*event_type, data, context.now);
            transaction.insert_event(&event).await?;
            applied.events.push((*event_type, cart.cart_id.clone(), event.event_id.clone()));
            first_event_id.get_or_insert(event.event_id);
        }
        if let Some(transition) = &decision.transition {
            transaction.insert_transition(cart, transition, context.now, first_event_id.as_deref()).await?;
            applied.transitions.push((cart.cart_id.clone(), transition.from.clone(), transition.to.clone()));
        }
        if let Some(raw) = decision.unknown_status {
            applied.unknown_statuses.push((cart.cart_id.clone(), raw));
        }
        if cart.state != current.state {
            applied.finished.push((cart.cart_id.clone(), cart.state.as_str().to_owned()));
        }
    }
    transaction.finish().await?;
    Ok(applied)
}
