//! Test harness: runs TicketFlow services in-process on free ports, or as their real binaries
//! ([`BinaryStack`]), each test with its own databases, Redis key prefix and RabbitMQ exchange/queue
//! names, so tests run in parallel without colliding.
//!
//! Infrastructure comes from the same variables the services read (`TEST_POSTGRES_URL`,
//! `TEST_REDIS_URL`, `TEST_AMQP_URL`), defaulting to the local servers.

use std::sync::Once;

pub mod binaries;
pub mod broker;
pub mod db;
pub mod graphql;
pub mod inflight;
pub mod names;
pub mod process;
pub mod proxy;
pub mod service;
pub mod stack;

pub use broker::BrokerLeftovers;
pub use db::TestDatabase;
pub use graphql::{GraphqlClient, Purchase};
pub use inflight::HalfSentRequest;
pub use names::TestNames;
pub use process::ServiceProcess;
pub use proxy::TcpProxy;
pub use service::RunningService;
pub use stack::BinaryStack;

/// Postgres server the tests create their databases on (any database name in it is replaced).
pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Logs for tests (`TEST_LOG=debug cargo test ...`), crypto provider for TLS clients. Idempotent.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        platform::install_crypto_provider();
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
    });
}
