//! Runs the gateway for one test, alone or in front of the whole stack (identity, catalog, ordering
//! in-process, each with its own database, catalog with its own Redis prefix, all on the test's
//! exchange), and talks GraphQL to it over HTTP and WebSocket like a client app would. The test's
//! exchange is deleted when its gateway goes.
#![allow(dead_code)] // each test file uses a different part of this module
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use integration::{RunningService, TcpProxy, TestDatabase, TestNames};
use platform::config::Env;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const PASSWORD: &str = "correct horse battery staple";

/// Each service's pool behind the gateway: small, so that parallel tests' stacks stay well under
/// Postgres's 100 connections.
const SERVICE_POOL_SIZE: &str = "4";

/// A gateway running in this test.
pub struct Gateway {
    /// First, so it runs first: deletes the test's exchange while nothing can re-declare it
    /// (dropping blocks the test's runtime, so no service is running).
    _exchange_cleanup: Option<ExchangeCleanup>,
    pub service: RunningService,
    /// The admin port's base URL (`/metrics`, the per-check `/health`).
    pub admin_url: String,
    pub http: reqwest::Client,
    /// The gateway's event hub, to see when subscriptions listen.
    pub events: gateway::events::OrderEvents,
    /// Where [`Gateway::alone`]'s services would be: a port bound but not listening.
    _refusing: Option<tokio::net::TcpSocket>,
}

impl Gateway {
    /// Starts a gateway with `vars` over the test defaults (downstream URLs included).
    pub async fn start(vars: HashMap<&'static str, String>) -> Gateway {
        integration::init();
        let mut all: HashMap<&'static str, String> = HashMap::from([
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("AMQP_URL", integration::amqp_url()),
            // Generous: tests on a busy 2-core machine fire requests quickly from one address.
            ("RATE_LIMIT_PER_SECOND", "1000".to_owned()),
            ("RATE_LIMIT_BURST", "1000".to_owned()),
            ("AUTH_RATE_LIMIT_PER_MINUTE", "1000".to_owned()),
            ("AUTH_RATE_LIMIT_BURST", "100".to_owned()),
            // Tests watch each request reach the services; tests/response_cache.rs turns it on.
            ("RESPONSE_CACHE_TTL_MS", "0".to_owned()),
        ]);
        all.extend(vars);
        let config = gateway::Config::from_env(&Env::new(&all)).expect("test configuration is valid");
        // Only a test's own exchange is ever deleted.
        let exchange_cleanup = Some(config.events.exchange.clone())
            .filter(|exchange| exchange.starts_with("ticketflow.events.test."))
            .map(|exchange| ExchangeCleanup { exchange });
        let app = gateway::App::build(config).await.expect("gateway builds");
        let events = app.order_events();
        let admin_url = format!("http://{}", app.admin_addr());
        let shutdown = CancellationToken::new();
        let service = RunningService::spawn("gateway", app.http_addr(), shutdown.clone(), app.run(shutdown));
        let gateway = Gateway {
            _exchange_cleanup: exchange_cleanup,
            service,
            admin_url,
            http: reqwest::Client::new(),
            events,
            _refusing: None,
        };
        gateway.wait_alive().await;
        gateway
    }

    /// A gateway whose downstream services are all unreachable: their address is a port bound but
    /// not listening, which refuses connections and which nothing else can take during the test.
    pub async fn alone(vars: &[(&'static str, &str)]) -> Gateway {
        let refusing = tokio::net::TcpSocket::new_v4().unwrap();
        refusing.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let nowhere = format!("http://{}", refusing.local_addr().unwrap());
        let mut all: HashMap<&'static str, String> = HashMap::from([
            ("IDENTITY_URL", nowhere.clone()),
            ("ORDERING_URL", nowhere.clone()),
            ("CATALOG_GRPC_URL", nowhere),
            ("EVENTS_EXCHANGE", TestNames::new().exchange()),
        ]);
        all.extend(vars.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let mut gateway = Self::start(all).await;
        gateway._refusing = Some(refusing);
        gateway
    }

    async fn wait_alive(&self) {
        for _ in 0..100 {
            if let Ok(response) = self.http.get(format!("{}/alive", self.url())).send().await
                && response.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway did not come alive");
    }

    pub fn url(&self) -> String {
        self.service.http_url()
    }

    /// Waits until `/health` says the event consumer is bound to the broker: from then on, events
    /// reach subscriptions (one published before is lost).
    pub async fn wait_consuming(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let report: Value = self
                .http
                .get(format!("{}/health", self.admin_url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if report["checks"]["rabbitmq"]["status"] == "healthy" {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the event consumer never connected: {report}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a subscription on `socket` and waits until the gateway listens to events for it, so
    /// that what the test does next is seen (graphql-transport-ws does not acknowledge a start).
    pub async fn subscribe_and_wait(&self, socket: &mut Socket, query: &str, variables: Value) -> String {
        let before = self.events.listeners();
        let id = socket.subscribe(query, variables).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while self.events.listeners() <= before {
            assert!(tokio::time::Instant::now() < deadline, "subscription {id} never started listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        id
    }

    pub fn graphql_url(&self) -> String {
        format!("{}/graphql", self.url())
    }

    /// POSTs one operation and returns the whole response body.
    pub async fn graphql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request =
            self.http.post(self.graphql_url()).json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: not JSON: {body}"))
    }

    /// POSTs an operation that must succeed and returns its `data`.
    pub async fn data(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let response = self.graphql(token, query, variables).await;
        assert!(response.get("errors").is_none(), "unexpected errors: {response}");
        response["data"].clone()
    }

    /// Signs up through the gateway and signs in; returns the access token.
    pub async fn sign_up(&self, email: &str) -> String {
        let registered = self
            .data(
                None,
                "mutation($input: RegisterInput!) { register(input: $input) { userId } }",
                json!({ "input": { "email": email, "password": PASSWORD, "displayName": "Test Fan" } }),
            )
            .await;
        assert!(registered["register"]["userId"].as_str().is_some());
        self.sign_in(email).await
    }

    pub async fn sign_in(&self, email: &str) -> String {
        let login = self
            .data(
                None,
                "mutation($input: LoginInput!) { login(input: $input) { accessToken tokenType } }",
                json!({ "input": { "email": email, "password": PASSWORD } }),
            )
            .await;
        login["login"]["accessToken"].as_str().unwrap().to_owned()
    }

    /// Opens a `graphql-transport-ws` connection authenticated with `token`.
    pub async fn websocket(&self, token: &str) -> Socket {
        Socket::connect(
            &self.graphql_url().replacen("http://", "ws://", 1),
            json!({ "Authorization": format!("Bearer {token}") }),
        )
        .await
    }
}

/// The `extensions.code` of the first error, if any.
pub fn error_code(response: &Value) -> Option<String> {
    response["errors"][0]["extensions"]["code"].as_str().map(str::to_owned)
}

pub fn unique_email(who: &str) -> String {
    format!("{who}-{}@example.com", Uuid::new_v4().simple())
}

/// identity, catalog and ordering in front of which a test starts its gateway.
pub struct Stack {
    pub names: TestNames,
    pub identity: RunningService,
    pub identity_db: TestDatabase,
    pub catalog: RunningService,
    pub catalog_grpc: SocketAddr,
    pub catalog_db: TestDatabase,
    /// Between the gateway and catalog, so a test can take catalog away from the gateway alone.
    pub catalog_proxy: TcpProxy,
    pub ordering: RunningService,
    pub ordering_db: TestDatabase,
    pub gateway: Gateway,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(&[]).await
    }

    /// The whole stack, with `gateway_vars` over the gateway's test defaults.
    pub async fn start_with(gateway_vars: &[(&'static str, &str)]) -> Stack {
        integration::init();
        let names = TestNames::new();

        let identity_db = TestDatabase::create(&names.database("identity")).await.unwrap();
        let identity_vars = vars(&[
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("DATABASE_URL", identity_db.url.clone()),
            ("DATABASE_MAX_CONNECTIONS", SERVICE_POOL_SIZE.to_owned()),
            ("TRUSTED_PROXY_ADDRS", "127.0.0.1".to_owned()),
            ("KEY_ENCRYPTION_KEYS", identity::key_encryption::DEVELOPMENT_KEY_ENCRYPTION_KEYS.to_owned()),
        ]);
        let app = identity::App::build(identity::Config::from_env(&Env::new(&identity_vars)).unwrap())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let identity =
            RunningService::spawn("identity", app.http_addr(), shutdown.clone(), app.run(shutdown));
        let identity_url = identity.http_url();

        let catalog_db = TestDatabase::create(&names.database("catalog")).await.unwrap();
        let catalog_vars = vars(&[
            ("DATABASE_URL", catalog_db.url.clone()),
            ("DATABASE_MAX_CONNECTIONS", SERVICE_POOL_SIZE.to_owned()),
            ("GRPC_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("REDIS_URL", integration::redis_url()),
            ("REDIS_KEY_PREFIX", names.redis_prefix()),
            ("IDENTITY_URL", identity_url.clone()),
            // Short, so availability after a cancellation shows within a test's patience.
            ("CACHE_TTL_SECS", "1".to_owned()),
        ]);
        let app =
            catalog::App::build(catalog::Config::from_env(&Env::new(&catalog_vars)).unwrap()).await.unwrap();
        let catalog_grpc = app.grpc_addr();
        let shutdown = CancellationToken::new();
        let catalog = RunningService::spawn("catalog", app.http_addr(), shutdown.clone(), app.run(shutdown));
        let catalog_proxy = TcpProxy::start(catalog_grpc).await.unwrap();

        let ordering_db = TestDatabase::create(&names.database("ordering")).await.unwrap();
        let ordering_vars = vars(&[
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("DATABASE_URL", ordering_db.url.clone()),
            ("DATABASE_MAX_CONNECTIONS", SERVICE_POOL_SIZE.to_owned()),
            ("CATALOG_GRPC_URL", format!("http://{catalog_grpc}")),
            ("IDENTITY_URL", identity_url.clone()),
            ("AMQP_URL", integration::amqp_url()),
            ("EVENTS_EXCHANGE", names.exchange()),
            ("OUTBOX_POLL_INTERVAL_MS", "50".to_owned()),
        ]);
        let app = ordering::App::build(ordering::Config::from_env(&Env::new(&ordering_vars)).unwrap())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let ordering =
            RunningService::spawn("ordering", app.http_addr(), shutdown.clone(), app.run(shutdown));

        for service in [&identity, &catalog, &ordering] {
            service.wait_healthy(Duration::from_secs(30)).await.unwrap();
        }

        let mut vars: HashMap<&'static str, String> = HashMap::from([
            ("IDENTITY_URL", identity_url),
            ("ORDERING_URL", ordering.http_url()),
            ("CATALOG_GRPC_URL", format!("http://{}", catalog_proxy.addr)),
            ("EVENTS_EXCHANGE", names.exchange()),
        ]);
        vars.extend(gateway_vars.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let gateway = Gateway::start(vars).await;
        gateway.service.wait_healthy(Duration::from_secs(30)).await.unwrap();
        // RabbitMQ is optional for /health (200 while it is degraded): wait for it explicitly.
        gateway.wait_consuming().await;

        Stack {
            names,
            identity,
            identity_db,
            catalog,
            catalog_grpc,
            catalog_db,
            catalog_proxy,
            ordering,
            ordering_db,
            gateway,
        }
    }

    /// A signed-in admin (registered through the gateway, promoted with identity's operator tool).
    pub async fn admin_token(&self) -> String {
        let email = unique_email("admin");
        self.gateway.sign_up(&email).await;
        identity::admin::grant_role(&self.identity_db.url, &email, "admin").await.unwrap();
        self.gateway.sign_in(&email).await
    }

    /// Adds a concert through the gateway's admin mutation; returns its id.
    pub async fn create_concert(&self, admin: &str, input: Value) -> String {
        let data = self
            .gateway
            .data(
                Some(admin),
                "mutation($input: CreateConcertInput!) { createConcert(input: $input) { id } }",
                json!({ "input": input }),
            )
            .await;
        data["createConcert"]["id"].as_str().unwrap().to_owned()
    }
}

fn vars(pairs: &[(&'static str, String)]) -> HashMap<&'static str, String> {
    pairs.iter().cloned().collect()
}

/// One `graphql-transport-ws` connection.
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u32,
}

impl Socket {
    /// Connects and completes `connection_init` with `payload`; panics if the server refuses.
    pub async fn connect(url: &str, payload: Value) -> Socket {
        let mut socket = Self::open(url).await;
        socket.send(json!({ "type": "connection_init", "payload": payload })).await;
        let ack = socket.receive(Duration::from_secs(10)).await.expect("an answer to connection_init");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        socket
    }

    /// Connects without initialising.
    pub async fn open(url: &str) -> Socket {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["sec-websocket-protocol"], "graphql-transport-ws");
        Socket { ws, next_id: 1 }
    }

    pub async fn send(&mut self, message: Value) {
        self.ws.send(Message::Text(message.to_string().into())).await.unwrap();
    }

    /// The next protocol message (answering pings on the way), or `None` if the socket closed.
    pub async fn receive(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("a message in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    if value["type"] == "ping" {
                        self.send(json!({ "type": "pong" })).await;
                        continue;
                    }
                    return Some(value);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The close code the server ends the socket with (answering pings, skipping other
    /// messages); `None` if the connection dropped without a close frame.
    pub async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.expect("closed in time");
            match message {
                Some(Ok(Message::Close(frame))) => return frame.map(|frame| u16::from(frame.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Starts an operation; returns its id.
    pub async fn subscribe(&mut self, query: &str, variables: Value) -> String {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(
            json!({ "id": id, "type": "subscribe", "payload": { "query": query, "variables": variables } }),
        )
        .await;
        id
    }

    /// Stops an operation (graphql-transport-ws `complete` from the client).
    pub async fn complete(&mut self, id: &str) {
        self.send(json!({ "id": id, "type": "complete" })).await;
    }

    /// The payload of the next `next` message.
    pub async fn next_payload(&mut self, within: Duration) -> Value {
        let message = self.receive(within).await.expect("the socket stays open");
        assert_eq!(message["type"], "next", "{message}");
        message["payload"].clone()
    }
}

/// Deletes a test's exchange when dropped.
struct ExchangeCleanup {
    exchange: String,
}

impl Drop for ExchangeCleanup {
    fn drop(&mut self) {
        // Durable (as in production) and named for this test alone. The test's runtime cannot be
        // blocked on, so a short-lived one on its own thread does the deleting.
        let exchange = self.exchange.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let connection = lapin::Connection::connect(
                    &integration::amqp_url(),
                    lapin::ConnectionProperties::default(),
                )
                .await?;
                let channel = connection.create_channel().await?;
                let _ = channel
                    .exchange_delete(
                        exchange.as_str().into(),
                        lapin::options::ExchangeDeleteOptions::default(),
                    )
                    .await;
                connection.close(200, "bye".into()).await
            })?;
            Ok::<_, anyhow::Error>(())
        })
        .join();
    }
}
