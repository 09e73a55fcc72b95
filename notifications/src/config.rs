//! The worker's settings, read once at start-up from the environment (or a map, in tests).

use std::net::SocketAddr;
use std::time::Duration;

use lettre::message::Mailbox;
use platform::config::{ConfigError, Env};
use platform::db::DatabaseConfig;
use platform::http::ConnectionLimits;

/// Everything the worker needs to run; see [`Config::from_env`] for the variables and defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub amqp_url: String,
    /// The topic exchange order events arrive on (declared by the worker too, so it may start first).
    pub exchange: String,
    /// The worker's durable queue; its dead-letter queue is `<queue>.dlq`, its retry queues
    /// `<queue>.retry.<n>`.
    pub queue: String,
    /// Unacknowledged deliveries the broker may hand over at once. Processing concurrency is this,
    /// capped by what the database pool can serve ([`Config::concurrency`]); the rest wait in the
    /// consumer's buffer, where no timeout runs.
    pub prefetch: u16,
    /// Deliveries of one event before a transient failure sends it to the dead-letter queue.
    pub max_attempts: u32,
    /// Back-off before the n-th retry; retries past the end of the list wait the last delay.
    pub retry_delays: Vec<Duration>,
    pub database: DatabaseConfig,
    /// The admin port: `/health` (per check), `/alive`, `/metrics`.
    pub admin_listen_addr: SocketAddr,
    /// Whether the deprecated `LISTEN_ADDR` gave [`Config::admin_listen_addr`].
    pub admin_listen_addr_from_old_name: bool,
    /// Connection limits of the admin port.
    pub connections: ConnectionLimits,
    /// Mail through SMTP when set; otherwise every notification is written to the log.
    pub smtp: Option<SmtpConfig>,
    /// Bounds one send, whatever the sender: a hung mail server costs a retry, not a stuck
    /// delivery holding a database connection. Keep it below `shutdown_timeout`, so a send started
    /// just before shutdown still finishes and is acked.
    pub send_timeout: Duration,
    /// How long shutdown waits for in-flight deliveries before leaving them to the broker.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `smtp://[user:pass@]host[:port][?tls=required|opportunistic]` or `smtps://...` (lettre's format).
    pub url: String,
    pub from: Mailbox,
}

pub const DEFAULT_QUEUE: &str = "notifications.orders";
const DEFAULT_RETRY_DELAYS: &str = "1,5,30";

impl Config {
    /// `AMQP_URL`, `EVENTS_EXCHANGE`, `NOTIFICATIONS_QUEUE`, `PREFETCH` (32), `MAX_ATTEMPTS` (6),
    /// `RETRY_DELAYS` (comma-separated seconds, `1,5,30`), `DATABASE_URL` (+ the pool settings of
    /// [`DatabaseConfig`]; `DATABASE_MAX_CONNECTIONS` at least 2), `ADMIN_LISTEN_ADDR` (`0.0.0.0:8084`;
    /// the deprecated `LISTEN_ADDR` is read when it is unset), `HTTP_HEADER_READ_TIMEOUT_SECONDS` (5),
    /// `HTTP_MAX_CONNECTIONS` (10000), `HTTP_MAX_CONNECTIONS_PER_IP` (256),
    /// `SMTP_URL` (unset: log sender), `SMTP_FROM`, `SEND_TIMEOUT_SECS` (15),
    /// `SHUTDOWN_TIMEOUT_SECS` (20).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let smtp = match env.optional("SMTP_URL") {
            None => None,
            Some(url) => Some(SmtpConfig { url: smtp_url(&url)?, from: smtp_from(env)? }),
        };
        let database = DatabaseConfig::from_env(env, "ticketflow_notifications")?;
        // Each delivery holds one connection while it sends and `/health` needs one more: with a
        // single connection the two would starve each other.
        if database.max_connections < 2 {
            return Err(ConfigError::new(
                "DATABASE_MAX_CONNECTIONS",
                "at least 2 (one per concurrent delivery, plus one for /health)",
                database.max_connections.to_string(),
            ));
        }
        let send_timeout = env.seconds("SEND_TIMEOUT_SECS", Duration::from_secs(15))?;
        if send_timeout.is_zero() {
            return Err(ConfigError::new("SEND_TIMEOUT_SECS", "a positive number of seconds", "0"));
        }
        let (admin_listen_addr, admin_listen_addr_from_old_name) =
            env.renamed_socket_addr("ADMIN_LISTEN_ADDR", "LISTEN_ADDR", "0.0.0.0:8084")?;
        Ok(Self {
            amqp_url: env.url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f", &["amqp", "amqps"])?,
            exchange: amqp_name(env, "EVENTS_EXCHANGE", platform::events::DEFAULT_EXCHANGE)?,
            queue: amqp_name(env, "NOTIFICATIONS_QUEUE", DEFAULT_QUEUE)?,
            prefetch: env.int_in("PREFETCH", 32, 1..=1000)?,
            max_attempts: env.int_in("MAX_ATTEMPTS", 6, 1..=100)?,
            retry_delays: retry_delays(env)?,
            database,
            admin_listen_addr,
            admin_listen_addr_from_old_name,
            connections: ConnectionLimits::from_env(env)?,
            smtp,
            send_timeout,
            shutdown_timeout: env.seconds("SHUTDOWN_TIMEOUT_SECS", Duration::from_secs(20))?,
        })
    }
}

impl Config {
    /// How many deliveries are processed at once: the prefetch, capped at one less than the pool
    /// size. Every delivery holds a connection for its whole record-and-send transaction, so more
    /// would queue on the pool, time out after `DATABASE_ACQUIRE_TIMEOUT_SECS` and be retried (and
    /// eventually dead-lettered) although nothing was wrong; the spare connection keeps `/health`
    /// answering under load.
    pub fn concurrency(&self) -> usize {
        let pool_can_serve = usize::try_from(self.database.max_connections).unwrap_or(usize::MAX);
        usize::from(self.prefetch).min(pool_can_serve.saturating_sub(1)).max(1)
    }
}

/// A queue or exchange name: AMQP short strings are at most 255 bytes, and the retry queue names
/// add a suffix, so leave room for it.
fn amqp_name(env: &Env<'_>, name: &str, default: &str) -> Result<String, ConfigError> {
    let value = env.string(name, default);
    let ok = value.len() <= 200 && value.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(value)
    } else {
        Err(ConfigError::new(name, "a printable ASCII name of at most 200 bytes", value))
    }
}

fn retry_delays(env: &Env<'_>) -> Result<Vec<Duration>, ConfigError> {
    let raw = env.string("RETRY_DELAYS", DEFAULT_RETRY_DELAYS);
    let error = || ConfigError::new("RETRY_DELAYS", "comma-separated positive seconds such as 1,5,30", &raw);
    raw.split(',')
        .map(|part| {
            let seconds: f64 = part.trim().parse().map_err(|_| error())?;
            // The TTL is set in whole milliseconds; below one the message would never wait.
            if (0.001..=86_400.0).contains(&seconds) {
                Ok(Duration::from_secs_f64(seconds))
            } else {
                Err(error())
            }
        })
        .collect()
}

fn smtp_url(url: &str) -> Result<String, ConfigError> {
    // Parsing builds the transport without connecting, so a typo stops start-up, not the first mail.
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url).map(|_| url.to_owned()).map_err(
        |error| ConfigError::new("SMTP_URL", format!("an smtp:// or smtps:// URL ({error})"), "<redacted>"),
    )
}

fn smtp_from(env: &Env<'_>) -> Result<Mailbox, ConfigError> {
    let raw = env.string("SMTP_FROM", "TicketFlow <no-reply@ticketflow.local>");
    raw.parse().map_err(|_| {
        ConfigError::new("SMTP_FROM", "a mailbox such as TicketFlow <no-reply@example.com>", raw)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(pairs: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let source: HashMap<&'static str, String> =
            pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        Config::from_env(&Env::new(&source))
    }

    #[test]
    fn defaults_match_the_architecture() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.exchange, "ticketflow.events");
        assert_eq!(config.queue, "notifications.orders");
        assert_eq!(config.prefetch, 32);
        assert_eq!(config.admin_listen_addr.port(), 8084);
        assert_eq!(
            config.retry_delays,
            [Duration::from_secs(1), Duration::from_secs(5), Duration::from_secs(30)]
        );
        assert!(config.smtp.is_none());
        assert!(config.database.url.ends_with("/ticketflow_notifications"));
    }

    #[test]
    fn retry_delays_accept_fractions_and_reject_garbage() {
        let config = parse(&[("RETRY_DELAYS", "0.2, 0.5")]).unwrap();
        assert_eq!(config.retry_delays, [Duration::from_millis(200), Duration::from_millis(500)]);
        for bad in [",", "1,,2", "0", "-1", "soon"] {
            let error = parse(&[("RETRY_DELAYS", bad)]).unwrap_err();
            assert_eq!(error.name, "RETRY_DELAYS", "{bad}");
        }
    }

    #[test]
    fn smtp_settings_are_checked_at_start_up_without_echoing_the_url() {
        let config = parse(&[("SMTP_URL", "smtp://user:secret@mail.example.com:2525")]).unwrap();
        assert_eq!(config.smtp.unwrap().from.email.to_string(), "no-reply@ticketflow.local");

        let error = parse(&[("SMTP_URL", "http://user:secret@mail.example.com")]).unwrap_err();
        assert_eq!(error.name, "SMTP_URL");
        assert!(!error.to_string().contains("secret"), "{error}");

        let error =
            parse(&[("SMTP_URL", "smtp://mail.example.com"), ("SMTP_FROM", "not a mailbox")]).unwrap_err();
        assert_eq!(error.name, "SMTP_FROM");
    }

    #[test]
    fn concurrency_never_exceeds_what_the_pool_can_serve() {
        let config = parse(&[]).unwrap();
        assert_eq!((config.prefetch, config.database.max_connections), (32, 10));
        assert_eq!(config.concurrency(), 9, "one connection stays free for /health");
        assert_eq!(config.send_timeout, Duration::from_secs(15));

        let config = parse(&[("PREFETCH", "4"), ("DATABASE_MAX_CONNECTIONS", "20")]).unwrap();
        assert_eq!(config.concurrency(), 4, "the prefetch bounds it when the pool is larger");
        let config = parse(&[("PREFETCH", "16"), ("DATABASE_MAX_CONNECTIONS", "2")]).unwrap();
        assert_eq!(config.concurrency(), 1);

        let error = parse(&[("DATABASE_MAX_CONNECTIONS", "1")]).unwrap_err();
        assert_eq!(error.name, "DATABASE_MAX_CONNECTIONS");
        assert!(error.to_string().contains("at least 2"), "{error}");
        assert_eq!(parse(&[("SEND_TIMEOUT_SECS", "0")]).unwrap_err().name, "SEND_TIMEOUT_SECS");
        assert_eq!(parse(&[("SEND_TIMEOUT_SECS", "0.5")]).unwrap().send_timeout, Duration::from_millis(500));
    }

    #[test]
    fn names_and_numbers_are_validated() {
        assert_eq!(parse(&[("PREFETCH", "0")]).unwrap_err().name, "PREFETCH");
        assert_eq!(parse(&[("MAX_ATTEMPTS", "many")]).unwrap_err().name, "MAX_ATTEMPTS");
        assert_eq!(parse(&[("NOTIFICATIONS_QUEUE", "has space")]).unwrap_err().name, "NOTIFICATIONS_QUEUE");
        assert_eq!(parse(&[("AMQP_URL", "http://x")]).unwrap_err().name, "AMQP_URL");
    }
}
