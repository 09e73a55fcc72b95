//! A concert and the rules for creating and changing one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Currency, FieldError, required_text, time_in_range};

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_ARTIST_CHARS: usize = 200;
pub const MAX_VENUE_CHARS: usize = 200;
pub const MAX_CITY_CHARS: usize = 100;
/// One million in major units: a typo guard, not a business limit.
pub const MAX_PRICE_CENTS: i64 = 100_000_000;
pub const MAX_CAPACITY: i32 = 100_000;

/// A concert as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Concert {
    pub id: Uuid,
    pub title: String,
    pub artist: String,
    pub venue: String,
    pub city: String,
    pub starts_at: DateTime<Utc>,
    pub price_cents: i64,
    pub currency: String,
    pub capacity: i32,
    /// Seats neither sold nor held.
    pub available: i32,
}

/// A concert as an admin typed it, not yet checked.
#[derive(Debug, Clone, Default)]
pub struct ConcertDraft {
    pub title: String,
    pub artist: String,
    pub venue: String,
    pub city: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub price_cents: i64,
    pub currency: String,
    pub capacity: i32,
}

/// A concert that may be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConcert {
    pub title: String,
    pub artist: String,
    pub venue: String,
    pub city: String,
    pub starts_at: DateTime<Utc>,
    pub price_cents: i64,
    pub currency: Currency,
    pub capacity: i32,
}

impl NewConcert {
    /// Checks every field; the first broken rule is the error. `now` decides what "future" means.
    pub fn parse(draft: ConcertDraft, now: DateTime<Utc>) -> Result<Self, FieldError> {
        Ok(Self {
            title: required_text("title", &draft.title, MAX_TITLE_CHARS)?,
            artist: required_text("artist", &draft.artist, MAX_ARTIST_CHARS)?,
            venue: required_text("venue", &draft.venue, MAX_VENUE_CHARS)?,
            city: required_text("city", &draft.city, MAX_CITY_CHARS)?,
            starts_at: future_start(
                draft.starts_at.ok_or_else(|| FieldError::new("starts_at", "is required"))?,
                now,
            )?,
            price_cents: price_cents(draft.price_cents)?,
            currency: Currency::parse("currency", &draft.currency)?,
            capacity: capacity(draft.capacity)?,
        })
    }
}

/// Changes an admin asked for, not yet checked: `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ConcertPatch {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub venue: Option<String>,
    pub city: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub price_cents: Option<i64>,
    pub currency: Option<String>,
    pub capacity: Option<i32>,
}

/// Changes that may be applied, each under the same rules as a new concert. Whether a new capacity
/// still covers the seats sold or held depends on the stored row, so the update statement checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConcertChanges {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub venue: Option<String>,
    pub city: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub price_cents: Option<i64>,
    pub currency: Option<Currency>,
    pub capacity: Option<i32>,
}

impl ConcertChanges {
    pub fn parse(patch: ConcertPatch, now: DateTime<Utc>) -> Result<Self, FieldError> {
        Ok(Self {
            title: patch.title.map(|v| required_text("title", &v, MAX_TITLE_CHARS)).transpose()?,
            artist: patch.artist.map(|v| required_text("artist", &v, MAX_ARTIST_CHARS)).transpose()?,
            venue: patch.venue.map(|v| required_text("venue", &v, MAX_VENUE_CHARS)).transpose()?,
            city: patch.city.map(|v| required_text("city", &v, MAX_CITY_CHARS)).transpose()?,
            starts_at: patch.starts_at.map(|v| future_start(v, now)).transpose()?,
            price_cents: patch.price_cents.map(price_cents).transpose()?,
            currency: patch.currency.map(|v| Currency::parse("currency", &v)).transpose()?,
            capacity: patch.capacity.map(capacity).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

fn future_start(starts_at: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>, FieldError> {
    if starts_at <= now {
        return Err(FieldError::new("starts_at", "must be in the future"));
    }
    time_in_range("starts_at", starts_at)
}

fn price_cents(value: i64) -> Result<i64, FieldError> {
    match value {
        ..0 => Err(FieldError::new("price_cents", "must not be negative")),
        0..=MAX_PRICE_CENTS => Ok(value),
        _ => Err(FieldError::new("price_cents", format!("must be at most {MAX_PRICE_CENTS}"))),
    }
}

fn capacity(value: i32) -> Result<i32, FieldError> {
    if (1..=MAX_CAPACITY).contains(&value) {
        Ok(value)
    } else {
        Err(FieldError::new("capacity", format!("must be between 1 and {MAX_CAPACITY}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn draft(now: DateTime<Utc>) -> ConcertDraft {
        ConcertDraft {
            title: " Midnight Echoes Tour ".into(),
            artist: "The Lumineers".into(),
            venue: "Ziggo Dome".into(),
            city: "Amsterdam".into(),
            starts_at: Some(now + Duration::days(30)),
            price_cents: 6_500,
            currency: "eur".into(),
            capacity: 17_000,
        }
    }

    fn field_of(result: Result<NewConcert, FieldError>) -> String {
        result.unwrap_err().field
    }

    #[test]
    fn a_complete_draft_becomes_a_trimmed_normalised_concert() {
        let now = Utc::now();
        let concert = NewConcert::parse(draft(now), now).unwrap();
        assert_eq!(concert.title, "Midnight Echoes Tour");
        assert_eq!(concert.currency.as_str(), "EUR");
        assert_eq!(concert.capacity, 17_000);
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        let now = Utc::now();
        type BreakRule = Box<dyn Fn(&mut ConcertDraft)>;
        let cases: Vec<(&str, BreakRule)> = vec![
            ("title", Box::new(|d| d.title = "  ".into())),
            ("artist", Box::new(|d| d.artist = "x".repeat(201))),
            ("venue", Box::new(|d| d.venue = String::new())),
            ("city", Box::new(|d| d.city = "y".repeat(101))),
            ("starts_at", Box::new(|d| d.starts_at = None)),
            ("starts_at", Box::new(move |d| d.starts_at = Some(now - Duration::minutes(1)))),
            ("price_cents", Box::new(|d| d.price_cents = -1)),
            ("price_cents", Box::new(|d| d.price_cents = MAX_PRICE_CENTS + 1)),
            ("currency", Box::new(|d| d.currency = "EURO".into())),
            ("capacity", Box::new(|d| d.capacity = 0)),
            ("capacity", Box::new(|d| d.capacity = 100_001)),
            ("title", Box::new(|d| d.title = "Live\0".into())),
            ("city", Box::new(|d| d.city = "Ber\u{1}lin".into())),
            ("starts_at", Box::new(|d| d.starts_at = Some(DateTime::<Utc>::MAX_UTC))),
        ];
        for (field, break_rule) in cases {
            let mut d = draft(now);
            break_rule(&mut d);
            assert_eq!(field_of(NewConcert::parse(d, now)), field);
        }
    }

    #[test]
    fn free_concerts_and_the_capacity_bounds_are_allowed() {
        let now = Utc::now();
        for (price, capacity) in [(0, 1), (MAX_PRICE_CENTS, MAX_CAPACITY)] {
            let d = ConcertDraft { price_cents: price, capacity, ..draft(now) };
            assert!(NewConcert::parse(d, now).is_ok());
        }
    }

    #[test]
    fn changes_are_checked_only_for_the_fields_given() {
        let now = Utc::now();
        let changes =
            ConcertChanges::parse(ConcertPatch { title: Some(" New ".into()), ..Default::default() }, now)
                .unwrap();
        assert_eq!(changes.title.as_deref(), Some("New"));
        assert!(changes.capacity.is_none());
        assert!(ConcertChanges::parse(ConcertPatch::default(), now).unwrap().is_empty());

        let bad = ConcertPatch { capacity: Some(0), ..Default::default() };
        assert_eq!(
            ConcertChanges::parse(bad, now).unwrap_err().to_string(),
            "capacity: must be between 1 and 100000"
        );
        let past = ConcertPatch { starts_at: Some(now - Duration::days(1)), ..Default::default() };
        assert_eq!(ConcertChanges::parse(past, now).unwrap_err().field, "starts_at");
    }
}
