//! Changing a tracked cart's items safely: the local guard (never ask the partner to change a
//! cart cartwatch knows is checked out or ordered), a status refresh when what is known is
//! stale, the Add/Remove Cart Item call, and its effects in the store and the outbox.
//!
//! Used by `cartwatch items` and the HTTP API alike.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cart_id::{CartId, ItemId};
use crate::clock::Clock;
use crate::events::{EventType, ItemsChangedData, NewEvent};
use crate::model::{Cart, CartReport, CartState, StatusModel, UpstreamError};
use crate::provider::imaterialise::items::{CartItem, ItemAction, ItemErrorKind, ItemsClient, ItemsError};
use crate::provider::imaterialise::status::CartStatus;
use crate::provider::imaterialise::{Imaterialise, StatusClient};
use crate::reconcile::{Context, PollOutcome, Rules, event_data};
use crate::store::{ItemRecord, Store, StoreError};

/// Why a change was not made, by class (each has its own exit code and HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A cart or item id is malformed; nothing was sent.
    #[error("{0}")]
    Malformed(String),
    /// The guard refused locally; nothing was sent.
    #[error("{0}")]
    Refused(String),
    /// The partner refused the change.
    #[error("the partner refused the change: {0}")]
    Rejected(ItemsError),
    /// The partner could not be asked.
    #[error("cannot reach the partner: {0}")]
    Upstream(UpstreamError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A change that was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeOutcome {
    /// The items the partner confirmed, with prices.
    pub items: Vec<CartItem>,
    /// Items the partner refused while accepting others.
    pub refused: Vec<String>,
    /// The `cart.items_changed` event, if written.
    pub event_id: Option<String>,
    /// Whether the status was refreshed first.
    pub refreshed: bool,
}

/// Performs guarded item changes.
pub struct ItemsService {
    store: Arc<dyn Store>,
    provider: Arc<Imaterialise>,
    settings: ItemsConfig,
    rules: Arc<Rules>,
    status: StatusClient,
    items: ItemsClient,
    clock: Clock,
}

impl std::fmt::Debug for ItemsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemsService").finish_non_exhaustive()
    }
}

impl ItemsService {
    /// Builds the service for the i.materialise `provider`.
    ///
    /// Fails when an HTTP client cannot be built.
    pub fn new(
        store: Arc<dyn Store>,
        provider: Arc<Imaterialise>,
        settings: ItemsConfig,
        rules: Arc<Rules>,
        clock: Clock,
    ) -> Result<ItemsService, UpstreamError> {
        Ok(ItemsService {
            status: StatusClient::new(provider.settings())?,
            items: ItemsClient::new(provider.settings())?,
            store,
            provider,
            settings,
            rules,
            clock,
        })
    }

    /// Adds or removes items. Unless `force`, refuses locally when the cart is not tracked or
    /// its last known status is CheckedOut or Ordered, refreshing a stale status first.
    ///
    /// Fails with the class of the problem; see [`ChangeError`].
    pub async fn change(
        &self,
        action: ItemAction,
        cart: &str,
        items: &[String],
        force: bool,
    ) -> Result<ChangeOutcome, ChangeError> {
        let cart_id = CartId::parse(cart).map_err(|error| ChangeError::Malformed(error.to_string()))?;
        if items.is_empty() {
            return Err(ChangeError::Malformed("give at least one cart item id".into()));
        }
        let item_ids = items
            .iter()
            .map(|text| ItemId::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| ChangeError::Malformed(error.to_string()))?;

        let mut row = self.store.cart(cart_id.to_string()).await?;
        let mut refreshed = false;
        if let Some(current) = &row
            && current.state == CartState::Tracking
            && self.is_stale(current)
        {
            match self.refresh(current).await {
                Ok(()) => {
                    refreshed = true;
                    row = self.store.cart(cart_id.to_string()).await?;
                }
                Err(error) if force => {
                    tracing::warn!(cart_id = %cart_id, error = %error, "cannot refresh the status; going ahead (--force)")
                }
                Err(error) => return Err(error),
            }
        }
        if !force {
            guard(&cart_id, row.as_ref())?;
        }

        match self.items.change(action, &cart_id, &item_ids).await {
            Ok(reply) => {
                let refused: Vec<String> = reply.errors.iter().map(ToString::to_string).collect();
                let event_id = self.record(&cart_id, row.as_ref(), action, &reply.items).await?;
                tracing::info!(cart_id = %cart_id, action = action.as_str(), items = reply.items.len(), "cart items changed");
                Ok(ChangeOutcome { items: reply.items, refused, event_id, refreshed })
            }
            Err(ItemsError::Refused(errors)) => {
                self.after_refusal(&cart_id, row.as_ref(), &errors).await;
                Err(ChangeError::Rejected(ItemsError::Refused(errors)))
            }
            Err(ItemsError::Upstream(error)) => Err(ChangeError::Upstream(error)),
        }
    }

    fn is_stale(&self, row: &Cart) -> bool {
        let max_age = self.settings.status_max_age;
        row.last_polled_at.is_none_or(|at| (self.clock.now() - at).to_std().unwrap_or_default() > max_age)
    }

    fn context(&self) -> Context {
        let model: Arc<dyn StatusModel> = Arc::clone(&self.provider) as Arc<dyn StatusModel>;
        Context { now: self.clock.now(), rules: Arc::clone(&self.rules), model }
    }

    /// Asks the Cart Status API about the cart once and records the answer the way a sweep
    /// does (transitions and events included).
    async fn refresh(&self, row: &Cart) -> Result<(), ChangeError> {
        let cart_id = CartId::parse(&row.cart_id).map_err(|error| ChangeError::Malformed(error.to_string()))?;
        let reply = self.status.fetch_ids(std::slice::from_ref(&cart_id)).await.map_err(ChangeError::Upstream)?;
        let Some((_, report)) = reply.reports.into_iter().next() else {
            return Ok(());
        };
        if let CartReport::NotFound(_) = &report {
            tracing::warn!(cart_id = %cart_id, "the partner does not know this cart");
        }
        self.store.apply(vec![(row.key, PollOutcome::Report(report), rand::random())], self.context()).await?;
        Ok(())
    }

    async fn record(
        &self,
        cart_id: &CartId,
        row: Option<&Cart>,
        action: ItemAction,
        items: &[CartItem],
    ) -> Result<Option<String>, StoreError> {
        let emit = self.rules.emit.contains(&EventType::CartItemsChanged);
        let event = emit.then(|| {
            let mut cart = match row {
                Some(row) => event_data(row, row.status.clone()),
                None => crate::events::CartEventData {
                    cart_id: cart_id.to_string(),
                    status: None,
                    previous_status: None,
                    order_id: None,
                    cart_created_at: None,
                    reference: None,
                    provider: crate::provider::imaterialise::PROVIDER.into(),
                },
            };
            // The partner makes a changed cart Pending; the next poll records it.
            cart.status = Some(CartStatus::Pending.as_str().into());
            let items = items.iter().map(|item| serde_json::to_value(item).unwrap_or_default()).collect();
            let data = ItemsChangedData { cart, action: action.as_str().into(), items };
            NewEvent::items_changed(&data, self.clock.now())
        });
        let event_id = event.as_ref().map(|event| event.event_id.clone());
        let records = items.iter().map(item_record).collect();
        let now = self.clock.now();
        self.store.record_item_change(cart_id.to_string(), action.as_str().into(), records, event, now).await?;
        Ok(event_id)
    }

    /// What a refusal teaches about the cart: 105/110 mean its status moved on (poll it now,
    /// through the normal path, so its transition and event are not lost); 111 says it
    /// expired, which is noted on the cart and checked by polling it at once.
    async fn after_refusal(
        &self,
        cart_id: &CartId,
        row: Option<&Cart>,
        errors: &[crate::provider::imaterialise::items::ItemError],
    ) {
        let kinds: Vec<&ItemErrorKind> = errors.iter().map(|error| &error.kind).collect();
        let tracked = row.filter(|row| row.state == CartState::Tracking);
        if kinds.iter().any(|kind| matches!(kind, ItemErrorKind::AlreadyOrdered | ItemErrorKind::CheckedOutOrOrdered))
            && let Some(row) = tracked
            && let Err(error) = self.refresh(row).await
        {
            tracing::warn!(cart_id = %cart_id, error = %error, "cannot poll the cart now; the daemon will at its next sweep");
            let _ = self.store.poll_soon(cart_id.to_string(), self.clock.now()).await;
        }
        if kinds.iter().any(|kind| matches!(kind, ItemErrorKind::CartExpired))
            && let Some(row) = tracked
        {
            // One answer never ends tracking: the cart is polled at once and expires, if it
            // does, on the evidence of its age.
            let note = "the partner says the cart has expired (an item change was refused with 111)".to_owned();
            if let Err(error) = self.store.note_cart(row.cart_id.clone(), note, self.clock.now()).await {
                tracing::warn!(cart_id = %cart_id, error = %error, "cannot record the partner's refusal on the cart");
            }
        }
    }
}

/// The local guard: a change is only worth asking for on a tracked cart whose last known
/// status still allows it.
fn guard(cart_id: &CartId, row: Option<&Cart>) -> Result<(), ChangeError> {
    let Some(row) = row else {
        return Err(ChangeError::Refused(format!("cart {cart_id} is not tracked; track it first, or use --force")));
    };
    if row.provider != crate::provider::imaterialise::PROVIDER {
        return Err(ChangeError::Refused(format!(
            "cart {cart_id} is a {} cart; item changes are an i.materialise API",
            row.provider
        )));
    }
    match row.state {
        CartState::Tracking => {}
        _ => {
            return Err(ChangeError::Refused(format!(
                "cart {cart_id} is not tracked (its state is {}); use --force to try anyway",
                row.state
            )));
        }
    }
    if let Some(status) = row.status.as_deref().map(CartStatus::parse)
        && !status.allows_item_changes()
    {
        return Err(ChangeError::Refused(format!(
            "cart {cart_id} is {status}: its items can no longer change (refused without asking the partner; use --force to ask anyway)"
        )));
    }
    Ok(())
}

/// An item as the item history keeps it.
fn item_record(item: &CartItem) -> ItemRecord {
    ItemRecord {
        cart_item_id: item.cart_item_id.clone(),
        quantity: item.quantity,
        my_sales_unit_price: item.my_sales_unit_price.map(|price| price.to_string()),
        imat_unit_price: item.imat_unit_price.map(|price| price.to_string()),
        currency: item.currency.clone(),
        valid_until: item.valid_until.clone(),
    }
}

/// `[items]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemsConfig {
    /// A known status older than this is refreshed before a change.
    #[serde(with = "humantime_serde")]
    pub status_max_age: Duration,
}

impl ItemsConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut crate::checks::Problems) {
        problems.duration("items.status_max_age", self.status_max_age, Duration::ZERO, 30 * crate::checks::DAY);
    }
}
