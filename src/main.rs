//! `cargo run --release`: checks Postgres, Redis and RabbitMQ, prepares the databases and runs every
//! TicketFlow service in this one process until Ctrl-C.

mod infra;
mod service_env;
mod stack;

use std::process::ExitCode;
use std::time::Duration;

use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

use anyhow::Context;

use crate::infra::Infrastructure;
use crate::service_env::ServiceEnv;
use crate::stack::Stack;

#[tokio::main]
async fn main() -> ExitCode {
    platform::install_crypto_provider();
    let env = Env::new(&ProcessEnv);
    let _telemetry = or_exit(TelemetryConfig::from_env(&env, "ticketflow").and_then(|config| {
        telemetry::init(&config)
            .map_err(|e| platform::config::ConfigError::new("RUST_LOG", "usable", e.to_string()))
    }));

    let infrastructure = or_exit(infrastructure(&env));
    let down = infrastructure.check().await;
    if !down.is_empty() {
        for unreachable in &down {
            eprintln!("error: {unreachable}");
        }
        return ExitCode::FAILURE;
    }

    let shutdown = platform::shutdown::cancel_on_signal();
    let mut stack = Stack::new(shutdown.clone());
    if let Err(error) = start_services(&mut stack).await {
        eprintln!("error: {error:#}");
        shutdown.cancel();
        let _ = stack.run_until_stopped().await;
        return ExitCode::FAILURE;
    }
    if let Err(error) = stack.wait_healthy(Duration::from_secs(60)).await {
        eprintln!("error: {error:#}");
        shutdown.cancel();
        let _ = stack.run_until_stopped().await;
        return ExitCode::FAILURE;
    }
    println!("TicketFlow: all services healthy. Press Ctrl-C to stop.");

    match stack.run_until_stopped().await {
        Ok(()) => {
            println!("TicketFlow stopped.");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn infrastructure(env: &Env<'_>) -> Result<Infrastructure, platform::config::ConfigError> {
    Ok(Infrastructure {
        postgres_url: env.url(
            "POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
            &["postgres", "postgresql"],
        )?,
        redis_url: env.url("REDIS_URL", "redis://127.0.0.1:6379", &["redis", "rediss"])?,
        amqp_url: env.url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f", &["amqp", "amqps"])?,
    })
}

/// Starts each service in dependency order: identity first (the others fetch its JWKS), catalog
/// before ordering, the gateway last.
async fn start_services(stack: &mut Stack) -> anyhow::Result<()> {
    // Logins reach identity through the gateway on loopback; trusting its X-Forwarded-For keeps
    // login throttling per real client instead of one shared address.
    let env = ServiceEnv::new("IDENTITY", ProcessEnv).default("TRUSTED_PROXY_ADDRS", "127.0.0.1");
    let identity = identity::App::build(identity::Config::from_env(&Env::new(&env))?)
        .await
        .context("starting identity")?;
    stack.add("identity", identity.http_addr(), identity.run(stack.shutdown()));

    let env = ServiceEnv::new("CATALOG", ProcessEnv).default("SEED_CATALOG", "true");
    let catalog =
        catalog::App::build(catalog::Config::from_env(&Env::new(&env))?).await.context("starting catalog")?;
    stack.add("catalog", catalog.http_addr(), catalog.run(stack.shutdown()));

    let env = ServiceEnv::new("ORDERING", ProcessEnv);
    let ordering = ordering::App::build(ordering::Config::from_env(&Env::new(&env))?)
        .await
        .context("starting ordering")?;
    stack.add("ordering", ordering.http_addr(), ordering.run(stack.shutdown()));

    let env = ServiceEnv::new("NOTIFICATIONS", ProcessEnv);
    let notifications = notifications::App::build(notifications::Config::from_env(&Env::new(&env))?)
        .await
        .context("starting notifications")?;
    stack.add("notifications", notifications.http_addr(), notifications.run(stack.shutdown()));
    Ok(())
}
