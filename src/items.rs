//! Changing a tracked cart's items safely: the local guard (never ask the partner to change a
//! cart cartwatch knows is checked out or ordered), a status refresh when what is known is
//! stale, the Add/Remove Cart Item call, and its effects in the store and the outbox.
//!
//! Used by `cartwatch items` and the HTTP API alike.

use std::sync::Arc;

use chrono::Utc;

use crate::cart_id::{CartId, ItemId};
use crate::config::Config;
use crate::events::{EventType, ItemsChangedData, NewEvent};
use crate::provider::UpstreamError;
use crate::provider::imaterialise::StatusClient;
use crate::provider::imaterialise::items::{CartItem, ItemAction, ItemErrorKind, ItemsClient, ItemsError};
use crate::provider::{CartReport, Provider};
use crate::reconcile::{CartRow, CartState, Context, PollOutcome, event_data};
use crate::status::CartStatus;
use crate::store::{Store, StoreError};

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
    store: Store,
    config: Arc<Config>,
    status: StatusClient,
    items: ItemsClient,
}

impl std::fmt::Debug for ItemsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemsService").finish_non_exhaustive()
    }
}

impl ItemsService {
    /// Builds the service from config.
    ///
    /// Fails when an HTTP client cannot be built.
    pub fn new(store: Store, config: Arc<Config>) -> Result<ItemsService, UpstreamError> {
        Ok(ItemsService {
            status: StatusClient::new(&config.imaterialise)?,
            items: ItemsClient::new(&config.imaterialise)?,
            store,
            config,
        })
    }

    /// Applies a reloaded config's apiCode.
    pub fn reload(&self, config: &Config) {
        self.status.set_api_code(config.imaterialise.api_code.clone());
        self.items.set_api_code(config.imaterialise.api_code.clone());
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
            && CartState::parse(&current.state) == Some(CartState::Tracking)
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

    fn is_stale(&self, row: &CartRow) -> bool {
        let polled = row.last_polled_at.as_deref().and_then(crate::time::parse_ts);
        polled.is_none_or(|at| (Utc::now() - at).to_std().unwrap_or_default() > self.config.items.status_max_age)
    }

    /// Asks the Cart Status API about the cart once and records the answer the way a sweep
    /// does (transitions and events included).
    async fn refresh(&self, row: &CartRow) -> Result<(), ChangeError> {
        let cart_id = CartId::parse(&row.cart_id).map_err(|error| ChangeError::Malformed(error.to_string()))?;
        let reply = self.status.fetch(std::slice::from_ref(&cart_id)).await.map_err(ChangeError::Upstream)?;
        let Some((_, report)) = reply.reports.into_iter().next() else {
            return Ok(());
        };
        if let CartReport::NotFound(_) = &report {
            tracing::warn!(cart_id = %cart_id, "the partner does not know this cart");
        }
        let context = Arc::new(Context::from_config(&self.config, Utc::now()));
        self.store.apply(vec![(row.key, PollOutcome::Report(report), rand::random())], context).await?;
        Ok(())
    }

    async fn record(
        &self,
        cart_id: &CartId,
        row: Option<&CartRow>,
        action: ItemAction,
        items: &[CartItem],
    ) -> Result<Option<String>, StoreError> {
        let emit = self.config.emitted_event_types().contains(&EventType::CartItemsChanged);
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
            let data = ItemsChangedData { cart, action: action.as_str().into(), items: items.to_vec() };
            NewEvent::items_changed(&data, Utc::now())
        });
        let event_id = event.as_ref().map(|event| event.event_id.clone());
        self.store.record_item_change(cart_id.to_string(), action, items.to_vec(), event, Utc::now()).await?;
        Ok(event_id)
    }

    /// What a refusal teaches about the cart: 105/110 mean its status moved on (poll it now,
    /// through the normal path, so its transition and event are not lost); 111 says it
    /// expired, which is noted on the cart and checked by polling it at once.
    async fn after_refusal(
        &self,
        cart_id: &CartId,
        row: Option<&CartRow>,
        errors: &[crate::provider::imaterialise::items::ItemError],
    ) {
        let kinds: Vec<&ItemErrorKind> = errors.iter().map(|error| &error.kind).collect();
        let tracked = row.filter(|row| CartState::parse(&row.state) == Some(CartState::Tracking));
        if kinds.iter().any(|kind| matches!(kind, ItemErrorKind::AlreadyOrdered | ItemErrorKind::CheckedOutOrOrdered))
            && let Some(row) = tracked
            && let Err(error) = self.refresh(row).await
        {
            tracing::warn!(cart_id = %cart_id, error = %error, "cannot poll the cart now; the daemon will at its next sweep");
            let _ = self.store.poll_soon(cart_id.to_string(), Utc::now()).await;
        }
        if kinds.iter().any(|kind| matches!(kind, ItemErrorKind::CartExpired))
            && let Some(row) = tracked
        {
            // One answer never ends tracking: the cart is polled at once and expires, if it
            // does, on the evidence of its age.
            let note = "the partner says the cart has expired (an item change was refused with 111)".to_owned();
            if let Err(error) = self.store.note_cart(row.cart_id.clone(), note, Utc::now()).await {
                tracing::warn!(cart_id = %cart_id, error = %error, "cannot record the partner's refusal on the cart");
            }
        }
    }
}

/// The local guard: a change is only worth asking for on a tracked cart whose last known
/// status still allows it.
fn guard(cart_id: &CartId, row: Option<&CartRow>) -> Result<(), ChangeError> {
    let Some(row) = row else {
        return Err(ChangeError::Refused(format!("cart {cart_id} is not tracked; track it first, or use --force")));
    };
    if Provider::parse(&row.provider) != Some(Provider::Imaterialise) {
        return Err(ChangeError::Refused(format!(
            "cart {cart_id} is a {} cart; item changes are an i.materialise API",
            row.provider
        )));
    }
    match CartState::parse(&row.state) {
        Some(CartState::Tracking) => {}
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
