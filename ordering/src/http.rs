//! The REST API (transport only): parse the request, call [`Orders`], map the answer.
//!
//! Every `/orders` route takes an [`AuthUser`], so none can be reached without a valid token. The
//! state-changing handlers run their work on a task of its own: a client that disconnects mid-way must
//! not cut a seat hold, charge or commit in half.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use platform::auth::{AuthUser, JwtVerifier};
use platform::http::Json;
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use uuid::Uuid;

use crate::domain::{Cursor, IdempotencyKey, Order, PageSize, PlaceOrder, Quantity};
use crate::error::Error;
use crate::orders::{Orders, Placed};

#[derive(Clone, FromRef)]
pub struct AppState {
    pub orders: Arc<Orders>,
    pub verifier: JwtVerifier,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(place_order).get(list_orders))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/confirm", post(confirm_order))
        .route("/orders/{id}/cancel", post(cancel_order))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PlaceOrderBody {
    concert_id: Uuid,
    quantity: i64,
}

async fn place_order(
    State(orders): State<Arc<Orders>>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<PlaceOrderBody>,
) -> Result<Response, Error> {
    let key = idempotency_key(&headers)?;
    let quantity = Quantity::new(body.quantity).map_err(|message| Error::invalid("quantity", message))?;
    let request = PlaceOrder { concert_id: body.concert_id, quantity };
    let placed = detached(async move { orders.place(&user, key, request).await }).await?;
    Ok(stored_response(placed))
}

fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, Error> {
    let header = IdempotencyKey::HEADER;
    let raw = headers.get(header).ok_or_else(|| Error::invalid(header, "this header is required"))?;
    let raw = raw.to_str().map_err(|_| Error::invalid(header, "must be visible ASCII characters"))?;
    IdempotencyKey::parse(raw).map_err(|message| Error::invalid(header, message))
}

/// A stored `POST /orders` outcome, sent exactly as it was the first time.
fn stored_response(placed: Placed) -> Response {
    let status = StatusCode::from_u16(placed.response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() { "application/json" } else { platform::problem::CONTENT_TYPE };
    let mut response = (status, [(CONTENT_TYPE, content_type)], placed.response.body).into_response();
    if placed.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn get_order(
    State(orders): State<Arc<Orders>>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Order>, Error> {
    Ok(Json(orders.get(user.id, order_id(&id)?).await?))
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderPage {
    orders: Vec<Order>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

async fn list_orders(
    State(orders): State<Arc<Orders>>,
    user: AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Json<OrderPage>, Error> {
    const LIMIT: &str = "must be an integer between 1 and 100";
    let limit = params
        .limit
        .map(|raw| raw.trim().parse::<i64>())
        .transpose()
        .map_err(|_| Error::invalid("limit", LIMIT))?;
    let size = PageSize::new(limit).map_err(|_| Error::invalid("limit", LIMIT))?;
    let cursor = params
        .cursor
        .filter(|c| !c.is_empty())
        .map(|raw| Cursor::decode(&raw))
        .transpose()
        .map_err(|message| Error::invalid("cursor", message))?;
    let page = orders.list(user.id, size, cursor).await?;
    Ok(Json(OrderPage { orders: page.orders, next_cursor: page.next.map(|c| c.encode()) }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConfirmBody {
    payment_token: String,
}

async fn confirm_order(
    State(orders): State<Arc<Orders>>,
    user: AuthUser,
    Path(id): Path<String>,
    Json(body): Json<ConfirmBody>,
) -> Result<Json<Order>, Error> {
    let id = order_id(&id)?;
    let order = detached(async move { orders.confirm(&user, id, body.payment_token).await }).await?;
    Ok(Json(order))
}

async fn cancel_order(
    State(orders): State<Arc<Orders>>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Order>, Error> {
    let id = order_id(&id)?;
    let order = detached(async move { orders.cancel(&user, id).await }).await?;
    Ok(Json(order))
}

/// What `POST /payments/webhook` needs: the signing secret (never logged) and the timestamp tolerance.
#[derive(Clone)]
pub struct WebhookState {
    pub secret: Arc<str>,
    pub tolerance: std::time::Duration,
}

/// `POST /payments/webhook`: the payment processor's signed deliveries. No bearer token: the
/// signature is the credential.
pub fn webhook_router(state: WebhookState) -> Router {
    Router::new().route("/payments/webhook", post(payment_webhook)).with_state(state)
}

#[derive(Debug, Deserialize)]
struct WebhookEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: WebhookData,
}

#[derive(Debug, Deserialize)]
struct WebhookData {
    object: WebhookObject,
}

#[derive(Debug, Deserialize)]
struct WebhookObject {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

/// Verifies, parses and records an asynchronous payment outcome. Deliveries repeat (at least once),
/// so recording is idempotent: it is a log line keyed by the event id. Charges here are confirmed
/// synchronously (`confirm=true`), so no delivery changes an order's state yet.
async fn payment_webhook(
    State(state): State<WebhookState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<StatusCode, Error> {
    let signature = headers
        .get(crate::payment_intents::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    crate::payment_intents::verify_webhook(&state.secret, signature, &body, now, state.tolerance).map_err(
        |error| {
            tracing::warn!(%error, "payment webhook refused");
            Error::invalid(crate::payment_intents::SIGNATURE_HEADER, error.to_string())
        },
    )?;
    let event: WebhookEvent =
        serde_json::from_slice(&body).map_err(|_| Error::invalid("body", "is not a payment event"))?;
    let object = &event.data.object;
    tracing::info!(
        payment.event_id = %event.id,
        payment.event_type = %event.kind,
        payment.id = %object.id,
        payment.status = object.status.as_deref().unwrap_or(""),
        order.id = object.metadata.get("order_id").map_or("", String::as_str),
        "payment event received"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// An id that is not a UUID names no order.
fn order_id(raw: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(raw).map_err(|_| Error::OrderNotFound)
}

/// Runs `work` to completion even if the client goes away, inside the request's span.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|error| Error::Internal(anyhow::anyhow!("order task failed: {error}")))?
}
