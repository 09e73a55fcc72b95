//! Order events from RabbitMQ, fanned out to GraphQL subscriptions.
//!
//! One consumer per gateway process reads an exclusive, auto-delete, server-named queue bound to
//! `order.*` on the events exchange, and publishes each event on a `tokio::sync::broadcast` channel
//! that every subscription listens to (each filters for its own user). Live updates are
//! best-effort by nature, so deliveries are auto-acknowledged: a gateway that dies loses only what
//! it would have pushed to connections that died with it. When the broker goes away the consumer
//! reconnects with capped exponential back-off and declares everything again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use platform::events::{ORDER_EVENTS_PATTERN, OrderEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::EventsConfig;

/// How long connecting, declaring and binding may take before the consumer starts again.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The fan-out point between the broker and subscriptions. Cheap to clone.
#[derive(Clone)]
pub struct OrderEvents {
    sender: broadcast::Sender<Arc<OrderEvent>>,
    connected: Arc<AtomicBool>,
}

impl OrderEvents {
    pub fn new(buffer: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer);
        Self { sender, connected: Arc::new(AtomicBool::new(false)) }
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<OrderEvent>> {
        self.sender.subscribe()
    }

    /// Whether the consumer is attached to the broker right now (for `/health`): its queue is bound
    /// and consumed, so an event published from now on reaches the subscriptions.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Receivers listening now: one per live subscription (which subscribes before it checks
    /// anything, so an event sent once this counts it reaches it).
    pub fn listeners(&self) -> usize {
        self.sender.receiver_count()
    }

    /// Hands an event to every subscription; for the consumer, and tests of the fan-out.
    pub fn publish(&self, event: OrderEvent) {
        // No receivers is normal: nobody is subscribed right now.
        let _ = self.sender.send(Arc::new(event));
    }

    /// Runs the consumer until `shutdown`, reconnecting on broker loss.
    pub async fn consume(self, config: EventsConfig, shutdown: CancellationToken) {
        const MAX_BACKOFF: Duration = Duration::from_secs(10);
        let mut backoff = Duration::from_millis(200);
        loop {
            let session = tokio::select! {
                () = shutdown.cancelled() => return,
                session = self.run_session(&config, &shutdown) => session,
            };
            self.connected.store(false, Ordering::Relaxed);
            match session {
                Ok(true) => backoff = Duration::from_millis(200),
                Ok(false) => {}
                Err(error) => tracing::warn!(error = %error, "order event consumer lost the broker"),
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Connects, declares the exchange and this gateway's queue, binds it and starts consuming.
    async fn attach(&self, config: &EventsConfig) -> lapin::Result<(Connection, String, lapin::Consumer)> {
        let properties = ConnectionProperties::default().with_connection_name("ticketflow-gateway".into());
        let connection = Connection::connect(&config.amqp_url, properties).await?;
        let channel = connection.create_channel().await?;
        // Same arguments as the publisher's declaration, so redeclaring is a no-op.
        channel
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                config.exchange.as_str().into(),
                ORDER_EVENTS_PATTERN.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions { no_ack: true, exclusive: true, ..BasicConsumeOptions::default() },
                FieldTable::default(),
            )
            .await?;
        Ok((connection, queue.name().to_string(), consumer))
    }

    /// One connection's life; `Ok(true)` if it got as far as consuming.
    async fn run_session(&self, config: &EventsConfig, shutdown: &CancellationToken) -> lapin::Result<bool> {
        // A broker that accepts the connection but never answers (overloaded, or restarting) must not
        // stall the consumer forever: give up and go round the reconnect loop.
        let (connection, queue, mut consumer) =
            match tokio::time::timeout(ATTACH_TIMEOUT, self.attach(config)).await {
                Ok(attached) => attached?,
                Err(_) => {
                    tracing::warn!(
                        timeout_ms = ATTACH_TIMEOUT.as_millis(),
                        "order event consumer could not attach in time"
                    );
                    return Ok(false);
                }
            };
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %queue, exchange = %config.exchange, "consuming order events");

        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = connection.close(200, "gateway shutting down".into()).await;
                    return Ok(true);
                }
                delivery = consumer.next() => delivery,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => return Err(error),
                None => {
                    tracing::warn!("order event stream ended");
                    return Ok(true);
                }
            };
            match serde_json::from_slice::<OrderEvent>(&delivery.data) {
                Ok(event) => {
                    metrics::counter!("gateway_order_events_total", "type" => event.kind.routing_key())
                        .increment(1);
                    self.publish(event);
                }
                Err(error) => {
                    tracing::warn!(error = %error, routing_key = %delivery.routing_key, "ignoring malformed order event");
                }
            }
        }
    }
}
