//! The expiry sweeper: cancels `Pending` orders whose seat hold has lapsed (reason `expired`), then
//! gives their seats back in catalog; also forgets old idempotency keys and published outbox rows.
//!
//! Safe with several replicas: each batch is claimed with `FOR UPDATE SKIP LOCKED`, so two sweepers
//! never cancel the same order, and a buyer's confirm racing the sweeper loses on the version check
//! (or the row lock) rather than overwriting. Seats are released after the commit; if that fails,
//! catalog's own expiry of unconfirmed holds is the backstop.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::catalog::Catalog;
use crate::domain::{CancelReason, Order, OrderStatus};
use crate::idempotency;
use crate::orders::{ORDER_COLUMNS, change_status};

const BATCH: i64 = 50;
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
                if let Err(error) = self.catalog.release_reservation(None, *id).await {
                    tracing::warn!(order.id = %id, %error, "could not release an expired hold; catalog expires it");
                }
            }
            metrics::counter!("orders_cancelled_total", "reason" => "expired")
                .increment(cancelled.len() as u64);
            total += cancelled.len();
            if lapsed.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
                return Ok(total);
            }
        }
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
