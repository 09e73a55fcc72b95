//! `ticketflow trace ORDER_ID`: one order's story from the services' own databases, in time order:
//! its states and outbox events (ordering), when each event was published, the notification each
//! produced (notifications), the seat hold (catalog), and the trace ids to search the logs for.
//!
//! Each database URL is found as the launcher finds it (`ORDERING_DATABASE_URL`, ..., else the
//! launcher's default), and every session is read-only (`default_transaction_read_only`), so a
//! trace can never change what it looks at.

use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use platform::config::{ConfigError, Env, ProcessEnv};
use platform::db::DatabaseConfig;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

use crate::service_env::ServiceEnv;

/// Where the three databases that know about an order are.
pub struct Databases {
    pub ordering: String,
    pub catalog: String,
    pub notifications: String,
}

impl Databases {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = |prefix: &'static str, default_db: &str| {
            DatabaseConfig::from_env(&Env::new(&ServiceEnv::new(prefix, ProcessEnv)), default_db)
                .map(|c| c.url)
        };
        Ok(Self {
            ordering: url("ORDERING", "ticketflow_ordering")?,
            catalog: url("CATALOG", "ticketflow_catalog")?,
            notifications: url("NOTIFICATIONS", "ticketflow_notifications")?,
        })
    }
}

/// One thing that happened to the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: DateTime<Utc>,
    pub service: &'static str,
    pub what: String,
}

/// The order as it is now, and everything that happened to it.
#[derive(Debug, Clone)]
pub struct Story {
    pub order_id: Uuid,
    pub summary: String,
    pub steps: Vec<Step>,
    /// (event type, trace id) of each event, in the order they were written.
    pub trace_ids: Vec<(String, String)>,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    status: String,
    quantity: i32,
    total_cents: i64,
    currency: String,
    cancel_reason: Option<String>,
    hold_expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: Uuid,
    routing_key: String,
    status: Option<String>,
    traceparent: Option<String>,
    created_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    event_id: Uuid,
    notification_type: String,
    recipient: String,
    recorded_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct HoldRow {
    status: String,
    quantity: i32,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Reads the order's story; `Ok(None)` when ordering has no such order.
pub async fn trace(databases: &Databases, order_id: Uuid) -> anyhow::Result<Option<Story>> {
    let mut ordering = read_only(&databases.ordering).await.context("connecting to ordering's database")?;
    let order: Option<OrderRow> =
        sqlx::query_as(
            "SELECT status, quantity, total_cents, currency, cancel_reason, hold_expires_at, created_at, updated_at
             FROM orders WHERE id = $1",
        )
        .bind(order_id)
        .fetch_optional(&mut ordering)
        .await
        .context("reading ordering's orders")?;
    let Some(OrderRow {
        status,
        quantity,
        total_cents,
        currency,
        cancel_reason,
        hold_expires_at,
        created_at,
        updated_at,
    }) = order
    else {
        return Ok(None);
    };
    let mut steps = vec![Step {
        at: created_at,
        service: "ordering",
        what: format!("order placed: Pending, seats held until {}", timestamp(hold_expires_at)),
    }];
    // The outbox keeps every state change as an event (until OUTBOX_RETENTION_HOURS purges it).
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT event_id, routing_key, payload->>'status' AS status, headers->>'traceparent' AS traceparent,
                    created_at, published_at
             FROM outbox WHERE payload->>'orderId' = $1 ORDER BY id",
    )
    .bind(order_id.to_string())
    .fetch_all(&mut ordering)
    .await
    .context("reading ordering's outbox")?;
    let mut trace_ids = Vec::new();
    for EventRow {
        event_id,
        routing_key,
        status: event_status,
        traceparent,
        created_at: written_at,
        published_at,
    } in &events
    {
        let trace_id = traceparent.as_deref().and_then(trace_id_of);
        if let Some(trace_id) = trace_id {
            trace_ids.push((routing_key.clone(), trace_id.to_owned()));
        }
        if routing_key != "order.created"
            && let Some(event_status) = event_status
        {
            steps.push(Step { at: *written_at, service: "ordering", what: format!("order {event_status}") });
        }
        steps.push(Step {
            at: *written_at,
            service: "ordering",
            what: format!(
                "outbox event {routing_key} {event_id} written (trace {})",
                trace_id.unwrap_or("-")
            ),
        });
        match published_at {
            Some(at) => steps.push(Step {
                at: *at,
                service: "ordering",
                what: format!("outbox event {routing_key} {event_id} published to RabbitMQ"),
            }),
            None => steps.push(Step {
                at: Utc::now(),
                service: "ordering",
                what: format!("outbox event {routing_key} {event_id} NOT PUBLISHED yet (see outbox_pending)"),
            }),
        }
    }
    let _ = ordering.close().await;

    let mut notifications =
        read_only(&databases.notifications).await.context("connecting to notifications' database")?;
    let notified: Vec<NotificationRow> = sqlx::query_as(
        "SELECT event_id, notification_type, recipient, recorded_at, sent_at
         FROM notifications WHERE order_id = $1 ORDER BY occurred_at",
    )
    .bind(order_id)
    .fetch_all(&mut notifications)
    .await
    .context("reading notifications' records")?;
    let _ = notifications.close().await;
    for NotificationRow { event_id, notification_type: kind, recipient, recorded_at, sent_at } in &notified {
        let to = notifications::notification::Recipient::parse(recipient)
            .map_or_else(|_| "an invalid address".to_owned(), |r| r.masked());
        steps.push(Step {
            at: *recorded_at,
            service: "notifications",
            what: format!("{kind} recorded for event {event_id}"),
        });
        if let Some(sent_at) = sent_at {
            steps.push(Step { at: *sent_at, service: "notifications", what: format!("{kind} sent to {to}") });
        }
    }
    for EventRow { event_id, routing_key, .. } in &events {
        if !notified.iter().any(|n| n.event_id == *event_id) {
            steps.push(Step {
                at: Utc::now(),
                service: "notifications",
                what: format!(
                    "no notification for {routing_key} {event_id} yet (queued, retrying, or dead-lettered: \
                     `notifications dlq list`)"
                ),
            });
        }
    }

    let mut catalog = read_only(&databases.catalog).await.context("connecting to catalog's database")?;
    let hold: Option<HoldRow> = sqlx::query_as(
        "SELECT status, quantity, expires_at, created_at, updated_at FROM holds WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut catalog)
    .await
    .context("reading catalog's holds")?;
    let _ = catalog.close().await;
    match hold {
        Some(HoldRow {
            status: hold_status,
            quantity: seats,
            expires_at,
            created_at: hold_created,
            updated_at: hold_updated,
        }) => {
            steps.push(Step {
                at: hold_created,
                service: "catalog",
                what: format!("{seats} seat(s) held until {}", timestamp(expires_at)),
            });
            if hold_status != "held" {
                steps.push(Step {
                    at: hold_updated,
                    service: "catalog",
                    what: format!("hold {hold_status}"),
                });
            }
        }
        None => steps.push(Step {
            at: created_at,
            service: "catalog",
            what: "no seat hold for this order (never taken, or purged)".to_owned(),
        }),
    }

    // A stable sort: steps written at the same instant keep the order they were added in.
    steps.sort_by_key(|step| step.at);
    let reason = cancel_reason.map(|r| format!(" ({r})")).unwrap_or_default();
    let summary = format!(
        "order {order_id}: {status}{reason}, {quantity} seat(s), {}.{:02} {currency}, last changed {}",
        total_cents / 100,
        total_cents % 100,
        timestamp(updated_at)
    );
    Ok(Some(Story { order_id, summary, steps, trace_ids }))
}

impl fmt::Display for Story {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary)?;
        for step in &self.steps {
            writeln!(f, "{}  {:<13}  {}", timestamp(step.at), step.service, step.what)?;
        }
        let ids: Vec<String> = self.trace_ids.iter().map(|(kind, id)| format!("{id} ({kind})")).collect();
        write!(
            f,
            "search the logs for order.id={} or trace.id {}",
            self.order_id,
            if ids.is_empty() { "-".to_owned() } else { ids.join(", ") }
        )
    }
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(trace_id)
}

/// One connection whose transactions are all read-only: the trace looks, never touches.
async fn read_only(url: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)?.options([("default_transaction_read_only", "on")]);
    Ok(options.connect().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_the_second_field_of_a_traceparent() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
        assert_eq!(trace_id_of("00-xyz-00f067aa0ba902b7-01"), None);
    }
}
