//! The expiry sweeper: cancels `Pending` orders whose seat hold has lapsed (reason `expired`), then
//! gives their seats back in catalog; retries the seat releases that cancelled orders still owe
//! catalog; also forgets old idempotency keys and published outbox rows.
//!
//! Safe with several replicas: each batch is claimed with `FOR UPDATE SKIP LOCKED`, so two sweepers
//! never cancel the same order, and a buyer's confirm racing the sweeper loses on the version check
//! (or the row lock) rather than overwriting. Seats are released after the commit. A release that
//! fails (catalog down) is retried every sweep until catalog says the seats are back: catalog's own
//! expiry cannot be relied on, because a hold confirmed by a racing confirm never expires. Two
//! replicas retrying the same release is harmless (release is idempotent).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::catalog::{Catalog, CatalogError};
use crate::domain::{CancelReason, Order, OrderStatus};
use crate::idempotency;
use crate::orders::{ORDER_COLUMNS, change_status, release_cancelled_seats};

const BATCH: i64 = 50;
/// Owed releases retried per sweep (oldest cancellation first).
const RELEASE_BATCH: i64 = 100;
/// Housekeeping (old keys and outbox rows) runs this much less often than the expiry sweep.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

pub struct Sweeper {
    pub db: PgPool,
    pub catalog: Arc<Catalog>,
    pub interval: Duration,
    pub idempotency_retention: Duration,
    pub outbox_retention: Duration,
}

impl Sweeper {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last_housekeeping: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
            let sweep = self.expire_lapsed_holds().instrument(tracing::info_span!("sweep_lapsed_holds"));
            if let Err(error) = sweep.await {
                tracing::warn!(error = %format!("{error:#}"), "expiry sweep failed");
            }
            let releases = self.release_owed_seats().instrument(tracing::info_span!("release_owed_seats"));
            if let Err(error) = releases.await {
                tracing::warn!(%error, "could not look for owed seat releases");
            }
            if last_housekeeping.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
                last_housekeeping = Some(tokio::time::Instant::now());
                self.housekeeping().await;
            }
        }
        tracing::info!("expiry sweeper stopped");
    }

    /// Cancels every order whose hold has lapsed; returns how many.
    pub async fn expire_lapsed_holds(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let mut tx = self.db.begin().await?;
            let lapsed: Vec<Order> = sqlx::query_as(&format!(
                "SELECT {ORDER_COLUMNS} FROM orders
                 WHERE status = 'Pending' AND hold_expires_at <= now()
                 ORDER BY hold_expires_at
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED"
            ))
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
            let mut cancelled = Vec::with_capacity(lapsed.len());
            for order in &lapsed {
                let changed =
                    change_status(&mut tx, order, OrderStatus::Cancelled, Some(CancelReason::Expired), None)
                        .await;
                match changed {
                    Ok(Some(order)) => cancelled.push(order.id),
                    Ok(None) => {}
                    Err(error) => return Err(anyhow::anyhow!("cancelling order {}: {error}", order.id)),
                }
            }
            tx.commit().await?;

            for id in &cancelled {
                tracing::info!(order.id = %id, "order cancelled: seat hold expired");
                // On failure (logged) the release is owed, and retried by `release_owed_seats`.
                let _ = release_cancelled_seats(&self.db, &self.catalog, *id).await;
            }
            metrics::counter!("orders_cancelled_total", "reason" => "expired")
                .increment(cancelled.len() as u64);
            total += cancelled.len();
            if lapsed.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
                return Ok(total);
            }
        }
    }

    /// Retries the seat releases of cancelled orders that catalog has not confirmed yet; returns how
    /// many went through. Stops at the first "catalog unavailable": the rest wait for the next sweep.
    pub async fn release_owed_seats(&self) -> Result<usize, sqlx::Error> {
        let owed: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM orders WHERE status = 'Cancelled' AND seats_released_at IS NULL
             ORDER BY updated_at LIMIT $1",
        )
        .bind(RELEASE_BATCH)
        .fetch_all(&self.db)
        .await?;
        metrics::gauge!("orders_seat_releases_owed").set(owed.len() as f64);
        let mut released = 0;
        for id in owed {
            match release_cancelled_seats(&self.db, &self.catalog, id).await {
                Ok(()) => {
                    tracing::info!(order.id = %id, "released the seats of a cancelled order on retry");
                    released += 1;
                }
                Err(CatalogError::Unavailable(_)) => break,
                Err(_) => {}
            }
        }
        metrics::counter!("orders_seat_releases_retried_total").increment(released as u64);
        Ok(released)
    }

    async fn housekeeping(&self) {
        match idempotency::purge(&self.db, self.idempotency_retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(keys = n, "forgot old idempotency keys"),
            Err(error) => tracing::warn!(%error, "could not purge idempotency keys"),
        }
        let purged = sqlx::query(
            "DELETE FROM outbox WHERE id IN (
                 SELECT id FROM outbox WHERE published_at < now() - make_interval(secs => $1) LIMIT 1000)",
        )
        .bind(self.outbox_retention.as_secs_f64())
        .execute(&self.db)
        .await;
        if let Err(error) = purged {
            tracing::warn!(%error, "could not purge published outbox rows");
        }
    }
}
