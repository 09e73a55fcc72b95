//! The transactional outbox: every state change writes its event here in the same transaction, and
//! the [`relay`](crate::relay) publishes it later. An event therefore exists exactly when its state
//! change was committed, and no request ever waits on the broker.

use std::collections::HashMap;

use platform::events::OrderEvent;
use sqlx::PgConnection;
use sqlx::types::Json;
use uuid::Uuid;

/// Postgres channel the insert trigger notifies (see the migration).
pub const CHANNEL: &str = "ordering_outbox";

/// Adds `event` to the outbox inside the caller's transaction, with the current trace context so the
/// published message continues the trace of the request that caused it.
pub async fn enqueue(conn: &mut PgConnection, event: &OrderEvent) -> Result<(), sqlx::Error> {
    let headers = trace_headers(platform::trace_context::current_headers());
    sqlx::query("INSERT INTO outbox (event_id, routing_key, payload, headers) VALUES ($1, $2, $3, $4)")
        .bind(event.event_id)
        .bind(event.kind.routing_key())
        .bind(Json(event))
        .bind(Json(headers))
        .execute(conn)
        .await?;
    Ok(())
}

/// The trace context to send with an event. Without an active trace (an event written outside any
/// request span) the event starts one of its own, so its consumers still share a trace id.
fn trace_headers(mut current: HashMap<String, String>) -> HashMap<String, String> {
    if !current.contains_key("traceparent") {
        let trace_id = Uuid::new_v4().simple().to_string();
        let span_id = &Uuid::new_v4().simple().to_string()[..16];
        current.clear();
        current.insert("traceparent".to_owned(), format!("00-{trace_id}-{span_id}-01"));
    }
    current
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_trace_context_is_kept() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned();
        let current = HashMap::from([("traceparent".to_owned(), traceparent.clone())]);
        assert_eq!(trace_headers(current)["traceparent"], traceparent);
    }

    #[test]
    fn without_one_the_event_starts_a_valid_trace() {
        let headers = trace_headers(HashMap::new());
        let parts: Vec<&str> = headers["traceparent"].split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!((parts[0], parts[1].len(), parts[2].len(), parts[3]), ("00", 32, 16, "01"));
        assert!(parts[1].chars().chain(parts[2].chars()).all(|c| c.is_ascii_hexdigit()));
    }
}
