//! Ordering's typed configuration, read once from the environment at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use platform::auth::TokenAudience;
use platform::breaker::BreakerConfig;
use platform::config::{ConfigError, Env};
use platform::db::DatabaseConfig;
use platform::http::{ConnectionLimits, HttpLimits};

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`, default `0.0.0.0:8082`: the REST API, `/alive` and a status-only `/health`.
    pub listen_addr: SocketAddr,
    /// `ADMIN_LISTEN_ADDR`, default `0.0.0.0:9082`: `/metrics` and the per-check `/health`, for
    /// monitoring only.
    pub admin_listen_addr: SocketAddr,
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (5), `HTTP_MAX_CONNECTIONS` (10000),
    /// `HTTP_MAX_CONNECTIONS_PER_IP` (256), for each listener.
    pub connections: ConnectionLimits,
    /// `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/ticketflow_ordering`.
    pub database: DatabaseConfig,
    pub catalog: CatalogConfig,
    /// `IDENTITY_URL`, default `http://127.0.0.1:8081`: where the JWKS that verifies tokens lives.
    pub identity_url: String,
    /// `JWT_ISSUER` / `JWT_AUDIENCE`.
    pub audience: TokenAudience,
    /// `HOLD_SECONDS`, default 600 (1 to 3600, catalog's range): how long seats stay held for an
    /// unconfirmed order.
    pub hold: Duration,
    /// `SWEEP_INTERVAL_SECS`, default 5: how often lapsed holds are looked for.
    pub sweep_interval: Duration,
    pub idempotency: IdempotencyConfig,
    pub relay: RelayConfig,
    pub http: HttpLimits,
}

/// How ordering calls catalog's gRPC API.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// `CATALOG_GRPC_URL`, default `http://127.0.0.1:50051`.
    pub url: String,
    /// `CATALOG_TIMEOUT_MS`, default 1500: the deadline of one attempt.
    pub timeout: Duration,
    /// `CATALOG_ATTEMPTS`, default 3: attempts of an idempotent call (every seat call is).
    pub attempts: u32,
    /// The circuit: `CATALOG_BREAKER_FAILURE_RATIO` (0.5) of the calls in the last
    /// `CATALOG_BREAKER_WINDOW_SECS` (10) failed, with at least `CATALOG_BREAKER_MINIMUM_CALLS` (10)
    /// calls, opens it for `CATALOG_BREAKER_COOL_DOWN_SECS` (5). The old `CATALOG_BREAKER_FAILURES`
    /// is read as the minimum when that is unset (deprecated).
    pub breaker: BreakerConfig,
}

/// Idempotency-Key handling of `POST /orders`.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// `IDEMPOTENCY_WAIT_MS`, default 5000: how long a duplicate of an in-flight request waits for
    /// its outcome before answering 409 "in progress".
    pub wait: Duration,
    /// `IDEMPOTENCY_LEASE_SECS`, default 30: an in-progress key untouched this long belongs to a
    /// request that died; a retry takes it over (under the same order id).
    pub lease: Duration,
    /// `IDEMPOTENCY_RETENTION_HOURS`, default 24: how long a stored response is replayed.
    pub retention: Duration,
}

/// The outbox relay that publishes events to RabbitMQ.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// `EVENTS_EXCHANGE`, default `ticketflow.events` (durable topic).
    pub exchange: String,
    /// `OUTBOX_POLL_INTERVAL_MS`, default 500: fallback poll when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// `OUTBOX_BATCH_SIZE`, default 100: rows claimed and published per round trip.
    pub batch_size: i64,
    /// `OUTBOX_CONFIRM_TIMEOUT_MS`, default 5000: how long a batch may take to be published and
    /// confirmed (its rows stay locked meanwhile); also the limit on connecting to the broker.
    pub confirm_timeout: Duration,
    /// `OUTBOX_RECONNECT_MAX_SECS`, default 10: the longest pause between reconnection attempts.
    pub reconnect_max: Duration,
    /// `OUTBOX_RETENTION_HOURS`, default 168: published rows are deleted after this long.
    pub retention: Duration,
}

impl Config {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            listen_addr: env.socket_addr("LISTEN_ADDR", "0.0.0.0:8082")?,
            admin_listen_addr: env.socket_addr("ADMIN_LISTEN_ADDR", "0.0.0.0:9082")?,
            connections: ConnectionLimits::from_env(env)?,
            database: DatabaseConfig::from_env(env, "ticketflow_ordering")?,
            catalog: CatalogConfig {
                url: env.url("CATALOG_GRPC_URL", "http://127.0.0.1:50051", &["http", "https"])?,
                timeout: millis(env, "CATALOG_TIMEOUT_MS", 1500, 10..=60_000)?,
                attempts: env.int_in("CATALOG_ATTEMPTS", 3, 1..=10)?,
                breaker: BreakerConfig::from_env(
                    env,
                    "CATALOG_BREAKER_",
                    "_SECS",
                    "CATALOG_BREAKER_FAILURES",
                )?,
            },
            identity_url: env.url("IDENTITY_URL", "http://127.0.0.1:8081", &["http", "https"])?,
            audience: TokenAudience::from_env(env)?,
            hold: Duration::from_secs(env.int_in("HOLD_SECONDS", 600, 1..=3600)?),
            sweep_interval: positive_seconds(env, "SWEEP_INTERVAL_SECS", 5.0)?,
            idempotency: IdempotencyConfig {
                wait: millis(env, "IDEMPOTENCY_WAIT_MS", 5000, 0..=60_000)?,
                lease: Duration::from_secs(env.int_in("IDEMPOTENCY_LEASE_SECS", 30, 1..=3600)?),
                retention: Duration::from_secs(
                    env.int_in("IDEMPOTENCY_RETENTION_HOURS", 24, 1..=24 * 30)? * 3600,
                ),
            },
            relay: RelayConfig {
                amqp_url: env.url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f", &["amqp", "amqps"])?,
                exchange: exchange_name(env)?,
                poll_interval: millis(env, "OUTBOX_POLL_INTERVAL_MS", 500, 10..=60_000)?,
                batch_size: env.int_in("OUTBOX_BATCH_SIZE", 100, 1..=1000)?,
                confirm_timeout: millis(env, "OUTBOX_CONFIRM_TIMEOUT_MS", 5000, 100..=120_000)?,
                reconnect_max: Duration::from_secs(env.int_in("OUTBOX_RECONNECT_MAX_SECS", 10, 1..=300)?),
                retention: Duration::from_secs(
                    env.int_in("OUTBOX_RETENTION_HOURS", 168, 1..=24 * 365)? * 3600,
                ),
            },
            http: HttpLimits::default(),
        })
    }
}

fn millis(
    env: &Env<'_>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    env.int_in(name, default, range).map(Duration::from_millis)
}

fn positive_seconds(env: &Env<'_>, name: &str, default: f64) -> Result<Duration, ConfigError> {
    let value = env.seconds(name, Duration::from_secs_f64(default))?;
    if value.is_zero() {
        return Err(ConfigError::new(name, "a positive number of seconds", "0"));
    }
    Ok(value)
}

fn exchange_name(env: &Env<'_>) -> Result<String, ConfigError> {
    let name = env.string("EVENTS_EXCHANGE", platform::events::DEFAULT_EXCHANGE);
    // AMQP short strings are at most 255 bytes; the amq. prefix is reserved by the broker.
    if name.len() > 255 || name.starts_with("amq.") {
        return Err(ConfigError::new(
            "EVENTS_EXCHANGE",
            "an exchange name (at most 255 bytes, not amq.*)",
            name,
        ));
    }
    Ok(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let source: HashMap<&'static str, String> = HashMap::new();
        let config = Config::from_env(&Env::new(&source)).unwrap();
        assert_eq!(config.listen_addr.port(), 8082);
        assert_eq!(config.admin_listen_addr.port(), 9082);
        assert!(config.database.url.ends_with("/ticketflow_ordering"));
        assert_eq!(config.catalog.url, "http://127.0.0.1:50051");
        assert_eq!(config.relay.exchange, "ticketflow.events");
        assert_eq!(config.hold, Duration::from_secs(600));
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let source: HashMap<&'static str, String> = [("HOLD_SECONDS", "0".to_owned())].into();
        assert_eq!(Config::from_env(&Env::new(&source)).unwrap_err().name, "HOLD_SECONDS");
        let source: HashMap<&'static str, String> =
            [("CATALOG_GRPC_URL", "127.0.0.1:50051".to_owned())].into();
        assert_eq!(Config::from_env(&Env::new(&source)).unwrap_err().name, "CATALOG_GRPC_URL");
        let source: HashMap<&'static str, String> = [("SWEEP_INTERVAL_SECS", "0".to_owned())].into();
        assert_eq!(Config::from_env(&Env::new(&source)).unwrap_err().name, "SWEEP_INTERVAL_SECS");
    }
}
