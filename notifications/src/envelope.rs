//! Reading an AMQP delivery: the order event in its body, the attempt count and trace context in its
//! headers, and the reasons a message is dead-lettered.

use std::fmt;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry::propagation::Extractor;
use platform::events::{CONTENT_TYPE, OrderEvent};

use crate::notification::InvalidEvent;

/// Header counting deliveries of one event: absent on the first, set on each re-publish to a retry
/// queue. RabbitMQ 3.10 classic queues keep no delivery count of their own.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Header on a dead-lettered message saying why (a [`DeadLetterReason`]).
pub const REASON_HEADER: &str = "x-dead-letter-reason";
/// Header on a dead-lettered message with the error in words.
pub const ERROR_HEADER: &str = "x-dead-letter-error";
/// Header on a dead-lettered message saying when it was dead-lettered (RFC 3339, UTC).
pub const DIED_AT_HEADER: &str = "x-dead-lettered-at";
/// Header keeping the routing key the event was first published with.
pub const ROUTING_KEY_HEADER: &str = "x-original-routing-key";

/// Why a message went to the dead-letter queue; the `reason` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Not JSON, or not an order event.
    Malformed,
    /// An order event of a type this worker does not know.
    UnknownType,
    /// A well-formed event that breaks the contract (status not matching the type, bad email, ...).
    Invalid,
    /// Failed transiently on every attempt.
    MaxAttempts,
    /// The sender refused it for good (e.g. the mail server rejected the address).
    Undeliverable,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownType => "unknown_type",
            Self::Invalid => "invalid",
            Self::MaxAttempts => "max_attempts",
            Self::Undeliverable => "undeliverable",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message that can never be processed, with the reason and the detail for the log and header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
}

impl Rejection {
    fn malformed(detail: impl Into<String>) -> Self {
        Self { reason: DeadLetterReason::Malformed, detail: detail.into() }
    }
}

impl From<InvalidEvent> for Rejection {
    fn from(error: InvalidEvent) -> Self {
        Self { reason: DeadLetterReason::Invalid, detail: error.to_string() }
    }
}

const KNOWN_TYPES: [&str; 3] = ["order.created", "order.confirmed", "order.cancelled"];

/// Parses the body as an order event, checking the envelope agrees with it.
pub fn decode(body: &[u8], properties: &BasicProperties) -> Result<OrderEvent, Rejection> {
    if let Some(content_type) = properties.content_type()
        && !content_type.as_str().eq_ignore_ascii_case(CONTENT_TYPE)
    {
        return Err(Rejection::malformed(format!("content type {content_type} is not {CONTENT_TYPE}")));
    }
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| Rejection::malformed(format!("body is not JSON: {e}")))?;
    if let Some(kind) = json.get("type").and_then(serde_json::Value::as_str)
        && !KNOWN_TYPES.contains(&kind)
    {
        return Err(Rejection {
            reason: DeadLetterReason::UnknownType,
            detail: format!("unknown event type {:?}", truncate(kind, 64)),
        });
    }
    let event: OrderEvent =
        serde_json::from_value(json).map_err(|e| Rejection::malformed(format!("not an order event: {e}")))?;
    if let Some(message_id) = properties.message_id()
        && message_id.as_str() != event.event_id.to_string()
    {
        return Err(Rejection::malformed("message_id does not match eventId"));
    }
    Ok(event)
}

/// Which delivery of this message this is, counting from 1.
pub fn attempt(properties: &BasicProperties) -> u32 {
    let value = properties.headers().as_ref().and_then(|h| h.inner().get(ATTEMPT_HEADER));
    let attempt = match value {
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 1,
    };
    u32::try_from(attempt.max(1)).unwrap_or(u32::MAX)
}

/// A copy of the message's properties with `changes` applied to its headers, for re-publishing.
pub fn with_headers(properties: &BasicProperties, changes: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in changes {
        headers.insert((*name).into(), value.clone());
    }
    // Re-published copies must survive a broker restart like the original.
    properties.clone().with_headers(headers).with_delivery_mode(2)
}

pub fn string_value(value: &str) -> AMQPValue {
    AMQPValue::LongString(value.into())
}

/// Reads `traceparent`/`tracestate` from AMQP headers.
pub struct HeaderExtractor<'a>(pub Option<&'a FieldTable>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.map(|h| h.inner().keys().map(|k| k.as_str()).collect()).unwrap_or_default()
    }
}

/// Cuts `text` to at most `max` characters, so hostile input cannot bloat logs and headers.
pub fn truncate(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(end, _)| &text[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    fn body(kind: &str) -> Vec<u8> {
        json!({
            "eventId": Uuid::from_u128(7), "type": kind, "occurredAt": "2030-01-01T00:00:00Z",
            "orderId": Uuid::from_u128(8), "buyerId": Uuid::from_u128(9), "buyerEmail": "a@example.com",
            "concertId": Uuid::from_u128(10), "quantity": 1, "totalCents": 100, "currency": "EUR",
            "status": "Confirmed"
        })
        .to_string()
        .into_bytes()
    }

    fn json_properties() -> BasicProperties {
        BasicProperties::default().with_content_type(CONTENT_TYPE.into())
    }

    #[test]
    fn a_contract_event_decodes() {
        let properties = json_properties().with_message_id(Uuid::from_u128(7).to_string().into());
        let event = decode(&body("order.confirmed"), &properties).unwrap();
        assert_eq!(event.event_id, Uuid::from_u128(7));
    }

    #[test]
    fn fields_this_worker_does_not_know_are_ignored() {
        let mut json: serde_json::Value = serde_json::from_slice(&body("order.confirmed")).unwrap();
        json["loyaltyPoints"] = json!(120);
        json["seats"] = json!([{"row": "A", "seat": 12}]);
        let event = decode(json.to_string().as_bytes(), &json_properties()).unwrap();
        assert_eq!(event.event_id, Uuid::from_u128(7));
        assert_eq!(event.total_cents, 100);
    }

    #[test]
    fn garbage_and_strangers_are_told_apart() {
        let rejection = decode(b"not json", &json_properties()).unwrap_err();
        assert_eq!(rejection.reason, DeadLetterReason::Malformed);

        let rejection = decode(&body("order.refunded"), &json_properties()).unwrap_err();
        assert_eq!(rejection.reason, DeadLetterReason::UnknownType);
        assert!(rejection.detail.contains("order.refunded"));

        let rejection = decode(br#"{"type":"order.created"}"#, &json_properties()).unwrap_err();
        assert_eq!(rejection.reason, DeadLetterReason::Malformed);
        assert!(rejection.detail.contains("missing field"), "{}", rejection.detail);
    }

    #[test]
    fn the_envelope_must_agree_with_the_body() {
        let properties = json_properties().with_message_id(Uuid::from_u128(99).to_string().into());
        assert_eq!(
            decode(&body("order.confirmed"), &properties).unwrap_err().reason,
            DeadLetterReason::Malformed
        );

        let xml = BasicProperties::default().with_content_type("application/xml".into());
        assert_eq!(decode(&body("order.confirmed"), &xml).unwrap_err().reason, DeadLetterReason::Malformed);

        // Producers that omit the optional properties are still understood.
        assert!(decode(&body("order.confirmed"), &BasicProperties::default()).is_ok());
    }

    #[test]
    fn attempts_count_from_one_and_survive_republishing() {
        let first = json_properties();
        assert_eq!(attempt(&first), 1);
        let third = with_headers(&first, &[(ATTEMPT_HEADER, AMQPValue::LongInt(3))]);
        assert_eq!(attempt(&third), 3);
        assert_eq!(third.delivery_mode(), &Some(2));
        assert_eq!(third.content_type(), first.content_type());
        let nonsense = with_headers(&first, &[(ATTEMPT_HEADER, string_value("three"))]);
        assert_eq!(attempt(&nonsense), 1);
    }

    #[test]
    fn trace_context_is_read_from_headers() {
        let mut headers = FieldTable::default();
        headers.insert("traceparent".into(), string_value("00-abc-def-01"));
        let extractor = HeaderExtractor(Some(&headers));
        assert_eq!(extractor.get("traceparent"), Some("00-abc-def-01"));
        assert_eq!(extractor.get("tracestate"), None);
        assert_eq!(HeaderExtractor(None).get("traceparent"), None);
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
