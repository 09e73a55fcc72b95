//! Consuming order events: one broker connection supervised with back-off, deliveries processed
//! concurrently up to [`Config::concurrency`](crate::Config::concurrency) (the prefetch, capped by
//! the database pool), and each one settled (acked, scheduled for a retry, or dead-lettered) only
//! after its outcome is recorded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ConnectionStatus};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::envelope::{
    self, ATTEMPT_HEADER, DIED_AT_HEADER, ERROR_HEADER, HeaderExtractor, REASON_HEADER, ROUTING_KEY_HEADER,
};
use crate::envelope::{DeadLetterReason, Rejection};
use crate::notification;
use crate::processing::{self, Outcome};
use crate::sender::Sender;
use crate::topology::Topology;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a publish and its confirm: lapin 4 does not re-send a publish lost during a reconnect.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How often the queue depths behind `notifications_queue_messages` are read from the broker.
const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Whether the worker holds a live broker connection; read by `/health`.
#[derive(Clone, Default)]
pub struct BrokerState(Arc<Mutex<Option<ConnectionStatus>>>);

impl BrokerState {
    fn set(&self, status: Option<ConnectionStatus>) {
        if let Ok(mut current) = self.0.lock() {
            *current = status;
        }
    }

    pub fn check(&self) -> Result<(), String> {
        let current = self.0.lock().map_err(|_| "broker state unavailable".to_owned())?;
        match current.as_ref() {
            Some(status) if status.connected() => Ok(()),
            Some(_) => Err("connection to RabbitMQ lost; reconnecting".to_owned()),
            None => Err("not connected to RabbitMQ".to_owned()),
        }
    }
}

/// What the worker needs, shared by every delivery task.
pub struct Worker {
    pub amqp_url: String,
    pub topology: Topology,
    pub prefetch: u16,
    /// Deliveries processed at once; the others prefetched wait in the consumer's buffer.
    pub concurrency: usize,
    pub max_attempts: u32,
    pub send_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub pool: PgPool,
    pub sender: Arc<dyn Sender>,
    pub broker: BrokerState,
}

/// How a delivery is settled with the broker.
enum Action {
    Ack,
    Retry { error: String },
    DeadLetter(Rejection),
}

pub fn describe_metrics() {
    metrics::describe_counter!("notifications_processed_total", "Notifications recorded and sent, by type");
    metrics::describe_counter!(
        "notifications_duplicates_total",
        "Redelivered events skipped: already notified"
    );
    metrics::describe_counter!("notifications_retried_total", "Deliveries scheduled for another attempt");
    metrics::describe_counter!(
        "notifications_dead_lettered_total",
        "Messages sent to the dead-letter queue, by reason"
    );
    metrics::describe_gauge!(
        "notifications_queue_messages",
        "Messages ready in the worker's queues, by queue (work, dead_letter), sampled every 10 s"
    );
    metrics::describe_histogram!(
        "notification_event_age_seconds",
        metrics::Unit::Seconds,
        "From the order event's occurredAt to the worker receiving it: how far notifications lag"
    );
    metrics::describe_histogram!(
        "notification_processing_seconds",
        metrics::Unit::Seconds,
        "Time from receiving a delivery to settling it with the broker"
    );
}

impl Worker {
    /// Consumes until `shutdown` is cancelled, reconnecting with back-off whenever the broker
    /// connection is lost; returns once in-flight deliveries are settled and the connection closed.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = RECONNECT_MIN;
        while !shutdown.is_cancelled() {
            let mut consumed = false;
            let result = self.session(&shutdown, &mut consumed).await;
            self.broker.set(None);
            let error = match result {
                Ok(()) => break,
                Err(error) => error,
            };
            // Start over quickly after a session that got as far as consuming; keep backing off
            // when connecting or declaring keeps failing.
            if consumed {
                backoff = RECONNECT_MIN;
            }
            tracing::warn!(
                error = %format!("{error:#}"),
                retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "RabbitMQ unavailable; reconnecting"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
        tracing::info!("notification worker stopped");
    }

    /// One connection's life: connect, declare, consume until shutdown (`Ok`) or loss (`Err`).
    async fn session(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        consumed: &mut bool,
    ) -> anyhow::Result<()> {
        let properties =
            ConnectionProperties::default().with_connection_name("ticketflow-notifications".into());
        let connection =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.amqp_url, properties))
                .await
                .context("timed out connecting to RabbitMQ")?
                .context("connecting to RabbitMQ")?;
        let result = self.consume(&connection, shutdown, consumed).await;
        if connection.status().connected() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), connection.close(200, "worker stopping".into()))
                    .await;
        }
        result
    }

    async fn consume(
        self: &Arc<Self>,
        connection: &Connection,
        shutdown: &CancellationToken,
        consumed: &mut bool,
    ) -> anyhow::Result<()> {
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await.context("declaring the topology")?;
        channel.basic_qos(self.prefetch, BasicQosOptions::default()).await?;
        // Retries and dead letters go out on their own channel in confirm mode, so a message is
        // acked only once the broker has taken its copy.
        let publisher = connection.create_channel().await?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await?;
        let tag = format!("notifications-{}", Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                self.topology.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let _sampler = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sample_queue_depths(
            connection.create_channel().await?,
            self.topology.clone(),
        )));
        self.broker.set(Some(connection.status().clone()));
        *consumed = true;
        tracing::info!(
            queue = %self.topology.queue,
            prefetch = self.prefetch,
            concurrency = self.concurrency,
            "consuming order events"
        );

        // Not taking the next delivery while `concurrency` are in flight is what keeps every task
        // supplied with a database connection: deliveries beyond it wait unacked in the consumer's
        // buffer (returned to the queue if the channel closes), not on the pool's acquire timeout.
        let mut in_flight = JoinSet::new();
        let limit = self.concurrency.max(1);
        let outcome = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(error) = joined {
                        tracing::error!(%error, "delivery task failed; the broker will redeliver its message");
                    }
                }
                next = consumer.next(), if in_flight.len() < limit => match next {
                    Some(Ok(delivery)) => {
                        in_flight.spawn(Arc::clone(self).handle(delivery, publisher.clone()));
                    }
                    Some(Err(error)) => break Err(anyhow::Error::from(error).context("consuming")),
                    None => break Err(anyhow!("the broker cancelled the consumer")),
                },
            }
        };

        if outcome.is_ok() {
            // Stop the flow first: deliveries buffered but not started are returned to the queue
            // when the channel closes; those in flight are finished and acked below.
            if let Err(error) = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await
            {
                tracing::warn!(%error, "could not cancel the consumer");
            }
        }
        // After a lost connection the tasks still finish their database work; their acks fail and the
        // broker redelivers, which the event-id key turns into skipped duplicates.
        let drained = tokio::time::timeout(self.shutdown_timeout, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                count = in_flight.len(),
                "in-flight deliveries did not finish in time; leaving them to be redelivered"
            );
            in_flight.shutdown().await;
        }
        if outcome.is_ok() {
            let _ = channel.close(200, "worker stopping".into()).await;
            let _ = publisher.close(200, "worker stopping".into()).await;
        }
        outcome
    }

    /// Processes one delivery and settles it, inside a span that continues the producer's trace.
    async fn handle(self: Arc<Self>, delivery: Delivery, publisher: Channel) {
        let started = Instant::now();
        let attempt = envelope::attempt(&delivery.properties);
        let span = tracing::info_span!(
            "notification.delivery",
            messaging.routing_key = %delivery.routing_key,
            messaging.attempt = attempt,
            event.id = tracing::field::Empty,
            order.id = tracing::field::Empty,
            trace.id = tracing::field::Empty,
        );
        platform::trace_context::set_parent(&span, &HeaderExtractor(delivery.properties.headers().as_ref()));
        async {
            let action = self.process(&delivery, attempt).await;
            self.settle(&delivery, &publisher, attempt, action).await;
        }
        .instrument(span)
        .await;
        metrics::histogram!("notification_processing_seconds").record(started.elapsed().as_secs_f64());
    }

    async fn process(&self, delivery: &Delivery, attempt: u32) -> Action {
        let event = match envelope::decode(&delivery.data, &delivery.properties) {
            Ok(event) => event,
            Err(rejection) => return Action::DeadLetter(rejection),
        };
        let age = chrono::Utc::now().signed_duration_since(event.occurred_at);
        metrics::histogram!("notification_event_age_seconds").record(age.as_seconds_f64().max(0.0));
        let span = tracing::Span::current();
        span.record("event.id", tracing::field::display(event.event_id));
        span.record("order.id", tracing::field::display(event.order_id));
        let notification = match notification::render(&event) {
            Ok(notification) => notification,
            Err(invalid) => return Action::DeadLetter(invalid.into()),
        };
        match processing::record_and_send(&self.pool, self.sender.as_ref(), &notification, self.send_timeout)
            .await
        {
            Ok(Outcome::Sent) => {
                metrics::counter!("notifications_processed_total", "type" => notification.kind.as_str())
                    .increment(1);
                Action::Ack
            }
            Ok(Outcome::Duplicate) => {
                metrics::counter!("notifications_duplicates_total").increment(1);
                tracing::info!("event already notified; duplicate skipped");
                Action::Ack
            }
            Err(error) if !error.is_transient() => Action::DeadLetter(Rejection {
                reason: DeadLetterReason::Undeliverable,
                detail: error.to_string(),
            }),
            Err(error) if attempt >= self.max_attempts => Action::DeadLetter(Rejection {
                reason: DeadLetterReason::MaxAttempts,
                detail: format!("gave up after {attempt} attempts: {error}"),
            }),
            Err(error) => Action::Retry { error: error.to_string() },
        }
    }

    async fn settle(&self, delivery: &Delivery, publisher: &Channel, attempt: u32, action: Action) {
        // Retried and dead-lettered copies keep the routing key the event was first published with;
        // once back from a retry queue, the delivery's own routing key is our queue's name.
        let original_key = (ROUTING_KEY_HEADER, envelope::string_value(delivery.routing_key.as_str()));
        let keep_original_key = delivery
            .properties
            .headers()
            .as_ref()
            .is_none_or(|headers| !headers.contains_key(ROUTING_KEY_HEADER));

        match action {
            Action::Ack => ack(delivery).await,
            Action::Retry { error } => {
                let queue = self.topology.retry_queue_after(attempt);
                let next_attempt = i64::from(attempt) + 1;
                let mut changes = vec![(ATTEMPT_HEADER, AMQPValue::LongLongInt(next_attempt))];
                if keep_original_key {
                    changes.push(original_key);
                }
                let properties = envelope::with_headers(&delivery.properties, &changes);
                match publish(publisher, &queue, &delivery.data, properties).await {
                    Ok(()) => {
                        metrics::counter!("notifications_retried_total").increment(1);
                        tracing::warn!(%error, retry.queue = %queue, "processing failed; retrying later");
                        ack(delivery).await;
                    }
                    Err(publish_error) => {
                        tracing::error!(%error, error.publish = %format!("{publish_error:#}"), "processing failed and the retry could not be scheduled");
                        self.requeue_later(delivery).await;
                    }
                }
            }
            Action::DeadLetter(rejection) => {
                let detail = envelope::truncate(&rejection.detail, 500);
                let died_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let mut changes = vec![
                    (REASON_HEADER, envelope::string_value(rejection.reason.as_str())),
                    (ERROR_HEADER, envelope::string_value(detail)),
                    (DIED_AT_HEADER, envelope::string_value(&died_at)),
                ];
                if keep_original_key {
                    changes.push(original_key);
                }
                let properties = envelope::with_headers(&delivery.properties, &changes);
                let queue = self.topology.dead_letter_queue();
                match publish(publisher, &queue, &delivery.data, properties).await {
                    Ok(()) => {
                        metrics::counter!("notifications_dead_lettered_total", "reason" => rejection.reason.as_str())
                            .increment(1);
                        tracing::warn!(dead_letter.reason = %rejection.reason, error = %detail, "message dead-lettered");
                        ack(delivery).await;
                    }
                    Err(publish_error) => {
                        tracing::error!(dead_letter.reason = %rejection.reason, error = %detail, error.publish = %format!("{publish_error:#}"), "could not dead-letter the message");
                        self.requeue_later(delivery).await;
                    }
                }
            }
        }
    }

    /// Gives a message back to the queue after a pause, when neither a retry nor a dead letter
    /// could be published; the pause keeps a broker in trouble from a hot redelivery loop.
    async fn requeue_later(&self, delivery: &Delivery) {
        let pause = self.topology.retry_delays.first().copied().unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(pause).await;
        let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
        if let Err(error) = delivery.nack(requeue).await {
            tracing::warn!(%error, "could not return the message; the broker will redeliver it");
        }
    }
}

/// Reads the depth of the work queue and the dead-letter queue every [`QUEUE_SAMPLE_INTERVAL`]
/// for `notifications_queue_messages`, so an alert fires on a dead letter without anyone running
/// `rabbitmqctl`. Its own channel: a failed passive declare closes the channel it ran on.
async fn sample_queue_depths(channel: Channel, topology: Topology) {
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let queues = [("work", topology.queue.clone()), ("dead_letter", topology.dead_letter_queue())];
    let mut ticks = tokio::time::interval(QUEUE_SAMPLE_INTERVAL);
    loop {
        ticks.tick().await;
        for (label, queue) in &queues {
            match channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
                Ok(declared) => metrics::gauge!("notifications_queue_messages", "queue" => *label)
                    .set(f64::from(declared.message_count())),
                Err(error) => {
                    tracing::debug!(%error, "could not read the queue depths; the session reconnects");
                    return;
                }
            }
        }
    }
}

async fn ack(delivery: &Delivery) {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::info!("channel closed before the ack; the broker will redeliver"),
        Err(error) => tracing::warn!(%error, "ack failed; the broker will redeliver"),
    }
}

/// Publishes to `queue` through the default exchange and waits for the broker's confirm.
async fn publish(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    // `mandatory`: a missing queue returns the message instead of dropping it silently.
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirmation = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        channel.basic_publish("".into(), queue.into(), options, body, properties).await?.await
    })
    .await
    .context("no publisher confirm in time")??;
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => bail!("queue {queue} does not exist"),
        Confirmation::Nack(_) => bail!("the broker refused the message"),
    }
}
