//! Browsing: filters, page sizes and the opaque page token (a keyset over start time then id).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Concert, FieldError, plain_text, time_in_range};

pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;
const MAX_FILTER_CHARS: usize = 200;
/// Far longer than any token [`Keyset::encode`] makes (about 70 characters).
const MAX_PAGE_TOKEN_CHARS: usize = 128;

/// A listing request as received.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    pub page_size: i32,
    pub page_token: String,
    pub city: String,
    pub artist: String,
    pub query: String,
    pub starts_after: Option<DateTime<Utc>>,
    pub starts_before: Option<DateTime<Utc>>,
}

/// A checked listing request. Its JSON form is the cache key of the page it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListQuery {
    pub page_size: u32,
    /// The last concert of the previous page; the page starts after it.
    pub after: Option<Keyset>,
    pub city: Option<String>,
    pub artist: Option<String>,
    /// Text to find in the title, artist or venue.
    pub text: Option<String>,
    /// Inclusive lower bound on the start time.
    pub starts_after: Option<DateTime<Utc>>,
    /// Exclusive upper bound on the start time.
    pub starts_before: Option<DateTime<Utc>>,
}

impl ListQuery {
    pub fn parse(request: ListRequest) -> Result<Self, FieldError> {
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n < 0 => return Err(FieldError::new("page_size", "must not be negative")),
            n => u32::try_from(n)
                .ok()
                .filter(|n| *n <= MAX_PAGE_SIZE)
                .ok_or_else(|| FieldError::new("page_size", format!("must be at most {MAX_PAGE_SIZE}")))?,
        };
        let after = match request.page_token.trim() {
            "" => None,
            token => Some(Keyset::decode(token)?),
        };
        let starts_after = request.starts_after.map(|at| time_in_range("starts_after", at)).transpose()?;
        let starts_before = request.starts_before.map(|at| time_in_range("starts_before", at)).transpose()?;
        if let (Some(from), Some(to)) = (starts_after, starts_before)
            && from >= to
        {
            return Err(FieldError::new("starts_before", "must be later than starts_after"));
        }
        Ok(Self {
            page_size,
            after,
            city: filter("city", &request.city)?,
            artist: filter("artist", &request.artist)?,
            text: filter("query", &request.query)?,
            starts_after,
            starts_before,
        })
    }

    /// A stable string naming exactly this request, for cache keys.
    pub fn cache_key(&self) -> String {
        // Serializing this struct cannot fail; the fallback still keeps distinct requests distinct.
        serde_json::to_string(self).unwrap_or_else(|_| format!("{self:?}"))
    }
}

fn filter(field: &str, raw: &str) -> Result<Option<String>, FieldError> {
    let value = raw.trim();
    if value.chars().count() > MAX_FILTER_CHARS {
        return Err(FieldError::new(field, format!("must be at most {MAX_FILTER_CHARS} characters")));
    }
    plain_text(field, value)?;
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// A position in the listing order: (start time, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyset {
    pub starts_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Keyset {
    pub fn of(concert: &Concert) -> Self {
        Self { starts_at: concert.starts_at, id: concert.id }
    }

    /// The opaque page token: base64url of `<start in microseconds>:<id>`. Microseconds are exactly what
    /// Postgres stores, so the token compares equal to the row it came from.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", self.starts_at.timestamp_micros(), self.id.simple()))
    }

    pub fn decode(token: &str) -> Result<Self, FieldError> {
        let invalid = || FieldError::new("page_token", "is not a token this service issued");
        if token.len() > MAX_PAGE_TOKEN_CHARS {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
        let (micros, id) = text.split_once(':').ok_or_else(invalid)?;
        let micros: i64 = micros.parse().map_err(|_| invalid())?;
        let starts_at = DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?;
        Ok(Self {
            // A token is only ever made from a stored concert, whose start is in range.
            starts_at: time_in_range("page_token", starts_at).map_err(|_| invalid())?,
            id: Uuid::parse_str(id).map_err(|_| invalid())?,
        })
    }
}

/// One page of concerts and where the next one starts (none after the last page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub concerts: Vec<Concert>,
    pub next: Option<Keyset>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn page_size_defaults_to_twenty_and_is_capped_at_a_hundred() {
        let parse = |page_size| ListQuery::parse(ListRequest { page_size, ..Default::default() });
        assert_eq!(parse(0).unwrap().page_size, 20);
        assert_eq!(parse(100).unwrap().page_size, 100);
        assert_eq!(parse(101).unwrap_err().to_string(), "page_size: must be at most 100");
        assert_eq!(parse(-1).unwrap_err().field, "page_size");
    }

    #[test]
    fn page_tokens_round_trip_at_microsecond_precision() {
        let starts_at = Utc.timestamp_opt(1_800_000_000, 123_456_000).unwrap();
        let keyset = Keyset { starts_at, id: Uuid::new_v4() };
        assert_eq!(Keyset::decode(&keyset.encode()), Ok(keyset));
    }

    #[test]
    fn a_forged_page_token_is_rejected() {
        let id = Uuid::new_v4().simple();
        for token in [
            "%%%",
            "bm90LWEtdG9rZW4",
            &URL_SAFE_NO_PAD.encode("12:not-a-uuid"),
            // Timestamps chrono takes but Postgres does not, and ones neither takes.
            &URL_SAFE_NO_PAD.encode(format!("{}:{id}", i64::MAX)),
            &URL_SAFE_NO_PAD.encode(format!("-9000000000000000000:{id}")),
            &URL_SAFE_NO_PAD.encode(format!("{}:{id}", DateTime::<Utc>::MAX_UTC.timestamp_micros())),
            &URL_SAFE_NO_PAD.encode(format!("253402300800000000:{id}")),
            &"A".repeat(10_000),
            &URL_SAFE_NO_PAD.encode(format!("1\0:{id}")),
        ] {
            let request = ListRequest { page_token: token.to_owned(), ..Default::default() };
            assert_eq!(ListQuery::parse(request).unwrap_err().field, "page_token");
        }
    }

    #[test]
    fn blank_filters_are_no_filters_and_an_empty_date_range_is_rejected() {
        let query = ListQuery::parse(ListRequest {
            city: "  ".into(),
            artist: " Adele ".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(query.city, None);
        assert_eq!(query.artist.as_deref(), Some("Adele"));

        let now = Utc::now();
        let request = ListRequest { starts_after: Some(now), starts_before: Some(now), ..Default::default() };
        assert_eq!(ListQuery::parse(request).unwrap_err().field, "starts_before");
    }

    #[test]
    fn control_characters_in_filters_are_refused_naming_the_filter() {
        for (field, request) in [
            ("city", ListRequest { city: "Ber\0lin".into(), ..Default::default() }),
            ("artist", ListRequest { artist: "A\u{7}".into(), ..Default::default() }),
            ("query", ListRequest { query: "\u{1b}[2J".into(), ..Default::default() }),
        ] {
            let error = ListQuery::parse(request).unwrap_err();
            assert_eq!(error.field, field);
            assert_eq!(error.message, "must not contain control characters");
        }
    }

    #[test]
    fn filter_dates_beyond_the_years_1_to_9999_are_refused() {
        let far = DateTime::from_timestamp(300_000_000_000, 0).unwrap();
        let request = ListRequest { starts_after: Some(far), ..Default::default() };
        assert_eq!(ListQuery::parse(request).unwrap_err().field, "starts_after");
        let request = ListRequest { starts_before: Some(DateTime::<Utc>::MIN_UTC), ..Default::default() };
        assert_eq!(ListQuery::parse(request).unwrap_err().field, "starts_before");
    }

    #[test]
    fn different_requests_have_different_cache_keys() {
        let a = ListQuery::parse(ListRequest { city: "Berlin".into(), ..Default::default() }).unwrap();
        let b = ListQuery::parse(ListRequest { artist: "Berlin".into(), ..Default::default() }).unwrap();
        assert_ne!(a.cache_key(), b.cache_key());
    }
}
