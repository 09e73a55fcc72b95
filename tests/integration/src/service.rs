//! A service running inside the test process, stopped when the handle is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One running service: its addresses, and the token that stops it.
#[derive(Debug)]
pub struct RunningService {
    pub name: &'static str,
    /// The HTTP listener (REST API or admin port with `/health`).
    pub http_addr: SocketAddr,
    pub shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl RunningService {
    /// Spawns `run`, which must return when `shutdown` is cancelled.
    pub fn spawn<F>(name: &'static str, http_addr: SocketAddr, shutdown: CancellationToken, run: F) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self { name, http_addr, shutdown, task: Some(tokio::spawn(run)) }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// Cancels the service and waits for it to drain; fails if it errors or takes over 10 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().ok_or_else(|| anyhow::anyhow!("{} already stopped", self.name))?;
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(joined) => joined?,
            Err(_) => anyhow::bail!("{} did not stop within 10 s", self.name),
        }
    }

    /// Polls `/health` until it answers 200 or `within` passes.
    pub async fn wait_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let response = client.get(format!("{}/health", self.http_url())).send().await;
            match response {
                Ok(r) if r.status().is_success() => return Ok(()),
                _ if tokio::time::Instant::now() >= deadline => {
                    anyhow::bail!("{} not healthy within {within:?}: {response:?}", self.name)
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
