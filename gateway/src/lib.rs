//! The GraphQL gateway: the one entry point for clients.
//!
//! One schema over catalog (gRPC), identity and ordering (REST), with live order updates from
//! RabbitMQ over WebSocket subscriptions. Tokens are verified here and forwarded, so every service
//! checks them again; every downstream call has a deadline, a circuit breaker and a retry policy
//! ([`downstream`]); errors reach clients with a contract `extensions.code` ([`error`]).

pub mod auth;
pub mod config;
pub mod documents;
pub mod downstream;
pub mod error;
pub mod events;
pub mod graphql_http;
pub mod http;
pub mod playground;
pub mod rate_limit;
pub mod response_cache;
pub mod schema;
pub mod subscriptions;
pub mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use platform::auth::{JwtVerifier, KeySource};
use platform::health::HealthChecks;
use platform::http::HttpLimits;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::downstream::catalog::CatalogClient;
use crate::downstream::identity::IdentityClient;
use crate::downstream::ordering::OrderingClient;
use crate::events::OrderEvents;
use crate::http::HttpState;
use crate::rate_limit::RateLimiter;
use crate::response_cache::ResponseCache;
use crate::schema::Services;

/// A built gateway, listening but not yet serving.
pub struct App {
    config: Config,
    listener: TcpListener,
    http_addr: SocketAddr,
    router: Router,
    admin_listener: TcpListener,
    admin_addr: SocketAddr,
    admin_router: Router,
    services: Arc<Services>,
    /// Ends WebSocket connections, which graceful HTTP shutdown does not wait for.
    sockets_shutdown: CancellationToken,
}

impl App {
    /// Binds both listeners and prepares the downstream clients. Nothing downstream is contacted yet:
    /// the gateway starts (and reports itself unhealthy) while the services behind it come up.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
        let http_addr = listener.local_addr()?;
        let admin_listener = TcpListener::bind(config.admin_listen_addr)
            .await
            .with_context(|| format!("cannot listen on ADMIN_LISTEN_ADDR {}", config.admin_listen_addr))?;
        let admin_addr = admin_listener.local_addr()?;
        let verifier =
            JwtVerifier::new(KeySource::identity(&config.downstream.identity_url)?, config.audience.clone());
        let services = Arc::new(Services {
            identity: IdentityClient::new(&config.downstream)?,
            ordering: OrderingClient::new(&config.downstream)?,
            catalog: Arc::new(CatalogClient::new(&config.downstream)?),
            events: OrderEvents::new(config.events.buffer),
            limiter: RateLimiter::new(&config.rate_limits),
            response_cache: ResponseCache::new(config.response_cache),
        });
        let schemas = schema::build(services.clone(), &config.graphql);
        let documents = documents::Documents::load(&config.documents, &config.graphql)?;
        if config.documents.mode != config::TrustedMode::Off {
            tracing::info!(
                trusted.mode = ?config.documents.mode,
                trusted.documents = documents.trusted_count(),
                "trusted documents loaded"
            );
        }
        let sockets_shutdown = CancellationToken::new();
        let state = Arc::new(HttpState {
            schemas,
            documents,
            services: services.clone(),
            verifier,
            limits: config.graphql,
            max_body_bytes: config.max_body_bytes,
            playground_enabled: config.playground_enabled,
            sockets: websocket::SocketRegistry::default(),
            socket_limits: config.sockets,
            shutdown: sockets_shutdown.clone(),
        });
        let limits =
            HttpLimits { max_body_bytes: config.max_body_bytes, request_timeout: config.request_timeout };
        let checks = health_checks(&services);
        let admin_router =
            platform::http::with_common_layers(platform::health::admin_router(checks.clone()), limits);
        let router = http::router(state, checks, limits);
        Ok(App {
            config,
            listener,
            http_addr,
            router,
            admin_listener,
            admin_addr,
            admin_router,
            services,
            sockets_shutdown,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The admin port: `/metrics` and the per-check `/health`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The order event hub: whether its consumer is bound to the broker
    /// ([`OrderEvents::is_connected`], also `/health`'s `rabbitmq` check) and how many subscriptions
    /// listen ([`OrderEvents::listeners`]).
    pub fn order_events(&self) -> OrderEvents {
        self.services.events.clone()
    }

    /// Where a person on this machine opens the playground.
    pub fn playground_url(&self) -> String {
        let mut addr = self.http_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/graphql")
    }

    /// Serves until `shutdown`, then lets in-flight requests finish, closes WebSockets and stops
    /// consuming order events.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer = tokio::spawn(
            self.services.events.clone().consume(self.config.events.clone(), shutdown.child_token()),
        );
        self.services.limiter.spawn_cleanup(shutdown.child_token());
        let (signal, sockets) = (shutdown.clone(), self.sockets_shutdown.clone());
        tokio::spawn(async move {
            signal.cancelled().await;
            sockets.cancel();
        });
        tracing::info!(
            addr = %self.http_addr,
            admin.addr = %self.admin_addr,
            playground = self.config.playground_enabled,
            "gateway listening"
        );
        let limits = self.config.connections.clone();
        let admin = tokio::spawn(platform::http::serve(
            self.admin_listener,
            self.admin_router,
            limits.clone(),
            shutdown.clone(),
        ));
        let served = platform::http::serve(self.listener, self.router, limits, shutdown.clone()).await;
        shutdown.cancel();
        consumer.await?;
        admin.await??;
        Ok(served?)
    }
}

/// Identity, ordering and catalog are required: without them the gateway can answer little.
/// RabbitMQ only feeds subscriptions, so its loss degrades the gateway rather than failing it.
fn health_checks(services: &Arc<Services>) -> HealthChecks {
    let (identity, ordering, catalog, events) =
        (services.clone(), services.clone(), services.clone(), services.events.clone());
    HealthChecks::new(Duration::from_secs(2))
        .required("identity", move || {
            let services = identity.clone();
            async move { services.identity.alive().await }
        })
        .required("ordering", move || {
            let services = ordering.clone();
            async move { services.ordering.alive().await }
        })
        .required("catalog", move || {
            let services = catalog.clone();
            async move { services.catalog.health().await }
        })
        // Healthy only once the consumer's queue is bound: before that, events are missed.
        .optional("rabbitmq", move || {
            let connected = events.is_connected();
            async move { if connected { Ok(()) } else { Err("not consuming order events".to_owned()) } }
        })
}
