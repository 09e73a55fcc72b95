//! The gateway's settings, read once at start-up from the environment.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use platform::auth::TokenAudience;
use platform::breaker::BreakerConfig;
use platform::config::{ConfigError, Env};

use crate::response_cache::ResponseCacheConfig;
use platform::http::ConnectionLimits;

/// Everything the gateway needs to run; see [`Config::from_env`] for the variables and defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR` (0.0.0.0:8080): GraphQL, playground, assets, `/alive` and a status-only `/health`.
    pub listen_addr: SocketAddr,
    /// `ADMIN_LISTEN_ADDR` (0.0.0.0:9080): `/metrics`, the per-check `/health` and `/alive`, for
    /// monitoring only (never expose it to clients).
    pub admin_listen_addr: SocketAddr,
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (5), `HTTP_MAX_CONNECTIONS` (10000),
    /// `HTTP_MAX_CONNECTIONS_PER_IP` (256), for each listener. Behind a load balancer that does not
    /// keep the client's address, raise the per-address cap: every client then shares its address.
    pub connections: ConnectionLimits,
    pub downstream: DownstreamConfig,
    pub events: EventsConfig,
    /// `JWT_ISSUER` / `JWT_AUDIENCE`.
    pub audience: TokenAudience,
    pub graphql: GraphqlLimits,
    pub rate_limits: RateLimits,
    pub sockets: SocketLimits,
    /// `RESPONSE_CACHE_TTL_MS` (1000; 0 turns it off) and `RESPONSE_CACHE_MAX_BYTES` (16 MiB): whole
    /// answers to anonymous queries of public fields, shared for at most the TTL.
    pub response_cache: ResponseCacheConfig,
    /// `HTTP_MAX_BODY_BYTES` (128 KiB): the largest request body (or WebSocket message) accepted.
    pub max_body_bytes: usize,
    /// `HTTP_REQUEST_TIMEOUT_SECONDS` (30): a whole HTTP request, downstream calls included.
    pub request_timeout: Duration,
    /// `PLAYGROUND_ENABLED` (true): serve GraphiQL on `GET /graphql`.
    pub playground_enabled: bool,
    pub documents: DocumentsConfig,
}

/// Persisted documents (see `documents.rs`).
#[derive(Debug, Clone)]
pub struct DocumentsConfig {
    /// `APQ_CACHE_BYTES` (8 MiB): documents registered through automatic persisted queries are kept
    /// up to this many bytes, least recently used out first; 0 turns registration off.
    pub apq_cache_bytes: u64,
    /// `TRUSTED_DOCUMENTS` (`off`): `off`, `allow-unlisted` or `enforce`.
    pub mode: TrustedMode,
    /// `TRUSTED_DOCUMENTS_PATH` (unset): the manifest, required unless `TRUSTED_DOCUMENTS` is `off`.
    pub manifest_path: Option<PathBuf>,
}

/// What the trusted-documents manifest is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustedMode {
    /// No manifest: any document runs (automatic persisted queries still work).
    Off,
    /// The manifest's documents can be sent by id; other documents still run, and are counted
    /// (`graphql_unlisted_documents_total`): the step before `Enforce`.
    AllowUnlisted,
    /// Only the manifest's documents (and introspection while `INTROSPECTION_ENABLED`) run.
    Enforce,
}

impl FromStr for TrustedMode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "allow-unlisted" => Ok(Self::AllowUnlisted),
            "enforce" => Ok(Self::Enforce),
            _ => Err(()),
        }
    }
}

/// Where the services behind the gateway are and how long to wait for them.
#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    /// `IDENTITY_URL` (http://127.0.0.1:8081).
    pub identity_url: String,
    /// `ORDERING_URL` (http://127.0.0.1:8082).
    pub ordering_url: String,
    /// `CATALOG_GRPC_URL` (http://127.0.0.1:50051).
    pub catalog_url: String,
    /// `DOWNSTREAM_TIMEOUT_SECONDS` (5): the deadline of one downstream call.
    pub call_timeout: Duration,
    /// `DOWNSTREAM_CONNECT_TIMEOUT_SECONDS` (1): opening a connection to a service.
    pub connect_timeout: Duration,
    /// Each service's circuit: `BREAKER_FAILURE_RATIO` (0.5) of the calls in the last
    /// `BREAKER_WINDOW_SECONDS` (10) failed, with at least `BREAKER_MINIMUM_CALLS` (10) calls, opens
    /// it for `BREAKER_COOL_DOWN_SECONDS` (5). The old `BREAKER_FAILURE_THRESHOLD` is read as
    /// `BREAKER_MINIMUM_CALLS` when that is unset (deprecated).
    pub breaker: BreakerConfig,
}

/// The order events that feed subscriptions.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// `AMQP_URL` (amqp://guest:guest@127.0.0.1:5672/%2f).
    pub amqp_url: String,
    /// `EVENTS_EXCHANGE` (ticketflow.events).
    pub exchange: String,
    /// `SUBSCRIPTION_BUFFER` (1024): events a slow subscriber may fall behind before it misses some.
    pub buffer: usize,
}

/// Bounds on what one GraphQL request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct GraphqlLimits {
    /// `GRAPHQL_MAX_DEPTH` (10).
    pub max_depth: usize,
    /// `GRAPHQL_MAX_COMPLEXITY` (500). List fields cost their page size times their children, so
    /// aliases and wide selections add up here.
    pub max_complexity: usize,
    /// `GRAPHQL_MAX_QUERY_BYTES` (16384): the query text of one operation.
    pub max_query_bytes: usize,
    /// `GRAPHQL_MAX_BATCH` (10): operations in one batched POST; 0 turns batching off.
    pub max_batch: usize,
    /// `INTROSPECTION_ENABLED` (true).
    pub introspection: bool,
    /// `WS_MAX_SUBSCRIPTIONS` (20): live subscriptions one WebSocket connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// `GRAPHQL_MAX_SELECTIONS` (1000): fields a document selects once every fragment spread is
    /// expanded; bounds the work of validating a document whose fragments spread each other.
    pub max_selections: usize,
    /// `GRAPHQL_MAX_ROOT_FIELDS` (20): top-level fields (aliases included) of one operation, each
    /// of which may cost a downstream call.
    pub max_root_fields: usize,
}

impl Default for GraphqlLimits {
    fn default() -> Self {
        Self {
            max_depth: 10,
            max_complexity: 500,
            max_query_bytes: 16 * 1024,
            max_batch: 10,
            introspection: true,
            max_subscriptions_per_connection: 20,
            max_selections: 1000,
            max_root_fields: 20,
        }
    }
}

/// Bounds on WebSocket connections, which live much longer than a request.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    /// `WS_MAX_CONNECTIONS_PER_IP` (20): open sockets from one client address.
    pub max_per_ip: usize,
    /// `WS_MAX_CONNECTIONS_PER_USER` (10): open sockets signed in as one account.
    pub max_per_user: usize,
    /// `WS_INIT_TIMEOUT_SECONDS` (10): how long a new socket may take to send `connection_init`.
    pub init_timeout: Duration,
    /// `WS_IDLE_TIMEOUT_SECONDS` (300): a socket with no live subscription and no message from the
    /// client for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            max_per_ip: 20,
            max_per_user: 10,
            init_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Per-client-IP request budgets.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// `RATE_LIMIT_PER_SECOND` (50) and `RATE_LIMIT_BURST` (100): every GraphQL request.
    pub requests_per_second: NonZeroU32,
    pub request_burst: NonZeroU32,
    /// `AUTH_RATE_LIMIT_PER_MINUTE` (10) and `AUTH_RATE_LIMIT_BURST` (5): `login` and `register`,
    /// which are what password guessing and sign-up spam go through.
    pub auth_per_minute: NonZeroU32,
    pub auth_burst: NonZeroU32,
}

impl Config {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let http = ["http", "https"];
        let downstream = DownstreamConfig {
            identity_url: trimmed(env.url("IDENTITY_URL", "http://127.0.0.1:8081", &http)?),
            ordering_url: trimmed(env.url("ORDERING_URL", "http://127.0.0.1:8082", &http)?),
            catalog_url: trimmed(env.url("CATALOG_GRPC_URL", "http://127.0.0.1:50051", &http)?),
            call_timeout: positive(env, "DOWNSTREAM_TIMEOUT_SECONDS", Duration::from_secs(5))?,
            connect_timeout: positive(env, "DOWNSTREAM_CONNECT_TIMEOUT_SECONDS", Duration::from_secs(1))?,
            breaker: BreakerConfig::from_env(env, "BREAKER_", "_SECONDS", "BREAKER_FAILURE_THRESHOLD")?,
        };
        let events = EventsConfig {
            amqp_url: env.url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f", &["amqp", "amqps"])?,
            exchange: env.string("EVENTS_EXCHANGE", platform::events::DEFAULT_EXCHANGE),
            buffer: env.int_in("SUBSCRIPTION_BUFFER", 1024, 16..=1_000_000)?,
        };
        let graphql = GraphqlLimits {
            max_depth: env.int_in("GRAPHQL_MAX_DEPTH", 10, 2..=100)?,
            max_complexity: env.int_in("GRAPHQL_MAX_COMPLEXITY", 500, 10..=1_000_000)?,
            max_query_bytes: env.int_in("GRAPHQL_MAX_QUERY_BYTES", 16 * 1024, 256..=1024 * 1024)?,
            max_batch: env.int_in("GRAPHQL_MAX_BATCH", 10, 0..=100)?,
            introspection: env.bool("INTROSPECTION_ENABLED", true)?,
            max_subscriptions_per_connection: env.int_in("WS_MAX_SUBSCRIPTIONS", 20, 1..=1000)?,
            max_selections: env.int_in("GRAPHQL_MAX_SELECTIONS", 1000, 10..=100_000)?,
            max_root_fields: env.int_in("GRAPHQL_MAX_ROOT_FIELDS", 20, 1..=1000)?,
        };
        let sockets = SocketLimits {
            max_per_ip: env.int_in("WS_MAX_CONNECTIONS_PER_IP", 20, 1..=100_000)?,
            max_per_user: env.int_in("WS_MAX_CONNECTIONS_PER_USER", 10, 1..=10_000)?,
            init_timeout: positive(env, "WS_INIT_TIMEOUT_SECONDS", Duration::from_secs(10))?,
            idle_timeout: positive(env, "WS_IDLE_TIMEOUT_SECONDS", Duration::from_secs(300))?,
        };
        let rate_limits = RateLimits {
            requests_per_second: non_zero(env, "RATE_LIMIT_PER_SECOND", 50)?,
            request_burst: non_zero(env, "RATE_LIMIT_BURST", 100)?,
            auth_per_minute: non_zero(env, "AUTH_RATE_LIMIT_PER_MINUTE", 10)?,
            auth_burst: non_zero(env, "AUTH_RATE_LIMIT_BURST", 5)?,
        };
        let max_body_bytes = env.int_in("HTTP_MAX_BODY_BYTES", 128 * 1024, 1024..=16 * 1024 * 1024)?;
        if max_body_bytes < graphql.max_query_bytes {
            return Err(ConfigError::new(
                "HTTP_MAX_BODY_BYTES",
                "at least GRAPHQL_MAX_QUERY_BYTES",
                max_body_bytes.to_string(),
            ));
        }
        let documents = DocumentsConfig {
            apq_cache_bytes: env.int_in("APQ_CACHE_BYTES", 8 * 1024 * 1024, 0..=1024 * 1024 * 1024)?,
            mode: env.parse("TRUSTED_DOCUMENTS", TrustedMode::Off, "off, allow-unlisted or enforce")?,
            manifest_path: env.optional("TRUSTED_DOCUMENTS_PATH").map(PathBuf::from),
        };
        if documents.mode != TrustedMode::Off && documents.manifest_path.is_none() {
            return Err(ConfigError::new(
                "TRUSTED_DOCUMENTS_PATH",
                "the manifest's path when TRUSTED_DOCUMENTS is not off",
                "",
            ));
        }
        Ok(Self {
            listen_addr: env.socket_addr("LISTEN_ADDR", "0.0.0.0:8080")?,
            admin_listen_addr: env.socket_addr("ADMIN_LISTEN_ADDR", "0.0.0.0:9080")?,
            connections: ConnectionLimits::from_env(env)?,
            downstream,
            events,
            audience: TokenAudience::from_env(env)?,
            graphql,
            rate_limits,
            sockets,
            response_cache: ResponseCacheConfig {
                ttl: Duration::from_millis(env.int_in("RESPONSE_CACHE_TTL_MS", 1000u64, 0..=60_000)?),
                max_bytes: env.int_in("RESPONSE_CACHE_MAX_BYTES", 16 * 1024 * 1024, 0..=(1u64 << 32))?,
            },
            max_body_bytes,
            request_timeout: positive(env, "HTTP_REQUEST_TIMEOUT_SECONDS", Duration::from_secs(30))?,
            playground_enabled: env.bool("PLAYGROUND_ENABLED", true)?,
            documents,
        })
    }
}

fn trimmed(url: String) -> String {
    url.trim_end_matches('/').to_owned()
}

fn positive(env: &Env<'_>, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.seconds(name, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(name, "a positive number of seconds", "0"));
    }
    Ok(value)
}

fn non_zero(env: &Env<'_>, name: &str, default: u32) -> Result<NonZeroU32, ConfigError> {
    let value = env.int_in(name, default, 1..=1_000_000)?;
    NonZeroU32::new(value).ok_or_else(|| ConfigError::new(name, "a positive integer", value.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(pairs: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let source: HashMap<&'static str, String> =
            pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        Config::from_env(&Env::new(&source))
    }

    #[test]
    fn defaults_match_the_local_stack() {
        let config = config(&[]).unwrap();
        assert_eq!(config.listen_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(config.admin_listen_addr.to_string(), "0.0.0.0:9080");
        assert_eq!(config.downstream.identity_url, "http://127.0.0.1:8081");
        assert_eq!(config.downstream.ordering_url, "http://127.0.0.1:8082");
        assert_eq!(config.downstream.catalog_url, "http://127.0.0.1:50051");
        assert_eq!(config.events.exchange, "ticketflow.events");
        assert_eq!(config.graphql.max_depth, 10);
        assert_eq!(config.graphql.max_complexity, 500);
        assert!(config.graphql.introspection && config.playground_enabled);
        assert_eq!(config.graphql.max_subscriptions_per_connection, 20);
        assert_eq!((config.graphql.max_selections, config.graphql.max_root_fields), (1000, 20));
        assert_eq!((config.sockets.max_per_ip, config.sockets.max_per_user), (20, 10));
        assert_eq!(config.sockets.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.documents.mode, TrustedMode::Off);
        assert_eq!(config.documents.apq_cache_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn trusted_documents_need_a_manifest() {
        let enforced =
            config(&[("TRUSTED_DOCUMENTS", "enforce"), ("TRUSTED_DOCUMENTS_PATH", "/etc/docs.json")])
                .unwrap();
        assert_eq!(enforced.documents.mode, TrustedMode::Enforce);
        assert_eq!(config(&[("TRUSTED_DOCUMENTS", "enforce")]).unwrap_err().name, "TRUSTED_DOCUMENTS_PATH");
        assert_eq!(config(&[("TRUSTED_DOCUMENTS", "strict")]).unwrap_err().name, "TRUSTED_DOCUMENTS");
    }

    #[test]
    fn limits_and_switches_are_configurable() {
        let config = config(&[
            ("GRAPHQL_MAX_DEPTH", "5"),
            ("GRAPHQL_MAX_BATCH", "0"),
            ("INTROSPECTION_ENABLED", "false"),
            ("PLAYGROUND_ENABLED", "off"),
            ("ORDERING_URL", "http://ordering:8082/"),
        ])
        .unwrap();
        assert_eq!(config.graphql.max_depth, 5);
        assert_eq!(config.graphql.max_batch, 0);
        assert!(!config.graphql.introspection && !config.playground_enabled);
        assert_eq!(config.downstream.ordering_url, "http://ordering:8082", "trailing slash dropped");
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(config(&[("CATALOG_GRPC_URL", "catalog:50051")]).unwrap_err().name, "CATALOG_GRPC_URL");
        assert_eq!(
            config(&[("DOWNSTREAM_TIMEOUT_SECONDS", "0")]).unwrap_err().name,
            "DOWNSTREAM_TIMEOUT_SECONDS"
        );
        assert_eq!(config(&[("RATE_LIMIT_PER_SECOND", "0")]).unwrap_err().name, "RATE_LIMIT_PER_SECOND");
        assert_eq!(config(&[("WS_MAX_SUBSCRIPTIONS", "0")]).unwrap_err().name, "WS_MAX_SUBSCRIPTIONS");
        assert_eq!(config(&[("GRAPHQL_MAX_ROOT_FIELDS", "0")]).unwrap_err().name, "GRAPHQL_MAX_ROOT_FIELDS");
        assert_eq!(config(&[("WS_IDLE_TIMEOUT_SECONDS", "0")]).unwrap_err().name, "WS_IDLE_TIMEOUT_SECONDS");
        let err =
            config(&[("HTTP_MAX_BODY_BYTES", "2048"), ("GRAPHQL_MAX_QUERY_BYTES", "4096")]).unwrap_err();
        assert_eq!(err.name, "HTTP_MAX_BODY_BYTES");
    }
}
