//! `platform::http::serve` against hostile and ordinary clients, over real TCP connections.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use platform::config::Env;
use platform::http::{ConnectionLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Limits as a service reads them from its environment.
fn limits(vars: &[(&'static str, &str)]) -> ConnectionLimits {
    let source: std::collections::HashMap<&'static str, String> =
        vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    ConnectionLimits::from_env(&Env::new(&source)).unwrap()
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

async fn start(limits: ConnectionLimits) -> Server {
    let router = Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "done"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, router, limits, shutdown.clone()));
    Server { addr, shutdown, task }
}

/// Connects from `source` (any 127.x.y.z is this machine on Linux), so tests can play several clients.
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

/// Whether the server has closed `stream` (end of file or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    match tokio::time::timeout(within, stream.read(&mut buffer)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_disconnected_after_the_header_read_timeout() {
    let limits = limits(&[("HTTP_HEADER_READ_TIMEOUT_SECONDS", "0.3")]);
    let server = start(limits).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /peer HTTP/1.1\r\nHost: te").await.unwrap();
    let trickle = async {
        // One more byte every 100 ms: each arrives well within any per-read timeout.
        for byte in b"st\r\nX-Slow: 1\r\nX-Slower: 2\r\n" {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(&[*byte]).await.is_err() {
                return true;
            }
        }
        false
    };
    let cut_off_while_trickling = trickle.await;
    assert!(
        cut_off_while_trickling || closed_within(&mut slow, Duration::from_secs(1)).await,
        "still connected"
    );

    let mut prompt = TcpStream::connect(server.addr).await.unwrap();
    assert!(get_on(&mut prompt, "/peer").await.starts_with("HTTP/1.1 200"), "a prompt client is served");
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_while_other_addresses_are_served() {
    let limits = limits(&[("HTTP_MAX_CONNECTIONS_PER_IP", "3")]);
    let server = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from([127, 0, 0, 2], server.addr).await;
        // Half a request: the connection is open and in use, as a slow client's would be.
        stream.write_all(b"GET /peer HTTP/1.1\r\n").await.unwrap();
        held.push(stream);
    }
    // Accepting is asynchronous: give the server a moment to count the three.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut fourth = connect_from([127, 0, 0, 2], server.addr).await;
    let _ = fourth.write_all(b"GET /peer HTTP/1.1\r\nHost: test\r\n\r\n").await;
    assert!(closed_within(&mut fourth, Duration::from_secs(2)).await, "the fourth connection was served");

    let mut other = connect_from([127, 0, 0, 3], server.addr).await;
    let response = get_on(&mut other, "/peer").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("127.0.0.3"), "handlers see the client's address: {response}");

    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect_from([127, 0, 0, 2], server.addr).await;
    assert!(
        get_on(&mut again, "/peer").await.starts_with("HTTP/1.1 200"),
        "closed connections free their places"
    );
}

#[tokio::test]
async fn connections_over_the_overall_cap_are_closed() {
    let limits = limits(&[("HTTP_MAX_CONNECTIONS", "2")]);
    let server = start(limits).await;
    let _first = connect_from([127, 0, 0, 4], server.addr).await;
    let _second = connect_from([127, 0, 0, 5], server.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect_from([127, 0, 0, 6], server.addr).await;
    assert!(closed_within(&mut third, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn exempt_peers_are_not_capped_per_address() {
    let limits = limits(&[("HTTP_MAX_CONNECTIONS_PER_IP", "1")])
        .exempting(|ip| ip == std::net::IpAddr::from([127, 0, 0, 7]));
    let server = start(limits).await;
    let _first = connect_from([127, 0, 0, 7], server.addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = connect_from([127, 0, 0, 7], server.addr).await;
    assert!(get_on(&mut second, "/peer").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let server = start(ConnectionLimits::default()).await;
    let mut in_flight = TcpStream::connect(server.addr).await.unwrap();
    in_flight.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown.cancel();

    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), in_flight.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200") && response.ends_with("done"), "{response}");
    tokio::time::timeout(Duration::from_secs(5), server.task).await.unwrap().unwrap().unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err(), "the listener is closed");
}
