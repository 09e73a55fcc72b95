//! Starts identity, catalog and ordering in-process for one test, each with its own database, Redis
//! prefix, exchange and queue, and gives the test buyers (registered and logged in through identity's
//! REST API), concerts (created through catalog's admin RPC) and the events ordering publishes.
//! The test's exchange and queue are deleted when its stack goes.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod broker_link;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use integration::{RunningService, TcpProxy, TestDatabase, TestNames};
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use platform::config::Env;
use platform::events::OrderEvent;
use proto::catalog::v1 as pb;
use proto::catalog::v1::catalog_client::CatalogClient;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::broker_link::BrokerLink;

/// Each service's pool: small, so that parallel tests' stacks stay well under Postgres's 100
/// connections (three services per stack, two stacks at a time).
const SERVICE_POOL_SIZE: &str = "4";

/// What a test may change; the rest is the test default.
pub struct Options {
    pub hold_seconds: u64,
    pub sweep_interval_secs: f64,
    /// Put a [`TcpProxy`] between ordering and catalog's gRPC port.
    pub catalog_via_proxy: bool,
    /// Put a [`BrokerLink`] between ordering and RabbitMQ.
    pub broker_via_proxy: bool,
    /// `OUTBOX_CONFIRM_TIMEOUT_MS`: how long the relay gives one batch.
    pub publish_timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hold_seconds: 600,
            sweep_interval_secs: 0.2,
            catalog_via_proxy: false,
            broker_via_proxy: false,
            publish_timeout_ms: 3000,
        }
    }
}

/// The three services of one test, and what it needs to drive and observe them.
pub struct Stack {
    /// First, so it runs first: it deletes the test's exchange and queue while nothing can
    /// re-declare them (dropping blocks the test's runtime, so the services are not running).
    _broker_cleanup: BrokerCleanup,
    pub names: TestNames,
    pub http: reqwest::Client,
    pub ordering_url: String,
    /// The admin port's base URL (`/metrics`, the per-check `/health`).
    pub ordering_admin_url: String,
    identity_url: String,
    /// Ordering's own database, to check what was (not) written.
    pub orders_db: PgPool,
    /// Catalog's gRPC port (never through a proxy).
    pub catalog_grpc: SocketAddr,
    catalog_client: CatalogClient<tonic::transport::Channel>,
    admin_token: String,
    pub catalog_proxy: Option<TcpProxy>,
    pub broker_proxy: Option<BrokerLink>,
    // Declaration order is drop order: services stop before their databases are dropped.
    pub ordering: RunningService,
    catalog: RunningService,
    identity: RunningService,
    _dbs: Vec<TestDatabase>,
}

/// A registered, logged-in buyer.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub id: Uuid,
    pub email: String,
    pub token: String,
}

/// An HTTP answer: status, parsed JSON body (Null if none), headers and raw body text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub json: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

pub async fn spawn() -> Stack {
    spawn_with(Options::default()).await
}

pub async fn spawn_with(options: Options) -> Stack {
    integration::init();
    let names = TestNames::new();

    let identity_db = TestDatabase::create(&names.database("identity")).await.expect("identity database");
    let vars = HashMap::from([
        ("DATABASE_URL", identity_db.url.clone()),
        ("DATABASE_MAX_CONNECTIONS", SERVICE_POOL_SIZE.to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("KEY_ENCRYPTION_KEYS", identity::key_encryption::DEVELOPMENT_KEY_ENCRYPTION_KEYS.to_owned()),
    ]);
    let config = identity::Config::from_env(&Env::new(&vars)).expect("identity configuration");
    let app = identity::App::build(config).await.expect("identity builds");
    let identity = start("identity", app.http_addr(), |token| app.run(token)).await;
    let identity_url = identity.http_url();

    let catalog_db = TestDatabase::create(&names.database("catalog")).await.expect("catalog database");
    let vars = HashMap::from([
        ("DATABASE_URL", catalog_db.url.clone()),
        ("DATABASE_MAX_CONNECTIONS", SERVICE_POOL_SIZE.to_owned()),
        ("GRPC_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("REDIS_URL", integration::redis_url()),
        ("REDIS_KEY_PREFIX", names.redis_prefix()),
        ("CACHE_TTL_SECS", "1".to_owned()),
        ("IDENTITY_URL", identity_url.clone()),
        // Ordering, not catalog's own expiry, must be what gives lapsed seats back in these tests.
        ("HOLD_SWEEP_INTERVAL_SECS", "3600".to_owned()),
    ]);
    let config = catalog::Config::from_env(&Env::new(&vars)).expect("catalog configuration");
    let app = catalog::App::build(config).await.expect("catalog builds");
    let catalog_grpc = app.grpc_addr();
    let catalog = start("catalog", app.http_addr(), |token| app.run(token)).await;

    let catalog_proxy = if options.catalog_via_proxy {
        Some(TcpProxy::start(catalog_grpc).await.expect("catalog proxy"))
    } else {
        None
    };
    let catalog_target = catalog_proxy.as_ref().map_or(catalog_grpc, |p| p.addr);
    let broker_proxy =
        if options.broker_via_proxy { Some(BrokerLink::start(broker_addr()).await) } else { None };
    let amqp_url = match &broker_proxy {
        Some(proxy) => format!("amqp://guest:guest@{}/%2f", proxy.addr),
        None => integration::amqp_url(),
    };

    let ordering_db = TestDatabase::create(&names.database("ordering")).await.expect("ordering database");
    let vars = HashMap::from([
        ("DATABASE_URL", ordering_db.url.clone()),
        ("DATABASE_MAX_CONNECTIONS", SERVICE_POOL_SIZE.to_owned()),
        ("DATABASE_ACQUIRE_TIMEOUT_SECS", "30".to_owned()),
        ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("CATALOG_GRPC_URL", format!("http://{catalog_target}")),
        // A loaded 2-core machine answers slowly; the outage test shows what "fast" means.
        ("CATALOG_TIMEOUT_MS", "3000".to_owned()),
        ("IDENTITY_URL", identity_url.clone()),
        ("AMQP_URL", amqp_url),
        ("EVENTS_EXCHANGE", names.exchange()),
        ("OUTBOX_RECONNECT_MAX_SECS", "1".to_owned()),
        ("OUTBOX_CONFIRM_TIMEOUT_MS", options.publish_timeout_ms.to_string()),
        ("HOLD_SECONDS", options.hold_seconds.to_string()),
        ("SWEEP_INTERVAL_SECS", options.sweep_interval_secs.to_string()),
        ("IDEMPOTENCY_WAIT_MS", "20000".to_owned()),
    ]);
    let config = ordering::Config::from_env(&Env::new(&vars)).expect("ordering configuration");
    let app = ordering::App::build(config).await.expect("ordering builds");
    let ordering_admin_url = format!("http://{}", app.admin_addr());
    let ordering = start("ordering", app.http_addr(), |token| app.run(token)).await;

    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client");
    let catalog_client =
        CatalogClient::connect(format!("http://{catalog_grpc}")).await.expect("connect to catalog");
    let orders_db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&ordering_db.url)
        .await
        .expect("connect to the ordering database");

    let mut stack = Stack {
        _broker_cleanup: BrokerCleanup {
            exchange: names.exchange(),
            queues: vec![names.queue(EVENTS_QUEUE)],
        },
        names,
        http,
        ordering_url: ordering.http_url(),
        ordering_admin_url,
        identity_url,
        orders_db,
        catalog_grpc,
        catalog_client,
        admin_token: String::new(),
        catalog_proxy,
        broker_proxy,
        ordering,
        catalog,
        identity,
        _dbs: vec![ordering_db, catalog_db],
    };
    let admin = stack.buyer("admin").await;
    identity::admin::grant_role(&identity_db.url, &admin.email, "admin").await.expect("grant admin");
    stack.admin_token = stack.login(&admin.email).await;
    stack._dbs.push(identity_db);
    stack
}

async fn start<F, Fut>(name: &'static str, addr: SocketAddr, run: F) -> RunningService
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    let service = RunningService::spawn(name, addr, shutdown.clone(), run(shutdown));
    service.wait_healthy(Duration::from_secs(30)).await.expect("service becomes healthy");
    service
}

fn broker_addr() -> SocketAddr {
    let url = integration::amqp_url();
    let host_port = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).unwrap_or("127.0.0.1:5672");
    host_port.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5672)))
}

const PASSWORD: &str = "correct horse battery staple";

impl Stack {
    /// Registers and logs in a new buyer.
    pub async fn buyer(&self, name: &str) -> Buyer {
        let email = format!("{name}.{}@example.com", Uuid::new_v4().simple());
        let response = self
            .http
            .post(format!("{}/auth/register", self.identity_url))
            .json(&json!({"email": email, "password": PASSWORD, "displayName": name}))
            .send()
            .await
            .expect("register");
        assert_eq!(response.status(), StatusCode::CREATED, "register {email}");
        let body: Value = response.json().await.expect("register body");
        let id = body["userId"].as_str().and_then(|s| Uuid::parse_str(s).ok()).expect("userId");
        let token = self.login(&email).await;
        Buyer { id, email, token }
    }

    async fn login(&self, email: &str) -> String {
        let response = self
            .http
            .post(format!("{}/auth/login", self.identity_url))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("login");
        assert_eq!(response.status(), StatusCode::OK, "login {email}");
        let body: Value = response.json().await.expect("login body");
        body["accessToken"].as_str().expect("accessToken").to_owned()
    }

    /// A concert with `capacity` seats at 45.00 EUR, created through catalog's admin API.
    pub async fn concert(&self, capacity: i32) -> Uuid {
        let starts_at = chrono::Utc::now() + chrono::Duration::days(30);
        let mut request = tonic::Request::new(pb::CreateConcertRequest {
            title: "Evening Show".into(),
            artist: "The Testers".into(),
            venue: "Main Hall".into(),
            city: "Utrecht".into(),
            starts_at: Some(prost_types::Timestamp { seconds: starts_at.timestamp(), nanos: 0 }),
            price_cents: 4_500,
            currency: "EUR".into(),
            capacity,
        });
        let bearer = format!("Bearer {}", self.admin_token).parse().expect("metadata value");
        request.metadata_mut().insert("authorization", bearer);
        let concert =
            self.catalog_client.clone().create_concert(request).await.expect("create concert").into_inner();
        Uuid::parse_str(&concert.id).expect("concert id")
    }

    /// Changes a concert's price through catalog's admin API.
    pub async fn set_price(&self, concert_id: Uuid, price_cents: i64) {
        let mut request = tonic::Request::new(pb::UpdateConcertRequest {
            id: concert_id.to_string(),
            price_cents: Some(price_cents),
            ..Default::default()
        });
        let bearer = format!("Bearer {}", self.admin_token).parse().expect("metadata value");
        request.metadata_mut().insert("authorization", bearer);
        self.catalog_client.clone().update_concert(request).await.expect("update concert");
    }

    /// Holds seats straight through catalog's gRPC API, as ordering does when placing an order.
    pub async fn reserve(&self, order_id: Uuid, concert_id: Uuid, quantity: i32) -> pb::SeatHold {
        let request = pb::ReserveSeatsRequest {
            order_id: order_id.to_string(),
            concert_id: concert_id.to_string(),
            quantity,
            hold_seconds: 600,
        };
        self.catalog_client.clone().reserve_seats(request).await.expect("reserve seats").into_inner()
    }

    /// Seats catalog says are available (its cache may lag by its 1 s TTL).
    pub async fn available(&self, concert_id: Uuid) -> i32 {
        let request = pb::GetConcertRequest { id: concert_id.to_string() };
        self.catalog_client.clone().get_concert(request).await.expect("get concert").into_inner().available
    }

    /// Polls until catalog reports `expected` seats available (its cache may lag by its TTL).
    pub async fn wait_available(&self, concert_id: Uuid, expected: i32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let available = self.available(concert_id).await;
            if available == expected {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "available stayed {available}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn place(&self, buyer: &Buyer, key: &str, concert_id: Uuid, quantity: i64) -> Answer {
        let body = json!({"concertId": concert_id, "quantity": quantity});
        let request = self
            .http
            .post(format!("{}/orders", self.ordering_url))
            .bearer_auth(&buyer.token)
            .header("Idempotency-Key", key)
            .json(&body);
        answer(request).await
    }

    pub async fn get(&self, buyer: &Buyer, path: &str) -> Answer {
        answer(self.http.get(format!("{}{path}", self.ordering_url)).bearer_auth(&buyer.token)).await
    }

    pub async fn confirm(&self, buyer: &Buyer, order_id: &str, payment_token: &str) -> Answer {
        let request = self
            .http
            .post(format!("{}/orders/{order_id}/confirm", self.ordering_url))
            .bearer_auth(&buyer.token)
            .json(&json!({"paymentToken": payment_token}));
        answer(request).await
    }

    pub async fn cancel(&self, buyer: &Buyer, order_id: &str) -> Answer {
        answer(
            self.http
                .post(format!("{}/orders/{order_id}/cancel", self.ordering_url))
                .bearer_auth(&buyer.token),
        )
        .await
    }

    /// Orders stored in ordering's database, whoever placed them.
    pub async fn order_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&self.orders_db)
            .await
            .expect("count orders")
    }

    /// Ordering's per-check `/health` body, from its admin port.
    pub async fn health(&self) -> Value {
        answer(self.http.get(format!("{}/health", self.ordering_admin_url))).await.json
    }

    /// Waits until ordering's relay holds a broker connection.
    pub async fn wait_broker_connected(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.health().await["checks"]["rabbitmq"]["status"] != "healthy" {
            assert!(tokio::time::Instant::now() < deadline, "the relay never connected to the broker");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Cancelled orders whose seats catalog has not yet confirmed as released.
    pub async fn owed_seat_releases(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE status = 'Cancelled' AND seats_released_at IS NULL",
        )
        .fetch_one(&self.orders_db)
        .await
        .expect("count owed releases")
    }

    /// A queue bound to this test's exchange with `order.*`, to read ordering's events back.
    pub async fn events(&self) -> Events {
        Events::bind(&self.names.exchange(), &self.names.queue(EVENTS_QUEUE)).await
    }
}

/// The test's queue of ordering's events (see [`Stack::events`]).
const EVENTS_QUEUE: &str = "ordering-events";

pub async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request reaches ordering");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("response body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, json, text, headers }
}

/// One message read back from the test queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub event: OrderEvent,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub delivery_mode: Option<u8>,
    pub traceparent: Option<String>,
}

/// The events ordering published to this test's exchange.
pub struct Events {
    receiver: mpsc::UnboundedReceiver<Received>,
    _connection: Connection,
}

impl Events {
    async fn bind(exchange: &str, queue: &str) -> Self {
        let connection = Connection::connect(&integration::amqp_url(), ConnectionProperties::default())
            .await
            .expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare the test exchange");
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare the test queue");
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                platform::events::ORDER_EVENTS_PATTERN.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the test queue");
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "ordering-test".into(),
                BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let properties = &delivery.properties;
                let traceparent = properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("traceparent").cloned())
                    .and_then(|v| {
                        v.as_long_string().map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
                    });
                let received = Received {
                    event: serde_json::from_slice(&delivery.data).expect("an OrderEvent"),
                    routing_key: delivery.routing_key.as_str().to_owned(),
                    message_id: properties.message_id().as_ref().map(|s| s.as_str().to_owned()),
                    content_type: properties.content_type().as_ref().map(|s| s.as_str().to_owned()),
                    delivery_mode: *properties.delivery_mode(),
                    traceparent,
                };
                if sender.send(received).is_err() {
                    break;
                }
            }
        });
        Self { receiver, _connection: connection }
    }

    /// The next event, waiting up to `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Received> {
        tokio::time::timeout(within, self.receiver.recv()).await.ok().flatten()
    }

    /// The next event, which must arrive within 20 s.
    pub async fn expect(&mut self) -> Received {
        self.next(Duration::from_secs(20)).await.expect("an event within 20 s")
    }

    /// The next `n` events, each of which must arrive within 20 s of the one before.
    pub async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let Some(event) = self.next(Duration::from_secs(20)).await else {
                panic!("only {} of {n} events arrived", events.len());
            };
            events.push(event);
        }
        events
    }

    /// Every event that arrives until none has come for `quiet`.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Received> {
        let mut events = Vec::new();
        while let Some(event) = self.next(quiet).await {
            events.push(event);
        }
        events
    }
}

/// Deletes a test's exchange and queues when dropped.
struct BrokerCleanup {
    exchange: String,
    queues: Vec<String>,
}

impl Drop for BrokerCleanup {
    fn drop(&mut self) {
        // The exchange is durable (as in production) and named for this test alone. The test's
        // runtime cannot be blocked on, so a short-lived one on its own thread does the deleting.
        let (exchange, queues) = (self.exchange.clone(), std::mem::take(&mut self.queues));
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let connection =
                    Connection::connect(&integration::amqp_url(), ConnectionProperties::default()).await?;
                // A failed delete closes its channel, so each gets its own.
                for queue in &queues {
                    let channel = connection.create_channel().await?;
                    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
                }
                let channel = connection.create_channel().await?;
                let _ =
                    channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
                connection.close(200, "bye".into()).await
            })?;
            Ok::<_, anyhow::Error>(())
        })
        .join();
    }
}
