//! Identity's typed configuration, read once from the environment at start-up.

use std::net::SocketAddr;
use std::time::Duration;

use platform::auth::TokenAudience;
use platform::config::{ConfigError, Env};
use platform::db::DatabaseConfig;
use platform::http::{ConnectionLimits, HttpLimits};

use crate::key_encryption::KeyEncryptionKeys;
use crate::throttle::TrustedProxies;

#[derive(Debug, Clone)]
pub struct Config {
    /// `LISTEN_ADDR`, default `0.0.0.0:8081`: the API, `/alive` and a status-only `/health`.
    pub listen_addr: SocketAddr,
    /// `ADMIN_LISTEN_ADDR`, default `0.0.0.0:9081`: `/metrics` and the per-check `/health`, for
    /// monitoring only.
    pub admin_listen_addr: SocketAddr,
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (5), `HTTP_MAX_CONNECTIONS` (10000),
    /// `HTTP_MAX_CONNECTIONS_PER_IP` (256). Peers in `TRUSTED_PROXY_ADDRS` are exempt from the
    /// per-address cap: every client arrives through them (see [`crate::App::build`]).
    pub connections: ConnectionLimits,
    /// `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/ticketflow_identity`.
    pub database: DatabaseConfig,
    /// `JWT_ISSUER` / `JWT_AUDIENCE`, shared with every verifying service.
    pub audience: TokenAudience,
    /// `ACCESS_TOKEN_TTL_SECS`, default 900 (15 minutes); at most `JWT_MAX_LIFETIME_SECS`, the longest
    /// lifetime every verifier accepts.
    pub access_token_ttl: Duration,
    /// `REFRESH_TOKEN_TTL_DAYS`, default 14.
    pub refresh_token_ttl: Duration,
    /// `SIGNING_KEYS_RELOAD_SECS`, default 30: how often a replica re-reads the signing keys, so a
    /// rotation made by the CLI (or another replica) reaches it.
    pub signing_keys_reload: Duration,
    /// `KEY_ENCRYPTION_KEYS`, required, no default: `id:base64` 32-byte keys, comma-separated, the
    /// current one first. The signing keys are sealed with it at rest (see `crate::key_encryption`).
    /// The launcher and the tests set [`crate::key_encryption::DEVELOPMENT_KEY_ENCRYPTION_KEYS`].
    pub key_encryption: KeyEncryptionKeys,
    pub throttle: ThrottleConfig,
    /// `MAX_CONCURRENT_PASSWORD_HASHES`, default: the number of CPUs. Each argon2 run holds 19 MiB
    /// and a core for ~20 ms; more in parallel only queues on the CPU and grows memory.
    pub max_concurrent_hashes: usize,
    /// `TRUSTED_PROXY_ADDRS`: comma-separated addresses and CIDR ranges (e.g. the gateway pods'
    /// subnet, `10.0.0.0/8,127.0.0.1`) whose `X-Forwarded-For` names the real client for
    /// per-address login throttling. Empty by default: nobody is trusted and the TCP peer is the client.
    pub trusted_proxies: TrustedProxies,
    pub http: HttpLimits,
}

/// Login throttling (see `crate::throttle`): failures counted per (account, address), per address and
/// per account in a sliding-start window.
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// `LOGIN_FAILURES_BEFORE_DELAY`, default 3: failures of one account from one address before each
    /// further failure delays that pair.
    pub failures_before_delay: i32,
    /// `LOGIN_DELAY_BASE_SECS`, default 1: the first delay; each further failure doubles it.
    pub delay_base: Duration,
    /// `LOGIN_MAX_DELAY_SECS`, default 300: the longest delay of one pair.
    pub max_delay: Duration,
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS`, default 30 (an office behind one NAT shares an address).
    pub max_failures_per_address: i32,
    /// `LOGIN_MAX_FAILURES_PER_ACCOUNT`, default 100: the account-wide ceiling, from all addresses
    /// together; past it only addresses that signed in to the account recently get in.
    pub max_failures_per_account: i32,
    /// `LOGIN_KNOWN_ADDRESS_DAYS`, default 30: how long a successful login keeps its address past the
    /// account-wide ceiling.
    pub known_address_for: Duration,
    /// `LOGIN_FAILURE_WINDOW_SECS`, default 900: failures older than this are forgotten.
    pub window: Duration,
    /// `LOGIN_LOCKOUT_SECS`, default 300: how long an address, or an account from unknown addresses, is
    /// refused once its limit is reached.
    pub lockout: Duration,
}

impl Config {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let default_hashes = std::thread::available_parallelism().map_or(2, usize::from);
        let audience = TokenAudience::from_env(env)?;
        let access_token_ttl = Duration::from_secs(env.int_in("ACCESS_TOKEN_TTL_SECS", 900, 1..=86_400)?);
        // Tokens longer-lived than the verifiers accept would all be refused: fail at start-up instead.
        if access_token_ttl > audience.max_lifetime {
            return Err(ConfigError::new(
                "ACCESS_TOKEN_TTL_SECS",
                format!("at most JWT_MAX_LIFETIME_SECS ({})", audience.max_lifetime.as_secs()),
                access_token_ttl.as_secs().to_string(),
            ));
        }
        Ok(Self {
            listen_addr: env.socket_addr("LISTEN_ADDR", "0.0.0.0:8081")?,
            admin_listen_addr: env.socket_addr("ADMIN_LISTEN_ADDR", "0.0.0.0:9081")?,
            connections: ConnectionLimits::from_env(env)?,
            database: DatabaseConfig::from_env(env, "ticketflow_identity")?,
            audience,
            access_token_ttl,
            refresh_token_ttl: Duration::from_secs(
                env.int_in("REFRESH_TOKEN_TTL_DAYS", 14u64, 1..=365)? * 86_400,
            ),
            signing_keys_reload: positive_seconds(env, "SIGNING_KEYS_RELOAD_SECS", Duration::from_secs(30))?,
            key_encryption: key_encryption_keys(env)?,
            throttle: ThrottleConfig {
                failures_before_delay: env.int_in("LOGIN_FAILURES_BEFORE_DELAY", 3, 0..=1000)?,
                delay_base: positive_seconds(env, "LOGIN_DELAY_BASE_SECS", Duration::from_secs(1))?,
                max_delay: positive_seconds(env, "LOGIN_MAX_DELAY_SECS", Duration::from_secs(300))?,
                max_failures_per_address: env.int_in("LOGIN_MAX_FAILURES_PER_ADDRESS", 30, 1..=100_000)?,
                max_failures_per_account: env.int_in("LOGIN_MAX_FAILURES_PER_ACCOUNT", 100, 1..=1_000_000)?,
                known_address_for: Duration::from_secs(
                    env.int_in("LOGIN_KNOWN_ADDRESS_DAYS", 30u64, 1..=365)? * 86_400,
                ),
                window: positive_seconds(env, "LOGIN_FAILURE_WINDOW_SECS", Duration::from_secs(900))?,
                lockout: positive_seconds(env, "LOGIN_LOCKOUT_SECS", Duration::from_secs(300))?,
            },
            max_concurrent_hashes: env.int_in("MAX_CONCURRENT_PASSWORD_HASHES", default_hashes, 1..=256)?,
            trusted_proxies: trusted_proxies(env)?,
            http: HttpLimits::default(),
        })
    }
}

fn positive_seconds(env: &Env<'_>, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.seconds(name, default)?;
    if value.is_zero() {
        return Err(ConfigError::new(name, "a positive number of seconds", "0"));
    }
    Ok(value)
}

/// Missing means refusing to start: a default would be a key everyone knows, silently in production.
/// The value is a secret, so errors name the problem and never echo it.
fn key_encryption_keys(env: &Env<'_>) -> Result<KeyEncryptionKeys, ConfigError> {
    const NAME: &str = "KEY_ENCRYPTION_KEYS";
    const EXPECTED: &str = "set to id:base64-key[,id:base64-key...], the current key first, each 32 random bytes \
        (e.g. kek-1:$(openssl rand -base64 32)); see docs/operations.md";
    let raw = env.optional(NAME).ok_or_else(|| ConfigError::new(NAME, EXPECTED, "unset"))?;
    KeyEncryptionKeys::parse(&raw)
        .map_err(|error| ConfigError::new(NAME, EXPECTED, format!("a value that is not: {error}")))
}

fn trusted_proxies(env: &Env<'_>) -> Result<TrustedProxies, ConfigError> {
    let raw = env.string("TRUSTED_PROXY_ADDRS", "");
    TrustedProxies::parse(&raw).map_err(|error| {
        ConfigError::new(
            "TRUSTED_PROXY_ADDRS",
            format!("comma-separated IP addresses or CIDR ranges such as 10.0.0.0/8,127.0.0.1 ({error})"),
            &raw,
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The one variable without a default.
    fn required() -> HashMap<&'static str, String> {
        [("KEY_ENCRYPTION_KEYS", crate::key_encryption::DEVELOPMENT_KEY_ENCRYPTION_KEYS.to_owned())].into()
    }

    #[test]
    fn defaults_match_the_contract() {
        let source = required();
        let config = Config::from_env(&Env::new(&source)).unwrap();
        assert_eq!(config.listen_addr.port(), 8081);
        assert_eq!(config.admin_listen_addr.port(), 9081);
        assert!(config.database.url.ends_with("/ticketflow_identity"));
        assert_eq!(config.access_token_ttl, Duration::from_secs(900));
        assert_eq!(config.refresh_token_ttl, Duration::from_secs(14 * 86_400));
        assert!(config.trusted_proxies.is_empty());
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let source: HashMap<&'static str, String> = [
            ("ACCESS_TOKEN_TTL_SECS", "0".to_owned()),
            ("TRUSTED_PROXY_ADDRS", "10.0.0.1, gateway".to_owned()),
        ]
        .into();
        let error = Config::from_env(&Env::new(&source)).unwrap_err();
        assert_eq!(error.name, "ACCESS_TOKEN_TTL_SECS");
        let mut source = required();
        source.insert("TRUSTED_PROXY_ADDRS", "10.0.0.1, gateway".to_owned());
        assert_eq!(Config::from_env(&Env::new(&source)).unwrap_err().name, "TRUSTED_PROXY_ADDRS");
    }

    #[test]
    fn the_key_encryption_keys_are_required_and_never_echoed() {
        let source: HashMap<&'static str, String> = HashMap::new();
        let error = Config::from_env(&Env::new(&source)).unwrap_err();
        assert_eq!(error.name, "KEY_ENCRYPTION_KEYS");
        assert!(error.to_string().contains("openssl rand -base64 32"), "{error}");

        let secret = "kek-1:c2VjcmV0IGJ1dCB0b28gc2hvcnQ=";
        let source: HashMap<&'static str, String> = [("KEY_ENCRYPTION_KEYS", secret.to_owned())].into();
        let error = Config::from_env(&Env::new(&source)).unwrap_err().to_string();
        assert!(error.contains("32 bytes") && !error.contains("c2VjcmV0"), "{error}");
    }

    #[test]
    fn access_tokens_may_not_outlive_what_verifiers_accept() {
        let mut source = required();
        source.insert("ACCESS_TOKEN_TTL_SECS", "1800".to_owned());
        assert_eq!(Config::from_env(&Env::new(&source)).unwrap_err().name, "ACCESS_TOKEN_TTL_SECS");
        source.insert("JWT_MAX_LIFETIME_SECS", "1800".to_owned());
        assert_eq!(Config::from_env(&Env::new(&source)).unwrap().access_token_ttl.as_secs(), 1800);
    }

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let mut source = required();
        source.insert("TRUSTED_PROXY_ADDRS", "10.0.0.0/8,127.0.0.1, ::1".to_owned());
        let config = Config::from_env(&Env::new(&source)).unwrap();
        assert_eq!(config.trusted_proxies, TrustedProxies::parse("10.0.0.0/8, 127.0.0.1, ::1").unwrap());
        assert!(config.trusted_proxies.contains("10.20.30.40".parse().unwrap()));
        assert!(!config.trusted_proxies.contains("127.0.0.2".parse().unwrap()));

        let mut source = required();
        source.insert("TRUSTED_PROXY_ADDRS", "10.0.0.0/40".to_owned());
        let error = Config::from_env(&Env::new(&source)).unwrap_err();
        assert_eq!(error.name, "TRUSTED_PROXY_ADDRS");
        assert!(error.to_string().contains("10.0.0.0/40"), "{error}");
    }
}
