//! Identity: the REST service that owns user accounts and tokens.
//!
//! Accounts register with an email and an argon2id-hashed password; logging in yields a short-lived
//! EdDSA access token (verified by every other service through the JWKS published here) and an opaque
//! refresh token that is single use, rotated on every refresh and revoked by family on logout or reuse.

pub mod access_tokens;
pub mod accounts;
pub mod admin;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod key_encryption;
pub mod keys;
pub mod passwords;
pub mod refresh_tokens;
pub mod sessions;
pub mod throttle;

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

pub use config::Config;

use crate::access_tokens::AccessTokens;
use crate::accounts::Accounts;
use crate::http::AppState;
use crate::keys::SigningKeys;
use crate::passwords::PasswordHasher;
use crate::refresh_tokens::RefreshTokens;
use crate::sessions::Sessions;
use crate::throttle::LoginThrottle;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/identity");

/// How often expired refresh tokens and stale throttle counters are deleted.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(600);

pub struct App {
    listener: TcpListener,
    router: Router,
    admin_listener: TcpListener,
    admin_router: Router,
    connections: ConnectionLimits,
    pool: PgPool,
    housekeeping: Housekeeping,
}

impl App {
    /// Binds both listeners, prepares the database (create, migrate), loads or creates the signing key
    /// and computes the dummy password hash.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let pool = platform::db::prepare(&config.database, &MIGRATOR).await?;
        let keys = Arc::new(
            SigningKeys::open(
                pool.clone(),
                config.key_encryption.clone(),
                config.signing_keys_reload,
                config.access_token_ttl,
            )
            .await?,
        );
        let hasher = PasswordHasher::new(config.max_concurrent_hashes).await?;
        let accounts = Accounts::new(pool.clone(), hasher.clone());
        let refresh_tokens = RefreshTokens::new(pool.clone(), config.refresh_token_ttl);
        let throttle = LoginThrottle::new(pool.clone(), config.throttle.clone());
        let sessions = Sessions {
            accounts: accounts.clone(),
            hasher,
            throttle: throttle.clone(),
            access_tokens: AccessTokens::new(keys.clone(), config.audience.clone(), config.access_token_ttl),
            refresh_tokens: refresh_tokens.clone(),
        };
        // /auth/me verifies with the same code as every other service, over our own key store.
        let jwks_keys = keys.clone();
        let source = KeySource::Local(Arc::new(move || {
            let keys = jwks_keys.clone();
            Box::pin(async move { Ok(keys.jwks().await) })
        }));
        let verifier = JwtVerifier::new(source, config.audience.clone());
        let state = AppState {
            accounts,
            sessions,
            keys,
            verifier,
            trusted_proxies: config.trusted_proxies.clone().into(),
        };

        let health_pool = pool.clone();
        let checks = HealthChecks::default().required("postgres", move || {
            let pool = health_pool.clone();
            async move { platform::db::ping(&pool).await }
        });
        let router = platform::http::with_common_layers(
            http::router(state).merge(platform::health::public_router(checks.clone())),
            config.http,
        );
        let admin_router =
            platform::http::with_common_layers(platform::health::admin_router(checks), config.http);
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding LISTEN_ADDR {}", config.listen_addr))?;
        let admin_listener = TcpListener::bind(config.admin_listen_addr)
            .await
            .with_context(|| format!("binding ADMIN_LISTEN_ADDR {}", config.admin_listen_addr))?;
        tracing::info!(
            http.addr = %listener.local_addr()?,
            admin.addr = %admin_listener.local_addr()?,
            "identity listening"
        );
        // A trusted proxy (the gateway) carries every client's requests over its own connections, so
        // a per-address cap on it would be a cap on all clients together; the overall cap still holds.
        let trusted = config.trusted_proxies.clone();
        let connections = config.connections.clone().exempting(move |peer| trusted.contains(peer));
        Ok(App {
            listener,
            router,
            admin_listener,
            admin_router,
            connections,
            pool,
            housekeeping: Housekeeping { refresh_tokens, throttle },
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        // The listener is bound; local_addr only fails for a closed socket.
        self.listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The admin port: `/metrics` and the per-check `/health`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` is cancelled, lets in-flight requests finish, then closes the pool.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let housekeeping = tokio::spawn(self.housekeeping.run(shutdown.clone()));
        let admin = tokio::spawn(platform::http::serve(
            self.admin_listener,
            self.admin_router,
            self.connections.clone(),
            shutdown.clone(),
        ));
        let served =
            platform::http::serve(self.listener, self.router, self.connections, shutdown.clone()).await;
        shutdown.cancel();
        let _ = housekeeping.await;
        admin.await??;
        self.pool.close().await;
        tracing::info!("identity stopped");
        Ok(served?)
    }
}

/// Deletes what can never be used again, so the token and throttle tables stay small.
struct Housekeeping {
    refresh_tokens: RefreshTokens,
    throttle: LoginThrottle,
}

impl Housekeeping {
    async fn run(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(HOUSEKEEPING_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match self.refresh_tokens.delete_expired().await {
                Ok(deleted) => tracing::debug!(tokens.deleted = deleted, "deleted expired refresh tokens"),
                Err(error) => tracing::warn!(%error, "deleting expired refresh tokens failed"),
            }
            if let Err(error) = self.throttle.delete_stale().await {
                tracing::warn!(%error, "deleting stale login throttle counters failed");
            }
        }
    }
}
