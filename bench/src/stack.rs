//! The stack under test: the release launcher as a child process, with its own databases (dropped and
//! created anew each run), ports, Redis prefix and broker names, so it never meets a developer's
//! running stack, and with every per-client limit lifted (the load comes from one address).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Connection;
use tokio::process::{Child, Command};

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
const SERVICES: [&str; 4] = ["identity", "catalog", "ordering", "notifications"];

pub struct Stack {
    child: Child,
    pub gateway: String,
    log: PathBuf,
}

pub fn database_url(service: &str) -> String {
    format!("{POSTGRES}/ticketflow_bench_{service}")
}

impl Stack {
    pub async fn start() -> anyhow::Result<Self> {
        let launcher = build_launcher().await?;
        let mut admin = sqlx::PgConnection::connect(&format!("{POSTGRES}/postgres")).await?;
        for service in SERVICES {
            let name = format!("ticketflow_bench_{service}");
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
        }
        let log = std::env::temp_dir().join("ticketflow-bench-stack.log");
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(&launcher);
        command.envs(environment()).stdout(log_file.try_clone()?).stderr(log_file).kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {}", launcher.display()))?;
        let stack = Stack { child, gateway: "http://127.0.0.1:18080".to_owned(), log };
        stack.wait_healthy(Duration::from_secs(120)).await?;
        eprintln!("stack up (log: {})", stack.log.display());
        Ok(stack)
    }

    async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let admin_ports = [19080, 19081, 19082, 18083, 18084];
        'ports: for port in admin_ports {
            loop {
                let url = format!("http://127.0.0.1:{port}/health");
                if let Ok(response) = http.get(&url).send().await
                    && response.status().is_success()
                {
                    continue 'ports;
                }
                if started.elapsed() > within {
                    bail!("the stack is not healthy after {within:?}: see {}", self.log.display());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Builds the launcher in release mode beside this binary (`cargo run -p bench` builds only the
/// bench itself).
async fn build_launcher() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo).args(["build", "--release", "--bin", "ticketflow"]).status().await?;
    if !status.success() {
        bail!("building the launcher failed");
    }
    let launcher = std::env::current_exe()?.with_file_name("ticketflow");
    if !launcher.exists() {
        bail!("no launcher at {}", launcher.display());
    }
    Ok(launcher)
}

/// What the launcher runs with: bench-only names and ports, and the per-client limits lifted, so
/// the load generator (one address) measures the services, not the rate limiter.
fn environment() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("LOG_FORMAT", "json"),
        ("RUST_LOG", "warn"),
        ("REDIS_KEY_PREFIX", "ticketflow:bench:"),
        ("EVENTS_EXCHANGE", "ticketflow.bench.events"),
        ("NOTIFICATIONS_QUEUE", "ticketflow.bench.notifications"),
        ("IDENTITY_URL", "http://127.0.0.1:18081"),
        ("ORDERING_URL", "http://127.0.0.1:18082"),
        ("CATALOG_GRPC_URL", "http://127.0.0.1:15051"),
        ("GATEWAY_LISTEN_ADDR", "127.0.0.1:18080"),
        ("GATEWAY_ADMIN_LISTEN_ADDR", "127.0.0.1:19080"),
        ("IDENTITY_LISTEN_ADDR", "127.0.0.1:18081"),
        ("IDENTITY_ADMIN_LISTEN_ADDR", "127.0.0.1:19081"),
        ("ORDERING_LISTEN_ADDR", "127.0.0.1:18082"),
        ("ORDERING_ADMIN_LISTEN_ADDR", "127.0.0.1:19082"),
        ("CATALOG_GRPC_LISTEN_ADDR", "127.0.0.1:15051"),
        ("CATALOG_ADMIN_LISTEN_ADDR", "127.0.0.1:18083"),
        ("NOTIFICATIONS_ADMIN_LISTEN_ADDR", "127.0.0.1:18084"),
        ("RATE_LIMIT_PER_SECOND", "1000000"),
        ("RATE_LIMIT_BURST", "1000000"),
        ("AUTH_RATE_LIMIT_PER_MINUTE", "1000000"),
        ("AUTH_RATE_LIMIT_BURST", "1000000"),
        ("HTTP_MAX_CONNECTIONS_PER_IP", "100000"),
        ("MAX_PENDING_SEATS_PER_BUYER", "1000"),
        ("MAX_PENDING_ORDERS_PER_BUYER", "1000"),
        ("PAYMENT_PROVIDER", "test"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    for service in SERVICES {
        env.push((format!("{}_DATABASE_URL", service.to_uppercase()), database_url(service)));
    }
    env
}
