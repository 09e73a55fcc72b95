//! Ordering's domain types: values that can only be built valid, and the order state machine.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use platform::events::{OrderEvent, OrderEventType};
use serde::Serialize;
use uuid::Uuid;

/// Where an order stands. `Pending → Confirmed → Cancelled` and `Pending → Cancelled`; nothing
/// leaves `Cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Cancelled,
}

/// A state change the state machine does not allow (answered 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an order that is {from} cannot become {to}")]
pub struct InvalidTransition {
    pub from: OrderStatus,
    pub to: OrderStatus,
}

impl OrderStatus {
    /// Whether the machine allows going from `self` to `next`.
    pub fn can_become(self, next: Self) -> bool {
        use OrderStatus::{Cancelled, Confirmed, Pending};
        matches!((self, next), (Pending, Confirmed) | (Pending | Confirmed, Cancelled))
    }

    /// `next`, if the machine allows it.
    pub fn transition(self, next: Self) -> Result<Self, InvalidTransition> {
        if self.can_become(next) { Ok(next) } else { Err(InvalidTransition { from: self, to: next }) }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Confirmed => "Confirmed",
            Self::Cancelled => "Cancelled",
        }
    }

    pub fn event_status(self) -> platform::events::OrderStatus {
        match self {
            Self::Pending => platform::events::OrderStatus::Pending,
            Self::Confirmed => platform::events::OrderStatus::Confirmed,
            Self::Cancelled => platform::events::OrderStatus::Cancelled,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Pending" => Ok(Self::Pending),
            "Confirmed" => Ok(Self::Confirmed),
            "Cancelled" => Ok(Self::Cancelled),
            other => anyhow::bail!("unknown order status {other:?}"),
        }
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The buyer asked.
    Buyer,
    /// The seat hold lapsed before the order was confirmed.
    Expired,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Buyer => "buyer",
            Self::Expired => "expired",
        }
    }
}

/// Seats in one order: 1 to 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: u32 = 10;

    pub fn new(value: i64) -> Result<Self, &'static str> {
        match u32::try_from(value) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err("must be between 1 and 10"),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// How much one buyer may hold in unpaid (`Pending`) orders, so that one account cannot take a
/// concert's seats off sale by placing orders it never pays for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Pending orders per buyer, across concerts.
    pub max_orders: u32,
    /// Seats in pending orders per buyer and concert.
    pub max_seats_per_concert: u32,
}

/// What a buyer holds in live pending orders now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PendingLoad {
    pub orders: i64,
    /// Seats of the concert being ordered.
    pub seats_of_concert: i64,
}

/// The limit a new order would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PendingLimitExceeded {
    #[error("at most {max} orders may wait for payment at once; pay for or cancel one first")]
    Orders { max: u32 },
    #[error("at most {max} seats of one concert may be held in unpaid orders; {held} are held already")]
    Seats { max: u32, held: i64 },
}

impl PendingLimits {
    /// Whether one more order of `quantity` seats fits beside `load`.
    pub fn admit(&self, load: PendingLoad, quantity: Quantity) -> Result<(), PendingLimitExceeded> {
        if load.orders >= i64::from(self.max_orders) {
            return Err(PendingLimitExceeded::Orders { max: self.max_orders });
        }
        if load.seats_of_concert + i64::from(quantity.get()) > i64::from(self.max_seats_per_concert) {
            return Err(PendingLimitExceeded::Seats {
                max: self.max_seats_per_concert,
                held: load.seats_of_concert,
            });
        }
        Ok(())
    }
}

/// The caller's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const HEADER: &'static str = "Idempotency-Key";
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() {
            return Err("must not be empty");
        }
        if raw.len() > Self::MAX_LEN {
            return Err("must be at most 255 characters");
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be visible ASCII characters without spaces");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a buyer asks for in `POST /orders`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub concert_id: Uuid,
    pub quantity: Quantity,
}

impl PlaceOrder {
    /// SHA-256 of the canonical form of the request, so a replay is recognised whatever the
    /// whitespace or key order of the JSON that carried it.
    pub fn fingerprint(&self) -> Vec<u8> {
        let canonical =
            format!(r#"{{"concertId":"{}","quantity":{}}}"#, self.concert_id, self.quantity.get());
        ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref().to_vec()
    }
}

/// Money: a price in minor units and its currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub unit_cents: i64,
    pub currency: String,
}

impl Price {
    /// The price of `quantity` seats, refusing negative prices and overflow.
    pub fn total(&self, quantity: Quantity) -> Option<i64> {
        if self.unit_cents < 0 {
            return None;
        }
        self.unit_cents.checked_mul(i64::from(quantity.get()))
    }
}

/// One order as stored; its JSON form is what the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: Uuid,
    pub buyer_id: Uuid,
    #[serde(skip)]
    pub buyer_email: String,
    pub concert_id: Uuid,
    pub quantity: u32,
    pub unit_price_cents: i64,
    pub total_cents: i64,
    pub currency: String,
    pub status: OrderStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[serde(skip)]
    pub payment_id: Option<String>,
    pub hold_expires_at: DateTime<Utc>,
    #[serde(skip)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Order {
    /// The event announcing this order's current state.
    pub fn event(&self, kind: OrderEventType) -> OrderEvent {
        OrderEvent {
            event_id: Uuid::now_v7(),
            kind,
            occurred_at: Utc::now(),
            order_id: self.id,
            buyer_id: self.buyer_id,
            buyer_email: self.buyer_email.clone(),
            concert_id: self.concert_id,
            quantity: self.quantity,
            total_cents: self.total_cents,
            currency: self.currency.clone(),
            status: self.status.event_status(),
            reason: self.cancel_reason.clone(),
            hold_expires_at: (kind == OrderEventType::Created).then_some(self.hold_expires_at),
        }
    }
}

/// Where the next page of a buyer's orders starts: after `(created_at, id)` in newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: base64url of `<microseconds since epoch>.<id>` (Postgres keeps microseconds).
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}", self.created_at.timestamp_micros(), self.id))
    }

    /// Anything this service did not hand out is refused, including timestamps chrono can hold but
    /// Postgres cannot (a query with one would fail as a 500, which is not the caller's to cause).
    pub fn decode(raw: &str) -> Result<Self, &'static str> {
        const INVALID: &str = "is not a cursor this service returned";
        // Far longer than any cursor `encode` makes (about 70 characters).
        const MAX_LEN: usize = 128;
        // 0001-01-01 and the end of 9999, in microseconds: a cursor comes from a stored order.
        const TIMES: std::ops::RangeInclusive<i64> = -62_135_596_800_000_000..=253_402_300_799_999_999;
        if raw.len() > MAX_LEN {
            return Err(INVALID);
        }
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| INVALID)?;
        let text = String::from_utf8(bytes).map_err(|_| INVALID)?;
        let (micros, id) = text.split_once('.').ok_or(INVALID)?;
        let micros: i64 = micros.parse().map_err(|_| INVALID)?;
        if !TIMES.contains(&micros) {
            return Err(INVALID);
        }
        let created_at = DateTime::from_timestamp_micros(micros).ok_or(INVALID)?;
        let id = Uuid::parse_str(id).map_err(|_| INVALID)?;
        Ok(Self { created_at, id })
    }
}

/// Page size of `GET /orders`: 1 to 100, 20 when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(i64);

impl PageSize {
    pub const DEFAULT: i64 = 20;
    pub const MAX: i64 = 100;

    pub fn new(value: Option<i64>) -> Result<Self, &'static str> {
        match value.unwrap_or(Self::DEFAULT) {
            n if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err("must be between 1 and 100"),
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[test]
    fn pending_limits_count_orders_and_seats_of_the_concert() {
        let limits = PendingLimits { max_orders: 5, max_seats_per_concert: 10 };
        let two = Quantity::new(2).unwrap();
        assert_eq!(limits.admit(PendingLoad { orders: 4, seats_of_concert: 8 }, two), Ok(()));
        assert_eq!(
            limits.admit(PendingLoad { orders: 5, seats_of_concert: 0 }, two),
            Err(PendingLimitExceeded::Orders { max: 5 })
        );
        assert_eq!(
            limits.admit(PendingLoad { orders: 1, seats_of_concert: 9 }, two),
            Err(PendingLimitExceeded::Seats { max: 10, held: 9 })
        );
        let ten = Quantity::new(10).unwrap();
        assert_eq!(limits.admit(PendingLoad::default(), ten), Ok(()));
    }

    use super::*;
    use OrderStatus::{Cancelled, Confirmed, Pending};

    #[test]
    fn pending_orders_can_be_confirmed_or_cancelled() {
        assert_eq!(Pending.transition(Confirmed), Ok(Confirmed));
        assert_eq!(Pending.transition(Cancelled), Ok(Cancelled));
    }

    #[test]
    fn confirmed_orders_can_only_be_cancelled() {
        assert_eq!(Confirmed.transition(Cancelled), Ok(Cancelled));
        assert_eq!(
            Confirmed.transition(Confirmed),
            Err(InvalidTransition { from: Confirmed, to: Confirmed })
        );
        assert!(!Confirmed.can_become(Pending));
    }

    #[test]
    fn cancelled_is_final() {
        for next in [Pending, Confirmed, Cancelled] {
            assert!(Cancelled.transition(next).is_err(), "Cancelled -> {next}");
        }
    }

    #[test]
    fn nothing_goes_back_to_pending() {
        for from in [Pending, Confirmed, Cancelled] {
            assert!(!from.can_become(Pending));
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in [Pending, Confirmed, Cancelled] {
            assert_eq!(status.as_str().parse::<OrderStatus>().unwrap(), status);
        }
        assert!("pending".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn quantities_are_one_to_ten() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-1).is_err());
        assert!(Quantity::new(11).is_err());
        assert!(Quantity::new(i64::MAX).is_err());
        assert_eq!(Quantity::new(1).unwrap().get(), 1);
        assert_eq!(Quantity::new(10).unwrap().get(), 10);
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("naïve").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert_eq!(IdempotencyKey::parse(&"k".repeat(255)).unwrap().as_str().len(), 255);
        assert!(IdempotencyKey::parse("0190a6a4-3f2e-7c1d-9c57-7b0b4f0e1a2b").is_ok());
    }

    #[test]
    fn the_fingerprint_depends_on_the_request_only() {
        let concert_id = Uuid::now_v7();
        let two = PlaceOrder { concert_id, quantity: Quantity::new(2).unwrap() };
        let three = PlaceOrder { concert_id, quantity: Quantity::new(3).unwrap() };
        assert_eq!(two.fingerprint(), two.clone().fingerprint());
        assert_ne!(two.fingerprint(), three.fingerprint());
        assert_eq!(two.fingerprint().len(), 32);
    }

    #[test]
    fn totals_refuse_overflow_and_negative_prices() {
        let three = Quantity::new(3).unwrap();
        assert_eq!(Price { unit_cents: 4500, currency: "EUR".into() }.total(three), Some(13_500));
        assert_eq!(Price { unit_cents: i64::MAX, currency: "EUR".into() }.total(three), None);
        assert_eq!(Price { unit_cents: -1, currency: "EUR".into() }.total(three), None);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_735_689_600_123_456).unwrap(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Ok(cursor));
        assert!(Cursor::decode("not a cursor").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("12.nope")).is_err());
        let id = Uuid::now_v7();
        for micros in [i64::MAX, i64::MIN, 253_402_300_800_000_000, -62_135_596_800_000_001] {
            assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode(format!("{micros}.{id}"))).is_err(), "{micros}");
        }
        assert!(Cursor::decode(&"A".repeat(4096)).is_err());
    }

    #[test]
    fn page_sizes_default_to_twenty_and_stop_at_a_hundred() {
        assert_eq!(PageSize::new(None).unwrap().get(), 20);
        assert_eq!(PageSize::new(Some(100)).unwrap().get(), 100);
        assert!(PageSize::new(Some(101)).is_err());
        assert!(PageSize::new(Some(0)).is_err());
    }

    #[test]
    fn only_created_events_carry_the_hold_expiry() {
        let now = Utc::now();
        let mut order = Order {
            id: Uuid::now_v7(),
            buyer_id: Uuid::now_v7(),
            buyer_email: "ada@example.com".into(),
            concert_id: Uuid::now_v7(),
            quantity: 2,
            unit_price_cents: 4500,
            total_cents: 9000,
            currency: "EUR".into(),
            status: Pending,
            cancel_reason: None,
            payment_id: None,
            hold_expires_at: now,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let created = order.event(OrderEventType::Created);
        assert_eq!(created.hold_expires_at, Some(now));
        assert_eq!(created.status, platform::events::OrderStatus::Pending);
        order.status = Cancelled;
        order.cancel_reason = Some(CancelReason::Expired.as_str().into());
        let cancelled = order.event(OrderEventType::Cancelled);
        assert_eq!(cancelled.hold_expires_at, None);
        assert_eq!(cancelled.reason.as_deref(), Some("expired"));
        assert_ne!(created.event_id, cancelled.event_id);
    }
}
