//! A TCP proxy a test puts between a service and a dependency, to cut the link for that test alone
//! (the shared Postgres, Redis and RabbitMQ servers stay up for every other test).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards connections from a local port to `upstream` until blocked or dropped.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    /// Cancelled (and replaced) to reset every open connection.
    connections: Arc<std::sync::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (task_blocked, task_connections, task_stop) =
            (blocked.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = task_stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                if task_blocked.load(Ordering::SeqCst) {
                    continue; // dropping `inbound` refuses the connection
                }
                let reset = task_connections.lock().map(|t| t.clone()).unwrap_or_default();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        () = reset.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self { addr, blocked, connections, stop })
    }

    /// Drops every open connection and refuses new ones, as if the dependency went down.
    pub fn cut(&self) {
        self.blocked.store(true, Ordering::SeqCst);
        if let Ok(mut token) = self.connections.lock() {
            token.cancel();
            *token = CancellationToken::new();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.blocked.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(token) = self.connections.lock() {
            token.cancel();
        }
    }
}
