//! The order events ordering publishes and the notification worker and gateway consume.
//!
//! One definition for producer and consumers, so the JSON on the wire cannot drift between them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The durable topic exchange every order event goes through.
pub const DEFAULT_EXCHANGE: &str = "ticketflow.events";
/// Binding pattern for all order events.
pub const ORDER_EVENTS_PATTERN: &str = "order.*";
pub const CONTENT_TYPE: &str = "application/json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderEventType {
    #[serde(rename = "order.created")]
    Created,
    #[serde(rename = "order.confirmed")]
    Confirmed,
    #[serde(rename = "order.cancelled")]
    Cancelled,
}

impl OrderEventType {
    /// The AMQP routing key, which is also the `type` field.
    pub fn routing_key(self) -> &'static str {
        match self {
            Self::Created => "order.created",
            Self::Confirmed => "order.confirmed",
            Self::Cancelled => "order.cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

/// `{eventId, type, occurredAt, orderId, buyerId, buyerEmail, concertId, quantity, totalCents,
/// currency, status, reason?}` plus the additive `holdExpiresAt?`; AMQP `message_id` carries `eventId`.
///
/// Consumers are tolerant readers: fields they do not know are ignored, so a producer can add an
/// optional field during a rolling deploy without every consumer dead-lettering every event. The
/// fields listed here stay strict (present where required, of the right type and value set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: OrderEventType,
    pub occurred_at: DateTime<Utc>,
    pub order_id: Uuid,
    pub buyer_id: Uuid,
    pub buyer_email: String,
    pub concert_id: Uuid,
    pub quantity: u32,
    pub total_cents: i64,
    pub currency: String,
    pub status: OrderStatus,
    /// Why an order was cancelled (`buyer`, `expired`, ...); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When an unconfirmed hold lapses. Ordering sets it on `order.created`; it is not in the
    /// contract's event table, so consumers must cope without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cancelled() -> OrderEvent {
        OrderEvent {
            event_id: Uuid::nil(),
            kind: OrderEventType::Cancelled,
            occurred_at: DateTime::UNIX_EPOCH,
            order_id: Uuid::nil(),
            buyer_id: Uuid::nil(),
            buyer_email: "a@example.com".into(),
            concert_id: Uuid::nil(),
            quantity: 2,
            total_cents: 9000,
            currency: "EUR".into(),
            status: OrderStatus::Cancelled,
            reason: Some("expired".into()),
            hold_expires_at: None,
        }
    }

    #[test]
    fn events_use_the_contract_field_names() {
        let event = cancelled();
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "order.cancelled");
        assert_eq!(json["status"], "Cancelled");
        assert_eq!(json["totalCents"], 9000);
        assert_eq!(json["reason"], "expired");
        assert!(json.get("holdExpiresAt").is_none());
        let back: OrderEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn fields_added_by_a_newer_producer_are_ignored() {
        let mut json = serde_json::to_value(cancelled()).unwrap();
        json["refundCents"] = serde_json::json!(9000);
        json["seats"] = serde_json::json!([{"row": "A", "seat": 12}]);
        let event: OrderEvent = serde_json::from_value(json).unwrap();
        assert_eq!(event, cancelled());
    }

    #[test]
    fn the_fields_we_read_stay_strict() {
        let valid = serde_json::to_value(cancelled()).unwrap();
        for (field, value) in [
            ("eventId", serde_json::json!("not-a-uuid")),
            ("type", serde_json::json!("order.shipped")),
            ("status", serde_json::json!("cancelled")),
            ("quantity", serde_json::json!(-1)),
            ("totalCents", serde_json::json!("9000")),
            ("occurredAt", serde_json::json!("yesterday")),
        ] {
            let mut json = valid.clone();
            json[field] = value;
            assert!(serde_json::from_value::<OrderEvent>(json).is_err(), "{field}");
        }
        for required in ["eventId", "type", "orderId", "buyerEmail", "quantity", "currency", "status"] {
            let mut json = valid.clone();
            json.as_object_mut().unwrap().remove(required);
            assert!(serde_json::from_value::<OrderEvent>(json).is_err(), "{required} is required");
        }
    }
}
