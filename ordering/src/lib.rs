//! Ordering: the REST service that owns orders.
//!
//! A buyer places an order (`Idempotency-Key` required): seats are held in catalog over gRPC, which
//! answers with the price it held them at, and the order is stored `Pending` at that price with its
//! `order.created` event in one transaction.
//! Confirming charges the buyer through a [`payments::PaymentProvider`] and confirms the seats;
//! cancelling releases them; a [`sweeper`] cancels orders whose hold lapsed. Every state change writes
//! an event to the [`outbox`], which the [`relay`] publishes to RabbitMQ with publisher confirms.

pub mod catalog;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod orders;
pub mod outbox;
pub mod payment_intents;
pub mod payments;
pub mod relay;
pub mod service_token;
pub mod sweeper;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use platform::auth::{JwtVerifier, KeySource};
use platform::health::HealthChecks;
use platform::http::ConnectionLimits;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::config::PaymentConfig;
use crate::payment_intents::PaymentIntents;
use crate::payments::{PaymentProvider, TestPaymentProvider};

/// Ordering's schema: `migrations/ordering/*.sql`, applied at start-up.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/ordering");

pub struct App {
    listener: TcpListener,
    http_addr: SocketAddr,
    router: Router,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
    admin_router: Router,
    connections: ConnectionLimits,
    db: PgPool,
    relay: relay::Relay,
    sweeper: sweeper::Sweeper,
}

impl App {
    /// Binds both listeners, prepares the database and sets up catalog, relay and sweeper, taking
    /// payments through the provider `PAYMENT_PROVIDER` names.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let payments: Arc<dyn PaymentProvider> = match &config.payments {
            PaymentConfig::Test => {
                tracing::warn!(
                    "PAYMENT_PROVIDER=test: orders are paid with well-known test tokens; never use this in production"
                );
                Arc::new(TestPaymentProvider)
            }
            PaymentConfig::PaymentIntents(processor) => Arc::new(PaymentIntents::new(processor)?),
        };
        Self::build_with_payments(config, payments).await
    }

    /// As [`App::build`], with another payment provider.
    pub async fn build_with_payments(
        config: Config,
        payments: Arc<dyn PaymentProvider>,
    ) -> anyhow::Result<App> {
        let db = platform::db::prepare(&config.database, &MIGRATOR).await?;
        let tokens = Arc::new(service_token::ServiceTokens::new(
            &config.identity_url,
            config.service_credentials.clone(),
            platform::auth::SCOPE_SEATS_WRITE,
        )?);
        let catalog = Arc::new(catalog::Catalog::connect_lazy(&config.catalog, tokens)?);
        let verifier = JwtVerifier::new(KeySource::identity(&config.identity_url)?, config.audience.clone());
        let relay = relay::Relay::new(db.clone(), config.relay.clone());
        let sweeper = sweeper::Sweeper {
            db: db.clone(),
            catalog: catalog.clone(),
            interval: config.sweep_interval,
            idempotency_retention: config.idempotency.retention,
            outbox_retention: config.relay.retention,
        };
        let orders = Arc::new(orders::Orders::new(
            db.clone(),
            catalog.clone(),
            payments,
            config.hold,
            config.idempotency.clone(),
            config.pending_limits,
        ));

        let relay_status = relay.status();
        let health_db = db.clone();
        let checks =
            HealthChecks::new(Duration::from_secs(2))
                .required("postgres", move || {
                    let db = health_db.clone();
                    async move { platform::db::ping(&db).await }
                })
                // Events wait in the outbox while the broker is away, so orders keep working: degraded.
                .optional("rabbitmq", move || {
                    let connected = relay_status.is_connected();
                    async move {
                        if connected { Ok(()) } else { Err("the outbox relay is not connected".to_owned()) }
                    }
                })
                .optional("catalog", move || {
                    let catalog = catalog.clone();
                    async move { catalog.check_health().await }
                });
        let mut routes = http::router(http::AppState { orders, verifier })
            .merge(platform::health::public_router(checks.clone()));
        if let PaymentConfig::PaymentIntents(processor) = &config.payments {
            routes = routes.merge(http::webhook_router(http::WebhookState {
                secret: processor.webhook_secret.clone().into(),
                tolerance: processor.webhook_tolerance,
            }));
        }
        let router = platform::http::with_common_layers(routes, config.http);
        let admin_router =
            platform::http::with_common_layers(platform::health::admin_router(checks), config.http);

        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR {}", config.listen_addr))?;
        let admin_listener = TcpListener::bind(config.admin_listen_addr)
            .await
            .with_context(|| format!("binding ADMIN_LISTEN_ADDR {}", config.admin_listen_addr))?;
        let http_addr = listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        tracing::info!(%http_addr, %admin_addr, "ordering listening");
        Ok(App {
            listener,
            http_addr,
            router,
            admin_listener,
            admin_addr,
            admin_router,
            connections: config.connections,
            db,
            relay,
            sweeper,
        })
    }

    /// The port serving the API and `/health`.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The admin port: `/metrics` and the per-check `/health`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until `shutdown`, lets in-flight requests finish, then stops the relay (after a last
    /// publish of what those requests wrote) and the sweeper, and closes the pool.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let workers = CancellationToken::new();
        let relay = tokio::spawn(self.relay.run(workers.clone()));
        let sweeper = tokio::spawn(self.sweeper.run(workers.clone()));
        let admin = tokio::spawn(platform::http::serve(
            self.admin_listener,
            self.admin_router,
            self.connections.clone(),
            shutdown.clone(),
        ));
        let served = platform::http::serve(self.listener, self.router, self.connections, shutdown).await;
        workers.cancel();
        if let Err(error) = relay.await {
            tracing::error!(%error, "outbox relay task failed");
        }
        if let Err(error) = sweeper.await {
            tracing::error!(%error, "sweeper task failed");
        }
        self.db.close().await;
        admin.await??;
        tracing::info!("ordering stopped");
        Ok(served?)
    }
}
