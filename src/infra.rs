//! Checks that the infrastructure the stack needs answers before anything starts.
//!
//! Each check speaks the real protocol (a Postgres login, a Redis PING, an AMQP handshake), so "port
//! open but wrong server" fails here too, with one line saying which dependency and how to start it.

use std::time::Duration;

use platform::config::redact_url as redact;
use sqlx::Connection;

/// Where the launcher finds Postgres, Redis and RabbitMQ.
#[derive(Debug, Clone)]
pub struct Infrastructure {
    /// Any database on the server; the launcher creates the services' own databases.
    pub postgres_url: String,
    pub redis_url: String,
    pub amqp_url: String,
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One dependency that did not answer.
#[derive(Debug, thiserror::Error)]
#[error("{name} is not answering at {url}: {cause}. {hint}")]
pub struct Unreachable {
    pub name: &'static str,
    pub url: String,
    pub cause: String,
    pub hint: &'static str,
}

impl Infrastructure {
    /// Checks all three concurrently; returns every one that failed.
    pub async fn check(&self) -> Vec<Unreachable> {
        let (postgres, redis, rabbitmq) = tokio::join!(
            within(check_postgres(&self.postgres_url)),
            within(check_redis(&self.redis_url)),
            within(check_rabbitmq(&self.amqp_url)),
        );
        let mut down = Vec::new();
        if let Err(cause) = postgres {
            down.push(Unreachable {
                name: "PostgreSQL",
                url: redact(&self.postgres_url),
                cause,
                hint: "Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            });
        }
        if let Err(cause) = redis {
            down.push(Unreachable {
                name: "Redis",
                url: redact(&self.redis_url),
                cause,
                hint: "Start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379",
            });
        }
        if let Err(cause) = rabbitmq {
            down.push(Unreachable {
                name: "RabbitMQ",
                url: redact(&self.amqp_url),
                cause,
                hint: "Start it with: rabbitmq-server -detached",
            });
        }
        down
    }
}

async fn within(check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())))
}

async fn check_postgres(url: &str) -> Result<(), String> {
    let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| e.to_string())?;
    sqlx::query("SELECT 1").execute(&mut conn).await.map_err(|e| e.to_string())?;
    conn.close().await.map_err(|e| e.to_string())
}

async fn check_redis(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut conn = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
    redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| e.to_string())
}

async fn check_rabbitmq(url: &str) -> Result<(), String> {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    conn.close(200, "launcher check done".into()).await.map_err(|e| e.to_string())
}
