//! Events: the types cartwatch announces, their Standard Webhooks payload, and their ids.
//!
//! An event is built once, when it is written to the outbox in the same transaction as the
//! state change it announces; its id and payload never change afterwards, so every delivery
//! attempt to every sink carries the same bytes and the same `webhook-id`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Every event type cartwatch can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    /// A cart was seen CheckedOut.
    CartCheckedOut,
    /// A cart was seen Ordered; the OrderID is in the payload.
    CartOrdered,
    /// A cart was seen Pending after being NotOrdered or unknown.
    CartPending,
    /// A cart went backwards, such as CheckedOut back to Pending.
    CartReopened,
    /// Items were added to or removed from the cart; it must be re-opened in the shop's UI.
    CartItemsChanged,
    /// The partner reported the cart as not found too many times in a row.
    CartNotFound,
    /// The cart reached the configured maximum age without an order.
    CartExpired,
    /// A Titelive cart became valid: it has everything an order needs.
    CartReady,
    /// A Titelive session ended; its cart can no longer be followed.
    CartSessionExpired,
    /// The partner rejected the apiCode; polling is paused.
    UpstreamAuthFailed,
    /// A probe after an authentication failure succeeded; polling resumed.
    UpstreamAuthRecovered,
    /// A webhook endpoint gave up on an event after its last attempt.
    WebhookDeadLettered,
    /// A webhook endpoint was disabled because its receiver answered `410 Gone`.
    WebhookEndpointDisabled,
}

impl EventType {
    /// All types, in documentation order.
    pub const ALL: [EventType; 13] = [
        EventType::CartCheckedOut,
        EventType::CartOrdered,
        EventType::CartPending,
        EventType::CartReopened,
        EventType::CartItemsChanged,
        EventType::CartNotFound,
        EventType::CartExpired,
        EventType::CartReady,
        EventType::CartSessionExpired,
        EventType::UpstreamAuthFailed,
        EventType::UpstreamAuthRecovered,
        EventType::WebhookDeadLettered,
        EventType::WebhookEndpointDisabled,
    ];

    /// The wire name, such as `cart.ordered`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CartCheckedOut => "cart.checked_out",
            EventType::CartOrdered => "cart.ordered",
            EventType::CartPending => "cart.pending",
            EventType::CartReopened => "cart.reopened",
            EventType::CartItemsChanged => "cart.items_changed",
            EventType::CartNotFound => "cart.not_found",
            EventType::CartExpired => "cart.expired",
            EventType::CartReady => "cart.ready",
            EventType::CartSessionExpired => "cart.session_expired",
            EventType::UpstreamAuthFailed => "upstream.auth_failed",
            EventType::UpstreamAuthRecovered => "upstream.auth_recovered",
            EventType::WebhookDeadLettered => "webhook.dead_lettered",
            EventType::WebhookEndpointDisabled => "webhook.endpoint_disabled",
        }
    }

    /// Whether it is about cartwatch's own delivery to an endpoint (`webhook.*`): such an
    /// event that cannot be delivered is not announced in turn, so two failing endpoints
    /// never announce each other's failures back and forth.
    pub fn is_operational(self) -> bool {
        matches!(self, EventType::WebhookDeadLettered | EventType::WebhookEndpointDisabled)
    }

    /// Reads a wire name; `None` for names cartwatch does not know.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name.trim())
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `data` of a cart event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CartEventData {
    /// Canonical cart id.
    pub cart_id: String,
    /// Status after the change.
    pub status: Option<String>,
    /// Status before the change; `null` when the cart had not been seen before.
    pub previous_status: Option<String>,
    /// The partner's OrderID, once known.
    pub order_id: Option<String>,
    /// The partner's cart creation date, as the partner wrote it.
    pub cart_created_at: Option<String>,
    /// The shop's own reference given at registration.
    pub reference: Option<String>,
    /// Which partner API the cart lives on.
    pub provider: String,
}

/// The `data` of a `cart.items_changed` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemsChangedData {
    /// The cart, with what is known of it.
    #[serde(flatten)]
    pub cart: CartEventData,
    /// `add` or `remove`.
    pub action: String,
    /// The items the partner confirmed, with their prices, as the provider describes them.
    pub items: Vec<serde_json::Value>,
}

/// The `data` of an upstream event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamEventData {
    /// Which partner API.
    pub provider: String,
    /// What happened, for people.
    pub message: String,
    /// When the problem started (for recoveries).
    pub since: Option<String>,
}

/// The `data` of a `webhook.*` event: what happened to one endpoint. It is delivered to
/// every other sink that wants it, never to the endpoint it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEventData {
    /// The endpoint's name, as in `[webhooks.NAME]`.
    pub endpoint: String,
    /// What happened and what to do about it, for people.
    pub message: String,
    /// The event given up on (`webhook.dead_lettered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Its type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Its cart, if any: that cart's later events wait for it on this endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<String>,
    /// Attempts made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The receiver's last HTTP status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last error, or why the endpoint was disabled.
    pub error: String,
}

#[derive(Serialize)]
struct Payload<'a, T: Serialize> {
    #[serde(rename = "type")]
    event_type: &'static str,
    timestamp: &'a str,
    data: Sequenced<'a, T>,
}

/// Event data with the cart's sequence number after its own fields.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sequenced<'a, T: Serialize> {
    #[serde(flatten)]
    data: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    cart_sequence: Option<i64>,
}

/// What an event says, by kind.
#[derive(Debug, Clone, PartialEq)]
enum EventData {
    Cart(CartEventData),
    ItemsChanged(ItemsChangedData),
    Upstream(UpstreamEventData),
    Webhook(WebhookEventData),
}

/// An event ready to be written to the outbox. Its payload is made when it is written,
/// because only then is the cart's sequence number known.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique, stable id: the `webhook-id` of every delivery.
    pub event_id: String,
    /// Type.
    pub event_type: EventType,
    /// The cart it is about, if any: deliveries of one cart keep their order.
    pub cart_id: Option<String>,
    /// When it was detected, in the stored timestamp form.
    pub created_at: String,
    /// The sink it must not be delivered to: the endpoint a `webhook.*` event is about.
    pub not_for_sink: Option<String>,
    timestamp: String,
    data: EventData,
}

impl NewEvent {
    /// Builds a cart event detected at `detected_at`.
    pub fn cart(event_type: EventType, data: &CartEventData, detected_at: DateTime<Utc>) -> NewEvent {
        NewEvent::build(event_type, Some(data.cart_id.clone()), EventData::Cart(data.clone()), detected_at)
    }

    /// Builds a `cart.items_changed` event.
    pub fn items_changed(data: &ItemsChangedData, detected_at: DateTime<Utc>) -> NewEvent {
        let cart_id = Some(data.cart.cart_id.clone());
        NewEvent::build(EventType::CartItemsChanged, cart_id, EventData::ItemsChanged(data.clone()), detected_at)
    }

    /// Builds an upstream event detected at `detected_at`.
    pub fn upstream(event_type: EventType, data: &UpstreamEventData, detected_at: DateTime<Utc>) -> NewEvent {
        NewEvent::build(event_type, None, EventData::Upstream(data.clone()), detected_at)
    }

    /// Builds a `webhook.*` event about the endpoint `data.endpoint`, which will not get it.
    /// It is about no cart, so it waits for no cart's earlier events.
    pub fn webhook(event_type: EventType, data: &WebhookEventData, detected_at: DateTime<Utc>) -> NewEvent {
        let mut event = NewEvent::build(event_type, None, EventData::Webhook(data.clone()), detected_at);
        event.not_for_sink = Some(data.endpoint.clone());
        event
    }

    fn build(event_type: EventType, cart_id: Option<String>, data: EventData, detected_at: DateTime<Utc>) -> NewEvent {
        NewEvent {
            event_id: new_event_id(),
            event_type,
            cart_id,
            created_at: crate::time::format_ts(detected_at),
            not_for_sink: None,
            timestamp: detected_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            data,
        }
    }

    /// The exact JSON body every sink sends, with `cartSequence` (the event's position among
    /// its cart's events, from 1) in `data` when the event is about a cart.
    pub fn payload(&self, cart_sequence: Option<i64>) -> String {
        fn render<T: Serialize>(event: &NewEvent, data: &T, cart_sequence: Option<i64>) -> String {
            let payload = Payload {
                event_type: event.event_type.as_str(),
                timestamp: &event.timestamp,
                data: Sequenced { data, cart_sequence },
            };
            // Serialising plain structs of strings and numbers cannot fail.
            serde_json::to_string(&payload).unwrap_or_default()
        }
        match &self.data {
            EventData::Cart(data) => render(self, data, cart_sequence),
            EventData::ItemsChanged(data) => render(self, data, cart_sequence),
            EventData::Upstream(data) => render(self, data, None),
            EventData::Webhook(data) => render(self, data, None),
        }
    }
}

/// A fresh event id: `evt_` and a time-ordered UUID (v7) in simple form.
pub fn new_event_id() -> String {
    format!("evt_{}", uuid::Uuid::now_v7().simple())
}

/// `[events]`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsConfig {
    /// Event type names to write.
    pub emit: Vec<String>,
}

impl EventsConfig {
    /// Records every problem of this section in `problems`.
    pub fn check(&self, problems: &mut crate::checks::Problems) {
        for name in &self.emit {
            if EventType::parse(name).is_none() {
                problems.add(
                    "events.emit",
                    format!(
                        "unknown event type {name:?}; known types: {}",
                        EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                );
            }
        }
    }

    /// The event types to write.
    pub fn types(&self) -> std::collections::BTreeSet<EventType> {
        self.emit.iter().filter_map(|name| EventType::parse(name)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_round_trip() {
        for event_type in EventType::ALL {
            assert_eq!(EventType::parse(event_type.as_str()), Some(event_type));
        }
        assert_eq!(EventType::parse("cart.shipped"), None);
    }

    #[test]
    fn payload_has_the_standard_webhooks_shape() {
        let data = CartEventData {
            cart_id: "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a".into(),
            status: Some("Ordered".into()),
            previous_status: Some("CheckedOut".into()),
            order_id: Some("7cf9f78f-6631-44be-905a-94cee7a2cd9c".into()),
            cart_created_at: Some("2017-06-13T16:28:47".into()),
            reference: None,
            provider: "imaterialise".into(),
        };
        let detected_at = Utc.with_ymd_and_hms(2026, 11, 25, 8, 0, 0).unwrap();
        let event = NewEvent::cart(EventType::CartOrdered, &data, detected_at);
        let payload: serde_json::Value = serde_json::from_str(&event.payload(Some(3))).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({
                "type": "cart.ordered",
                "timestamp": "2026-11-25T08:00:00.000Z",
                "data": {
                    "cartId": "921a2046-66a5-4c5f-b9a6-4bc646fa5e5a",
                    "status": "Ordered",
                    "previousStatus": "CheckedOut",
                    "orderId": "7cf9f78f-6631-44be-905a-94cee7a2cd9c",
                    "cartCreatedAt": "2017-06-13T16:28:47",
                    "reference": null,
                    "provider": "imaterialise",
                    "cartSequence": 3
                }
            })
        );
        assert!(event.event_id.starts_with("evt_"));
        assert_ne!(event.event_id, new_event_id());
    }

    #[test]
    fn a_webhook_event_is_about_no_cart_and_not_for_its_endpoint() {
        let data = WebhookEventData {
            endpoint: "erp".into(),
            message: "webhook erp is disabled".into(),
            event_id: None,
            event_type: None,
            cart_id: None,
            attempts: None,
            last_status: Some(410),
            error: "the receiver answered 410 Gone".into(),
        };
        let detected_at = Utc.with_ymd_and_hms(2026, 11, 26, 8, 0, 0).unwrap();
        let event = NewEvent::webhook(EventType::WebhookEndpointDisabled, &data, detected_at);
        assert_eq!((event.cart_id.as_deref(), event.not_for_sink.as_deref()), (None, Some("erp")));
        assert!(EventType::WebhookEndpointDisabled.is_operational() && !EventType::CartOrdered.is_operational());
        let payload: serde_json::Value = serde_json::from_str(&event.payload(None)).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({
                "type": "webhook.endpoint_disabled",
                "timestamp": "2026-11-26T08:00:00.000Z",
                "data": {
                    "endpoint": "erp",
                    "message": "webhook erp is disabled",
                    "lastStatus": 410,
                    "error": "the receiver answered 410 Gone"
                }
            })
        );
    }
}
