//! Orders, through ordering: placing, paying, cancelling and reading one's own orders, and live
//! updates of them from the order events.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{ComplexObject, Context, Enum, ID, InputObject, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use platform::events::{OrderEvent, OrderEventType};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use uuid::Uuid;

use super::concerts::{Concert, Money, load_concert};
use super::{Services, paging, parse_id};
use crate::auth::{self, Viewer};
use crate::downstream::ordering::OrderDto;
use crate::error::GatewayError;
use crate::subscriptions::{SubscriptionSlot, SubscriptionSlots};

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(remote = "platform::events::OrderStatus")]
pub enum OrderStatus {
    /// Placed; its seats are held until the hold expires, waiting for payment.
    Pending,
    /// Paid; the seats are sold.
    Confirmed,
    /// Cancelled by the buyer or because the hold expired unpaid; its seats went back to sale.
    Cancelled,
}

/// An order for seats at one concert.
#[derive(Debug, Clone, SimpleObject)]
#[graphql(complex)]
pub struct Order {
    /// The order's id.
    pub id: ID,
    /// Where the order stands.
    pub status: OrderStatus,
    /// Number of seats.
    pub quantity: i32,
    /// The price of one seat when the order was placed (the catalog's price, never the client's).
    pub unit_price: Money,
    /// What the seats cost together.
    pub total: Money,
    /// The concert's id.
    pub concert_id: ID,
    /// When the order was placed (RFC 3339, UTC).
    pub created_at: DateTime<Utc>,
    /// When the order last changed.
    pub updated_at: Option<DateTime<Utc>>,
    /// Until when the seats of a pending order are held.
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Why a cancelled order was cancelled (`buyer`, `expired`, ...).
    pub cancel_reason: Option<String>,
}

#[ComplexObject]
impl Order {
    /// The concert the seats are for (all orders of one response are looked up in one batch).
    async fn concert(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Concert>> {
        let id =
            self.concert_id.parse::<Uuid>().map_err(|_| GatewayError::NotFound("concert").into_graphql())?;
        load_concert(ctx, id).await
    }
}

impl From<OrderDto> for Order {
    fn from(order: OrderDto) -> Self {
        Self {
            id: ID(order.id.to_string()),
            status: order.status.into(),
            quantity: i32::try_from(order.quantity).unwrap_or(i32::MAX),
            unit_price: Money { cents: order.unit_price_cents, currency: order.currency.clone() },
            total: Money { cents: order.total_cents, currency: order.currency },
            concert_id: ID(order.concert_id.to_string()),
            created_at: order.created_at,
            updated_at: order.updated_at,
            hold_expires_at: order.hold_expires_at,
            cancel_reason: order.cancel_reason,
        }
    }
}

/// What to order.
#[derive(Debug, Clone, InputObject)]
pub struct PlaceOrderInput {
    /// The concert's id.
    pub concert_id: ID,
    /// Seats to buy, 1 to 10.
    pub quantity: i32,
}

/// What happened to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum OrderEventKind {
    /// The order was placed.
    Created,
    /// The order was paid.
    Confirmed,
    /// The order was cancelled.
    Cancelled,
}

/// A change to one of the subscriber's orders, pushed as it happens.
pub struct OrderUpdate(Arc<OrderEvent>);

/// A change to one of the subscriber's orders, pushed as it happens.
#[Object]
impl OrderUpdate {
    /// What happened.
    async fn kind(&self) -> OrderEventKind {
        match self.0.kind {
            OrderEventType::Created => OrderEventKind::Created,
            OrderEventType::Confirmed => OrderEventKind::Confirmed,
            OrderEventType::Cancelled => OrderEventKind::Cancelled,
        }
    }

    /// The order's id.
    async fn order_id(&self) -> ID {
        ID(self.0.order_id.to_string())
    }

    /// Where the order stands now.
    async fn status(&self) -> OrderStatus {
        self.0.status.into()
    }

    /// When it happened (RFC 3339, UTC).
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }

    /// Number of seats.
    async fn quantity(&self) -> i32 {
        i32::try_from(self.0.quantity).unwrap_or(i32::MAX)
    }

    /// What the seats cost together.
    async fn total(&self) -> Money {
        Money { cents: self.0.total_cents, currency: self.0.currency.clone() }
    }

    /// Why the order was cancelled, for cancellations.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }

    /// The concert's id.
    async fn concert_id(&self) -> ID {
        ID(self.0.concert_id.to_string())
    }

    /// The concert the seats are for.
    async fn concert(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Concert>> {
        load_concert(ctx, self.0.concert_id).await
    }
}

/// Reading one's own orders.
#[derive(Default)]
pub struct OrderQueries;

#[Object]
impl OrderQueries {
    /// The signed-in user's orders, newest first (Relay connection).
    #[graphql(complexity = "1 + (first.clamp(0, 100) as usize) * child_complexity")]
    async fn my_orders(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "How many orders to return, 0 to 100.", default = 20)] first: i32,
        #[graphql(desc = "Return the orders after this cursor.")] after: Option<String>,
    ) -> Result<Connection<String, Order>, GatewayError> {
        let viewer = auth::viewer(ctx)?;
        let services = Services::of(ctx);
        let first = paging::page_size(first)?;
        let had_cursor = after.is_some();
        let page = paging::collect(after.as_deref(), first, |cursor, limit| async move {
            let page = services.ordering.list(&viewer.token, limit, Some(&cursor)).await?;
            Ok((page.orders, page.next_cursor.unwrap_or_default()))
        })
        .await?;
        let mut connection = Connection::new(had_cursor, page.has_next);
        connection
            .edges
            .extend(page.edges.into_iter().map(|(cursor, order)| Edge::new(cursor, Order::from(order))));
        Ok(connection)
    }

    /// One of the signed-in user's orders; `NOT_FOUND` for anyone else's.
    async fn order(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The order's id.")] id: ID,
    ) -> Result<Option<Order>, GatewayError> {
        let viewer = auth::viewer(ctx)?;
        let id = parse_id(&id, "id")?;
        Ok(Some(Services::of(ctx).ordering.get(&viewer.token, id).await?.into()))
    }

    /// Federation: resolves an `Order` entity (`@key(fields: "id")`) as `order(id)` does, only for
    /// its owner (the token the router forwards). Anyone else's is `null`, as routers expect of an
    /// entity that is not there: an error would fail every other entity of the same `_entities`
    /// call (async-graphql resolves the list as one field).
    #[graphql(entity)]
    async fn find_order_by_id(
        &self,
        ctx: &Context<'_>,
        #[graphql(key, desc = "The order's id.")] id: ID,
    ) -> Result<Option<Order>, GatewayError> {
        match self.order(ctx, id).await {
            Err(GatewayError::NotFound(_)) => Ok(None),
            other => other,
        }
    }
}

/// Buying seats.
#[derive(Default)]
pub struct OrderMutations;

#[Object]
impl OrderMutations {
    /// Places an order and holds its seats until it is confirmed or the hold expires. Sending the
    /// same `idempotencyKey` again returns the first order instead of placing another; the same key
    /// with a different input is `BAD_USER_INPUT`. `SOLD_OUT` when too few seats are left.
    async fn place_order(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "What to order.")] input: PlaceOrderInput,
        #[graphql(
            desc = "A client-chosen unique key per intended order (e.g. a UUID), 1 to 200 characters."
        )]
        idempotency_key: String,
    ) -> Result<Order, GatewayError> {
        let viewer = auth::viewer(ctx)?;
        let concert_id = parse_id(&input.concert_id, "concertId")?;
        let key = idempotency_key.trim();
        if key.is_empty() || key.len() > 200 || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(GatewayError::invalid(
                "idempotencyKey",
                "must be 1 to 200 printable ASCII characters",
            ));
        }
        let order = Services::of(ctx).ordering.place(&viewer.token, concert_id, input.quantity, key).await?;
        Ok(order.into())
    }

    /// Pays for a pending order. The test payment provider accepts `tok_visa` and declines
    /// `tok_declined` (`PAYMENT_DECLINED`). An order that is no longer pending (cancelled, expired,
    /// already confirmed) or whose seat hold has lapsed is `CONFLICT`.
    async fn confirm_order(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The order to pay for.")] id: ID,
        #[graphql(secret, desc = "A token from the payment provider for the buyer's card.")]
        payment_token: String,
    ) -> Result<Order, GatewayError> {
        let viewer = auth::viewer(ctx)?;
        let id = parse_id(&id, "id")?;
        Ok(Services::of(ctx).ordering.confirm(&viewer.token, id, &payment_token).await?.into())
    }

    /// Cancels an order and gives its seats back to sale. An order already cancelled is `CONFLICT`.
    async fn cancel_order(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The order to cancel.")] id: ID,
    ) -> Result<Order, GatewayError> {
        let viewer = auth::viewer(ctx)?;
        let id = parse_id(&id, "id")?;
        Ok(Services::of(ctx).ordering.cancel(&viewer.token, id).await?.into())
    }
}

/// Live order updates over WebSocket (`graphql-transport-ws`); authenticate in `connection_init`
/// with `{"Authorization": "Bearer <accessToken>"}`. A subscription ends when its token expires.
#[derive(Default)]
pub struct OrderSubscriptions;

#[Subscription]
impl OrderSubscriptions {
    /// Changes to one of the subscriber's orders; `NOT_FOUND` for anyone else's.
    async fn order_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The order to watch.")] order_id: ID,
    ) -> Result<impl Stream<Item = async_graphql::Result<OrderUpdate>> + use<>, GatewayError> {
        let viewer = auth::viewer(ctx)?.clone();
        let order_id = parse_id(&order_id, "orderId")?;
        let slot = subscription_slot(ctx)?;
        let services = Services::of(ctx);
        // Listen before checking, so nothing that happens in between is missed.
        let events = services.events.subscribe();
        services.ordering.get(&viewer.token, order_id).await?;
        Ok(updates(events, viewer, Some(order_id), slot))
    }

    /// Changes to any of the subscriber's orders.
    async fn my_order_updates(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = async_graphql::Result<OrderUpdate>> + use<>, GatewayError> {
        let viewer = auth::viewer(ctx)?.clone();
        let slot = subscription_slot(ctx)?;
        Ok(updates(Services::of(ctx).events.subscribe(), viewer, None, slot))
    }
}

/// A place in the WebSocket connection's subscription budget. Without a budget (a schema run
/// outside a WebSocket connection) nothing is counted.
fn subscription_slot(ctx: &Context<'_>) -> Result<Option<SubscriptionSlot>, GatewayError> {
    ctx.data_opt::<SubscriptionSlots>().map(SubscriptionSlots::acquire).transpose()
}

/// The subscriber's events (of one order, or all), until its token expires; `slot` is held as long
/// as the stream lives.
fn updates(
    events: tokio::sync::broadcast::Receiver<Arc<OrderEvent>>,
    viewer: Viewer,
    order_id: Option<Uuid>,
    slot: Option<SubscriptionSlot>,
) -> impl Stream<Item = async_graphql::Result<OrderUpdate>> {
    let expiry = (viewer.expires_at - Utc::now()).to_std().unwrap_or_default();
    let user = viewer.id;
    let live = BroadcastStream::new(events)
        .filter_map(move |received| {
            let _held = &slot;
            let update = match received {
                Ok(event) if is_for(&event, user, order_id) => Some(Ok(OrderUpdate(event))),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a slow subscriber missed order events");
                    None
                }
            };
            std::future::ready(update)
        })
        .take_until(tokio::time::sleep(expiry));
    let expired = futures::stream::once(async {
        let expired =
            GatewayError::Unauthenticated("access token has expired; subscribe again with a new one".into());
        Err(expired.into_graphql())
    });
    live.chain(expired)
}

fn is_for(event: &OrderEvent, user: Uuid, order_id: Option<Uuid>) -> bool {
    event.buyer_id == user && order_id.is_none_or(|id| id == event.order_id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use platform::events::OrderStatus as Status;

    use super::*;
    use crate::events::OrderEvents;

    fn event(buyer: Uuid, order: Uuid, status: Status) -> OrderEvent {
        OrderEvent {
            event_id: Uuid::new_v4(),
            kind: OrderEventType::Created,
            occurred_at: Utc::now(),
            order_id: order,
            buyer_id: buyer,
            buyer_email: "a@example.com".into(),
            concert_id: Uuid::nil(),
            quantity: 2,
            total_cents: 9000,
            currency: "EUR".into(),
            status,
            reason: None,
            hold_expires_at: None,
        }
    }

    fn viewer(id: Uuid, valid_for: chrono::Duration) -> Viewer {
        Viewer {
            id,
            email: "a@example.com".into(),
            roles: vec![],
            token: "t".into(),
            expires_at: Utc::now() + valid_for,
        }
    }

    #[tokio::test]
    async fn subscribers_see_only_their_own_orders() {
        let hub = OrderEvents::new(16);
        let (me, someone_else, mine) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let stream = updates(hub.subscribe(), viewer(me, chrono::Duration::minutes(5)), None, None);
        hub.publish(event(someone_else, Uuid::new_v4(), Status::Pending));
        hub.publish(event(me, mine, Status::Pending));
        hub.publish(event(me, mine, Status::Confirmed));
        let seen: Vec<_> = stream.take(2).map(|u| u.map(|u| (u.0.order_id, u.0.status)).ok()).collect().await;
        assert_eq!(seen, vec![Some((mine, Status::Pending)), Some((mine, Status::Confirmed))]);
    }

    #[tokio::test]
    async fn an_order_subscription_ignores_the_users_other_orders() {
        let hub = OrderEvents::new(16);
        let (me, watched, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let stream = updates(hub.subscribe(), viewer(me, chrono::Duration::minutes(5)), Some(watched), None);
        hub.publish(event(me, other, Status::Pending));
        hub.publish(event(me, watched, Status::Cancelled));
        let first = Box::pin(stream).next().await.unwrap().ok().unwrap();
        assert_eq!(first.0.order_id, watched);
    }

    #[tokio::test]
    async fn a_subscription_ends_when_its_token_expires() {
        let hub = OrderEvents::new(16);
        let stream =
            updates(hub.subscribe(), viewer(Uuid::new_v4(), chrono::Duration::milliseconds(50)), None, None);
        let items: Vec<_> =
            tokio::time::timeout(std::time::Duration::from_secs(5), stream.collect::<Vec<_>>())
                .await
                .expect("the stream ends by itself");
        assert_eq!(items.len(), 1);
        let error = items[0].as_ref().err().expect("an error last");
        let code = error.extensions.as_ref().and_then(|e| e.get("code")).cloned();
        assert_eq!(code, Some(async_graphql::Value::from("UNAUTHENTICATED")));
    }
}
