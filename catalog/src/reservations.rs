//! Seat holds: reserve, confirm and release for ordering, and the sweeper that gives back the seats of
//! holds that expire unconfirmed.
//!
//! `concerts.available` only changes in conditional statements that lock a hold row first and then
//! its concert row, in every path (reserve, release, sweep), so they cannot deadlock one another and
//! no interleaving can oversell. Reservations never read the cache; every change of `available`
//! invalidates it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cache::Cache;
use crate::domain::{Hold, HoldStatus, SeatRequest};
use crate::error::CatalogError;

/// Expired holds released per statement; the sweeper loops until a batch comes back short.
const SWEEP_BATCH: i64 = 500;

/// Every column of a hold that [`HoldRow`] reads.
const HOLD_COLUMNS: &str = "order_id, concert_id, quantity, status, expires_at, price_cents, currency";

/// A hold as stored.
#[derive(sqlx::FromRow)]
struct HoldRow {
    order_id: Uuid,
    concert_id: Uuid,
    quantity: i32,
    status: String,
    expires_at: DateTime<Utc>,
    price_cents: i64,
    currency: String,
}

/// What ReserveSeats's statement returns: the new hold, and whether its seats were taken.
#[derive(sqlx::FromRow)]
struct Reserved {
    #[sqlx(flatten)]
    hold: HoldRow,
    taken: bool,
}

impl TryFrom<HoldRow> for Hold {
    type Error = CatalogError;

    fn try_from(row: HoldRow) -> Result<Self, Self::Error> {
        let status = HoldStatus::parse(&row.status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown hold status {:?}", row.status).into()))?;
        Ok(Hold {
            order_id: row.order_id,
            concert_id: row.concert_id,
            quantity: row.quantity,
            expires_at: row.expires_at,
            status,
            price_cents: row.price_cents,
            currency: row.currency,
        })
    }
}

/// What one ReserveSeats did, for the `catalog_reservations_total{outcome}` metric.
fn outcome_label(result: &Result<(Hold, bool), CatalogError>) -> &'static str {
    match result {
        Ok((_, true)) => "held",
        Ok((_, false)) => "replayed",
        Err(CatalogError::SoldOut) => "sold_out",
        Err(CatalogError::ConcertNotFound) => "unknown_concert",
        Err(CatalogError::HoldMismatch) => "mismatch",
        Err(_) => "error",
    }
}

/// The seat inventory. Cheap to clone.
#[derive(Clone)]
pub struct Reservations {
    pool: PgPool,
    cache: Cache,
}

impl Reservations {
    pub fn new(pool: PgPool, cache: Cache) -> Self {
        Self { pool, cache }
    }

    /// Holds the seats, or returns the hold this order already has.
    pub async fn reserve(&self, request: SeatRequest) -> Result<Hold, CatalogError> {
        let result = self.try_reserve(&request).await;
        metrics::counter!("catalog_reservations_total", "outcome" => outcome_label(&result)).increment(1);
        let (hold, created) = result?;
        if created {
            self.cache.invalidate(&[hold.concert_id]).await;
            tracing::info!(order.id = %hold.order_id, concert.id = %hold.concert_id, seats = hold.quantity, "seats held");
        }
        Ok(hold)
    }

    /// `(hold, true)` when seats were taken now, `(hold, false)` for a repeat of an earlier request.
    async fn try_reserve(&self, request: &SeatRequest) -> Result<(Hold, bool), CatalogError> {
        // The hold row goes in first: a second request with the same order id waits on its unique key
        // until this transaction ends, then finds it (DO NOTHING) instead of taking seats again. Seats
        // are taken only if the hold is new and enough are left, in the same statement; if not, the
        // transaction is rolled back and the hold disappears with it. The hold keeps the concert's
        // price as this statement read it, which is what the order is priced at.
        let mut tx = self.pool.begin().await?;
        let inserted: Option<Reserved> = sqlx::query_as(&format!(
            "WITH hold AS (
                 INSERT INTO holds ({HOLD_COLUMNS})
                 SELECT $1, c.id, $3, 'held', now() + make_interval(secs => $4), c.price_cents, c.currency
                 FROM concerts c WHERE c.id = $2
                 ON CONFLICT (order_id) DO NOTHING
                 RETURNING {HOLD_COLUMNS}
             ), taken AS (
                 UPDATE concerts SET available = available - $3, updated_at = now()
                 WHERE id = $2 AND available >= $3 AND EXISTS (SELECT 1 FROM hold)
                 RETURNING id
             )
             SELECT {HOLD_COLUMNS}, EXISTS (SELECT 1 FROM taken) AS taken
             FROM hold"
        ))
        .bind(request.order_id)
        .bind(request.concert_id)
        .bind(request.quantity)
        .bind(request.hold_for.as_secs_f64())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| match &error {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => CatalogError::ConcertNotFound,
            _ => error.into(),
        })?;

        match inserted {
            Some(Reserved { hold, taken: true }) => {
                tx.commit().await?;
                Ok((hold.try_into()?, true))
            }
            Some(Reserved { taken: false, .. }) => {
                tx.rollback().await?;
                Err(CatalogError::SoldOut)
            }
            None => {
                tx.rollback().await?;
                // Nothing inserted and no hold with this order id: the concert does not exist.
                let existing = self.find(request.order_id).await?.ok_or(CatalogError::ConcertNotFound)?;
                if existing.matches(request) {
                    Ok((existing, false))
                } else {
                    Err(CatalogError::HoldMismatch)
                }
            }
        }
    }

    /// Turns a live hold into sold seats; confirming a confirmed hold changes nothing.
    pub async fn confirm(&self, order_id: Uuid) -> Result<Hold, CatalogError> {
        let confirmed: Option<HoldRow> = sqlx::query_as(&format!(
            "UPDATE holds SET status = 'confirmed', updated_at = now()
             WHERE order_id = $1 AND status = 'held' AND expires_at > now()
             RETURNING {HOLD_COLUMNS}"
        ))
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = confirmed {
            tracing::info!(order.id = %order_id, "seats confirmed");
            return row.try_into();
        }
        let hold = self.find(order_id).await?.ok_or(CatalogError::HoldNotFound)?;
        match hold.status {
            HoldStatus::Confirmed => Ok(hold),
            // Past its expiry but not yet swept: too late all the same.
            HoldStatus::Held => Err(CatalogError::HoldLapsed),
            other => Err(CatalogError::HoldNotActive(other)),
        }
    }

    /// Gives the seats of a held or confirmed hold back to sale; releasing again changes nothing.
    pub async fn release(&self, order_id: Uuid) -> Result<Hold, CatalogError> {
        let released: Option<HoldRow> = sqlx::query_as(&format!(
            "WITH released AS (
                 UPDATE holds SET status = 'released', updated_at = now()
                 WHERE order_id = $1 AND status IN ('held', 'confirmed')
                 RETURNING {HOLD_COLUMNS}
             ), returned AS (
                 UPDATE concerts c SET available = c.available + r.quantity, updated_at = now()
                 FROM released r WHERE c.id = r.concert_id
                 RETURNING c.id
             )
             SELECT {HOLD_COLUMNS} FROM released"
        ))
        .bind(order_id)
        .fetch_optional(&self.pool)
        .await?;
        match released {
            Some(row) => {
                let hold: Hold = row.try_into()?;
                self.cache.invalidate(&[hold.concert_id]).await;
                tracing::info!(order.id = %order_id, concert.id = %hold.concert_id, seats = hold.quantity, "seats released");
                Ok(hold)
            }
            None => self.find(order_id).await?.ok_or(CatalogError::HoldNotFound),
        }
    }

    async fn find(&self, order_id: Uuid) -> Result<Option<Hold>, CatalogError> {
        let row: Option<HoldRow> =
            sqlx::query_as(&format!("SELECT {HOLD_COLUMNS} FROM holds WHERE order_id = $1"))
                .bind(order_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(Hold::try_from).transpose()
    }

    /// Releases every hold that expired unconfirmed; returns how many.
    ///
    /// Safe with several replicas: each locks the holds it takes with SKIP LOCKED, so two sweepers
    /// never release the same hold and never wait on each other's.
    pub async fn release_expired(&self) -> Result<u64, CatalogError> {
        let mut total = 0;
        loop {
            let (holds, concerts) = self.release_expired_batch().await?;
            total += holds;
            if !concerts.is_empty() {
                self.cache.invalidate(&concerts).await;
            }
            if holds < SWEEP_BATCH.unsigned_abs() {
                break;
            }
        }
        if total > 0 {
            metrics::counter!("catalog_holds_expired_total").increment(total);
            tracing::info!(holds = total, "released expired holds");
        }
        Ok(total)
    }

    async fn release_expired_batch(&self) -> Result<(u64, Vec<Uuid>), CatalogError> {
        let mut tx = self.pool.begin().await?;
        let freed: Vec<(Uuid, i64, i64)> = sqlx::query_as(
            "WITH lapsed AS (
                 SELECT order_id FROM holds
                 WHERE status = 'held' AND expires_at <= now()
                 ORDER BY expires_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED
             ), expired AS (
                 UPDATE holds h SET status = 'expired', updated_at = now()
                 FROM lapsed l WHERE h.order_id = l.order_id
                 RETURNING h.concert_id, h.quantity
             )
             SELECT concert_id, sum(quantity)::bigint, count(*) FROM expired
             GROUP BY concert_id ORDER BY concert_id",
        )
        .bind(SWEEP_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        // Concert rows in id order: two sweepers touching the same concerts lock them in one order.
        for (concert_id, seats, _) in &freed {
            sqlx::query(
                "UPDATE concerts SET available = available + $2::int, updated_at = now() WHERE id = $1",
            )
            .bind(concert_id)
            .bind(seats)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let holds = freed.iter().map(|(_, _, n)| n.unsigned_abs()).sum();
        Ok((holds, freed.into_iter().map(|(id, _, _)| id).collect()))
    }
}

/// Runs [`Reservations::release_expired`] every `interval` until `shutdown`; a sweep in progress
/// finishes first.
pub async fn run_sweeper(reservations: Reservations, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                if let Err(error) = reservations.release_expired().await {
                    tracing::warn!(error = %error, "hold sweep failed; retrying next interval");
                }
            }
        }
    }
}
