//! Postgres: create a service's database if missing, open a bounded pool, run its migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::config::{ConfigError, Env};

/// How a service reaches its database.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    /// How long a request waits for a pooled connection before failing fast.
    pub acquire_timeout: Duration,
}

impl DatabaseConfig {
    /// `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/<default_db>`) and `DATABASE_MAX_CONNECTIONS`.
    pub fn from_env(env: &Env<'_>, default_db: &str) -> Result<Self, ConfigError> {
        let url = env.url(
            "DATABASE_URL",
            &format!("postgres://postgres@127.0.0.1:5432/{default_db}"),
            &["postgres", "postgresql"],
        )?;
        if PgConnectOptions::from_str(&url).is_err() {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "a valid postgres:// URL",
                crate::config::redact_url(&url),
            ));
        }
        Ok(Self {
            url,
            max_connections: env.int_in("DATABASE_MAX_CONNECTIONS", 10, 1..=1000)?,
            acquire_timeout: env.seconds("DATABASE_ACQUIRE_TIMEOUT_SECS", Duration::from_secs(3))?,
        })
    }

    pub fn for_url(url: impl Into<String>) -> Self {
        Self { url: url.into(), max_connections: 10, acquire_timeout: Duration::from_secs(3) }
    }

    pub fn database_name(&self) -> anyhow::Result<String> {
        let options = PgConnectOptions::from_str(&self.url)?;
        options
            .get_database()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("DATABASE_URL names no database"))
    }
}

/// Connects to the server's `postgres` maintenance database, for creating and dropping databases.
async fn maintenance_connection(url: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)?.database("postgres");
    Ok(options.connect().await?)
}

/// Creates the database named in `url` unless it exists. Safe to race: a concurrent creator wins.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let name = DatabaseConfig::for_url(url).database_name()?;
    let mut conn = maintenance_connection(url).await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        let statement = format!("CREATE DATABASE {}", quote_identifier(&name));
        match sqlx::query(&statement).execute(&mut conn).await {
            Ok(_) => tracing::info!(db.name = %name, "created database"),
            // 42P04 duplicate_database, 23505 when two creators race on the catalog's unique index.
            Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    Ok(())
}

/// Drops the database named in `url`, disconnecting anyone still in it. For tests and tooling.
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    let name = DatabaseConfig::for_url(url).database_name()?;
    let mut conn = maintenance_connection(url).await?;
    let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_identifier(&name));
    sqlx::query(&statement).execute(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

/// A pool that does not connect until first used, so a service can start while Postgres is down
/// and report it through `/health` instead of crashing.
pub fn lazy_pool(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&config.url)?;
    Ok(pool_options(config).connect_lazy_with(options))
}

/// What a service does at start-up: create its database if missing, connect, migrate.
///
/// Creating needs the CREATEDB privilege; where the database is provisioned by someone else (managed
/// Postgres) the attempt fails harmlessly and the connection that follows tells whether it exists.
pub async fn prepare(config: &DatabaseConfig, migrator: &Migrator) -> anyhow::Result<PgPool> {
    if let Err(error) = ensure_database(&config.url).await {
        tracing::warn!(error = %format!("{error:#}"), "could not ensure the database exists; trying to use it anyway");
    }
    connect_and_migrate(config, migrator).await
}

/// Connects (failing fast if Postgres is down), then applies `migrator`.
pub async fn connect_and_migrate(config: &DatabaseConfig, migrator: &Migrator) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&config.url)?;
    let pool = pool_options(config).connect_with(options).await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

fn pool_options(config: &DatabaseConfig) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .min_connections(0)
        .acquire_timeout(config.acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
}

/// A `/health` check: one round trip to the database.
pub async fn ping(pool: &PgPool) -> Result<(), String> {
    sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Double-quotes an SQL identifier, doubling any quote inside it.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("ticketflow_test"), "\"ticketflow_test\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_database_name_comes_from_the_url() {
        let config = DatabaseConfig::for_url("postgres://postgres@127.0.0.1:5432/ticketflow_identity");
        assert_eq!(config.database_name().unwrap(), "ticketflow_identity");
    }
}
