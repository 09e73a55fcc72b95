//! The worker's RabbitMQ topology, declared idempotently on every (re)connect.
//!
//! ```text
//! <exchange> (topic) --order.*--> <queue> --consumer
//!                                   ^  \-- transient failure --> <queue>.retry.<n> (TTL = n-th delay)
//!                                   |                                  | dead-letters on expiry
//!                                   +----------------------------------+ (via the default exchange)
//!                                      \-- malformed / out of attempts --> <queue>.dlq
//! ```
//! Retries go back through the default exchange straight to our queue, not through the topic
//! exchange, so other subscribers of order events never see our retries.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use platform::events::ORDER_EVENTS_PATTERN;

/// Names derived from the configured exchange and queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub exchange: String,
    pub queue: String,
    pub retry_delays: Vec<Duration>,
}

impl Topology {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    /// The `n`-th retry queue, counting from 1.
    pub fn retry_queue(&self, n: usize) -> String {
        format!("{}.retry.{n}", self.queue)
    }

    /// Where a delivery that failed on `attempt` (counting from 1) waits before the next one:
    /// the retry queue for that attempt, or the last one once the delays run out.
    pub fn retry_queue_after(&self, attempt: u32) -> String {
        let last = self.retry_delays.len().max(1);
        let n = usize::try_from(attempt).unwrap_or(usize::MAX).clamp(1, last);
        self.retry_queue(n)
    }

    /// Every queue the worker owns, for tests and tooling that clean up.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![self.queue.clone(), self.dead_letter_queue()];
        queues.extend((1..=self.retry_delays.len()).map(|n| self.retry_queue(n)));
        queues
    }

    /// Declares the exchange, the queues and the binding. Declaring what exists is a no-op; a queue
    /// that exists with other arguments (a retry delay changed in config) fails the declaration with
    /// PRECONDITION_FAILED: delete that retry queue once it is empty and restart.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await?;
        channel.queue_declare(self.queue.as_str().into(), durable, FieldTable::default()).await?;
        channel
            .queue_declare(self.dead_letter_queue().as_str().into(), durable, FieldTable::default())
            .await?;
        for (index, delay) in self.retry_delays.iter().enumerate() {
            let mut arguments = FieldTable::default();
            let ttl_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX).max(1);
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl_ms));
            arguments.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.queue.as_str().into()),
            );
            channel.queue_declare(self.retry_queue(index + 1).as_str().into(), durable, arguments).await?;
        }
        channel
            .queue_bind(
                self.queue.as_str().into(),
                self.exchange.as_str().into(),
                ORDER_EVENTS_PATTERN.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology {
            exchange: "ticketflow.events".to_owned(),
            queue: "notifications.orders".to_owned(),
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)],
        }
    }

    #[test]
    fn queues_are_named_after_the_main_queue() {
        let t = topology();
        assert_eq!(t.dead_letter_queue(), "notifications.orders.dlq");
        assert_eq!(
            t.queues(),
            [
                "notifications.orders",
                "notifications.orders.dlq",
                "notifications.orders.retry.1",
                "notifications.orders.retry.2",
                "notifications.orders.retry.3",
            ]
        );
    }

    #[test]
    fn back_off_grows_then_stays_at_the_last_delay() {
        let t = topology();
        assert_eq!(t.retry_queue_after(1), "notifications.orders.retry.1");
        assert_eq!(t.retry_queue_after(2), "notifications.orders.retry.2");
        assert_eq!(t.retry_queue_after(3), "notifications.orders.retry.3");
        assert_eq!(t.retry_queue_after(9), "notifications.orders.retry.3");
    }
}
