//! Confirming a Titelive cart: `POST .../cart/confirm` turns the session's cart into a
//! pending order. Never automatic: only `cartwatch confirm` and the HTTP API call it. The
//! returned order is recorded on the cart (id, status, total) the way a poll would record an
//! order, so the transition and `cart.ordered` go through the outbox.

use std::sync::Arc;

use chrono::Utc;

use crate::config::Config;
use crate::provider::titelive::{CheckCode, TiteliveClient, TiteliveOrder, Token, check_domain};
use crate::provider::{CartReport, Observation, Provider, UpstreamError};
use crate::reconcile::{Context, PollOutcome};
use crate::store::{Store, StoreError, TrackRequest};

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
    store: Store,
    config: Arc<Config>,
    client: TiteliveClient,
}

impl ConfirmService {
    /// Builds the service.
    ///
    /// Fails when the HTTP client cannot be built.
    pub fn new(store: Store, config: Arc<Config>) -> Result<ConfirmService, UpstreamError> {
        Ok(ConfirmService { client: TiteliveClient::new(&config.titelive)?, store, config })
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
            && row.provider != Provider::Titelive.as_str()
        {
            return Err(ConfirmError::Malformed(format!("cart {} is not a Titelive cart", row.cart_id)));
        }
        let domain = domain
            .map(str::to_owned)
            .or_else(|| row.as_ref().map(|row| row.account.clone()).filter(|account| !account.is_empty()))
            .or_else(|| Some(self.config.titelive.default_domain.clone()).filter(|domain| !domain.is_empty()))
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
                    let _ = self.store.poll_soon(cart_id.clone(), Utc::now()).await;
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
            let request = TrackRequest::parse(Provider::Titelive, token.as_str(), &domain, None)
                .map_err(ConfirmError::Malformed)?;
            self.store.track(vec![request], Utc::now()).await?;
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
        let context = Arc::new(Context::from_config(&self.config, Utc::now()));
        self.store
            .apply(vec![(row.key, PollOutcome::Report(CartReport::Status(observed)), rand::random())], context)
            .await?;
        Ok((cart_id, order))
    }
}
