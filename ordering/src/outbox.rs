//! The transactional outbox: every state change writes its event here in the same transaction, and
//! the [`relay`](crate::relay) publishes it later. An event therefore exists exactly when its state
//! change was committed, and no request ever waits on the broker.

use std::collections::HashMap;

use platform::events::OrderEvent;
use sqlx::PgConnection;
use sqlx::types::Json;

/// Postgres channel the insert trigger notifies (see the migration).
pub const CHANNEL: &str = "ordering_outbox";

/// Adds `event` to the outbox inside the caller's transaction, with the current trace context so the
/// published message continues the trace of the request that caused it.
pub async fn enqueue(conn: &mut PgConnection, event: &OrderEvent) -> Result<(), sqlx::Error> {
    let headers: HashMap<String, String> = platform::trace_context::current_headers();
    sqlx::query("INSERT INTO outbox (event_id, routing_key, payload, headers) VALUES ($1, $2, $3, $4)")
        .bind(event.event_id)
        .bind(event.kind.routing_key())
        .bind(Json(event))
        .bind(Json(headers))
        .execute(conn)
        .await?;
    Ok(())
}
