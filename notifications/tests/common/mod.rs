//! Set-up shared by the worker's tests: a private database, exchange and queue per test, a worker
//! started in-process, a publisher playing the part of ordering, and a recording sender.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a different part of it

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures::future::BoxFuture;
use integration::{RunningService, TestDatabase, TestNames};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use notifications::notification::Notification;
use notifications::{App, Config, SendError, Sender, Topology};
use platform::config::Env;
use platform::events::{OrderEvent, OrderEventType, OrderStatus};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How long a test waits for the broker to confirm a publish (or accept a connection) before failing.
pub const BROKER_WAIT: Duration = Duration::from_secs(20);

/// Remembers every notification "sent", standing in for the buyer's inbox. It can also play a slow
/// or unresponsive mail server, and notes how many sends ran at once.
#[derive(Clone, Default)]
pub struct RecordingSender(Arc<Inbox>);

#[derive(Default)]
struct Inbox {
    sent: Mutex<Vec<Notification>>,
    /// How long each send takes.
    delay: Duration,
    /// Sends still to hang forever (until the worker's send timeout gives up on them).
    hangs_left: AtomicUsize,
    sending: AtomicUsize,
    most_at_once: AtomicUsize,
}

/// Counts a send as running until it finishes or the worker drops it.
struct Sending<'a>(&'a Inbox);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RecordingSender {
    /// A mail server that takes `delay` to accept each message.
    pub fn slow(delay: Duration) -> Self {
        Self(Arc::new(Inbox { delay, ..Inbox::default() }))
    }

    /// A mail server that never answers the first `count` sends.
    pub fn hanging_first(count: usize) -> Self {
        Self(Arc::new(Inbox { hangs_left: AtomicUsize::new(count), ..Inbox::default() }))
    }

    pub fn sent(&self) -> Vec<Notification> {
        self.0.sent.lock().unwrap().clone()
    }

    pub fn times_sent(&self, event_id: Uuid) -> usize {
        self.0.sent.lock().unwrap().iter().filter(|n| n.event_id == event_id).count()
    }

    /// The most sends that were in progress at the same time.
    pub fn most_at_once(&self) -> usize {
        self.0.most_at_once.load(Ordering::SeqCst)
    }
}

impl Sender for RecordingSender {
    fn send<'a>(&'a self, notification: &'a Notification) -> BoxFuture<'a, Result<(), SendError>> {
        let inbox = &self.0;
        Box::pin(async move {
            let now = inbox.sending.fetch_add(1, Ordering::SeqCst) + 1;
            let _sending = Sending(inbox);
            inbox.most_at_once.fetch_max(now, Ordering::SeqCst);
            let hang =
                inbox.hangs_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            if hang.is_ok() {
                std::future::pending::<()>().await;
            }
            if !inbox.delay.is_zero() {
                tokio::time::sleep(inbox.delay).await;
            }
            inbox.sent.lock().unwrap().push(notification.clone());
            Ok(())
        })
    }
}

/// Waits for the broker's confirm of one publish, failing the test instead of hanging.
pub async fn confirmed(confirm: lapin::PublisherConfirm) {
    let confirmation = tokio::time::timeout(BROKER_WAIT, confirm)
        .await
        .unwrap_or_else(|_| panic!("no publisher confirm within {BROKER_WAIT:?}"))
        .unwrap();
    assert!(confirmation.is_ack(), "the broker refused a publish: {confirmation:?}");
}

/// One test's world: its database, exchange, queues and the connections to inspect them.
pub struct World {
    pub names: TestNames,
    pub db: TestDatabase,
    pub exchange: String,
    pub queue: String,
    pub inbox: RecordingSender,
    /// Short back-off so retries happen within a test.
    pub retry_delays: &'static str,
    pub max_attempts: u32,
    connection: Connection,
    channel: Channel,
    pg: Option<PgPool>,
}

impl World {
    pub async fn new() -> World {
        integration::init();
        let names = TestNames::new();
        let db = TestDatabase::create(&names.database("notifications")).await.unwrap();
        let connection = tokio::time::timeout(
            BROKER_WAIT,
            Connection::connect(&integration::amqp_url(), ConnectionProperties::default()),
        )
        .await
        .expect("RabbitMQ accepts a connection in time")
        .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        World {
            exchange: names.exchange(),
            queue: names.queue("notifications.orders"),
            names,
            db,
            inbox: RecordingSender::default(),
            retry_delays: "0.2,0.4",
            max_attempts: 6,
            connection,
            channel,
            pg: None,
        }
    }

    /// The worker's configuration for this world, reaching RabbitMQ and Postgres at the given URLs.
    pub fn config_via(&self, amqp_url: &str, database_url: &str) -> Config {
        let max_attempts = self.max_attempts.to_string();
        let vars: HashMap<&'static str, String> = HashMap::from([
            ("AMQP_URL", amqp_url.to_owned()),
            ("DATABASE_URL", database_url.to_owned()),
            ("EVENTS_EXCHANGE", self.exchange.clone()),
            ("NOTIFICATIONS_QUEUE", self.queue.clone()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("RETRY_DELAYS", self.retry_delays.to_owned()),
            ("MAX_ATTEMPTS", max_attempts),
            // Tests run in parallel against one Postgres: small pools keep them under its limit.
            ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
            ("DATABASE_ACQUIRE_TIMEOUT_SECS", "1".to_owned()),
        ]);
        Config::from_env(&Env::new(&vars)).unwrap()
    }

    pub fn config(&self) -> Config {
        self.config_via(&integration::amqp_url(), &self.db.url)
    }

    /// Starts a worker that "sends" into [`World::inbox`] and waits until it consumes.
    pub async fn start_worker(&self) -> RunningService {
        self.start_worker_with(self.config()).await
    }

    pub async fn start_worker_with(&self, config: Config) -> RunningService {
        let app = App::build_with_sender(config, Arc::new(self.inbox.clone())).await.unwrap();
        let worker = spawn(app);
        worker.wait_healthy(Duration::from_secs(20)).await.unwrap();
        worker
    }

    pub fn topology(&self) -> Topology {
        let config = self.config();
        Topology { exchange: config.exchange, queue: config.queue, retry_delays: config.retry_delays }
    }

    /// Publishes as ordering does: persistent, JSON, `message_id` = event id, a `traceparent`.
    pub async fn publish(&self, event: &OrderEvent) {
        confirmed(self.publish_without_confirm(event).await).await;
    }

    /// Publishes and returns the confirm to wait for later (for bulk publishing).
    pub async fn publish_without_confirm(&self, event: &OrderEvent) -> lapin::PublisherConfirm {
        let body = serde_json::to_vec(event).unwrap();
        self.publish_raw(event.kind.routing_key(), &body, event_properties(event.event_id)).await
    }

    /// Publishes `body` as ordering would publish the event it describes (for bodies a newer or
    /// different producer might send), and waits for the confirm.
    pub async fn publish_json(&self, event: &OrderEvent, body: &serde_json::Value) {
        let body = serde_json::to_vec(body).unwrap();
        confirmed(self.publish_raw(event.kind.routing_key(), &body, event_properties(event.event_id)).await)
            .await;
    }

    pub async fn publish_raw(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::PublisherConfirm {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
    }

    /// Declares the worker's exchange and queues without starting a worker.
    pub async fn declare_topology(&self) {
        self.topology().declare(&self.channel).await.unwrap();
    }

    /// Publishes straight into one of the worker's queues (through the default exchange) and waits
    /// for the confirm, e.g. to put a message in the DLQ as the worker would have.
    pub async fn publish_to_queue(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties)
            .await
            .unwrap();
        confirmed(confirm).await;
    }

    /// [`World::publish_to_queue`] without waiting: returns the confirm, for bulk publishing.
    pub async fn publish_to_queue_unconfirmed(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::PublisherConfirm {
        self.channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, properties)
            .await
            .unwrap()
    }

    /// Takes every message off `queue` (acking them), in order.
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::Delivery> {
        let mut taken = Vec::new();
        while let Some(message) =
            self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap()
        {
            taken.push(message.delivery);
        }
        taken
    }

    /// Direct access to the worker's database, for assertions.
    pub async fn pg(&mut self) -> PgPool {
        if self.pg.is_none() {
            self.pg = Some(PgPoolOptions::new().max_connections(2).connect(&self.db.url).await.unwrap());
        }
        self.pg.clone().unwrap()
    }

    pub async fn notification_rows(&mut self) -> i64 {
        let pg = self.pg().await;
        sqlx::query_scalar("SELECT count(*) FROM notifications").fetch_one(&pg).await.unwrap()
    }

    pub async fn rows_for(&mut self, event_id: Uuid) -> i64 {
        let pg = self.pg().await;
        sqlx::query_scalar("SELECT count(*) FROM notifications WHERE event_id = $1 AND sent_at IS NOT NULL")
            .bind(event_id)
            .fetch_one(&pg)
            .await
            .unwrap()
    }

    /// Waits until `rows` notifications are recorded, failing after `within`.
    pub async fn wait_for_rows(&mut self, rows: i64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.notification_rows().await;
            if now >= rows {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{now} of {rows} notifications recorded after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Takes the next message off the dead-letter queue, waiting for one up to `within`.
    pub async fn next_dead_letter(&self, within: Duration) -> Option<lapin::message::Delivery> {
        let dlq = self.topology().dead_letter_queue();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got =
                self.channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.unwrap();
            if let Some(message) = got {
                return Some(message.delivery);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages still to be processed: in the worker's queue or waiting in a retry queue.
    pub async fn messages_waiting(&self) -> u32 {
        let topology = self.topology();
        let dlq = topology.dead_letter_queue();
        let mut waiting = 0;
        for queue in topology.queues().into_iter().filter(|q| *q != dlq) {
            waiting += self.messages_in(&queue).await;
        }
        waiting
    }

    /// Messages waiting in one of the worker's queues.
    pub async fn messages_in(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        self.channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }
}

impl Drop for World {
    /// Deletes the test's queues and exchange (pass or fail), so the broker does not fill with
    /// leftovers. Drop cannot await, so a short-lived runtime on its own thread does the work.
    fn drop(&mut self) {
        let queues = self.topology().queues();
        let exchange = self.exchange.clone();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let cleanup = async {
                    let connection =
                        Connection::connect(&integration::amqp_url(), ConnectionProperties::default())
                            .await?;
                    let channel = connection.create_channel().await?;
                    for queue in queues {
                        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
                    }
                    channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await?;
                    connection.close(200, "test done".into()).await?;
                    Ok::<_, anyhow::Error>(())
                };
                // A broker in trouble must not hang the test binary at the end of a test.
                tokio::time::timeout(BROKER_WAIT, cleanup).await.map_err(|_| anyhow::anyhow!("timed out"))?
            })
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("warning: could not delete the test's queues: {error:#}"),
            Err(_) => eprintln!("warning: deleting the test's queues panicked"),
        }
    }
}

/// The properties ordering publishes an event with.
pub fn event_properties(event_id: Uuid) -> BasicProperties {
    let mut headers = FieldTable::default();
    let traceparent =
        format!("00-{}-{}-01", Uuid::new_v4().simple(), &Uuid::new_v4().simple().to_string()[..16]);
    headers.insert("traceparent".into(), AMQPValue::LongString(traceparent.into()));
    BasicProperties::default()
        .with_message_id(event_id.to_string().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

pub fn spawn(app: App) -> RunningService {
    let shutdown = CancellationToken::new();
    RunningService::spawn("notifications", app.http_addr(), shutdown.clone(), app.run(shutdown))
}

/// A contract-conforming event of `kind` for a fresh order.
pub fn order_event(kind: OrderEventType) -> OrderEvent {
    let (status, reason, hold_expires_at) = match kind {
        OrderEventType::Created => {
            (OrderStatus::Pending, None, Some(Utc::now() + chrono::Duration::minutes(10)))
        }
        OrderEventType::Confirmed => (OrderStatus::Confirmed, None, None),
        OrderEventType::Cancelled => (OrderStatus::Cancelled, Some("buyer".to_owned()), None),
    };
    OrderEvent {
        event_id: Uuid::now_v7(),
        kind,
        occurred_at: Utc::now(),
        order_id: Uuid::new_v4(),
        buyer_id: Uuid::new_v4(),
        buyer_email: "buyer@example.com".to_owned(),
        concert_id: Uuid::new_v4(),
        quantity: 2,
        total_cents: 9000,
        currency: "EUR".to_owned(),
        status,
        reason,
        hold_expires_at,
    }
}

/// The URL with its host and port replaced by `proxy`, and the address it pointed at.
pub async fn route_through(url: &str, proxy: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (userinfo, _host) = authority.rsplit_once('@').map_or((None, authority), |(u, h)| (Some(u), h));
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{userinfo}{proxy}/{path}")
}

/// The socket address a URL's host and port resolve to.
pub async fn upstream_of(url: &str, default_port: u16) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let authority = rest.split('/').next().unwrap();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.contains(':') { host.to_owned() } else { format!("{host}:{default_port}") };
    tokio::net::lookup_host(host).await.unwrap().next().unwrap()
}

/// Fetches the admin port's `/metrics` text.
pub async fn metrics_of(worker: &RunningService) -> String {
    reqwest::get(format!("{}/metrics", worker.http_url())).await.unwrap().text().await.unwrap()
}

/// The value of an unlabelled counter (or one labelled series, `name{label="x"}`) on `/metrics`.
pub async fn counter(worker: &RunningService, series: &str) -> f64 {
    metrics_of(worker)
        .await
        .lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
        .sum()
}
