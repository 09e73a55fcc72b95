//! Starts a catalog in-process for one test: its own database, its own Redis key prefix, ports
//! picked by the OS, and a generated gRPC client connected to it that presents a service token
//! with the `seats:write` scope, as ordering does.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod issuer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use integration::{RunningService, TestDatabase, TestNames};
use platform::config::Env;
use proto::catalog::v1 as pb;
use proto::catalog::v1::catalog_client::CatalogClient;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

/// A running catalog and what a test needs to poke at it.
pub struct TestCatalog {
    /// Sends every call with ordering's kind of credential: a service token with `seats:write`.
    pub client: CatalogClient<InterceptedService<Channel, Bearer>>,
    /// Sends calls without any credential.
    pub anonymous: CatalogClient<Channel>,
    /// Signs the tokens this catalog trusts, unless the test brought its own identity.
    pub issuer: Option<issuer::TestIssuer>,
    pub grpc_addr: SocketAddr,
    pub service: RunningService,
    /// Dropped after `service`: deletes every Redis key under the test's prefix.
    redis_keys: RedisKeys,
    /// The catalog's own database, for arranging rows and checking them behind the API.
    pub pool: PgPool,
    pub names: TestNames,
    pub db: TestDatabase,
}

/// Settings a test may change; everything else is the test default.
pub struct Settings {
    pub redis_url: String,
    /// `REDIS_TIMEOUT_MS`: generous by default, so a Redis round trip on a loaded machine is not
    /// silently skipped (and the cache assertions with it); tests about a slow or absent Redis set
    /// the production value.
    pub redis_timeout_ms: u64,
    /// Where catalog fetches its signing keys. Unset: a [`issuer::TestIssuer`] of the test's own.
    pub identity_url: Option<String>,
    /// The service token `client` presents; needed with `identity_url`, minted by the test issuer
    /// otherwise.
    pub service_token: Option<String>,
    pub sweep_interval_secs: f64,
    pub seed: bool,
    /// Reach Postgres through this address (a `TcpProxy` in front of 127.0.0.1:5432) instead.
    pub postgres_via: Option<SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            redis_url: integration::redis_url(),
            redis_timeout_ms: 2000,
            identity_url: None,
            service_token: None,
            sweep_interval_secs: 60.0,
            seed: false,
            postgres_via: None,
        }
    }
}

pub async fn spawn() -> TestCatalog {
    spawn_with(Settings::default()).await
}

pub async fn spawn_with(settings: Settings) -> TestCatalog {
    integration::init();
    let names = TestNames::new();
    let db = TestDatabase::create(&names.database("catalog")).await.expect("create the test database");
    let issuer = match settings.identity_url {
        Some(_) => None,
        None => Some(issuer::TestIssuer::start().await),
    };
    let identity_url = match (&settings.identity_url, &issuer) {
        (Some(url), _) => url.clone(),
        (None, Some(issuer)) => issuer.url.clone(),
        (None, None) => unreachable!("an issuer is started when no identity is given"),
    };
    let service_token = match (settings.service_token, &issuer) {
        (Some(token), _) => token,
        (None, Some(issuer)) => issuer.service_token(platform::auth::SCOPE_SEATS_WRITE),
        (None, None) => String::new(),
    };
    let vars: HashMap<&'static str, String> = HashMap::from([
        (
            "DATABASE_URL",
            match settings.postgres_via {
                Some(via) => db.url.replace("127.0.0.1:5432", &via.to_string()),
                None => db.url.clone(),
            },
        ),
        // Flash-sale tests queue many requests on the pool of a busy 2-core machine.
        ("DATABASE_ACQUIRE_TIMEOUT_SECS", "30".to_owned()),
        // Tests run in parallel against one Postgres: small pools keep them under its limit.
        ("DATABASE_MAX_CONNECTIONS", "4".to_owned()),
        ("GRPC_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("ADMIN_LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("REDIS_URL", settings.redis_url),
        ("REDIS_KEY_PREFIX", names.redis_prefix()),
        ("REDIS_TIMEOUT_MS", settings.redis_timeout_ms.to_string()),
        ("IDENTITY_URL", identity_url),
        ("HOLD_SWEEP_INTERVAL_SECS", settings.sweep_interval_secs.to_string()),
        ("SEED_CATALOG", settings.seed.to_string()),
        ("GRPC_REQUEST_TIMEOUT_SECS", "30".to_owned()),
    ]);
    let config = catalog::Config::from_env(&Env::new(&vars)).expect("test configuration is valid");
    // Armed before the catalog starts, so a failed start-up cleans up too.
    let redis_keys = RedisKeys { prefix: names.redis_prefix() };
    let app = catalog::App::build(config).await.expect("catalog builds");
    let (grpc_addr, http_addr) = (app.grpc_addr(), app.http_addr());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = RunningService::spawn("catalog", http_addr, shutdown.clone(), app.run(shutdown));
    service.wait_healthy(Duration::from_secs(20)).await.expect("catalog becomes healthy");
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))
        .expect("catalog URL")
        .connect()
        .await
        .expect("connect the gRPC client");
    let anonymous = CatalogClient::new(channel.clone());
    let client = CatalogClient::with_interceptor(channel, Bearer(service_token));
    let pool =
        PgPoolOptions::new().max_connections(2).connect(&db.url).await.expect("connect to the test database");
    TestCatalog { client, anonymous, issuer, grpc_addr, service, redis_keys, pool, names, db }
}

/// Puts `authorization: Bearer <token>` on every call that has none of its own (nothing if the
/// token is empty).
#[derive(Clone)]
pub struct Bearer(pub String);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !self.0.is_empty() && !request.metadata().contains_key("authorization") {
            let value = format!("Bearer {}", self.0).parse().map_err(|_| tonic::Status::internal("token"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// Deletes the test's Redis keys (`SCAN MATCH <prefix>*` + `DEL`) when dropped, pass or fail, so
/// runs do not accumulate entries, and the version counter, which has no TTL, on the shared server.
struct RedisKeys {
    prefix: String,
}

impl RedisKeys {
    fn delete(&self) -> redis::RedisResult<usize> {
        let timeout = Some(Duration::from_secs(2));
        let mut redis = redis::Client::open(integration::redis_url())?
            .get_connection_with_timeout(Duration::from_secs(2))?;
        redis.set_read_timeout(timeout)?;
        redis.set_write_timeout(timeout)?;
        let pattern = format!("{}*", self.prefix);
        let (mut cursor, mut deleted) = (0u64, 0);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut redis)?;
            if !keys.is_empty() {
                deleted += redis::cmd("DEL").arg(&keys).query::<usize>(&mut redis)?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

impl Drop for RedisKeys {
    // Blocking calls are fine here: a test's runtime runs nothing else while its values drop.
    fn drop(&mut self) {
        if let Err(error) = self.delete() {
            eprintln!("warning: could not delete the Redis keys under {}: {error}", self.prefix);
        }
    }
}

/// The keys under `prefix` on the shared Redis server.
pub async fn redis_keys(prefix: &str) -> Vec<String> {
    let mut redis = redis::Client::open(integration::redis_url())
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut redis).await.expect("KEYS")
}

/// A concert row to put straight into the database (the admin RPC is tested on its own).
#[derive(Debug, Clone)]
pub struct Row {
    pub title: String,
    pub artist: String,
    pub venue: String,
    pub city: String,
    pub starts_at: DateTime<Utc>,
    pub price_cents: i64,
    pub currency: String,
    pub capacity: i32,
}

/// A plausible concert `days` from now.
pub fn row(days: i64) -> Row {
    Row {
        title: "Evening Show".into(),
        artist: "The Testers".into(),
        venue: "Main Hall".into(),
        city: "Utrecht".into(),
        starts_at: Utc::now() + chrono::Duration::days(days),
        price_cents: 4_500,
        currency: "EUR".into(),
        capacity: 500,
    }
}

impl TestCatalog {
    /// Stops the catalog gracefully, then deletes the test's Redis keys.
    pub async fn stop(self) {
        let TestCatalog { client, anonymous, service, redis_keys, .. } = self;
        drop((client, anonymous));
        service.stop().await.expect("catalog stops cleanly");
        drop(redis_keys);
    }

    pub async fn insert(&self, row: Row) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO concerts (id, title, artist, venue, city, starts_at, price_cents, currency, capacity, available)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(id)
        .bind(&row.title)
        .bind(&row.artist)
        .bind(&row.venue)
        .bind(&row.city)
        .bind(row.starts_at)
        .bind(row.price_cents)
        .bind(&row.currency)
        .bind(row.capacity)
        .execute(&self.pool)
        .await
        .expect("insert a concert");
        id
    }

    /// `available` as stored, bypassing every cache.
    pub async fn available_in_db(&self, id: Uuid) -> i32 {
        sqlx::query_scalar("SELECT available FROM concerts WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("read available")
    }

    pub async fn get(&self, id: Uuid) -> Result<pb::Concert, tonic::Status> {
        self.client
            .clone()
            .get_concert(pb::GetConcertRequest { id: id.to_string() })
            .await
            .map(|r| r.into_inner())
    }

    pub async fn reserve(
        &self,
        order_id: Uuid,
        concert_id: Uuid,
        quantity: i32,
    ) -> Result<pb::SeatHold, tonic::Status> {
        self.reserve_for(order_id, concert_id, quantity, 0).await
    }

    pub async fn reserve_for(
        &self,
        order_id: Uuid,
        concert_id: Uuid,
        quantity: i32,
        hold_seconds: i32,
    ) -> Result<pb::SeatHold, tonic::Status> {
        let request = pb::ReserveSeatsRequest {
            order_id: order_id.to_string(),
            concert_id: concert_id.to_string(),
            quantity,
            hold_seconds,
        };
        self.client.clone().reserve_seats(request).await.map(|r| r.into_inner())
    }

    /// `/health` status code and JSON body.
    pub async fn health(&self) -> (u16, serde_json::Value) {
        let response =
            reqwest::get(format!("{}/health", self.service.http_url())).await.expect("GET /health");
        let status = response.status().as_u16();
        (status, response.json().await.expect("health JSON"))
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
