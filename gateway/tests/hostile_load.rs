//! An honest buyer browses and orders while attackers, each from its own loopback address, throw
//! everything the gateway has been hardened against at once: fragment bombs, alias piles, bad
//! filters and forged cursors (which used to open the breakers), a subscription flood and a pile
//! of sockets, and slow-header connections. The buyer sees no error and p99 stays near its quiet
//! figure (target 100 ms).
//!
//! Bounded (a few seconds of attack, loopback only) and alone in its file, so no other test shares
//! the two cores while it measures.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Gateway, Stack, unique_email};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ATTACK: Duration = Duration::from_secs(8);

fn attacker(last_octet: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet))
}

/// An HTTP client whose connections come from `address`, so the gateway sees a separate client.
fn client_from(address: IpAddr) -> reqwest::Client {
    reqwest::Client::builder().local_address(address).build().unwrap()
}

async fn tcp_from(address: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(address, 0))?;
    socket.connect(to).await
}

fn fragment_bomb(levels: usize) -> String {
    let mut query = format!("{{ ...F{levels} }} fragment F0 on QueryRoot {{ __typename }}");
    for level in 1..=levels {
        let previous = level - 1;
        query.push_str(&format!(" fragment F{level} on QueryRoot {{ ...F{previous} ...F{previous} }}"));
    }
    query
}

/// A request body, with the token to send it with (if any).
type Attack = (Option<String>, Value);

/// POSTs `bodies` in turn from `http` until `stop`, counting requests: about 75 a second, half as
/// much again as the rate limit, so each attacker is being refused a third of the time.
async fn keep_posting(
    http: reqwest::Client,
    url: String,
    bodies: Vec<(Option<String>, Value)>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) {
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) {
        let (token, body) = &bodies[turn % bodies.len()];
        turn += 1;
        let mut request = http.post(&url).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let _ = request.send().await;
        sent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(13)).await;
    }
}

/// Opens sockets from `address` (past its cap) and floods one of them with operations.
async fn flood_websockets(
    gateway_addr: SocketAddr,
    address: IpAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
) {
    let url = format!("ws://{gateway_addr}/graphql");
    let mut sockets = Vec::new();
    for _ in 0..40 {
        let Ok(stream) = tcp_from(address, gateway_addr).await else { continue };
        let mut request = url.as_str().into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
        if let Ok((mut ws, _)) = tokio_tungstenite::client_async(request, stream).await {
            let init = json!({ "type": "connection_init", "payload": {} }).to_string();
            let _ = ws.send(Message::Text(init.into())).await;
            sockets.push(ws);
        }
    }
    let Some(mut ws) = sockets.pop() else { return };
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let subscribe =
            json!({ "id": id.to_string(), "type": "subscribe", "payload": { "query": "{ __typename }" } });
        if ws.send(Message::Text(subscribe.to_string().into())).await.is_err() {
            break;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        // Read whatever came back, without waiting long for it: about 200 operations a second,
        // four times the rate limit.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(5), ws.next()).await {}
    }
}

/// Holds connections from `address` that send one header byte at a time, slowly.
async fn slow_headers(gateway_addr: SocketAddr, address: IpAddr, stop: Arc<AtomicBool>) {
    let mut connections = Vec::new();
    for _ in 0..50 {
        if let Ok(mut stream) = tcp_from(address, gateway_addr).await {
            let _ = stream.write_all(b"POST /graphql HTTP/1.1\r\nHost: x\r\n").await;
            connections.push(stream);
        }
    }
    while !stop.load(Ordering::Relaxed) {
        for stream in &mut connections {
            let _ = stream.write_all(b"X").await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_buyer_is_served_while_attackers_hammer_the_gateway() {
    // Production limits, with a short header-read timeout so slow connections come and go.
    let stack = Stack::start_with(&[
        ("RATE_LIMIT_PER_SECOND", "50"),
        ("RATE_LIMIT_BURST", "100"),
        ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "2"),
    ])
    .await;
    let gateway: &Gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = stack
        .create_concert(
            &admin,
            json!({
                "title": "Under Siege", "artist": "The Honest", "venue": "Hall", "city": "Utrecht",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
                "priceCents": 3000, "currency": "EUR", "capacity": 10000,
            }),
        )
        .await;
    let buyer = gateway.sign_up(&unique_email("honest")).await;
    let attacker_token = gateway.sign_up(&unique_email("attacker")).await;
    let addr: SocketAddr = gateway.url().trim_start_matches("http://").parse().unwrap();
    let url = gateway.graphql_url();

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut attacks = Vec::new();
    let bomb = json!({ "query": fragment_bomb(28) });
    let aliases: String = (0..20).map(|i| format!("c{i}: concert(id: $id) {{ title }} ")).collect();
    let amplify =
        json!({ "query": format!("query($id: ID!) {{ {aliases} }}"), "variables": { "id": concert } });
    let nul_filter = json!({
        "query": "query($f: ConcertFilter) { concerts(filter: $f) { edges { cursor } } }",
        "variables": { "f": { "search": "a\u{0}b", "city": "\u{0}" } },
    });
    // Cursors as an attacker who read a real one forges them: a gateway cursor around a downstream
    // token whose time is far outside what Postgres stores.
    let forged = |downstream: String| URL_SAFE_NO_PAD.encode(format!("0:{downstream}"));
    let forged_cursor = json!({
        "query": "query($a: String) { concerts(after: $a) { edges { cursor } } }",
        "variables": { "a": forged(URL_SAFE_NO_PAD.encode(format!("{}:{}", i64::MAX, uuid::Uuid::new_v4().simple()))) },
    });
    let forged_orders = json!({
        "query": "query($a: String) { myOrders(after: $a) { edges { cursor } } }",
        "variables": { "a": forged(URL_SAFE_NO_PAD.encode(format!("{}.{}", i64::MIN, uuid::Uuid::now_v7()))) },
    });
    let plans: Vec<(u8, Vec<Attack>)> = vec![
        (2, vec![(None, bomb)]),
        (3, vec![(None, amplify)]),
        (4, vec![(None, nul_filter), (None, forged_cursor)]),
        (5, vec![(Some(attacker_token.clone()), forged_orders)]),
    ];
    for (octet, bodies) in plans {
        attacks.push(tokio::spawn(keep_posting(
            client_from(attacker(octet)),
            url.clone(),
            bodies,
            stop.clone(),
            sent.clone(),
        )));
    }
    attacks.push(tokio::spawn(flood_websockets(addr, attacker(6), stop.clone(), sent.clone())));
    attacks.push(tokio::spawn(slow_headers(addr, attacker(7), stop.clone())));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The buyer: browse, look at the concert, order, pay, list orders, at an honest pace.
    let place = "mutation($c: ID!, $k: String!) { placeOrder(input: { concertId: $c, quantity: 1 }, idempotencyKey: $k) { id status } }";
    let confirm = "mutation($id: ID!) { confirmOrder(id: $id, paymentToken: \"tok_visa\") { status } }";
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < ATTACK {
        round += 1;
        let mut timed = |result: Value, took: Duration| {
            latencies.push(took);
            if result.get("errors").is_some() {
                errors.push(result.clone());
            }
            result
        };
        let t = Instant::now();
        let r = gateway
            .graphql(None, "{ concerts(first: 20) { edges { node { id title available } } } }", json!({}))
            .await;
        timed(r, t.elapsed());
        let t = Instant::now();
        let r = gateway
            .graphql(
                None,
                "query($id: ID!) { concert(id: $id) { title available } }",
                json!({ "id": concert }),
            )
            .await;
        timed(r, t.elapsed());
        let t = Instant::now();
        let r = gateway
            .graphql(Some(&buyer), place, json!({ "c": concert, "k": format!("honest-{round}") }))
            .await;
        let placed = timed(r, t.elapsed());
        if let Some(order) = placed["data"]["placeOrder"]["id"].as_str() {
            let t = Instant::now();
            let r = gateway.graphql(Some(&buyer), confirm, json!({ "id": order })).await;
            timed(r, t.elapsed());
        }
        let t = Instant::now();
        let r = gateway
            .graphql(Some(&buyer), "{ myOrders(first: 5) { edges { node { id status } } } }", json!({}))
            .await;
        timed(r, t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for attack in attacks {
        let _ = tokio::time::timeout(Duration::from_secs(5), attack).await;
    }

    assert!(errors.is_empty(), "the honest buyer saw errors: {errors:#?}");
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "honest requests: {}, p50 {p50:?}, p99 {p99:?}, max {:?}; attack requests sent: {}",
        latencies.len(),
        latencies[latencies.len() - 1],
        sent.load(Ordering::Relaxed)
    );
    assert!(latencies.len() >= 50, "the buyer got through only {} requests", latencies.len());
    assert!(sent.load(Ordering::Relaxed) > 1000, "the attack ran");
    // The target is 100 ms; repeated runs of this (debug) build measure 85 to 93 ms under attack and
    // about 55 ms without. The assertion leaves room for a debug build on a busy machine, so it
    // fails on a real regression (an attack that stalls the gateway costs seconds), not on noise.
    assert!(p99 < Duration::from_millis(150), "honest p99 {p99:?} (p50 {p50:?})");
}
