//! `Idempotency-Key` for `POST /orders`: one outcome per key and buyer, replayed on every retry.
//!
//! The first request inserts an `in_progress` row (the primary key `(buyer_id, key)` lets exactly one
//! request win) carrying the order id it will use, before anything else happens. Its outcome is stored
//! with the order in the same transaction, so an order and its replayable response exist together.
//! A concurrent duplicate polls the row for up to `wait` and replays the outcome, or answers 409
//! "in progress" if the first request is still busy: ten concurrent POSTs with one key make one order.
//! A request that fails without an outcome (catalog down) deletes its row so a retry starts afresh.
//! A request that died mid-way leaves its row behind; after `lease` a retry takes it over and reuses
//! the stored order id, which catalog's idempotent ReserveSeats maps to the same seat hold.

use std::time::Duration;

use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use crate::config::IdempotencyConfig;
use crate::domain::IdempotencyKey;
use crate::error::Error;

/// The right to process one key: held by exactly one request at a time.
#[derive(Debug, Clone)]
pub struct Claim {
    pub buyer_id: Uuid,
    pub key: IdempotencyKey,
    /// The id the order gets, fixed when the key was first claimed.
    pub order_id: Uuid,
}

/// A response to repeat byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Debug)]
pub enum Begin {
    /// Process the request under this claim.
    Claimed(Claim),
    /// The key already has an outcome: answer with it.
    Replay(StoredResponse),
}

#[derive(FromRow)]
struct KeyRow {
    request_hash: Vec<u8>,
    order_id: Uuid,
    state: String,
    response_status: Option<i16>,
    response_body: Option<String>,
    stale: bool,
}

/// How often a duplicate looks at the row while the first request works.
const POLL: Duration = Duration::from_millis(25);

/// Claims `key` for a request with `fingerprint`, or finds what to answer instead.
pub async fn begin(
    db: &PgPool,
    config: &IdempotencyConfig,
    buyer_id: Uuid,
    key: &IdempotencyKey,
    fingerprint: &[u8],
) -> Result<Begin, Error> {
    let deadline = tokio::time::Instant::now() + config.wait;
    loop {
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (buyer_id, key, request_hash, order_id, state)
             VALUES ($1, $2, $3, $4, 'in_progress')
             ON CONFLICT (buyer_id, key) DO NOTHING RETURNING order_id",
        )
        .bind(buyer_id)
        .bind(key.as_str())
        .bind(fingerprint)
        .bind(Uuid::now_v7())
        .fetch_optional(db)
        .await?;
        if let Some(order_id) = inserted {
            return Ok(Begin::Claimed(Claim { buyer_id, key: key.clone(), order_id }));
        }

        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, order_id, state, response_status, response_body,
                    updated_at < now() - make_interval(secs => $3) AS stale
             FROM idempotency_keys WHERE buyer_id = $1 AND key = $2",
        )
        .bind(buyer_id)
        .bind(key.as_str())
        .bind(config.lease.as_secs_f64())
        .fetch_optional(db)
        .await?;
        match row {
            // Abandoned between our insert and this read: try to claim it again.
            None => {}
            Some(row) if row.request_hash != fingerprint => return Err(Error::IdempotencyKeyReused),
            Some(KeyRow { state, response_status: Some(status), response_body: Some(body), .. })
                if state == "completed" =>
            {
                let status = u16::try_from(status).map_err(|_| anyhow::anyhow!("stored status {status}"))?;
                return Ok(Begin::Replay(StoredResponse { status, body }));
            }
            Some(row) if row.stale && take_over(db, config, buyer_id, key).await? => {
                tracing::warn!(order.id = %row.order_id, "taking over an idempotency key left in progress");
                return Ok(Begin::Claimed(Claim { buyer_id, key: key.clone(), order_id: row.order_id }));
            }
            Some(_) => {}
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(Error::RequestInProgress);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Claims a stale in-progress key; only one of several racing takers succeeds.
async fn take_over(
    db: &PgPool,
    config: &IdempotencyConfig,
    buyer_id: Uuid,
    key: &IdempotencyKey,
) -> Result<bool, sqlx::Error> {
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET updated_at = now()
         WHERE buyer_id = $1 AND key = $2 AND state = 'in_progress'
           AND updated_at < now() - make_interval(secs => $3)",
    )
    .bind(buyer_id)
    .bind(key.as_str())
    .bind(config.lease.as_secs_f64())
    .execute(db)
    .await?;
    Ok(taken.rows_affected() == 1)
}

/// Stores the outcome of `claim` (inside the transaction that made it, for a created order). False if
/// the claim was lost meanwhile (taken over by a retry that completed first).
pub async fn complete(
    conn: &mut PgConnection,
    claim: &Claim,
    response: &StoredResponse,
) -> Result<bool, sqlx::Error> {
    let status = i16::try_from(response.status).unwrap_or(i16::MAX);
    let updated = sqlx::query(
        "UPDATE idempotency_keys
         SET state = 'completed', response_status = $4, response_body = $5, updated_at = now()
         WHERE buyer_id = $1 AND key = $2 AND order_id = $3 AND state = 'in_progress'",
    )
    .bind(claim.buyer_id)
    .bind(claim.key.as_str())
    .bind(claim.order_id)
    .bind(status)
    .bind(&response.body)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Gives the key up after a failure that produced no outcome, so a retry processes it afresh.
pub async fn abandon(db: &PgPool, claim: &Claim) {
    let deleted = sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE buyer_id = $1 AND key = $2 AND order_id = $3 AND state = 'in_progress'",
    )
    .bind(claim.buyer_id)
    .bind(claim.key.as_str())
    .bind(claim.order_id)
    .execute(db)
    .await;
    if let Err(error) = deleted {
        // The row stays in progress until its lease runs out; a retry then takes it over.
        tracing::warn!(%error, "could not release an idempotency key");
    }
}

/// The stored outcome of a key, if it has one.
pub async fn stored(
    db: &PgPool,
    buyer_id: Uuid,
    key: &IdempotencyKey,
) -> Result<Option<StoredResponse>, Error> {
    let row: Option<(i16, String)> = sqlx::query_as(
        "SELECT response_status, response_body FROM idempotency_keys
         WHERE buyer_id = $1 AND key = $2 AND state = 'completed'",
    )
    .bind(buyer_id)
    .bind(key.as_str())
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(status, body)| StoredResponse { status: u16::try_from(status).unwrap_or(500), body }))
}

/// Forgets keys older than `retention`; returns how many.
pub async fn purge(db: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid IN (
             SELECT ctid FROM idempotency_keys WHERE created_at < now() - make_interval(secs => $1) LIMIT 1000)",
    )
    .bind(retention.as_secs_f64())
    .execute(db)
    .await?;
    Ok(deleted.rows_affected())
}
