//! Seat holds: what a reservation request may ask for, and the life of a hold.
//!
//! held ──confirm──▶ confirmed ──release──▶ released
//!  │ └──release──▶ released
//!  └──(expires_at passes, sweeper)──▶ expired
//!
//! Releasing a confirmed hold is how ordering cancels a paid order: the seats go back to sale.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{FieldError, parse_id};

/// Seats one order may hold at once.
pub const MAX_QUANTITY: i32 = 100;
pub const DEFAULT_HOLD_SECONDS: i32 = 600;
pub const MAX_HOLD_SECONDS: i32 = 3600;

/// A checked ReserveSeats request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatRequest {
    pub order_id: Uuid,
    pub concert_id: Uuid,
    pub quantity: i32,
    pub hold_for: Duration,
}

impl SeatRequest {
    pub fn parse(
        order_id: &str,
        concert_id: &str,
        quantity: i32,
        hold_seconds: i32,
    ) -> Result<Self, FieldError> {
        let order_id = parse_id("order_id", order_id)?;
        let concert_id = parse_id("concert_id", concert_id)?;
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(FieldError::new("quantity", format!("must be between 1 and {MAX_QUANTITY}")));
        }
        let seconds = match hold_seconds {
            0 => DEFAULT_HOLD_SECONDS,
            s if (1..=MAX_HOLD_SECONDS).contains(&s) => s,
            _ => {
                return Err(FieldError::new(
                    "hold_seconds",
                    format!("must be between 1 and {MAX_HOLD_SECONDS} (0 for the default)"),
                ));
            }
        };
        Ok(Self {
            order_id,
            concert_id,
            quantity,
            hold_for: Duration::from_secs(seconds.unsigned_abs().into()),
        })
    }
}

/// Where a hold stands; stored as its lower-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    Held,
    Confirmed,
    Released,
    Expired,
}

impl HoldStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        [Self::Held, Self::Confirmed, Self::Released, Self::Expired]
            .into_iter()
            .find(|s| s.as_str() == stored)
    }

    /// Whether the seats still count as taken (held or sold).
    pub fn takes_seats(self) -> bool {
        matches!(self, Self::Held | Self::Confirmed)
    }
}

/// Seats held (or once held) for one order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub order_id: Uuid,
    pub concert_id: Uuid,
    pub quantity: i32,
    pub expires_at: DateTime<Utc>,
    pub status: HoldStatus,
    /// One seat's price (minor units of `currency`) when the seats were taken.
    pub price_cents: i64,
    pub currency: String,
}

impl Hold {
    /// Whether a repeated ReserveSeats asks for the same thing as the one that made this hold.
    pub fn matches(&self, request: &SeatRequest) -> bool {
        self.concert_id == request.concert_id && self.quantity == request.quantity
    }

    /// A held hold past its expiry is as good as expired: the sweeper just has not got to it yet.
    pub fn is_lapsed(&self, now: DateTime<Utc>) -> bool {
        self.status == HoldStatus::Held && self.expires_at <= now
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ids() -> (String, String) {
        (Uuid::new_v4().to_string(), Uuid::new_v4().to_string())
    }

    #[test]
    fn a_request_defaults_its_hold_to_ten_minutes() {
        let (order, concert) = ids();
        let request = SeatRequest::parse(&order, &concert, 2, 0).unwrap();
        assert_eq!(request.hold_for, Duration::from_secs(600));
        assert_eq!(request.quantity, 2);
    }

    #[test]
    fn out_of_range_requests_name_the_field() {
        let (order, concert) = ids();
        assert_eq!(SeatRequest::parse("x", &concert, 1, 0).unwrap_err().field, "order_id");
        assert_eq!(SeatRequest::parse(&order, "", 1, 0).unwrap_err().field, "concert_id");
        assert_eq!(SeatRequest::parse(&order, &concert, 0, 0).unwrap_err().field, "quantity");
        assert_eq!(SeatRequest::parse(&order, &concert, 101, 0).unwrap_err().field, "quantity");
        assert_eq!(SeatRequest::parse(&order, &concert, 1, -5).unwrap_err().field, "hold_seconds");
        assert_eq!(SeatRequest::parse(&order, &concert, 1, 3601).unwrap_err().field, "hold_seconds");
    }

    #[test]
    fn statuses_round_trip_through_their_stored_names() {
        for status in [HoldStatus::Held, HoldStatus::Confirmed, HoldStatus::Released, HoldStatus::Expired] {
            assert_eq!(HoldStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(HoldStatus::parse("HELD"), None);
        assert!(HoldStatus::Confirmed.takes_seats());
        assert!(!HoldStatus::Expired.takes_seats());
    }

    #[test]
    fn a_repeat_must_ask_for_the_same_seats() {
        let (order, concert) = ids();
        let request = SeatRequest::parse(&order, &concert, 2, 60).unwrap();
        let hold = Hold {
            order_id: request.order_id,
            concert_id: request.concert_id,
            quantity: 2,
            expires_at: Utc::now(),
            status: HoldStatus::Held,
            price_cents: 4_500,
            currency: "EUR".into(),
        };
        assert!(hold.matches(&request));
        assert!(!Hold { quantity: 3, ..hold.clone() }.matches(&request));
        assert!(hold.is_lapsed(Utc::now()));
    }
}
