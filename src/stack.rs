//! Runs TicketFlow's services side by side in this process, like a development app host.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::select_all;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long services get to drain after Ctrl-C before the launcher gives up on them.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

struct Running {
    name: &'static str,
    /// Where its per-check `/health` is, so a start-up failure says which dependency is down.
    admin_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The services started so far, all stopped by one token.
pub struct Stack {
    services: Vec<Running>,
    shutdown: CancellationToken,
}

impl Stack {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self { services: Vec::new(), shutdown }
    }

    /// The token every service runs until.
    pub fn shutdown(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn add<F>(&mut self, name: &'static str, admin_addr: SocketAddr, run: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        tracing::info!(service = name, %admin_addr, "service started");
        self.services.push(Running { name, admin_addr, task: tokio::spawn(run) });
    }

    /// Polls every service's `/health` on its admin port until all answer 200.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = tokio::time::Instant::now() + within;
        for service in &self.services {
            let url = format!("http://{}/health", local(service.admin_addr));
            loop {
                let answer = client.get(&url).send().await;
                match answer {
                    Ok(response) if response.status().is_success() => break,
                    _ if tokio::time::Instant::now() >= deadline => {
                        let detail = match answer {
                            Ok(response) => response.text().await.unwrap_or_default(),
                            Err(error) => error.to_string(),
                        };
                        anyhow::bail!("{} is not healthy after {within:?}: {detail}", service.name);
                    }
                    _ if service.task.is_finished() => {
                        anyhow::bail!("{} stopped during start-up", service.name)
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(())
    }

    /// Waits for Ctrl-C/SIGTERM (or a service failing), then stops everything and waits for it.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { services, shutdown } = self;
        if services.is_empty() {
            shutdown.cancelled().await;
            return Ok(());
        }
        let (mut names, mut tasks): (Vec<&'static str>, Vec<_>) =
            services.into_iter().map(|s| (s.name, s.task)).unzip();

        let first_exit = select_all(tasks.iter_mut());
        // Biased, and the exit re-checked: a service finishing *because* of the shutdown signal is
        // not a failure, even when its exit is seen in the same poll as the signal.
        let exited = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            (joined, index, _) = first_exit => (!shutdown.is_cancelled()).then_some((index, joined)),
        };
        let mut failure = None;
        if let Some((index, joined)) = exited {
            // A service returning before shutdown was asked for is a failure even if it says Ok.
            let name = names.remove(index);
            tasks.remove(index);
            failure = Some(match flatten(joined) {
                Ok(()) => anyhow::anyhow!("{name} stopped unexpectedly"),
                Err(error) => error.context(format!("{name} failed")),
            });
            shutdown.cancel();
        }

        let drained = tokio::time::timeout(DRAIN_DEADLINE, futures::future::join_all(tasks)).await;
        match drained {
            Err(_) => anyhow::bail!("services did not stop within {DRAIN_DEADLINE:?}"),
            Ok(results) => {
                for (name, result) in names.iter().zip(results) {
                    if let Err(error) = flatten(result) {
                        tracing::error!(
                            service = name,
                            error = format!("{error:#}"),
                            "service stopped with an error"
                        );
                        failure.get_or_insert(error);
                    }
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.map_err(anyhow::Error::from).and_then(|result| result)
}

/// A wildcard listen address (0.0.0.0) reached through loopback.
pub fn local(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr }
}
