//! `cargo run --release`: checks Postgres, Redis and RabbitMQ, prepares the databases and runs every
//! TicketFlow service in this one process until Ctrl-C. `cargo run --release -- trace ORDER_ID` tells
//! one order's story from the services' databases instead.

mod infra;
mod service_env;
mod stack;
mod trace;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use platform::config::{Env, ProcessEnv, or_exit};
use platform::telemetry::{self, TelemetryConfig};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::infra::Infrastructure;
use crate::service_env::ServiceEnv;
use crate::stack::{Stack, local};

/// TicketFlow: every service in one process (the default), or an operator command. Configuration
/// comes from the environment, each service reading `<SERVICE>_<NAME>` first.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service until Ctrl-C (the default).
    Run,
    /// Print one order's states, outbox events, notifications and seat hold in time order, read
    /// from ordering's, notifications' and catalog's databases, and the trace ids to search the
    /// logs for.
    Trace { order_id: uuid::Uuid },
}

#[tokio::main]
async fn main() -> ExitCode {
    platform::install_crypto_provider();
    let cli = Cli::parse();
    if let Some(Command::Trace { order_id }) = cli.command {
        return trace_order(order_id).await;
    }
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
    let urls = match start_services(&mut stack).await {
        Ok(urls) => urls,
        Err(error) => {
            eprintln!("error: {error:#}");
            shutdown.cancel();
            let _ = stack.run_until_stopped().await;
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = stack.wait_healthy(Duration::from_secs(60)).await {
        eprintln!("error: {error:#}");
        shutdown.cancel();
        let _ = stack.run_until_stopped().await;
        return ExitCode::FAILURE;
    }
    println!("\nTicketFlow: all services healthy.\n{urls}\nPress Ctrl-C to stop.\n");

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

/// No log subscriber: stdout carries only the story; errors are one line on stderr.
async fn trace_order(order_id: uuid::Uuid) -> ExitCode {
    let databases = or_exit(trace::Databases::from_env());
    match trace::trace(&databases, order_id).await {
        Ok(Some(story)) => {
            println!("{story}");
            ExitCode::SUCCESS
        }
        Ok(None) => {
            eprintln!("error: ordering has no order {order_id}");
            ExitCode::FAILURE
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

/// Where a user reaches the running stack, printed once everything is healthy.
struct Urls {
    playground: String,
    gateway_admin: SocketAddr,
    identity: SocketAddr,
    identity_admin: SocketAddr,
    ordering: SocketAddr,
    ordering_admin: SocketAddr,
    catalog_grpc: SocketAddr,
    catalog_admin: SocketAddr,
    notifications_admin: SocketAddr,
}

impl std::fmt::Display for Urls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  GraphQL playground   {}", self.playground)?;
        writeln!(f, "  identity (REST)      http://{}", self.identity)?;
        writeln!(f, "  ordering (REST)      http://{}", self.ordering)?;
        writeln!(f, "  catalog (gRPC)       http://{}", self.catalog_grpc)?;
        writeln!(f, "  notifications        (notifications are logged by this process)")?;
        writeln!(f, "  admin ports (/metrics, detailed /health):")?;
        writeln!(f, "    gateway            http://{}/metrics", self.gateway_admin)?;
        writeln!(f, "    identity           http://{}/metrics", self.identity_admin)?;
        writeln!(f, "    ordering           http://{}/metrics", self.ordering_admin)?;
        writeln!(f, "    catalog            http://{}/metrics", self.catalog_admin)?;
        write!(f, "    notifications      http://{}/metrics", self.notifications_admin)
    }
}

/// Builds one service from its environment and adds it to the stack, returning what `$info`
/// computes from the built app. A macro because the services share a shape (`Config::from_env`,
/// `App::build`, `admin_addr`, `run`) but no trait.
macro_rules! launch {
    ($stack:expr, $service:ident, $env:expr, |$app:ident| $info:expr) => {{
        let config = $service::Config::from_env(&Env::new(&$env))?;
        let $app = $service::App::build(config).await.context(concat!("starting ", stringify!($service)))?;
        let info = $info;
        $stack.add(stringify!($service), $app.admin_addr(), $app.run($stack.shutdown()));
        info
    }};
}

/// Starts each service in dependency order: identity first (the others fetch its JWKS), catalog
/// before ordering, the gateway last.
async fn start_services(stack: &mut Stack) -> anyhow::Result<Urls> {
    // Ordering's client credentials for catalog's seat calls, made up for this run: identity gets
    // the secret's hash, ordering the secret. Set IDENTITY_SERVICE_CLIENTS and
    // ORDERING_SERVICE_CLIENT_SECRET to choose them yourself.
    let (service_secret, service_client) =
        identity::service_tokens::generate_client("ordering", platform::auth::SCOPE_SEATS_WRITE)?;
    // Logins reach identity through the gateway on loopback; trusting its X-Forwarded-For keeps
    // login throttling per real client instead of one shared address.
    // The launcher is local development: identity's well-known development key-encryption key, unless
    // IDENTITY_KEY_ENCRYPTION_KEYS names a real one.
    let env = ServiceEnv::new("IDENTITY", ProcessEnv)
        .default("TRUSTED_PROXY_ADDRS", "127.0.0.1")
        .default("KEY_ENCRYPTION_KEYS", identity::key_encryption::DEVELOPMENT_KEY_ENCRYPTION_KEYS)
        .default("SERVICE_CLIENTS", &service_client);
    let (identity, identity_admin) =
        launch!(stack, identity, env, |app| (local(app.http_addr()), local(app.admin_addr())));

    let env = ServiceEnv::new("CATALOG", ProcessEnv).default("SEED_CATALOG", "true");
    let (catalog_grpc, catalog_admin) =
        launch!(stack, catalog, env, |app| (local(app.grpc_addr()), local(app.admin_addr())));

    // A development stack: the test payment provider (tok_visa pays), chosen here explicitly since
    // ordering has no default for it. ORDERING_PAYMENT_PROVIDER=payment-intents and its
    // PAYMENT_* settings use a real processor instead.
    let env = ServiceEnv::new("ORDERING", ProcessEnv)
        .default("SERVICE_CLIENT_SECRET", &service_secret)
        .default("PAYMENT_PROVIDER", "test");
    let (ordering, ordering_admin) =
        launch!(stack, ordering, env, |app| (local(app.http_addr()), local(app.admin_addr())));

    let env = ServiceEnv::new("NOTIFICATIONS", ProcessEnv);
    let notifications_admin = launch!(stack, notifications, env, |app| local(app.admin_addr()));

    let env = ServiceEnv::new("GATEWAY", ProcessEnv);
    let (playground, gateway_admin) =
        launch!(stack, gateway, env, |app| (app.playground_url(), local(app.admin_addr())));

    Ok(Urls {
        playground,
        gateway_admin,
        identity,
        identity_admin,
        ordering,
        ordering_admin,
        catalog_grpc,
        catalog_admin,
        notifications_admin,
    })
}
