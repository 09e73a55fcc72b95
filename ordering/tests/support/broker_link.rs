//! The TCP link between one test's ordering and RabbitMQ, which the test can cut (connections
//! dropped, new ones refused), stall (connections kept open, nothing forwarded: a broker that
//! blocks publishers, or a black hole) or slow down, and which counts the connections it carried.
//!
//! `integration::TcpProxy` can only cut; this adds what the relay's timeouts are tested against.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How bytes cross the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Open,
    /// Nothing is read from either side, so the sender's writes back up once the socket buffers
    /// are full; new connections are accepted and stall too.
    Stalled,
    /// Each chunk read waits this long before it is forwarded.
    Slow(Duration),
}

pub struct BrokerLink {
    pub addr: SocketAddr,
    refusing: Arc<AtomicBool>,
    flow: watch::Sender<Flow>,
    /// Cancelled (and replaced) to drop every open connection.
    connections: Arc<std::sync::Mutex<CancellationToken>>,
    carried: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl BrokerLink {
    pub async fn start(upstream: SocketAddr) -> BrokerLink {
        // A small, fixed receive buffer (inherited by accepted sockets, and not grown by the kernel's
        // autotuning), so that a stalled link backs the relay's writes up after a few MiB.
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(64 * 1024).expect("set the receive buffer");
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind the broker link");
        let listener = socket.listen(64).expect("listen");
        let addr = listener.local_addr().expect("broker link address");
        let (flow, _) = watch::channel(Flow::Open);
        let link = BrokerLink {
            addr,
            refusing: Arc::new(AtomicBool::new(false)),
            flow,
            connections: Arc::new(std::sync::Mutex::new(CancellationToken::new())),
            carried: Arc::new(AtomicUsize::new(0)),
            stop: CancellationToken::new(),
        };
        let (refusing, connections, carried, stop) =
            (link.refusing.clone(), link.connections.clone(), link.carried.clone(), link.stop.clone());
        let flow = link.flow.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if refusing.load(Ordering::SeqCst) {
                    continue; // dropping `inbound` refuses the connection
                }
                carried.fetch_add(1, Ordering::SeqCst);
                let reset = connections.lock().map(|t| t.clone()).unwrap_or_default();
                let flow = flow.subscribe();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else { return };
                    let (from_client, to_client) = inbound.into_split();
                    let (from_broker, to_broker) = outbound.into_split();
                    // Either direction ending ends the connection (AMQP never half-closes).
                    tokio::select! {
                        () = reset.cancelled() => {}
                        () = pump(from_client, to_broker, flow.clone()) => {}
                        () = pump(from_broker, to_client, flow) => {}
                    }
                });
            }
        });
        link
    }

    /// Drops every open connection and refuses new ones, as if the broker went down.
    pub fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        if let Ok(mut token) = self.connections.lock() {
            token.cancel();
            *token = CancellationToken::new();
        }
    }

    /// Accepts connections again, and forwards freely.
    pub fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
        self.flow.send_replace(Flow::Open);
    }

    pub fn set_flow(&self, flow: Flow) {
        self.flow.send_replace(flow);
    }

    /// Connections accepted so far (refused ones not counted).
    pub fn connections_carried(&self) -> usize {
        self.carried.load(Ordering::SeqCst)
    }
}

impl Drop for BrokerLink {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Ok(token) = self.connections.lock() {
            token.cancel();
        }
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut flow: watch::Receiver<Flow>) {
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        let Ok(current) = flow.wait_for(|flow| *flow != Flow::Stalled).await.map(|flow| *flow) else {
            return;
        };
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            // Re-check the flow: reading stops as soon as the link stalls.
            _ = flow.changed() => continue,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Flow::Slow(delay) = current {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
