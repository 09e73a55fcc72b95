//! Concerts: reads through the Redis cache (with stampede protection), admin writes that invalidate it.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::cache::{Cache, Version};
use crate::domain::{Concert, ConcertChanges, FieldError, Keyset, ListQuery, NewConcert, Page};
use crate::error::CatalogError;
use crate::singleflight::SingleFlight;

const COLUMNS: &str = "id, title, artist, venue, city, starts_at, price_cents, currency, capacity, available";

type Loaded<T> = Result<T, Arc<sqlx::Error>>;

/// The concert store. Cheap to clone.
#[derive(Clone)]
pub struct Concerts {
    pool: PgPool,
    cache: Cache,
    flights: Arc<Flights>,
}

/// Loads in flight, per kind of read.
#[derive(Default)]
struct Flights {
    one: SingleFlight<Loaded<Option<Concert>>>,
    many: SingleFlight<Loaded<Vec<Concert>>>,
    pages: SingleFlight<Loaded<Page>>,
}

fn count(outcome: &'static str, op: &'static str, n: usize) {
    if n > 0 {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        match outcome {
            "hit" => metrics::counter!("catalog_cache_hits_total", "op" => op).increment(n),
            _ => metrics::counter!("catalog_cache_misses_total", "op" => op).increment(n),
        }
    }
}

/// Loads are coalesced per cache version: a reader arriving after a write (which bumps the version)
/// never joins a load that started before it.
fn flight_key(version: Option<&Version>, rest: &str) -> String {
    format!("{version:?}/{rest}")
}

impl Concerts {
    pub fn new(pool: PgPool, cache: Cache) -> Self {
        Self { pool, cache, flights: Arc::default() }
    }

    pub async fn get(&self, id: Uuid) -> Result<Concert, CatalogError> {
        let cached = self.cache.concerts(&[id]).await;
        let version = match cached {
            Some((version, mut hits)) => match hits.pop().flatten() {
                Some(concert) => {
                    count("hit", "get", 1);
                    return Ok(concert);
                }
                None => Some(version),
            },
            None => None,
        };
        count("miss", "get", 1);
        let key = flight_key(version.as_ref(), &id.to_string());
        let (pool, cache) = (self.pool.clone(), self.cache.clone());
        let loaded = self
            .flights
            .one
            .run(&key, async move {
                let found = fetch_one(&pool, id).await.map_err(Arc::new)?;
                if let (Some(version), Some(concert)) = (&version, &found) {
                    cache.store_concerts(version, std::slice::from_ref(concert)).await;
                }
                Ok(found)
            })
            .await
            .map_err(CatalogError::Database)?;
        loaded.ok_or(CatalogError::ConcertNotFound)
    }

    /// The concerts with these ids, in the order asked, leaving out unknown ids.
    pub async fn batch_get(&self, ids: &[Uuid]) -> Result<Vec<Concert>, CatalogError> {
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();

        let mut found: HashMap<Uuid, Concert> = HashMap::with_capacity(unique.len());
        let mut version = None;
        if let Some((seen, cached)) = self.cache.concerts(&unique).await {
            found.extend(cached.into_iter().flatten().map(|c| (c.id, c)));
            version = Some(seen);
        }
        let missing: Vec<Uuid> = unique.iter().filter(|id| !found.contains_key(id)).copied().collect();
        count("hit", "batch_get", found.len());
        count("miss", "batch_get", missing.len());

        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|id| id.simple().to_string()).collect();
            let key = flight_key(version.as_ref(), &names.join(","));
            let (pool, cache) = (self.pool.clone(), self.cache.clone());
            let loaded = self
                .flights
                .many
                .run(&key, async move {
                    let loaded = fetch_many(&pool, &missing).await.map_err(Arc::new)?;
                    if let Some(version) = &version {
                        cache.store_concerts(version, &loaded).await;
                    }
                    Ok(loaded)
                })
                .await
                .map_err(CatalogError::Database)?;
            found.extend(loaded.into_iter().map(|c| (c.id, c)));
        }
        Ok(ids.iter().filter_map(|id| found.get(id).cloned()).collect())
    }

    pub async fn list(&self, query: ListQuery) -> Result<Page, CatalogError> {
        let version = match self.cache.page(&query).await {
            Some((_, Some(page))) => {
                count("hit", "list", 1);
                return Ok(page);
            }
            Some((version, None)) => Some(version),
            None => None,
        };
        count("miss", "list", 1);
        let key = flight_key(version.as_ref(), &query.cache_key());
        let (pool, cache) = (self.pool.clone(), self.cache.clone());
        self.flights
            .pages
            .run(&key, async move {
                let page = fetch_page(&pool, &query).await.map_err(Arc::new)?;
                if let Some(version) = &version {
                    cache.store_page(version, &query, &page).await;
                }
                Ok(page)
            })
            .await
            .map_err(CatalogError::Database)
    }

    pub async fn create(&self, new: NewConcert) -> Result<Concert, CatalogError> {
        let concert = insert(&self.pool, &new).await?;
        self.cache.invalidate(&[]).await;
        tracing::info!(concert.id = %concert.id, "concert created");
        Ok(concert)
    }

    pub async fn update(&self, id: Uuid, changes: ConcertChanges) -> Result<Concert, CatalogError> {
        let concert = if changes.is_empty() {
            fetch_one(&self.pool, id).await?.ok_or(CatalogError::ConcertNotFound)?
        } else {
            apply_changes(&self.pool, id, &changes).await?
        };
        self.cache.invalidate(&[id]).await;
        tracing::info!(concert.id = %id, "concert updated");
        Ok(concert)
    }
}

/// A LIKE pattern matching `text` anywhere, with LIKE's own wildcards in it taken literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

async fn fetch_one(pool: &PgPool, id: Uuid) -> Result<Option<Concert>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM concerts WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

async fn fetch_many(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Concert>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM concerts WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(pool)
        .await
}

async fn fetch_page(pool: &PgPool, query: &ListQuery) -> Result<Page, sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM concerts WHERE TRUE"));
    if let Some(city) = &query.city {
        sql.push(" AND lower(city) = lower(").push_bind(city.clone()).push(")");
    }
    if let Some(artist) = &query.artist {
        sql.push(" AND lower(artist) = lower(").push_bind(artist.clone()).push(")");
    }
    if let Some(text) = &query.text {
        let pattern = contains_pattern(text);
        sql.push(" AND (title ILIKE ").push_bind(pattern.clone());
        sql.push(" OR artist ILIKE ").push_bind(pattern.clone());
        sql.push(" OR venue ILIKE ").push_bind(pattern).push(")");
    }
    if let Some(from) = query.starts_after {
        sql.push(" AND starts_at >= ").push_bind(from);
    }
    if let Some(to) = query.starts_before {
        sql.push(" AND starts_at < ").push_bind(to);
    }
    if let Some(after) = query.after {
        sql.push(" AND (starts_at, id) > (")
            .push_bind(after.starts_at)
            .push(", ")
            .push_bind(after.id)
            .push(")");
    }
    // One row more than the page tells whether there is a next page.
    sql.push(" ORDER BY starts_at, id LIMIT ").push_bind(i64::from(query.page_size) + 1);

    let mut concerts: Vec<Concert> = sql.build_query_as().fetch_all(pool).await?;
    let page_size = usize::try_from(query.page_size).unwrap_or(usize::MAX);
    let next = if concerts.len() > page_size {
        concerts.truncate(page_size);
        concerts.last().map(Keyset::of)
    } else {
        None
    };
    Ok(Page { concerts, next })
}

async fn insert(pool: &PgPool, new: &NewConcert) -> Result<Concert, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO concerts (id, title, artist, venue, city, starts_at, price_cents, currency, capacity, available)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&new.title)
    .bind(&new.artist)
    .bind(&new.venue)
    .bind(&new.city)
    .bind(new.starts_at)
    .bind(new.price_cents)
    .bind(new.currency.as_str())
    .bind(new.capacity)
    .fetch_one(pool)
    .await
}

/// One conditional UPDATE: a new capacity moves `available` by the difference and is refused if it
/// would not cover the seats already sold or held (capacity - available), checked on the row as it is
/// when the update runs, so a reservation landing meanwhile cannot slip under it.
async fn apply_changes(pool: &PgPool, id: Uuid, changes: &ConcertChanges) -> Result<Concert, CatalogError> {
    let updated: Option<Concert> = sqlx::query_as(&format!(
        "UPDATE concerts SET
             title = COALESCE($2, title),
             artist = COALESCE($3, artist),
             venue = COALESCE($4, venue),
             city = COALESCE($5, city),
             starts_at = COALESCE($6, starts_at),
             price_cents = COALESCE($7, price_cents),
             currency = COALESCE($8, currency),
             available = available + (COALESCE($9, capacity) - capacity),
             capacity = COALESCE($9, capacity),
             updated_at = now()
         WHERE id = $1 AND capacity - available <= COALESCE($9, capacity)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&changes.title)
    .bind(&changes.artist)
    .bind(&changes.venue)
    .bind(&changes.city)
    .bind(changes.starts_at)
    .bind(changes.price_cents)
    .bind(changes.currency.as_ref().map(|c| c.as_str()))
    .bind(changes.capacity)
    .fetch_optional(pool)
    .await?;
    if let Some(concert) = updated {
        return Ok(concert);
    }
    let taken: Option<i32> = sqlx::query_scalar("SELECT capacity - available FROM concerts WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    match taken {
        None => Err(CatalogError::ConcertNotFound),
        Some(taken) => Err(FieldError::new(
            "capacity",
            format!("must be at least {taken}, the seats already sold or held"),
        )
        .into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn text_search_takes_like_wildcards_literally() {
        assert_eq!(contains_pattern("AC/DC"), "%AC/DC%");
        assert_eq!(contains_pattern("100%_fun\\"), "%100\\%\\_fun\\\\%");
    }
}
