//! The outbox relay: publishes committed events to RabbitMQ, at least once, in a background task.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED` (replicas share the work without publishing a row
//! twice in the normal case), published as persistent messages on a confirm-mode channel, and marked
//! `published_at` only after the broker acknowledged them. A broker that stops answering, or blocks
//! publishers (a memory or disk alarm: lapin then stops writing, and a publish never completes),
//! makes the batch fail under one deadline for publishing and confirming it, so the row locks of a
//! claimed batch last at most that long; the relay then drops the connection and reconnects with back-off,
//! itself rather than through lapin's auto-recovery (which does not re-send a publish that failed
//! during recovery). Unacknowledged rows stay unpublished and go out after the reconnect, so a row may
//! be published twice but never zero times. The relay wakes on NOTIFY from the insert trigger, with
//! a short poll as a fallback for a missed notification.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::RelayConfig;
use crate::outbox;

/// How long the last publish at shutdown may take; what is left goes out on the next start.
const FINAL_DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// Whether the relay holds a working broker connection, for `/health`.
#[derive(Debug, Default)]
pub struct RelayStatus {
    connected: AtomicBool,
}

impl RelayStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }
}

pub struct Relay {
    db: PgPool,
    config: RelayConfig,
    status: Arc<RelayStatus>,
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("broker: {0}")]
    Broker(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

#[derive(FromRow)]
struct OutboxRow {
    id: i64,
    event_id: Uuid,
    routing_key: String,
    payload: Json<serde_json::Value>,
    headers: Json<HashMap<String, String>>,
}

impl Relay {
    pub fn new(db: PgPool, config: RelayConfig) -> Self {
        Self { db, config, status: Arc::new(RelayStatus::default()) }
    }

    pub fn status(&self) -> Arc<RelayStatus> {
        self.status.clone()
    }

    /// Publishes until `shutdown`. A batch in flight is finished (or times out) first, then what is
    /// left is published for at most [`FINAL_DRAIN_DEADLINE`] (plus the batch then in flight).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut publisher: Option<Publisher> = None;
        let mut listener: Option<PgListener> = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), self.config.reconnect_max);
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            if publisher.as_ref().is_none_or(|p| !p.is_connected()) {
                if let Some(old) = publisher.take() {
                    old.close().await;
                }
                publisher = tokio::select! {
                    () = shutdown.cancelled() => break,
                    connected = self.connect() => connected,
                };
                self.status.set_connected(publisher.is_some());
            }
            if let Some(connected) = &publisher {
                // A backlog is drained until shutdown, then the bounded final drain takes over.
                match self.drain(connected, || !shutdown.is_cancelled()).await {
                    Ok(_) => backoff.reset(),
                    Err(RelayError::Broker(error)) => {
                        tracing::warn!(%error, "publishing failed; reconnecting to the broker");
                        if let Some(broken) = publisher.take() {
                            broken.close().await;
                        }
                        self.status.set_connected(false);
                    }
                    Err(RelayError::Database(error)) => {
                        tracing::warn!(%error, "outbox relay cannot read the outbox")
                    }
                }
            }
            self.report_pending().await;
            // Notifications that arrived during the drain were covered by it.
            if let Some(listener) = listener.as_mut() {
                while listener.next_buffered().is_some() {}
            }
            if publisher.is_some() {
                let notified = async {
                    match listener.as_mut() {
                        Some(l) => l.recv().await.map(|_| ()),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    result = notified => if let Err(error) = result {
                        tracing::warn!(%error, "lost the outbox notification listener; polling until it is back");
                        listener = None;
                    },
                    () = tokio::time::sleep(self.config.poll_interval) => {}
                }
            } else {
                // The broker is down: new rows wait for the next attempt rather than each one
                // triggering a reconnection.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff.next()) => {}
                }
            }
        }
        if let Some(publisher) = publisher {
            // Requests that finished during shutdown wrote events: publish them before leaving, for
            // a bounded time (a backlog or a stuck broker must not hold up the shutdown).
            if publisher.is_connected() {
                // No batch is cut short (that would publish its rows again on the next start); new
                // ones stop once the deadline has passed.
                let deadline = tokio::time::Instant::now() + FINAL_DRAIN_DEADLINE;
                match self.drain(&publisher, || tokio::time::Instant::now() < deadline).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!(
                        deadline_secs = FINAL_DRAIN_DEADLINE.as_secs(),
                        "final outbox drain ran out of time; the next start publishes the rest"
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "final outbox drain failed; the next start publishes the rest")
                    }
                }
            }
            publisher.close().await;
        }
        self.status.set_connected(false);
        tracing::info!("outbox relay stopped");
    }

    async fn listen(&self) -> Option<PgListener> {
        let connected = async {
            let mut listener = PgListener::connect_with(&self.db).await?;
            listener.listen(outbox::CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match connected.await {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for outbox notifications; polling");
                None
            }
        }
    }

    async fn connect(&self) -> Option<Publisher> {
        let connected = tokio::time::timeout(
            self.config.confirm_timeout,
            Publisher::connect(&self.config.amqp_url, &self.config.exchange),
        )
        .await;
        match connected {
            Ok(Ok(publisher)) => {
                tracing::info!(exchange = %self.config.exchange, "outbox relay connected to the broker");
                Some(publisher)
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot connect to the broker");
                None
            }
            Err(_) => {
                tracing::warn!("connecting to the broker timed out");
                None
            }
        }
    }

    /// Publishes batches until the outbox is empty (`Ok(true)`), or until `keep_going` says stop
    /// (`Ok(false)`; checked between batches, so a batch is never cut short).
    async fn drain(&self, publisher: &Publisher, keep_going: impl Fn() -> bool) -> Result<bool, RelayError> {
        loop {
            let published = self.publish_batch(publisher).await?;
            if published < usize::try_from(self.config.batch_size).unwrap_or(usize::MAX) {
                return Ok(true);
            }
            if !keep_going() {
                return Ok(false);
            }
        }
    }

    /// Claims up to a batch of rows, publishes them and marks the acknowledged ones; returns how many
    /// rows were claimed. The claim (row locks) lasts only as long as the publish, which has one
    /// deadline (`confirm_timeout`) for every publish and every confirm of the batch.
    async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, RelayError> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, event_id, routing_key, payload, headers FROM outbox
             WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(self.config.batch_size)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }

        // Publish the whole batch, then wait for the confirms: one round trip, not one per row.
        let deadline = tokio::time::Instant::now() + self.config.confirm_timeout;
        let mut pending = Vec::with_capacity(rows.len());
        let mut failure = None;
        for row in &rows {
            match tokio::time::timeout_at(deadline, publisher.publish(row)).await {
                Ok(Ok(confirm)) => pending.push((row.id, confirm)),
                Ok(Err(error)) => {
                    failure = Some(error);
                    break;
                }
                Err(_) => {
                    failure = Some("the broker took no publish in time (blocked or unreachable)".to_owned());
                    break;
                }
            }
        }
        let mut acked = Vec::with_capacity(pending.len());
        for (id, confirm) in pending {
            match tokio::time::timeout_at(deadline, confirm).await {
                Ok(Ok(Confirmation::Ack(_))) => acked.push(id),
                Ok(Ok(other)) => {
                    failure.get_or_insert_with(|| format!("broker did not acknowledge: {other:?}"));
                }
                Ok(Err(error)) => {
                    failure.get_or_insert_with(|| error.to_string());
                }
                Err(_) => {
                    failure.get_or_insert_with(|| "no publisher confirm in time".to_owned());
                    break;
                }
            }
        }

        // clock_timestamp, not now(): now() is when this transaction began, before the publish.
        let marked: Vec<(DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "UPDATE outbox SET published_at = clock_timestamp() WHERE id = ANY($1)
             RETURNING created_at, published_at",
        )
        .bind(&acked)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        metrics::counter!("outbox_published_total").increment(marked.len() as u64);
        for (created_at, published_at) in &marked {
            let lag = (*published_at - *created_at).to_std().unwrap_or_default();
            metrics::histogram!("outbox_lag_seconds").record(lag.as_secs_f64());
        }
        tracing::debug!(published = marked.len(), claimed = rows.len(), "outbox batch published");
        match failure {
            Some(error) => Err(RelayError::Broker(error)),
            None => Ok(rows.len()),
        }
    }

    async fn report_pending(&self) {
        let pending: Result<i64, _> =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&self.db)
                .await;
        if let Ok(pending) = pending {
            metrics::gauge!("outbox_pending").set(pending as f64);
        }
    }
}

/// One connection and confirm-mode channel to the broker.
struct Publisher {
    connection: Connection,
    channel: Channel,
    exchange: ShortString,
}

impl Publisher {
    async fn connect(url: &str, exchange: &str) -> Result<Self, lapin::Error> {
        // Named after the exchange too, so an operator (or a test) can tell replicas' relays apart.
        let name = format!("ticketflow-ordering-outbox {exchange}");
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(url, properties).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        // Declaring is idempotent with the same arguments; every service declares it the same way.
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        Ok(Self { connection, channel, exchange: exchange.into() })
    }

    fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    async fn publish(&self, row: &OutboxRow) -> Result<lapin::PublisherConfirm, String> {
        let payload = serde_json::to_vec(&row.payload.0).map_err(|e| e.to_string())?;
        let mut headers = FieldTable::default();
        for (name, value) in &row.headers.0 {
            headers.insert(name.as_str().into(), AMQPValue::LongString(value.as_str().into()));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(platform::events::CONTENT_TYPE.into())
            .with_message_id(row.event_id.to_string().into())
            .with_type(row.routing_key.as_str().into())
            .with_app_id("ordering".into())
            .with_headers(headers);
        self.channel
            .basic_publish(
                self.exchange.clone(),
                row.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                properties,
            )
            .await
            .map_err(|e| e.to_string())
    }

    async fn close(self) {
        let closing = self.connection.close(200, "ordering relay reconnecting or stopping".into());
        if tokio::time::timeout(Duration::from_secs(1), closing).await.is_err() {
            tracing::debug!("broker connection did not close in time");
        }
    }
}

/// Exponential back-off between reconnection attempts.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), next: initial }
    }

    fn next(&mut self) -> Duration {
        let current = self.next;
        self.next = (self.next * 2).min(self.max);
        current
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let waits: Vec<_> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(200));
    }
}
