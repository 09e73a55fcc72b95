//! Catalog service: the concerts and their seat inventory, served over gRPC
//! (`ticketflow.catalog.v1.Catalog`), stored in Postgres, with a Redis cache in front of reads.
//!
//! Reads (list, get, batch get) go through the cache; admin writes are authorized by the caller's
//! JWT; seat holds for ordering are atomic, idempotent by order id and never oversell; a sweeper
//! returns the seats of holds that expire unconfirmed. `/health`, `/alive` and `/metrics` are served
//! over HTTP on a separate admin port (`ADMIN_LISTEN_ADDR`).

use std::net::SocketAddr;

use anyhow::Context as _;
use platform::auth::{JwtVerifier, KeySource};
use platform::health::HealthChecks;
use platform::http::HttpLimits;
use proto::catalog::v1 as pb;
use proto::catalog::v1::catalog_server::CatalogServer;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

pub mod cache;
pub mod concerts;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod reservations;
pub mod seed;
pub mod singleflight;

pub use config::Config;

use crate::cache::Cache;
use crate::concerts::Concerts;
use crate::grpc::CatalogService;
use crate::reservations::Reservations;

/// The catalog database's migrations.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/catalog");

/// A catalog ready to serve: database migrated, listeners bound.
pub struct App {
    config: Config,
    pool: PgPool,
    cache: Cache,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
}

impl App {
    /// Prepares the database (create, migrate, seed when `SEED_CATALOG` is set), sets up the cache
    /// without waiting for Redis, and binds both listeners (port 0 picks a free one).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        // Install the metrics recorder now: counts recorded before the first scrape would be lost.
        platform::health::prometheus();
        let pool = platform::db::prepare(&config.database, &MIGRATOR)
            .await
            .context("preparing the catalog database")?;
        if config.seed_catalog {
            seed::seed_if_empty(&pool).await.context("seeding the catalogue")?;
        }
        let cache = Cache::new(&config.cache).context("REDIS_URL")?;
        let grpc_listener = TcpListener::bind(config.grpc_listen_addr)
            .await
            .with_context(|| format!("binding GRPC_LISTEN_ADDR {}", config.grpc_listen_addr))?;
        if config.admin_listen_addr_from_old_name {
            tracing::warn!("LISTEN_ADDR is deprecated for catalog: set ADMIN_LISTEN_ADDR instead");
        }
        let http_listener = TcpListener::bind(config.admin_listen_addr)
            .await
            .with_context(|| format!("binding ADMIN_LISTEN_ADDR {}", config.admin_listen_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        tracing::info!(%grpc_addr, %http_addr, "catalog listening");
        Ok(Self { config, pool, cache, grpc_listener, http_listener, grpc_addr, http_addr })
    }

    /// The admin port serving `/health`, `/alive` and `/metrics`: catalog's only HTTP port, the same
    /// as [`App::admin_addr`].
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The admin port serving `/health`, `/alive` and `/metrics`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The gRPC port.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Serves gRPC and the admin port and sweeps expired holds until `shutdown` is cancelled; then
    /// stops accepting, lets in-flight calls finish and closes the pool.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { config, pool, cache, grpc_listener, http_listener, .. } = self;
        let verifier =
            JwtVerifier::new(KeySource::identity(&config.identity_url)?, config.token_audience.clone());
        let reservations = Reservations::new(pool.clone(), cache.clone());
        let service = CatalogService {
            concerts: Concerts::new(pool.clone(), cache.clone()),
            reservations: reservations.clone(),
            verifier,
        };

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        set_grpc_serving(&health_reporter, true).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let max_message = config.grpc_max_message_bytes;
        let catalog = CatalogServer::new(service)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message);
        let grpc = Server::builder()
            .timeout(config.grpc_request_timeout)
            .trace_fn(grpc_span)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(catalog)
            .serve_with_incoming_shutdown(
                TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                shutdown.clone().cancelled_owned(),
            );

        let checks = HealthChecks::default()
            .required("postgres", {
                let pool = pool.clone();
                move || {
                    let pool = pool.clone();
                    async move { platform::db::ping(&pool).await }
                }
            })
            .optional("redis", {
                let cache = cache.clone();
                move || {
                    let cache = cache.clone();
                    async move { cache.ping().await }
                }
            });
        let grpc_health = mirror_health_to_grpc(health_reporter.clone(), checks.clone(), shutdown.clone());
        let admin =
            platform::http::with_common_layers(platform::health::admin_router(checks), HttpLimits::default());
        let http = platform::http::serve(http_listener, admin, config.connections.clone(), shutdown.clone());
        let sweeper = reservations::run_sweeper(reservations, config.hold_sweep_interval, shutdown.clone());

        // A server that fails takes the others down with it instead of leaving a half-alive process.
        let stop_all = |result: anyhow::Result<()>| {
            if result.is_err() {
                shutdown.cancel();
            }
            result
        };
        let (grpc, http, (), ()) = tokio::join!(
            async { stop_all(grpc.await.context("gRPC server")) },
            async { stop_all(http.await.context("admin HTTP server")) },
            sweeper,
            grpc_health,
        );
        set_grpc_serving(&health_reporter, false).await;
        pool.close().await;
        tracing::info!("catalog stopped");
        grpc.and(http)
    }
}

/// How often `grpc.health.v1` is brought in line with the dependency checks.
const GRPC_HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps `grpc.health.v1` in step with `/health`: NOT_SERVING while Postgres is down (a Redis outage
/// only degrades), so gRPC clients such as ordering and the gateway see what the HTTP probe sees.
async fn mirror_health_to_grpc(reporter: HealthReporter, checks: HealthChecks, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(GRPC_HEALTH_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let serving = checks.report().await.status != platform::health::Status::Unhealthy;
        set_grpc_serving(&reporter, serving).await;
    }
}

/// Sets both the whole server's status (service "", what clients usually ask) and the Catalog service's.
async fn set_grpc_serving(reporter: &HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(<CatalogServer<CatalogService> as tonic::server::NamedService>::NAME, status)
        .await;
}

/// One span per gRPC call, a child of the caller's W3C trace context when it sent one.
fn grpc_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc.request", rpc.method = %request.uri().path(), trace.id = tracing::field::Empty);
    platform::trace_context::set_parent(&span, &platform::trace_context::HeaderExtractor(request.headers()));
    span
}
