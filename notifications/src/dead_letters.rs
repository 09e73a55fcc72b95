//! Operator tools for `<queue>.dlq`: list what is there, put messages back for processing, remove
//! one for good. Nothing here can lose a message, even when the process dies halfway:
//!
//! - every message is taken with `basic_get` **without** auto-ack and stays unacknowledged (so the
//!   next get moves on to the next message) until the command settles it. Messages the command does
//!   not remove are given back with one `nack(requeue)` at the end; if the process is killed
//!   first, the broker requeues them when the connection drops. A classic queue puts requeued
//!   messages back at their old positions, so the order is kept either way.
//! - a replayed message is acked (removed from the DLQ) only after the broker confirmed its copy in
//!   the work queue. A kill between the confirm and the ack leaves the message in both places;
//!   the worker's inbox (the `notifications` row keyed by event id) makes the second one harmless.
//! - a command handles each message at most once per run (by event id, or by body when there is
//!   none): a copy the worker dead-letters again while a replay runs is left in the queue, so a
//!   replay always ends. Nothing here trusts the queue's message count, which RabbitMQ may report
//!   before the requeues of a previous command have landed.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use serde::Serialize;

use crate::envelope::{
    self, ATTEMPT_HEADER, DIED_AT_HEADER, ERROR_HEADER, REASON_HEADER, ROUTING_KEY_HEADER,
};
use crate::topology::Topology;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds one republish and its confirm, as in the worker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers that describe the dead-lettering, not the event: a replayed copy starts afresh, with
/// every attempt the worker allows. `x-death` is the broker's own bookkeeping, should a policy
/// ever dead-letter into this queue.
const BOOKKEEPING_HEADERS: [&str; 5] =
    [REASON_HEADER, ERROR_HEADER, ATTEMPT_HEADER, DIED_AT_HEADER, "x-death"];

/// One message in the dead-letter queue, as an operator reads it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub struct DeadLetter {
    /// The AMQP `message_id` (ordering sets it to the event id), or the body's `eventId`.
    pub event_id: Option<String>,
    /// The body's `type`, or the routing key it was first published with.
    pub event_type: Option<String>,
    pub order_id: Option<String>,
    /// A `DeadLetterReason` (`malformed`, `unknown_type`, `invalid`, `max_attempts`, `undeliverable`).
    pub reason: Option<String>,
    /// When the worker dead-lettered it (absent on messages dead-lettered before the header existed).
    pub died_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// Deliveries the worker made before giving up.
    pub attempts: u32,
}

impl DeadLetter {
    fn read(delivery: &Delivery) -> Self {
        let properties = &delivery.properties;
        let headers = properties.headers().as_ref();
        let body: Option<serde_json::Value> = serde_json::from_slice(&delivery.data).ok();
        let body_field =
            |name: &str| body.as_ref()?.get(name)?.as_str().map(|s| envelope::truncate(s, 100).to_owned());
        let event_id =
            properties.message_id().as_ref().map(|id| id.to_string()).or_else(|| body_field("eventId"));
        Self {
            event_id,
            event_type: body_field("type").or_else(|| header_string(headers, ROUTING_KEY_HEADER)),
            order_id: body_field("orderId"),
            reason: header_string(headers, REASON_HEADER),
            died_at: header_string(headers, DIED_AT_HEADER)
                .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
                .map(|at| at.with_timezone(&Utc)),
            error: header_string(headers, ERROR_HEADER),
            attempts: envelope::attempt(properties),
        }
    }
}

fn header_string(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Which dead letters a replay or purge applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    EventId(String),
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            Self::All => true,
            Self::EventId(id) => letter.event_id.as_deref() == Some(id.as_str()),
        }
    }
}

/// A connection to the broker for working on one worker's dead-letter queue.
pub struct DeadLetterQueue {
    connection: Connection,
    channel: Channel,
    topology: Topology,
}

impl DeadLetterQueue {
    /// Connects and opens a channel with publisher confirms. The DLQ must exist (the worker
    /// declares it): a typo in `NOTIFICATIONS_QUEUE` is an error, not an empty list.
    pub async fn connect(amqp_url: &str, topology: Topology) -> anyhow::Result<Self> {
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(amqp_url, ConnectionProperties::default()),
        )
        .await
        .context("no answer from RabbitMQ in time")?
        .context("connecting to RabbitMQ")?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let queue = Self { connection, channel, topology };
        queue.depth().await?;
        Ok(queue)
    }

    /// Messages ready in the dead-letter queue (not counting those a command holds unacked).
    pub async fn depth(&self) -> anyhow::Result<u32> {
        let dlq = self.topology.dead_letter_queue();
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let declared = self
            .channel
            .queue_declare(dlq.as_str().into(), passive, FieldTable::default())
            .await
            .with_context(|| format!("queue {dlq} does not exist (is NOTIFICATIONS_QUEUE right?)"))?;
        Ok(declared.message_count())
    }

    /// Calls `each` for every dead letter, oldest first (at most `limit`), leaving them all in the
    /// queue. Returns how many were listed.
    pub async fn list(&self, limit: usize, mut each: impl FnMut(&DeadLetter)) -> anyhow::Result<usize> {
        let mut held = Vec::new();
        // Held messages are not delivered again, so the queue runs dry once each was seen.
        let result = async {
            while held.len() < limit {
                let Some(delivery) = self.get().await? else { break };
                each(&DeadLetter::read(&delivery));
                held.push(delivery);
            }
            Ok(held.len())
        }
        .await;
        self.give_back(&held).await;
        result
    }

    /// Republishes the selected dead letters to the worker's queue with their original properties
    /// (minus the dead-letter bookkeeping), removing each from the DLQ once the broker confirmed
    /// its copy; calls `each` after every one. Returns how many were replayed.
    pub async fn replay(
        &self,
        selection: &Selection,
        mut each: impl FnMut(&DeadLetter),
    ) -> anyhow::Result<usize> {
        self.remove_where(selection, async |delivery, letter| {
            self.republish(delivery).await.with_context(|| {
                format!("replaying {}", letter.event_id.as_deref().unwrap_or("a message without event id"))
            })?;
            each(letter);
            Ok(())
        })
        .await
    }

    /// Removes the selected dead letters for good. Returns how many were removed.
    pub async fn purge(
        &self,
        selection: &Selection,
        mut each: impl FnMut(&DeadLetter),
    ) -> anyhow::Result<usize> {
        self.remove_where(selection, async |_, letter| {
            each(letter);
            Ok(())
        })
        .await
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }

    /// Walks the queue once; for each selected message runs `before_ack` and acks it only if that
    /// succeeded. Unselected messages are held and given back at the end, in their order.
    async fn remove_where(
        &self,
        selection: &Selection,
        mut before_ack: impl AsyncFnMut(&Delivery, &DeadLetter) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let mut held = Vec::new();
        let mut removed = 0;
        let mut handled = HashSet::new();
        let result = async {
            while let Some(delivery) = self.get().await? {
                let letter = DeadLetter::read(&delivery);
                let first_time = handled.insert(identity(&letter, &delivery.data));
                if !first_time || !selection.matches(&letter) {
                    held.push(delivery);
                    continue;
                }
                if let Err(error) = before_ack(&delivery, &letter).await {
                    held.push(delivery);
                    return Err(error);
                }
                delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .context("removing the message from the DLQ")?;
                removed += 1;
            }
            Ok(removed)
        }
        .await;
        self.give_back(&held).await;
        result
    }

    async fn get(&self) -> anyhow::Result<Option<Delivery>> {
        let dlq = self.topology.dead_letter_queue();
        let got = self.channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false }).await?;
        Ok(got.map(|message| message.delivery))
    }

    /// Returns held messages to the queue. If this fails the broker still requeues them when the
    /// connection closes, so a failure here loses nothing.
    async fn give_back(&self, held: &[Delivery]) {
        for delivery in held {
            let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            if delivery.nack(requeue).await.is_err() {
                return;
            }
        }
    }

    /// Publishes a copy to the worker's own queue through the default exchange, as retries do, so
    /// other subscribers of the topic exchange never see the event twice.
    async fn republish(&self, delivery: &Delivery) -> anyhow::Result<()> {
        let queue = self.topology.queue.as_str();
        let properties = replayed_properties(&delivery.properties);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirmation = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            self.channel
                .basic_publish("".into(), queue.into(), options, &delivery.data, properties)
                .await?
                .await
        })
        .await
        .context("no publisher confirm in time")??;
        match confirmation {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => bail!("queue {queue} does not exist"),
            Confirmation::Nack(_) => bail!("the broker refused the message"),
        }
    }
}

/// What makes two dead letters the same message: the event id, or the body when there is none.
fn identity(letter: &DeadLetter, body: &[u8]) -> String {
    match &letter.event_id {
        Some(id) => format!("event:{id}"),
        None => {
            let mut hasher = DefaultHasher::new();
            body.hash(&mut hasher);
            format!("body:{:x}", hasher.finish())
        }
    }
}

/// The original properties (message id, content type, persistence, `traceparent`,
/// `x-original-routing-key`, ...) without the dead-letter bookkeeping.
pub fn replayed_properties(properties: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(original) = properties.headers() {
        for (name, value) in original.inner() {
            if !BOOKKEEPING_HEADERS.contains(&name.as_str()) {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
    properties.clone().with_headers(headers).with_delivery_mode(2)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_copy_keeps_the_event_headers_and_drops_the_dead_letter_bookkeeping() {
        let mut headers = FieldTable::default();
        for name in ["traceparent", ROUTING_KEY_HEADER, REASON_HEADER, ERROR_HEADER, DIED_AT_HEADER] {
            headers.insert(name.into(), envelope::string_value("x"));
        }
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(6));
        let original = BasicProperties::default()
            .with_message_id("e1".into())
            .with_content_type("application/json".into())
            .with_headers(headers);

        let replayed = replayed_properties(&original);

        let kept = replayed.headers().clone().unwrap();
        let mut names: Vec<_> = kept.inner().keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(names, ["traceparent", ROUTING_KEY_HEADER]);
        assert_eq!(replayed.message_id().as_ref().unwrap().as_str(), "e1");
        assert_eq!(replayed.content_type().as_ref().unwrap().as_str(), "application/json");
        assert_eq!(*replayed.delivery_mode(), Some(2));
        assert_eq!(envelope::attempt(&replayed), 1);
    }

    #[test]
    fn an_event_id_selection_matches_only_that_event() {
        let letter = |id: Option<&str>| DeadLetter {
            event_id: id.map(str::to_owned),
            event_type: None,
            order_id: None,
            reason: None,
            died_at: None,
            error: None,
            attempts: 1,
        };
        let selection = Selection::EventId("a".to_owned());
        assert!(selection.matches(&letter(Some("a"))));
        assert!(!selection.matches(&letter(Some("b"))));
        assert!(!selection.matches(&letter(None)));
        assert!(Selection::All.matches(&letter(None)));
    }
}
