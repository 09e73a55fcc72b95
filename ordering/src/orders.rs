//! Orders: placing (seat hold in catalog, then the order and its event in one transaction),
//! reading (only the buyer's own), confirming (payment, then catalog), cancelling.
//!
//! Every state change is an optimistic `UPDATE ... WHERE id = $1 AND version = $2` that writes its
//! event to the outbox in the same transaction; a change that lost a race re-reads and answers 409
//! (or, for a cancel, which every live state allows, tries again), never overwrites.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use platform::auth::AuthUser;
use platform::events::OrderEventType;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::catalog::{Catalog, CatalogError, HoldState, SeatHold};
use crate::config::IdempotencyConfig;
use crate::domain::{
    CancelReason, Cursor, IdempotencyKey, Order, OrderStatus, PageSize, PendingLimits, PendingLoad,
    PlaceOrder,
};
use crate::error::{Dependency, Error};
use crate::idempotency::{self, Begin, Claim, StoredResponse};
use crate::outbox;
use crate::payments::{Charge, PaymentId, PaymentProvider};
use crate::service_token::TokenError;

/// Every column of `orders`, in the order [`Order`]'s `FromRow` reads them.
pub const ORDER_COLUMNS: &str = "id, buyer_id, buyer_email, concert_id, quantity, unit_price_cents, total_cents, \
     currency, status, cancel_reason, payment_id, hold_expires_at, version, created_at, updated_at";

/// The class of the per-buyer advisory lock taken while placing (`pg_advisory_xact_lock(int, int)`).
const PENDING_LIMIT_LOCK: i32 = 0x6f72_6472; // "ordr"

/// The ordering capability, shared by the HTTP handlers.
pub struct Orders {
    db: PgPool,
    catalog: Arc<Catalog>,
    payments: Arc<dyn PaymentProvider>,
    hold: Duration,
    idempotency: IdempotencyConfig,
    limits: PendingLimits,
}

/// The answer to `POST /orders`, exactly as stored for replays.
#[derive(Debug, Clone)]
pub struct Placed {
    pub response: StoredResponse,
    /// True when this is the stored outcome of an earlier request with the same key.
    pub replayed: bool,
}

/// One page of a buyer's orders.
#[derive(Debug, Clone)]
pub struct Page {
    pub orders: Vec<Order>,
    pub next: Option<Cursor>,
}

impl Orders {
    pub fn new(
        db: PgPool,
        catalog: Arc<Catalog>,
        payments: Arc<dyn PaymentProvider>,
        hold: Duration,
        idempotency: IdempotencyConfig,
        limits: PendingLimits,
    ) -> Self {
        Self { db, catalog, payments, hold, idempotency, limits }
    }

    /// Places an order once per `key`: holds the seats (priced by catalog as it holds them), stores
    /// the order `Pending`.
    ///
    /// The buyer's [`PendingLimits`] are checked twice. Before catalog is asked, so a buyer at the
    /// limit takes no seats at all. Then, authoritatively, in the transaction that stores the order,
    /// under a per-buyer lock, so concurrent placements cannot all pass; one refused there has its
    /// fresh hold released at once. A replay of a placed order returns before either check.
    pub async fn place(
        &self,
        buyer: &AuthUser,
        key: IdempotencyKey,
        request: PlaceOrder,
    ) -> Result<Placed, Error> {
        let begun =
            idempotency::begin(&self.db, &self.idempotency, buyer.id, &key, &request.fingerprint()).await?;
        let claim = match begun {
            Begin::Claimed(claim) => claim,
            Begin::Replay(response) => return Ok(Placed { response, replayed: true }),
        };
        match self.place_claimed(buyer, &claim, &request).await {
            Ok(placed) => Ok(placed),
            Err(error) if error.is_final() => {
                // Sold out, unknown concert: the outcome of this key, repeated to every retry.
                let problem = error.problem();
                let body = serde_json::to_string(&problem).map_err(anyhow::Error::from)?;
                let response = StoredResponse { status: problem.status, body };
                let mut conn = self.db.acquire().await?;
                if !idempotency::complete(&mut conn, &claim, &response).await? {
                    tracing::warn!(order.id = %claim.order_id, "idempotency key completed by another request");
                }
                Err(error)
            }
            Err(error) => {
                if !matches!(error, Error::RequestInProgress) {
                    idempotency::abandon(&self.db, &claim).await;
                }
                Err(error)
            }
        }
    }

    async fn place_claimed(
        &self,
        buyer: &AuthUser,
        claim: &Claim,
        request: &PlaceOrder,
    ) -> Result<Placed, Error> {
        let load = pending_load(&mut *self.db.acquire().await?, buyer.id, request.concert_id).await?;
        self.limits.admit(load, request.quantity)?;
        let hold = self
            .catalog
            .reserve_seats(claim.order_id, request.concert_id, request.quantity, self.hold)
            .await
            .map_err(|error| match error {
                CatalogError::NotFound => Error::ConcertNotFound,
                other => catalog_error(other),
            })?;
        if hold.state != HoldState::Held {
            // Only a key taken over long after its first attempt can find its hold gone.
            return Err(Error::HoldLapsed);
        }
        let recorded = self.record_placed(buyer, claim, request, &hold).await;
        if let Err(error) = &recorded
            && !matches!(error, Error::RequestInProgress)
        {
            self.release_unrecorded_hold(claim.order_id).await;
        }
        recorded
    }

    /// Stores the order, priced as catalog held its seats, with its `order.created` event and the
    /// idempotent response in one transaction.
    async fn record_placed(
        &self,
        buyer: &AuthUser,
        claim: &Claim,
        request: &PlaceOrder,
        hold: &SeatHold,
    ) -> Result<Placed, Error> {
        // The hold's price, read by catalog in the statement that took the seats: never a second
        // call that could see another price (or fail after the seats were taken).
        let price = &hold.price;
        let total =
            price.total(request.quantity).ok_or_else(|| anyhow::anyhow!("price out of range: {price:?}"))?;

        let mut tx = self.db.begin().await?;
        // One placement per buyer at a time from here to the commit: the count below and the
        // insert are then one step, whatever runs concurrently. Other buyers are not held up.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text))")
            .bind(PENDING_LIMIT_LOCK)
            .bind(buyer.id)
            .execute(&mut *tx)
            .await?;
        let load = pending_load(&mut tx, buyer.id, request.concert_id).await?;
        self.limits.admit(load, request.quantity)?;
        let inserted: Result<Order, sqlx::Error> = sqlx::query_as(&format!(
            "INSERT INTO orders (id, buyer_id, buyer_email, concert_id, quantity, unit_price_cents, total_cents,
                                 currency, status, hold_expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'Pending', $9)
             RETURNING {ORDER_COLUMNS}"
        ))
        .bind(claim.order_id)
        .bind(buyer.id)
        .bind(&buyer.email)
        .bind(request.concert_id)
        .bind(i32::try_from(request.quantity.get()).unwrap_or(i32::MAX))
        .bind(price.unit_cents)
        .bind(total)
        .bind(price.currency.to_ascii_uppercase())
        .bind(hold.expires_at)
        .fetch_one(&mut *tx)
        .await;
        let order = match inserted {
            Ok(order) => order,
            // A retry that took the key over raced this request to the same order id and won.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
                return self.replay_after_lost_claim(claim).await;
            }
            Err(error) => return Err(error.into()),
        };
        outbox::enqueue(&mut tx, &order.event(OrderEventType::Created)).await?;
        let response =
            StoredResponse { status: 201, body: serde_json::to_string(&order).map_err(anyhow::Error::from)? };
        if !idempotency::complete(&mut tx, claim, &response).await? {
            drop(tx);
            return self.replay_after_lost_claim(claim).await;
        }
        tx.commit().await?;

        metrics::counter!("orders_placed_total").increment(1);
        tracing::info!(order.id = %order.id, concert.id = %order.concert_id, order.quantity = order.quantity, "order placed");
        Ok(Placed { response, replayed: false })
    }

    async fn replay_after_lost_claim(&self, claim: &Claim) -> Result<Placed, Error> {
        match idempotency::stored(&self.db, claim.buyer_id, &claim.key).await? {
            Some(response) => Ok(Placed { response, replayed: true }),
            None => Err(Error::RequestInProgress),
        }
    }

    /// Gives back a hold whose order could not be stored. Best effort: catalog expires holds nobody
    /// confirms, so a failure here only keeps the seats off sale until then.
    async fn release_unrecorded_hold(&self, order_id: Uuid) {
        // The commit may have succeeded even though we saw an error: never release a stored order's seats.
        let exists: Result<bool, _> =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orders WHERE id = $1)")
                .bind(order_id)
                .fetch_one(&self.db)
                .await;
        if !matches!(exists, Ok(false)) {
            tracing::warn!(order.id = %order_id, "cannot tell whether the order was stored; leaving its hold to expire");
            return;
        }
        match self.catalog.release_reservation(order_id).await {
            Ok(_) => {
                tracing::info!(order.id = %order_id, "released the hold of an order that was not stored")
            }
            Err(error) => {
                tracing::warn!(order.id = %order_id, %error, "could not release the hold; catalog will expire it")
            }
        }
    }

    /// The buyer's order `id`; another buyer's order is not found.
    pub async fn get(&self, buyer_id: Uuid, id: Uuid) -> Result<Order, Error> {
        find(&self.db, buyer_id, id).await?.ok_or(Error::OrderNotFound)
    }

    /// The buyer's orders, newest first, after `cursor`.
    pub async fn list(&self, buyer_id: Uuid, size: PageSize, cursor: Option<Cursor>) -> Result<Page, Error> {
        let mut orders: Vec<Order> = sqlx::query_as(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders
             WHERE buyer_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC
             LIMIT $4"
        ))
        .bind(buyer_id)
        .bind(cursor.map(|c| c.created_at))
        .bind(cursor.map(|c| c.id))
        .bind(size.get() + 1)
        .fetch_all(&self.db)
        .await?;
        let more = orders.len() > usize::try_from(size.get()).unwrap_or(usize::MAX);
        orders.truncate(usize::try_from(size.get()).unwrap_or(usize::MAX));
        let next =
            more.then(|| orders.last().map(|o| Cursor { created_at: o.created_at, id: o.id })).flatten();
        Ok(Page { orders, next })
    }

    /// `Pending → Confirmed`: charge the buyer, confirm the seats in catalog, record it.
    pub async fn confirm(&self, buyer: &AuthUser, id: Uuid, payment_token: String) -> Result<Order, Error> {
        let order = self.get(buyer.id, id).await?;
        order.status.transition(OrderStatus::Confirmed)?;
        if order.hold_expires_at <= Utc::now() {
            return Err(Error::HoldLapsed);
        }
        let charge = Charge {
            order_id: order.id,
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
            token: payment_token,
        };
        let payment = self.payments.charge(charge).await?;
        let confirmed = self.confirm_paid(buyer, &order, &payment).await;
        if confirmed.is_err() {
            // This attempt did not confirm the order, so its charge must not stand.
            if let Err(error) = self.payments.refund(&payment).await {
                tracing::error!(order.id = %order.id, payment.id = %payment.0, %error, "refund failed; reconcile by hand");
            }
        }
        confirmed
    }

    async fn confirm_paid(
        &self,
        buyer: &AuthUser,
        order: &Order,
        payment: &PaymentId,
    ) -> Result<Order, Error> {
        self.catalog.confirm_reservation(order.id).await.map_err(|error| match error {
            CatalogError::NotFound => anyhow::anyhow!("catalog has no hold for order {}", order.id).into(),
            other => catalog_error(other),
        })?;
        let mut tx = self.db.begin().await?;
        let changed = change_status(&mut tx, order, OrderStatus::Confirmed, None, Some(payment)).await?;
        tx.commit().await?;
        match changed {
            Some(confirmed) => {
                metrics::counter!("orders_confirmed_total").increment(1);
                tracing::info!(order.id = %order.id, "order confirmed");
                Ok(confirmed)
            }
            // Lost a race (another confirm, a cancel, the sweeper): answer with where it stands now.
            None => {
                let current = self.get(buyer.id, order.id).await?;
                Err(current.status.transition(OrderStatus::Confirmed).err().map_or_else(
                    || {
                        anyhow::anyhow!("order {} changed concurrently but is still confirmable", order.id)
                            .into()
                    },
                    Error::from,
                ))
            }
        }
    }

    /// `Pending | Confirmed → Cancelled`: record it (with its event), then give the seats back.
    ///
    /// The cancellation commits first. Releasing first would, if the commit then failed, leave a
    /// paid order `Confirmed` while its seats were on sale again (sold twice). Committed first, the
    /// worst case is seats kept off sale until the release succeeds: the buyer's cancel has
    /// happened whatever catalog does, and the sweeper retries the release until catalog says the
    /// seats are back ([`release_cancelled_seats`]). A buyer's confirm racing this cancel loses on
    /// the version check; if it confirmed the hold in catalog meanwhile, the release (which also
    /// releases confirmed holds) undoes that.
    pub async fn cancel(&self, buyer: &AuthUser, id: Uuid) -> Result<Order, Error> {
        let mut order = self.get(buyer.id, id).await?;
        order.status.transition(OrderStatus::Cancelled)?;
        // Cancel is allowed from every live state, so a lost race only means trying again on the
        // fresh row; a bounded number of times, in case of a storm.
        for _ in 0..5 {
            let mut tx = self.db.begin().await?;
            let changed =
                change_status(&mut tx, &order, OrderStatus::Cancelled, Some(CancelReason::Buyer), None)
                    .await?;
            tx.commit().await?;
            if let Some(cancelled) = changed {
                metrics::counter!("orders_cancelled_total", "reason" => "buyer").increment(1);
                tracing::info!(order.id = %id, order.previous_status = %order.status, "order cancelled");
                // Best effort here; on failure the sweeper owes catalog this release.
                let _ = release_cancelled_seats(&self.db, &self.catalog, id).await;
                if let Some(payment) = cancelled.payment_id.clone() {
                    self.refund(id, &PaymentId(payment)).await;
                }
                return Ok(cancelled);
            }
            order = self.get(buyer.id, id).await?;
            order.status.transition(OrderStatus::Cancelled)?;
        }
        Err(Error::RequestInProgress)
    }

    async fn refund(&self, order_id: Uuid, payment: &PaymentId) {
        if let Err(error) = self.payments.refund(payment).await {
            tracing::error!(order.id = %order_id, payment.id = %payment.0, %error, "refund failed; reconcile by hand");
        }
    }
}

fn catalog_error(error: CatalogError) -> Error {
    match error {
        CatalogError::SoldOut => Error::SoldOut,
        CatalogError::HoldInactive(_) => Error::HoldLapsed,
        CatalogError::Unavailable(_) => Error::Unavailable(Dependency::Catalog),
        CatalogError::Credentials(TokenError::Unavailable(reason)) => {
            tracing::warn!(error = %reason, "cannot get a service token from identity");
            Error::Unavailable(Dependency::Identity)
        }
        other => Error::Internal(other.into()),
    }
}

/// Gives a cancelled order's seats back to sale in catalog and records that catalog did
/// (`seats_released_at`). Idempotent: catalog answers a repeated release with the released hold.
/// An error means the seats may still be held; the sweeper calls this again later.
pub async fn release_cancelled_seats(
    db: &PgPool,
    catalog: &Catalog,
    order_id: Uuid,
) -> Result<(), CatalogError> {
    match catalog.release_reservation(order_id).await {
        Ok(hold) if matches!(hold.state, HoldState::Released | HoldState::Expired) => {}
        Ok(hold) => {
            tracing::warn!(order.id = %order_id, hold.state = ?hold.state, "catalog still holds a cancelled order's seats");
            return Err(CatalogError::Refused(
                tonic::Code::Internal,
                format!("release answered a hold that is {:?}", hold.state),
            ));
        }
        // Nothing held, so nothing to give back.
        Err(CatalogError::NotFound) => {
            tracing::warn!(order.id = %order_id, "catalog has no hold for this cancelled order")
        }
        Err(error) => {
            tracing::warn!(order.id = %order_id, %error, "could not release a cancelled order's seats; the sweeper retries");
            return Err(error);
        }
    }
    let marked = sqlx::query(
        "UPDATE orders SET seats_released_at = clock_timestamp() WHERE id = $1 AND seats_released_at IS NULL",
    )
    .bind(order_id)
    .execute(db)
    .await;
    if let Err(error) = marked {
        // The seats are back; the sweeper will release again (a no-op) and mark it then.
        tracing::warn!(order.id = %order_id, %error, "could not record that the seats were released");
    }
    Ok(())
}

/// The buyer's live unpaid orders, and their seats of `concert_id`. A `Pending` order whose hold
/// has lapsed no longer holds seats (the sweeper is about to cancel it), so it does not count.
async fn pending_load(
    conn: &mut PgConnection,
    buyer_id: Uuid,
    concert_id: Uuid,
) -> Result<PendingLoad, sqlx::Error> {
    let (orders, seats_of_concert): (i64, i64) = sqlx::query_as(
        "SELECT count(*), COALESCE(sum(quantity) FILTER (WHERE concert_id = $2), 0)::bigint
         FROM orders WHERE buyer_id = $1 AND status = 'Pending' AND hold_expires_at > now()",
    )
    .bind(buyer_id)
    .bind(concert_id)
    .fetch_one(conn)
    .await?;
    Ok(PendingLoad { orders, seats_of_concert })
}

/// The order `id` if `buyer_id` placed it: ownership is part of the query, not a check after it.
pub async fn find(db: &PgPool, buyer_id: Uuid, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND buyer_id = $2"))
        .bind(id)
        .bind(buyer_id)
        .fetch_optional(db)
        .await
}

/// Moves `order` to `next` if it is still at the version that was read, writing the event for the
/// change; `None` when someone else changed it first.
pub async fn change_status(
    conn: &mut PgConnection,
    order: &Order,
    next: OrderStatus,
    reason: Option<CancelReason>,
    payment: Option<&PaymentId>,
) -> Result<Option<Order>, Error> {
    order.status.transition(next)?;
    let changed: Option<Order> = sqlx::query_as(&format!(
        "UPDATE orders
         SET status = $3, cancel_reason = $4, payment_id = COALESCE($5, payment_id),
             version = version + 1, updated_at = now()
         WHERE id = $1 AND version = $2
         RETURNING {ORDER_COLUMNS}"
    ))
    .bind(order.id)
    .bind(order.version)
    .bind(next.as_str())
    .bind(reason.map(CancelReason::as_str))
    .bind(payment.map(|p| p.0.as_str()))
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(changed) = &changed {
        let kind = match next {
            OrderStatus::Confirmed => OrderEventType::Confirmed,
            OrderStatus::Cancelled => OrderEventType::Cancelled,
            OrderStatus::Pending => OrderEventType::Created,
        };
        outbox::enqueue(conn, &changed.event(kind)).await?;
    }
    Ok(changed)
}

impl FromRow<'_, PgRow> for Order {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let status: String = row.try_get("status")?;
        let quantity: i32 = row.try_get("quantity")?;
        Ok(Self {
            id: row.try_get("id")?,
            buyer_id: row.try_get("buyer_id")?,
            buyer_email: row.try_get("buyer_email")?,
            concert_id: row.try_get("concert_id")?,
            quantity: u32::try_from(quantity).map_err(|e| sqlx::Error::Decode(e.into()))?,
            unit_price_cents: row.try_get("unit_price_cents")?,
            total_cents: row.try_get("total_cents")?,
            currency: row.try_get("currency")?,
            status: status.parse().map_err(|e: anyhow::Error| sqlx::Error::Decode(e.into()))?,
            cancel_reason: row.try_get("cancel_reason")?,
            payment_id: row.try_get("payment_id")?,
            hold_expires_at: row.try_get::<DateTime<Utc>, _>("hold_expires_at")?,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}
