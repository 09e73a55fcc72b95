//! The catalog's rules as plain types and functions, testable without a network: what a valid concert,
//! change, listing request or seat request is. Values that exist are valid; handlers never re-check.

mod concert;
mod currency;
mod listing;
mod seats;

pub use concert::{Concert, ConcertChanges, ConcertDraft, ConcertPatch, NewConcert};
pub use currency::Currency;
pub use listing::{DEFAULT_PAGE_SIZE, Keyset, ListQuery, ListRequest, MAX_PAGE_SIZE, Page};
pub use seats::{DEFAULT_HOLD_SECONDS, Hold, HoldStatus, MAX_HOLD_SECONDS, MAX_QUANTITY, SeatRequest};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// An input that breaks a rule: `field` names it the way the API does, `message` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A UUID sent as a string.
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, FieldError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    Uuid::parse_str(raw).map_err(|_| FieldError::new(field, "must be a UUID"))
}

/// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in microseconds since the epoch.
const EARLIEST_MICROS: i64 = -62_135_596_800_000_000;
const LATEST_MICROS: i64 = 253_402_300_799_999_999;

/// An instant catalog accepts anywhere (filters, page tokens, start times): years 1 to 9999, which
/// Postgres stores, RFC 3339 writes and every client parses. Beyond them Postgres answers "timestamp
/// out of range", which is the request's fault and must never become an internal error.
pub fn time_in_range(field: &str, at: DateTime<Utc>) -> Result<DateTime<Utc>, FieldError> {
    if (EARLIEST_MICROS..=LATEST_MICROS).contains(&at.timestamp_micros()) {
        Ok(at)
    } else {
        Err(FieldError::new(field, "must be between the years 1 and 9999"))
    }
}

/// Text with no control characters: Postgres refuses NUL in text outright, and none of the others
/// belongs in a name, a city or a search.
pub fn plain_text(field: &str, text: &str) -> Result<(), FieldError> {
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// A trimmed, non-empty text of at most `max_chars` characters.
pub fn required_text(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if text.chars().count() > max_chars {
        return Err(FieldError::new(field, format!("must be at most {max_chars} characters")));
    }
    plain_text(field, text)?;
    Ok(text.to_owned())
}

/// Most ids one BatchGetConcerts may ask for.
pub const MAX_BATCH_IDS: usize = 100;

/// The ids of a batch read, in request order (repeats allowed).
pub fn parse_batch_ids(raw: &[String]) -> Result<Vec<Uuid>, FieldError> {
    if raw.len() > MAX_BATCH_IDS {
        return Err(FieldError::new("ids", format!("must list at most {MAX_BATCH_IDS} ids")));
    }
    raw.iter().enumerate().map(|(i, id)| parse_id(&format!("ids[{i}]"), id)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_must_be_uuids() {
        assert_eq!(parse_id("id", " ").unwrap_err().to_string(), "id: must not be empty");
        assert_eq!(parse_id("id", "42").unwrap_err().to_string(), "id: must be a UUID");
        let id = Uuid::new_v4();
        assert_eq!(parse_id("id", &id.to_string()), Ok(id));
    }

    #[test]
    fn batches_are_capped_and_name_the_bad_id() {
        let ids: Vec<String> = (0..3).map(|_| Uuid::new_v4().to_string()).collect();
        assert_eq!(parse_batch_ids(&ids).unwrap().len(), 3);
        let mut bad = ids.clone();
        bad[1] = "nope".into();
        assert_eq!(parse_batch_ids(&bad).unwrap_err().field, "ids[1]");
        let too_many: Vec<String> = (0..101).map(|_| Uuid::new_v4().to_string()).collect();
        assert_eq!(parse_batch_ids(&too_many).unwrap_err().field, "ids");
    }

    #[test]
    fn times_beyond_the_years_1_to_9999_are_refused() {
        let at = |micros| DateTime::from_timestamp_micros(micros).unwrap();
        assert!(time_in_range("t", at(EARLIEST_MICROS)).is_ok());
        assert!(time_in_range("t", at(LATEST_MICROS)).is_ok());
        assert_eq!(time_in_range("t", at(EARLIEST_MICROS - 1)).unwrap_err().field, "t");
        assert!(time_in_range("t", at(LATEST_MICROS + 1)).is_err());
        assert!(time_in_range("t", DateTime::<Utc>::MAX_UTC).is_err());
        assert!(time_in_range("t", DateTime::<Utc>::MIN_UTC).is_err());
    }

    #[test]
    fn text_is_trimmed_and_capped() {
        assert_eq!(required_text("title", "  Live  ", 10).unwrap(), "Live");
        assert_eq!(required_text("title", "   ", 10).unwrap_err().to_string(), "title: must not be empty");
        assert_eq!(
            required_text("title", "abcdefghijk", 10).unwrap_err().to_string(),
            "title: must be at most 10 characters"
        );
        assert!(required_text("title", "a\u{0}b", 10).is_err());
        // Characters, not bytes.
        assert!(required_text("city", "Zürich Zürich", 13).is_ok());
    }
}
