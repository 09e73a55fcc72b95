//! What a buyer is told about an order event: validation of the event and rendering of the message.
//!
//! Pure functions of the event, so every rule here is tested without a broker or database.

use std::fmt;

use chrono::{DateTime, Utc};
use platform::events::{OrderEvent, OrderEventType, OrderStatus};
use uuid::Uuid;

/// The kind of notification, one per event type; also the `type` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotificationKind {
    OrderReceived,
    TicketsConfirmed,
    OrderCancelled,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderReceived => "order_received",
            Self::TicketsConfirmed => "tickets_confirmed",
            Self::OrderCancelled => "order_cancelled",
        }
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A buyer's email address, checked enough to be worth sending to. Its `Display` is masked
/// (`j***@example.com`) so it can go into logs; [`Recipient::address`] is the full address.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipient(String);

impl Recipient {
    pub fn parse(raw: &str) -> Result<Self, InvalidEvent> {
        let address = raw.trim();
        let valid = address.len() <= 254
            && !address
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'))
            && address.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && local.len() <= 64
                    && domain.contains('.')
                    && !domain.contains('@')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            });
        if valid { Ok(Self(address.to_owned())) } else { Err(InvalidEvent::BuyerEmail) }
    }

    /// The full address, for the mail transport only (never for logs).
    pub fn address(&self) -> &str {
        &self.0
    }

    /// First character of the local part, then `***`, then the domain.
    pub fn masked(&self) -> String {
        let (local, domain) = self.0.split_once('@').unwrap_or((&self.0, ""));
        let first = local.chars().next().map(String::from).unwrap_or_default();
        format!("{first}***@{domain}")
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.masked())
    }
}

/// A message ready to send, and to record under its event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub event_id: Uuid,
    pub order_id: Uuid,
    pub kind: NotificationKind,
    pub recipient: Recipient,
    pub subject: String,
    pub body: String,
    pub occurred_at: DateTime<Utc>,
}

/// Why an event cannot become a notification. Retrying would not help: these go to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("buyerEmail is not a usable email address")]
    BuyerEmail,
    #[error("status {status:?} does not match event type {kind}")]
    StatusMismatch { kind: &'static str, status: OrderStatus },
    #[error("quantity must be at least 1")]
    Quantity,
    #[error("totalCents must not be negative")]
    Total,
    #[error("currency must be a three-letter ISO 4217 code")]
    Currency,
    #[error("order.cancelled needs a reason")]
    MissingReason,
}

/// Checks the event and renders what the buyer should read.
pub fn render(event: &OrderEvent) -> Result<Notification, InvalidEvent> {
    let recipient = Recipient::parse(&event.buyer_email)?;
    let expected_status = match event.kind {
        OrderEventType::Created => OrderStatus::Pending,
        OrderEventType::Confirmed => OrderStatus::Confirmed,
        OrderEventType::Cancelled => OrderStatus::Cancelled,
    };
    if event.status != expected_status {
        return Err(InvalidEvent::StatusMismatch { kind: event.kind.routing_key(), status: event.status });
    }
    if event.quantity == 0 {
        return Err(InvalidEvent::Quantity);
    }
    let total = money(event.total_cents, &event.currency)?;
    let tickets =
        if event.quantity == 1 { "1 ticket".to_owned() } else { format!("{} tickets", event.quantity) };
    let order = event.order_id;

    let (kind, subject, body) = match event.kind {
        OrderEventType::Created => {
            // `holdExpiresAt` is an optional extra beyond the contract: name the deadline when the
            // producer sends it, and say the hold is limited otherwise.
            let hold = match event.hold_expires_at {
                Some(deadline) => format!(
                    "Your seats are held until {}. Confirm your payment before then",
                    deadline.format("%Y-%m-%d %H:%M UTC")
                ),
                None => "Your seats are held for a limited time. Confirm your payment soon".to_owned(),
            };
            (
                NotificationKind::OrderReceived,
                "We received your order".to_owned(),
                format!(
                    "We received your order {order} for {tickets} ({total}).\n\
                     {hold}, or the seats are released and the order is cancelled."
                ),
            )
        }
        OrderEventType::Confirmed => (
            NotificationKind::TicketsConfirmed,
            "Your tickets are confirmed".to_owned(),
            format!(
                "Your payment of {total} went through: {tickets} for order {order} are confirmed. Enjoy the concert!"
            ),
        ),
        OrderEventType::Cancelled => {
            let reason = event.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
            let reason = reason.ok_or(InvalidEvent::MissingReason)?;
            (
                NotificationKind::OrderCancelled,
                "Your order was cancelled".to_owned(),
                format!(
                    "Your order {order} for {tickets} ({total}) was cancelled: {}.",
                    cancellation_reason(reason)
                ),
            )
        }
    };
    Ok(Notification {
        event_id: event.event_id,
        order_id: order,
        kind,
        recipient,
        subject,
        body,
        occurred_at: event.occurred_at,
    })
}

/// The buyer-facing words for the reasons ordering uses; anything else is shown as given.
fn cancellation_reason(reason: &str) -> String {
    match reason {
        "expired" => "the hold on your seats expired before payment was confirmed".to_owned(),
        "buyer" => "you cancelled it".to_owned(),
        other => format!("reason: {other}"),
    }
}

/// `EUR 90.00`; every ISO 4217 currency the shop sells in has two minor digits.
fn money(cents: i64, currency: &str) -> Result<String, InvalidEvent> {
    if cents < 0 {
        return Err(InvalidEvent::Total);
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(InvalidEvent::Currency);
    }
    Ok(format!("{currency} {}.{:02}", cents / 100, cents % 100))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn event(kind: OrderEventType) -> OrderEvent {
        let (status, reason, hold) = match kind {
            OrderEventType::Created => {
                (OrderStatus::Pending, None, Some(Utc.with_ymd_and_hms(2030, 5, 1, 20, 15, 0).unwrap()))
            }
            OrderEventType::Confirmed => (OrderStatus::Confirmed, None, None),
            OrderEventType::Cancelled => (OrderStatus::Cancelled, Some("expired".to_owned()), None),
        };
        OrderEvent {
            event_id: Uuid::from_u128(1),
            kind,
            occurred_at: Utc.with_ymd_and_hms(2030, 5, 1, 20, 0, 0).unwrap(),
            order_id: Uuid::from_u128(2),
            buyer_id: Uuid::from_u128(3),
            buyer_email: "jane.doe@example.com".to_owned(),
            concert_id: Uuid::from_u128(4),
            quantity: 2,
            total_cents: 9050,
            currency: "EUR".to_owned(),
            status,
            reason,
            hold_expires_at: hold,
        }
    }

    #[test]
    fn an_order_received_notification_names_the_hold_deadline() {
        let n = render(&event(OrderEventType::Created)).unwrap();
        assert_eq!(n.kind, NotificationKind::OrderReceived);
        assert_eq!(n.subject, "We received your order");
        assert!(n.body.contains("held until 2030-05-01 20:15 UTC"), "{}", n.body);
        assert!(n.body.contains("2 tickets (EUR 90.50)"), "{}", n.body);
        assert!(n.body.contains(&Uuid::from_u128(2).to_string()));
        assert_eq!(n.recipient.address(), "jane.doe@example.com");
        assert_eq!(n.event_id, Uuid::from_u128(1));
    }

    #[test]
    fn an_order_received_without_a_hold_deadline_is_still_told() {
        let mut e = event(OrderEventType::Created);
        e.hold_expires_at = None;
        let n = render(&e).unwrap();
        assert_eq!(n.kind, NotificationKind::OrderReceived);
        assert!(!n.body.contains("held until"), "{}", n.body);
        assert!(n.body.contains("held for a limited time"), "{}", n.body);
        assert!(n.body.contains("2 tickets (EUR 90.50)"), "{}", n.body);
    }

    #[test]
    fn a_confirmation_tells_the_buyer_the_tickets_are_theirs() {
        let mut e = event(OrderEventType::Confirmed);
        e.quantity = 1;
        let n = render(&e).unwrap();
        assert_eq!(n.kind, NotificationKind::TicketsConfirmed);
        assert!(n.body.contains("1 ticket for order"), "{}", n.body);
    }

    #[test]
    fn a_cancellation_explains_the_reason() {
        let n = render(&event(OrderEventType::Cancelled)).unwrap();
        assert_eq!(n.kind, NotificationKind::OrderCancelled);
        assert!(n.body.contains("hold on your seats expired"), "{}", n.body);

        let mut e = event(OrderEventType::Cancelled);
        e.reason = Some("buyer".to_owned());
        assert!(render(&e).unwrap().body.contains("you cancelled it"));
        e.reason = Some("fraud check".to_owned());
        assert!(render(&e).unwrap().body.contains("reason: fraud check"));
    }

    #[test]
    fn events_that_break_the_contract_are_refused() {
        let mut e = event(OrderEventType::Cancelled);
        e.reason = Some("  ".to_owned());
        assert_eq!(render(&e), Err(InvalidEvent::MissingReason));

        let mut e = event(OrderEventType::Confirmed);
        e.status = OrderStatus::Pending;
        assert!(matches!(render(&e), Err(InvalidEvent::StatusMismatch { .. })));

        let mut e = event(OrderEventType::Confirmed);
        e.quantity = 0;
        assert_eq!(render(&e), Err(InvalidEvent::Quantity));

        let mut e = event(OrderEventType::Confirmed);
        e.total_cents = -1;
        assert_eq!(render(&e), Err(InvalidEvent::Total));

        let mut e = event(OrderEventType::Confirmed);
        e.currency = "eur".to_owned();
        assert_eq!(render(&e), Err(InvalidEvent::Currency));

        let mut e = event(OrderEventType::Confirmed);
        e.buyer_email = "not-an-email".to_owned();
        assert_eq!(render(&e), Err(InvalidEvent::BuyerEmail));
    }

    #[test]
    fn email_addresses_are_checked() {
        for ok in ["a@b.co", "jane.doe+tix@example.com", "  x@y.org "] {
            assert!(Recipient::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "@example.com",
            "jane@",
            "jane@localhost",
            "jane doe@example.com",
            "a@b@c.com",
            "a@.com",
            "<a@b.com>",
        ] {
            assert!(Recipient::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn recipients_are_masked_wherever_they_are_printed() {
        let r = Recipient::parse("jane.doe@example.com").unwrap();
        assert_eq!(r.masked(), "j***@example.com");
        assert_eq!(r.to_string(), "j***@example.com");
        assert!(!format!("{r:?}").contains("jane.doe"));
        let n = render(&event(OrderEventType::Confirmed)).unwrap();
        assert!(!format!("{n:?}").contains("jane.doe"), "{n:?}");
    }

    #[test]
    fn money_is_shown_with_two_decimals() {
        assert_eq!(money(5, "USD").unwrap(), "USD 0.05");
        assert_eq!(money(120_000, "GBP").unwrap(), "GBP 1200.00");
    }
}
