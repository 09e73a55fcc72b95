//! The admin port: `/alive`, `/health` (RabbitMQ and Postgres) and `/metrics`.

use std::time::Duration;

use axum::Router;
use platform::health::HealthChecks;
use platform::http::HttpLimits;
use sqlx::PgPool;

use crate::worker::BrokerState;

pub fn router(pool: PgPool, broker: BrokerState) -> Router {
    let checks = HealthChecks::new(Duration::from_secs(2))
        .required("rabbitmq", move || {
            let broker = broker.clone();
            async move { broker.check() }
        })
        .required("postgres", move || {
            let pool = pool.clone();
            async move { platform::db::ping(&pool).await }
        });
    platform::http::with_common_layers(platform::health::admin_router(checks), HttpLimits::default())
}
