//! Concerts: public browsing over catalog's paged list, and the admin mutations that change them.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use chrono::{DateTime, Datelike, Utc};
use proto::catalog::v1 as pb;
use uuid::Uuid;

use super::{Services, paging, parse_id};
use crate::auth;
use crate::downstream::catalog::CatalogClient;
use crate::error::GatewayError;

/// An amount of money: an integer number of minor units (cents) and its currency.
#[derive(Debug, Clone, PartialEq, Eq, SimpleObject)]
pub struct Money {
    /// The amount in minor units of `currency`, e.g. 4500 for 45.00 EUR.
    pub cents: i64,
    /// ISO 4217 currency code, upper case, e.g. "EUR".
    pub currency: String,
}

/// A concert and how many of its seats are still for sale.
#[derive(Debug, Clone, SimpleObject)]
pub struct Concert {
    /// The concert's id.
    pub id: ID,
    /// What the concert is called.
    pub title: String,
    /// Who performs.
    pub artist: String,
    /// Where it takes place.
    pub venue: String,
    /// The venue's city.
    pub city: String,
    /// When the show starts (RFC 3339, UTC).
    pub starts_at: DateTime<Utc>,
    /// The price of one seat.
    pub price: Money,
    /// Seats in total.
    pub capacity: i32,
    /// Seats neither sold nor held. May lag by a few seconds while browsing; ordering always
    /// checks the current number.
    pub available: i32,
}

impl From<pb::Concert> for Concert {
    fn from(concert: pb::Concert) -> Self {
        Self {
            id: ID(concert.id),
            title: concert.title,
            artist: concert.artist,
            venue: concert.venue,
            city: concert.city,
            starts_at: concert.starts_at.map(timestamp_to_utc).unwrap_or(DateTime::<Utc>::MIN_UTC),
            price: Money { cents: concert.price_cents, currency: concert.currency },
            capacity: concert.capacity,
            available: concert.available,
        }
    }
}

/// Narrows the concert list; every field is optional and set fields combine with AND.
#[derive(Debug, Clone, Default, InputObject)]
pub struct ConcertFilter {
    /// Only concerts in this city (case-insensitive).
    pub city: Option<String>,
    /// Only concerts by this artist (case-insensitive).
    pub artist: Option<String>,
    /// Only concerts whose title, artist or venue contains this text (case-insensitive).
    pub search: Option<String>,
    /// Only concerts starting at or after this time.
    pub starts_after: Option<DateTime<Utc>>,
    /// Only concerts starting before this time.
    pub starts_before: Option<DateTime<Utc>>,
}

/// Longest filter text catalog accepts.
const MAX_FILTER_CHARS: usize = 200;

impl ConcertFilter {
    /// Refuses what catalog would refuse anyway, naming the argument as the client wrote it and
    /// sparing catalog the call. Catalog checks again: it owns these rules.
    fn check(&self) -> Result<(), GatewayError> {
        for (field, text) in
            [("filter.city", &self.city), ("filter.artist", &self.artist), ("filter.search", &self.search)]
        {
            let Some(text) = text else { continue };
            if text.chars().any(char::is_control) {
                return Err(GatewayError::invalid(field, "must not contain control characters"));
            }
            if text.trim().chars().count() > MAX_FILTER_CHARS {
                return Err(GatewayError::invalid(
                    field,
                    format!("must be at most {MAX_FILTER_CHARS} characters"),
                ));
            }
        }
        for (field, at) in
            [("filter.startsAfter", self.starts_after), ("filter.startsBefore", self.starts_before)]
        {
            if at.is_some_and(|at| !(1..=9999).contains(&at.year())) {
                return Err(GatewayError::invalid(field, "must be between the years 1 and 9999"));
            }
        }
        if let (Some(from), Some(to)) = (self.starts_after, self.starts_before)
            && from >= to
        {
            return Err(GatewayError::invalid("filter.startsBefore", "must be later than startsAfter"));
        }
        Ok(())
    }
}

/// A new concert; every seat starts available.
#[derive(Debug, Clone, InputObject)]
pub struct CreateConcertInput {
    /// 1 to 200 characters.
    pub title: String,
    /// 1 to 200 characters.
    pub artist: String,
    /// 1 to 200 characters.
    pub venue: String,
    /// 1 to 100 characters.
    pub city: String,
    /// Must be in the future.
    pub starts_at: DateTime<Utc>,
    /// Price of one seat in minor units (cents), 0 to 100000000.
    pub price_cents: i64,
    /// ISO 4217 code, e.g. "EUR".
    pub currency: String,
    /// 1 to 100000 seats.
    pub capacity: i32,
}

/// Changes to a concert: only the fields given change, with the same rules as when creating it.
#[derive(Debug, Clone, Default, InputObject)]
pub struct UpdateConcertInput {
    /// New title.
    pub title: Option<String>,
    /// New artist.
    pub artist: Option<String>,
    /// New venue.
    pub venue: Option<String>,
    /// New city.
    pub city: Option<String>,
    /// New start time; must be in the future.
    pub starts_at: Option<DateTime<Utc>>,
    /// New price of one seat in minor units.
    pub price_cents: Option<i64>,
    /// New currency.
    pub currency: Option<String>,
    /// New capacity; cannot drop below the seats already sold or held.
    pub capacity: Option<i32>,
}

/// Browsing concerts (public).
#[derive(Default)]
pub struct ConcertQueries;

#[Object]
impl ConcertQueries {
    /// Concerts in start-time order (then by id), filtered and paged (Relay connection).
    #[graphql(complexity = "1 + (first.clamp(0, 100) as usize) * child_complexity")]
    async fn concerts(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "How many concerts to return, 0 to 100.", default = 20)] first: i32,
        #[graphql(desc = "Return the concerts after this cursor (an `endCursor` or edge cursor).")]
        after: Option<String>,
        #[graphql(desc = "Which concerts to list.")] filter: Option<ConcertFilter>,
    ) -> Result<Connection<String, Concert>, GatewayError> {
        let services = Services::of(ctx);
        let first = paging::page_size(first)?;
        let filter = filter.unwrap_or_default();
        filter.check()?;
        let had_cursor = after.is_some();
        let page = paging::collect(after.as_deref(), first, |page_token, page_size| {
            let request = list_request(&filter, page_token, page_size);
            async move {
                let response = services.catalog.list_concerts(request).await?;
                Ok((response.concerts, response.next_page_token))
            }
        })
        .await?;
        let mut connection = Connection::new(had_cursor, page.has_next);
        connection.edges.extend(
            page.edges.into_iter().map(|(cursor, concert)| Edge::new(cursor, Concert::from(concert))),
        );
        Ok(connection)
    }

    /// One concert by id; `NOT_FOUND` if there is none.
    async fn concert(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The concert's id.")] id: ID,
    ) -> async_graphql::Result<Option<Concert>> {
        let id = parse_id(&id, "id")?;
        // Through the request's loader, so a document of many `concert` aliases costs catalog one
        // BatchGetConcerts, not one call each.
        match load_concert(ctx, id).await? {
            Some(concert) => Ok(Some(concert)),
            None => Err(GatewayError::NotFound("concert").into()),
        }
    }

    /// Federation: resolves a `Concert` entity (`@key(fields: "id")`) for a router, through the
    /// request's loader, so all representations of one `_entities` call cost one catalog call.
    #[graphql(entity)]
    async fn find_concert_by_id(
        &self,
        ctx: &Context<'_>,
        #[graphql(key, desc = "The concert's id.")] id: ID,
    ) -> async_graphql::Result<Option<Concert>> {
        load_concert(ctx, parse_id(&id, "id")?).await
    }
}

/// Managing concerts (role `admin`).
#[derive(Default)]
pub struct ConcertMutations;

#[Object]
impl ConcertMutations {
    /// Adds a concert to the catalogue (admin only).
    async fn create_concert(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new concert.")] input: CreateConcertInput,
    ) -> Result<Concert, GatewayError> {
        let viewer = auth::admin(ctx)?;
        let request = pb::CreateConcertRequest {
            title: input.title,
            artist: input.artist,
            venue: input.venue,
            city: input.city,
            starts_at: Some(utc_to_timestamp(input.starts_at)),
            price_cents: input.price_cents,
            currency: input.currency,
            capacity: input.capacity,
        };
        let services = Services::of(ctx);
        let created = services.catalog.create_concert(&viewer.token, request).await?;
        // Cached pages of the catalogue are now missing a concert.
        services.response_cache.invalidate_all();
        Ok(created.into())
    }

    /// Changes some fields of a concert (admin only).
    async fn update_concert(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The concert to change.")] id: ID,
        #[graphql(desc = "The fields to change.")] input: UpdateConcertInput,
    ) -> Result<Concert, GatewayError> {
        let viewer = auth::admin(ctx)?;
        let id = parse_id(&id, "id")?;
        let request = pb::UpdateConcertRequest {
            id: id.to_string(),
            title: input.title,
            artist: input.artist,
            venue: input.venue,
            city: input.city,
            starts_at: input.starts_at.map(utc_to_timestamp),
            price_cents: input.price_cents,
            currency: input.currency,
            capacity: input.capacity,
        };
        let services = Services::of(ctx);
        let updated = services.catalog.update_concert(&viewer.token, request).await?;
        services.response_cache.invalidate_all();
        Ok(updated.into())
    }
}

fn list_request(filter: &ConcertFilter, page_token: String, page_size: usize) -> pb::ListConcertsRequest {
    pb::ListConcertsRequest {
        page_size: i32::try_from(page_size).unwrap_or(i32::MAX),
        page_token,
        city: filter.city.clone().unwrap_or_default(),
        artist: filter.artist.clone().unwrap_or_default(),
        query: filter.search.clone().unwrap_or_default(),
        starts_after: filter.starts_after.map(utc_to_timestamp),
        starts_before: filter.starts_before.map(utc_to_timestamp),
    }
}

/// Batches `Order.concert` lookups: all concerts one response needs come from one
/// `BatchGetConcerts` call (per 100 ids).
pub struct ConcertLoader {
    catalog: Arc<CatalogClient>,
}

impl ConcertLoader {
    /// A loader for one request (or one WebSocket connection); it batches but does not cache, so
    /// availability is never staler than catalog's own cache.
    pub fn new(catalog: Arc<CatalogClient>) -> DataLoader<Self> {
        DataLoader::new(Self { catalog }, tokio::spawn).max_batch_size(paging::MAX_DOWNSTREAM_PAGE)
    }
}

impl Loader<Uuid> for ConcertLoader {
    type Value = Concert;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Concert>, Self::Error> {
        let ids = keys.iter().map(Uuid::to_string).collect();
        let concerts = self.catalog.batch_get_concerts(ids).await.map_err(GatewayError::into_graphql)?;
        Ok(concerts
            .into_iter()
            .filter_map(|concert| Some((concert.id.parse().ok()?, Concert::from(concert))))
            .collect())
    }
}

/// Loads one concert through the request's loader (batched with its siblings).
pub async fn load_concert(ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Option<Concert>> {
    match ctx.data_opt::<DataLoader<ConcertLoader>>() {
        Some(loader) => loader.load_one(id).await,
        None => Ok(Some(Services::of(ctx).catalog.get_concert(id.to_string()).await?.into())),
    }
}

pub fn timestamp_to_utc(timestamp: prost_types::Timestamp) -> DateTime<Utc> {
    let nanos = u32::try_from(timestamp.nanos).unwrap_or(0);
    DateTime::from_timestamp(timestamp.seconds, nanos).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub fn utc_to_timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let time = DateTime::parse_from_rfc3339("2031-06-01T19:30:00.250Z").unwrap().with_timezone(&Utc);
        assert_eq!(timestamp_to_utc(utc_to_timestamp(time)), time);
    }

    #[test]
    fn bad_filters_are_refused_naming_the_argument() {
        let field = |filter: ConcertFilter| match filter.check() {
            Err(GatewayError::BadUserInput { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let far = DateTime::<Utc>::MAX_UTC;
        let cases = [
            ("filter.city", ConcertFilter { city: Some("Ber\0lin".into()), ..Default::default() }),
            ("filter.artist", ConcertFilter { artist: Some("\u{1b}[31m".into()), ..Default::default() }),
            ("filter.search", ConcertFilter { search: Some("x".repeat(201)), ..Default::default() }),
            ("filter.startsAfter", ConcertFilter { starts_after: Some(far), ..Default::default() }),
            (
                "filter.startsBefore",
                ConcertFilter { starts_before: Some(DateTime::<Utc>::MIN_UTC), ..Default::default() },
            ),
            (
                "filter.startsBefore",
                ConcertFilter {
                    starts_after: Some(Utc::now()),
                    starts_before: Some(Utc::now() - chrono::Duration::days(1)),
                    ..Default::default()
                },
            ),
        ];
        for (expected, filter) in cases {
            assert_eq!(field(filter).as_deref(), Some(expected));
        }
        assert!(ConcertFilter { city: Some(" Zürich ".into()), ..Default::default() }.check().is_ok());
    }

    #[test]
    fn filters_map_to_catalog_fields() {
        let filter = ConcertFilter {
            city: Some("Amsterdam".into()),
            search: Some("tour".into()),
            ..Default::default()
        };
        let request = list_request(&filter, "tok".into(), 20);
        assert_eq!(
            (request.city.as_str(), request.query.as_str(), request.page_size),
            ("Amsterdam", "tour", 20)
        );
        assert_eq!(request.page_token, "tok");
        assert!(request.artist.is_empty() && request.starts_after.is_none());
    }
}
