//! Catalog's configuration, read once at start-up from the environment (or a map, in tests).

use std::net::SocketAddr;
use std::time::Duration;

use platform::auth::TokenAudience;
use platform::config::{ConfigError, Env};
use platform::db::DatabaseConfig;
use platform::http::ConnectionLimits;

use crate::cache::CacheConfig;

#[derive(Debug, Clone)]
pub struct Config {
    /// `GRPC_LISTEN_ADDR` (default `0.0.0.0:50051`): the Catalog gRPC API.
    pub grpc_listen_addr: SocketAddr,
    /// `ADMIN_LISTEN_ADDR` (default `0.0.0.0:8083`): the admin port, `/health` (per check), `/alive`,
    /// `/metrics`; catalog has no other HTTP port. `LISTEN_ADDR`, its name before every service had
    /// an admin port, still works when `ADMIN_LISTEN_ADDR` is unset, with a warning at start-up.
    pub admin_listen_addr: SocketAddr,
    /// Whether the deprecated `LISTEN_ADDR` gave [`Config::admin_listen_addr`].
    pub admin_listen_addr_from_old_name: bool,
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (5), `HTTP_MAX_CONNECTIONS` (10000),
    /// `HTTP_MAX_CONNECTIONS_PER_IP` (256), for the admin port.
    pub connections: ConnectionLimits,
    /// `DATABASE_URL` (default database `ticketflow_catalog`).
    pub database: DatabaseConfig,
    /// `REDIS_URL`, `REDIS_KEY_PREFIX` (default `ticketflow:catalog:`), `CACHE_TTL_SECS` (default 30),
    /// `REDIS_TIMEOUT_MS` (default 100).
    pub cache: CacheConfig,
    /// `HOLD_SWEEP_INTERVAL_SECS` (default 5; fractions allowed): how often expired holds are released.
    pub hold_sweep_interval: Duration,
    /// `IDENTITY_URL` (default `http://127.0.0.1:8081`): where the token signing keys (JWKS) are.
    pub identity_url: String,
    /// `JWT_ISSUER`, `JWT_AUDIENCE`.
    pub token_audience: TokenAudience,
    /// `SEED_CATALOG` (default false): load the demo catalogue into an empty database.
    pub seed_catalog: bool,
    /// `GRPC_REQUEST_TIMEOUT_SECS` (default 10): longest a gRPC call may run (a shorter client deadline wins).
    pub grpc_request_timeout: Duration,
    /// `GRPC_MAX_MESSAGE_BYTES` (default 1 MiB): largest request or response message.
    pub grpc_max_message_bytes: usize,
}

impl Config {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let hold_sweep_interval = env.seconds("HOLD_SWEEP_INTERVAL_SECS", Duration::from_secs(5))?;
        if hold_sweep_interval.is_zero() {
            return Err(ConfigError::new("HOLD_SWEEP_INTERVAL_SECS", "a positive number of seconds", "0"));
        }
        let grpc_request_timeout = env.seconds("GRPC_REQUEST_TIMEOUT_SECS", Duration::from_secs(10))?;
        if grpc_request_timeout.is_zero() {
            return Err(ConfigError::new("GRPC_REQUEST_TIMEOUT_SECS", "a positive number of seconds", "0"));
        }
        let (admin_listen_addr, admin_listen_addr_from_old_name) =
            env.renamed_socket_addr("ADMIN_LISTEN_ADDR", "LISTEN_ADDR", "0.0.0.0:8083")?;
        Ok(Self {
            grpc_listen_addr: env.socket_addr("GRPC_LISTEN_ADDR", "0.0.0.0:50051")?,
            admin_listen_addr,
            admin_listen_addr_from_old_name,
            connections: ConnectionLimits::from_env(env)?,
            database: DatabaseConfig::from_env(env, "ticketflow_catalog")?,
            cache: CacheConfig {
                url: env.url("REDIS_URL", "redis://127.0.0.1:6379", &["redis", "rediss"])?,
                key_prefix: env.string("REDIS_KEY_PREFIX", "ticketflow:catalog:"),
                ttl: Duration::from_secs(env.int_in("CACHE_TTL_SECS", 30u64, 1..=86_400)?),
                timeout: Duration::from_millis(env.int_in("REDIS_TIMEOUT_MS", 100u64, 1..=10_000)?),
            },
            hold_sweep_interval,
            identity_url: env.url("IDENTITY_URL", "http://127.0.0.1:8081", &["http", "https"])?,
            token_audience: TokenAudience::from_env(env)?,
            seed_catalog: env.bool("SEED_CATALOG", false)?,
            grpc_request_timeout,
            grpc_max_message_bytes: env.int_in(
                "GRPC_MAX_MESSAGE_BYTES",
                1024 * 1024,
                1024..=64 * 1024 * 1024,
            )?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn defaults_match_the_architecture() {
        let source: HashMap<&'static str, String> = HashMap::new();
        let config = Config::from_env(&Env::new(&source)).unwrap();
        assert_eq!(config.grpc_listen_addr.port(), 50051);
        assert_eq!(config.admin_listen_addr.port(), 8083);
        assert_eq!(config.cache.key_prefix, "ticketflow:catalog:");
        assert_eq!(config.cache.ttl, Duration::from_secs(30));
        assert!(config.database.url.ends_with("/ticketflow_catalog"));
        assert!(!config.seed_catalog);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value) in [
            ("CACHE_TTL_SECS", "0"),
            ("REDIS_URL", "http://x"),
            ("HOLD_SWEEP_INTERVAL_SECS", "0"),
            ("SEED_CATALOG", "maybe"),
        ] {
            let source: HashMap<&'static str, String> = HashMap::from([(name, value.to_owned())]);
            assert_eq!(Config::from_env(&Env::new(&source)).unwrap_err().name, name);
        }
    }
}
