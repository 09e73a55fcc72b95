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

/// A trimmed, non-empty text of at most `max_chars` characters.
pub fn required_text(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldError> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if text.chars().count() > max_chars {
        return Err(FieldError::new(field, format!("must be at most {max_chars} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
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
