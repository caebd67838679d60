//! Confirming a Titelive cart: `POST .../cart/confirm` turns the session's cart into a
//! pending order. Never automatic: only `cartwatch confirm` and the HTTP API call it. The
//! returned order is recorded on the cart (id, status, total) the way a poll would record an
//! order, so the transition and `cart.ordered` go through the outbox.

use std::sync::Arc;

use crate::clock::Clock;
use crate::model::{CartReport, Observation, StatusModel, TrackRequest, UpstreamError};
use crate::provider::Provider;
use crate::provider::titelive::{CheckCode, Titelive, TiteliveClient, TiteliveOrder, Token, check_domain};
use crate::reconcile::{Context, PollOutcome, Rules};
use crate::store::{Store, StoreError};

/// Why no order was made.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// The token or domain is malformed or missing; nothing was sent.
    #[error("{0}")]
    Malformed(String),
    /// The partner refused: the cart is not ready, does not exist, is already an order...
    #[error("the partner refused to confirm: {0}")]
    Refused(String),
    /// The partner could not be asked.
    #[error("cannot reach the partner: {0}")]
    Upstream(#[from] UpstreamError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Confirms Titelive carts.
#[derive(Debug)]
pub struct ConfirmService {
    store: Arc<dyn Store>,
    provider: Arc<Titelive>,
    rules: Arc<Rules>,
    client: TiteliveClient,
    clock: Clock,
}

impl ConfirmService {
    /// Builds the service.
    ///
    /// Fails when the HTTP client cannot be built.
    pub fn new(
        store: Arc<dyn Store>,
        provider: Arc<Titelive>,
        rules: Arc<Rules>,
        clock: Clock,
    ) -> Result<ConfirmService, UpstreamError> {
        Ok(ConfirmService { client: TiteliveClient::new(provider.settings())?, store, provider, rules, clock })
    }

    /// Confirms a Titelive cart, named by its session token or, when it is tracked, by its
    /// cart id (`tl_...`), in `domain` (or the tracked cart's domain, or
    /// `titelive.default_domain`). Registers the cart if it was not tracked, records the
    /// order and writes `cart.ordered`. Returns the cart id with the order.
    ///
    /// Fails with the class of the problem; see [`ConfirmError`].
    pub async fn confirm(&self, cart: &str, domain: Option<&str>) -> Result<(String, TiteliveOrder), ConfirmError> {
        let token = if crate::provider::titelive::is_derived_id(cart.trim()) {
            self.store.session_token(cart.trim().to_owned()).await?.ok_or_else(|| {
                ConfirmError::Malformed(format!(
                    "no tracked Titelive cart {}; confirm an untracked cart by its session token",
                    cart.trim()
                ))
            })?
        } else {
            cart.to_owned()
        };
        let token = Token::parse(&token).map_err(|error| ConfirmError::Malformed(error.to_string()))?;
        let cart_id = crate::provider::titelive::derived_id(token.as_str());
        let row = self.store.cart(cart_id.clone()).await?;
        if let Some(row) = &row
            && row.provider != self.provider.name()
        {
            return Err(ConfirmError::Malformed(format!("cart {} is not a Titelive cart", row.cart_id)));
        }
        let domain = domain
            .map(str::to_owned)
            .or_else(|| row.as_ref().map(|row| row.account.clone()).filter(|account| !account.is_empty()))
            .or_else(|| Some(self.provider.settings().default_domain.clone()).filter(|domain| !domain.is_empty()))
            .ok_or_else(|| {
                ConfirmError::Malformed(
                    "give the shop's domain code with --domain (or set titelive.default_domain)".into(),
                )
            })?;
        let domain = check_domain(&domain).map_err(ConfirmError::Malformed)?;

        let answer = self.client.confirm(&domain, &token).await?;
        let order = match (answer.code, answer.object) {
            (CheckCode::Valid, Some(order)) => order,
            (CheckCode::Valid, None) => {
                return Err(ConfirmError::Upstream(UpstreamError::Decode(
                    "order saved, but the answer has no order".into(),
                )));
            }
            (code, _) => {
                if code == CheckCode::AlreadyOrder {
                    let _ = self.store.poll_soon(cart_id.clone(), self.clock.now()).await;
                }
                let message = if answer.message.is_empty() { String::new() } else { format!(" ({})", answer.message) };
                return Err(ConfirmError::Refused(format!("{}{message}", code.describe())));
            }
        };
        tracing::info!(
            cart_id = %cart_id,
            order_id = order.id.as_deref().unwrap_or(""),
            "Titelive cart confirmed as an order"
        );

        if row.is_none() {
            let (cart_id, session_token) =
                self.provider.register_id(token.as_str()).map_err(ConfirmError::Malformed)?;
            let request = TrackRequest {
                provider: self.provider.name().to_owned(),
                cart_id,
                session_token,
                account: domain.clone(),
                reference: None,
            };
            let now = self.clock.now();
            self.store.track(vec![request], now, now).await?;
        }
        let Some(row) = self.store.cart(cart_id.clone()).await? else {
            return Ok((cart_id, order));
        };
        let observed = Observation {
            status: crate::provider::titelive::STATUS_ORDERED.into(),
            known_status: true,
            detail: Some("confirmed by cartwatch".into()),
            order_id: order.id.clone(),
            order_status: order.status.map(|status| status.to_string()),
            order_total: order.total_price.map(|total| total.to_string()),
            created_at_raw: None,
            created_at: None,
        };
        let model: Arc<dyn StatusModel> = Arc::clone(&self.provider) as Arc<dyn StatusModel>;
        let context = Context { now: self.clock.now(), rules: Arc::clone(&self.rules), model };
        self.store
            .apply(vec![(row.key, PollOutcome::Report(CartReport::Status(observed)), rand::random())], context)
            .await?;
        Ok((cart_id, order))
    }
}
