//! Notifications worker: consumes order events from RabbitMQ and tells buyers what happened to
//! their orders.
//!
//! Each event is decoded ([`envelope`]), rendered ([`notification`]), recorded once under its event
//! id and sent through a [`Sender`] ([`processing`]), then acked ([`worker`]). Malformed messages go
//! to `<queue>.dlq` at once; transient failures wait in `<queue>.retry.<n>` and come back, until
//! `MAX_ATTEMPTS` sends them to the DLQ too ([`topology`]). `/health` on the admin port reports the
//! broker connection and Postgres.
//!
//! Metrics: `notifications_processed_total{type}`, `notifications_duplicates_total`,
//! `notifications_retried_total`, `notifications_dead_lettered_total{reason}`,
//! `notification_processing_seconds`, `notification_event_age_seconds`, `notifications_queue_messages{queue}`.
//! [`dead_letters`] is the operator side of the DLQ (`notifications dlq list | replay | purge`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod config;
pub mod dead_letters;
pub mod envelope;
mod http;
pub mod notification;
pub mod processing;
pub mod sender;
pub mod topology;
pub mod worker;

pub use config::Config;
pub use sender::{LogSender, SendError, Sender, SmtpSender};
pub use topology::Topology;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/notifications");

pub struct App {
    config: Config,
    listener: TcpListener,
    pool: PgPool,
    sender: Arc<dyn Sender>,
}

impl App {
    /// Binds the admin port and prepares the database; the sender is SMTP when `SMTP_URL` is set,
    /// the log otherwise. The broker is connected by [`App::run`], which keeps retrying, so the
    /// worker starts (and reports unhealthy) while RabbitMQ is down.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let sender: Arc<dyn Sender> = match &config.smtp {
            Some(smtp) => Arc::new(SmtpSender::new(smtp).context("building the SMTP transport")?),
            None => Arc::new(LogSender),
        };
        Self::build_with_sender(config, sender).await
    }

    /// [`App::build`] with a sender of the caller's choice.
    pub async fn build_with_sender(config: Config, sender: Arc<dyn Sender>) -> anyhow::Result<App> {
        if config.admin_listen_addr_from_old_name {
            tracing::warn!("LISTEN_ADDR is deprecated for notifications: set ADMIN_LISTEN_ADDR instead");
        }
        let listener = TcpListener::bind(config.admin_listen_addr)
            .await
            .with_context(|| format!("binding ADMIN_LISTEN_ADDR {}", config.admin_listen_addr))?;
        let pool =
            platform::db::prepare(&config.database, &MIGRATOR).await.context("preparing the database")?;
        // Install the Prometheus recorder now: counts made before the first scrape would be lost.
        platform::health::prometheus();
        worker::describe_metrics();
        Ok(App { config, listener, pool, sender })
    }

    /// The admin port serving `/health`, `/alive` and `/metrics`: the worker's only HTTP port, the
    /// same as [`App::admin_addr`].
    pub fn http_addr(&self) -> SocketAddr {
        self.admin_addr()
    }

    /// The admin port serving `/health`, `/alive` and `/metrics`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.admin_listen_addr)
    }

    pub fn topology(&self) -> Topology {
        topology_of(&self.config)
    }

    /// Consumes until `shutdown` is cancelled, then stops consuming, finishes and acks in-flight
    /// deliveries, closes the broker connection and the pool, and returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let broker = worker::BrokerState::default();
        // The admin port outlives the consumer so `/health` answers while the worker drains.
        let http_stop = CancellationToken::new();
        let server = tokio::spawn(platform::http::serve(
            self.listener,
            http::router(self.pool.clone(), broker.clone()),
            self.config.connections.clone(),
            http_stop.clone(),
        ));
        let worker = Arc::new(worker::Worker {
            amqp_url: self.config.amqp_url.clone(),
            topology: topology_of(&self.config),
            prefetch: self.config.prefetch,
            concurrency: self.config.concurrency(),
            max_attempts: self.config.max_attempts,
            send_timeout: self.config.send_timeout,
            shutdown_timeout: self.config.shutdown_timeout,
            pool: self.pool.clone(),
            sender: self.sender,
            broker,
        });
        worker.run(shutdown).await;
        http_stop.cancel();
        let served = server.await.context("admin server task")?;
        self.pool.close().await;
        served.context("serving the admin port")
    }
}

fn topology_of(config: &Config) -> Topology {
    Topology {
        exchange: config.exchange.clone(),
        queue: config.queue.clone(),
        retry_delays: config.retry_delays.clone(),
    }
}
