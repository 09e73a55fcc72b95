//! What one hostile client may try against the gateway, and why it cannot take the service away from
//! everyone else: fragment bombs, piles of aliases and directives, WebSocket floods, piles of sockets
//! and protocol abuse on a socket.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Gateway, Socket, Stack, error_code, unique_email};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn ws_url(gateway: &Gateway) -> String {
    gateway.graphql_url().replacen("http://", "ws://", 1)
}

/// `{ ...F<levels> }` where `F0` selects `__typename` and each `Fi` spreads `F(i-1)` twice: a few
/// hundred bytes that select 2^levels fields.
fn fragment_bomb(levels: usize) -> String {
    let mut query = format!("{{ ...F{levels} }} fragment F0 on QueryRoot {{ __typename }}");
    for level in 1..=levels {
        let previous = level - 1;
        query.push_str(&format!(" fragment F{level} on QueryRoot {{ ...F{previous} ...F{previous} }}"));
    }
    query
}

fn message(response: &Value) -> String {
    response["errors"][0]["message"].as_str().unwrap_or_default().to_owned()
}

/// A place where catalog would be that accepts connections and never answers, so a call to it
/// stays in flight until its deadline.
async fn silent_catalog() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn a_fragment_bomb_is_refused_at_once_over_http_and_websocket() {
    let gateway = Gateway::alone(&[]).await;
    // 2^30 fields in about 1.5 KiB: expanding it (as validation did) would take hours.
    let bomb = fragment_bomb(30);
    let started = Instant::now();
    let response = gateway.graphql(None, &bomb, json!({})).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
    assert!(message(&response).contains("fragments are expanded"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused only after {:?}", started.elapsed());

    let small = gateway.graphql(None, &fragment_bomb(4), json!({})).await;
    assert_eq!(small["data"]["__typename"], "QueryRoot", "a document within the limit runs: {small}");

    let mut socket = Socket::connect(&ws_url(&gateway), json!({})).await;
    socket.subscribe(&bomb, json!({})).await;
    let refused = socket.next_payload(Duration::from_secs(5)).await;
    assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused}");
    let alive = gateway.http.get(format!("{}/alive", gateway.url())).send().await.unwrap();
    assert_eq!(alive.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_operation_may_select_only_so_many_top_level_fields_and_directives() {
    let gateway = Gateway::alone(&[("GRAPHQL_MAX_ROOT_FIELDS", "5")]).await;
    let aliases = |n: usize| (0..n).map(|i| format!("a{i}: __typename ")).collect::<String>();
    let allowed = gateway.graphql(None, &format!("{{ {} }}", aliases(5)), json!({})).await;
    assert_eq!(allowed["data"]["a4"], "QueryRoot", "{allowed}");
    let refused = gateway.graphql(None, &format!("{{ {} }}", aliases(6)), json!({})).await;
    assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused}");
    assert!(message(&refused).contains("at most 5 top-level fields"), "{refused}");

    let concerts: String = (0..6).map(|i| format!("c{i}: concert(id: \"{i}\") {{ title }} ")).collect();
    let refused = gateway.graphql(None, &format!("{{ {concerts} }}"), json!({})).await;
    assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused}");

    // Documents of introspection fields alone run on their own schema, under the same limits.
    let schemas: String = (0..6).map(|i| format!("s{i}: __schema {{ queryType {{ name }} }} ")).collect();
    let refused = gateway.graphql(None, &format!("{{ {schemas} }}"), json!({})).await;
    assert!(message(&refused).contains("top-level fields"), "{refused}");
    let directives =
        format!("{{ __schema {{ queryType {{ name {} }} }} }}", "@include(if: true) ".repeat(25));
    let refused = gateway.graphql(None, &directives, json!({})).await;
    assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused}");
    assert!(message(&refused).contains("directives"), "{refused}");
}

/// Reads protocol messages until every one of `operations` has ended; returns how many ended with
/// a result (`next` then `complete`) and how many were refused as rate limited (`error`).
async fn finish_operations(socket: &mut Socket, operations: usize) -> (usize, usize) {
    let (mut answered, mut limited) = (0, 0);
    while answered + limited < operations {
        let message = socket.receive(Duration::from_secs(10)).await.expect("the socket stays open");
        match message["type"].as_str().unwrap() {
            "next" => {}
            "complete" => answered += 1,
            "error" => {
                assert_eq!(message["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{message}");
                limited += 1;
            }
            other => panic!("unexpected {other}: {message}"),
        }
    }
    (answered, limited)
}

#[tokio::test]
async fn operations_on_a_websocket_spend_the_same_budget_as_http_requests() {
    let gateway = Gateway::alone(&[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "6")]).await;
    // The upgrade is one request; then every operation is one more.
    let mut socket = Socket::connect(&ws_url(&gateway), json!({})).await;
    for _ in 0..20 {
        socket.subscribe("{ __typename }", json!({})).await;
    }
    let (answered, limited) = finish_operations(&mut socket, 20).await;
    assert!((5..=7).contains(&answered), "about the burst is answered: {answered}");
    assert_eq!(answered + limited, 20);

    // The socket stays usable, and HTTP from the same address finds the budget spent.
    let response = gateway
        .http
        .post(gateway.graphql_url())
        .json(&json!({ "query": "{ __typename }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn one_address_may_hold_only_so_many_sockets() {
    let gateway = Gateway::alone(&[("WS_MAX_CONNECTIONS_PER_IP", "2")]).await;
    let first = Socket::connect(&ws_url(&gateway), json!({})).await;
    let _second = Socket::connect(&ws_url(&gateway), json!({})).await;
    let refused = open_raw(&gateway, "graphql-transport-ws").await.unwrap_err();
    assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS);

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_raw(&gateway, "graphql-transport-ws").await.is_err() {
        assert!(Instant::now() < deadline, "a closed socket never gave its place back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a WebSocket offering `protocol`; the HTTP status if the upgrade is refused.
async fn open_raw(gateway: &Gateway, protocol: &str) -> Result<(), StatusCode> {
    let mut request = ws_url(gateway).into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", protocol.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(StatusCode::from_u16(response.status().as_u16()).unwrap())
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn protocol_violations_close_the_socket_with_the_protocols_codes() {
    let catalog = silent_catalog().await;
    let gateway = Gateway::alone(&[
        ("CATALOG_GRPC_URL", &catalog),
        ("WS_INIT_TIMEOUT_SECONDS", "1"),
        ("WS_IDLE_TIMEOUT_SECONDS", "1"),
    ])
    .await;
    let url = ws_url(&gateway);
    let within = Duration::from_secs(10);

    let mut socket = Socket::open(&url).await;
    socket.send(json!({ "type": "no-such-message" })).await;
    assert_eq!(socket.close_code(within).await, Some(4400), "an invalid message");

    let mut socket = Socket::open(&url).await;
    socket.subscribe("{ __typename }", json!({})).await;
    assert_eq!(socket.close_code(within).await, Some(4401), "subscribe before connection_init");

    let mut socket = Socket::open(&url).await;
    socket.send(json!({ "type": "connection_init", "payload": { "Authorization": "Bearer forged" } })).await;
    assert_eq!(socket.close_code(within).await, Some(4403), "credentials refused");

    let mut socket = Socket::open(&url).await;
    assert_eq!(socket.close_code(within).await, Some(4408), "no connection_init in time");

    let mut socket = Socket::connect(&url, json!({})).await;
    socket.send(json!({ "type": "connection_init" })).await;
    assert_eq!(socket.close_code(within).await, Some(4429), "a second connection_init");

    let mut socket = Socket::connect(&url, json!({})).await;
    let started = Instant::now();
    assert_eq!(socket.close_code(within).await, Some(1000), "idle");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // An operation id in use may not be reused (catalog never answers, so the first stays live).
    let mut socket = Socket::connect(&url, json!({})).await;
    let browse = json!({ "query": "{ concerts { edges { cursor } } }" });
    socket.send(json!({ "id": "1", "type": "subscribe", "payload": browse })).await;
    socket.send(json!({ "id": "1", "type": "subscribe", "payload": browse })).await;
    assert_eq!(socket.close_code(within).await, Some(4409), "a duplicate operation id");

    assert_eq!(open_raw(&gateway, "graphql-ws").await, Err(StatusCode::BAD_REQUEST), "legacy subprotocol");
}

#[tokio::test]
async fn one_account_may_hold_only_so_many_sockets() {
    let stack = Stack::start_with(&[("WS_MAX_CONNECTIONS_PER_USER", "1")]).await;
    let gateway = &stack.gateway;
    let fan = gateway.sign_up(&unique_email("hoarder")).await;
    let first = gateway.websocket(&fan).await;

    let mut second = Socket::open(&ws_url(gateway)).await;
    second
        .send(json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {fan}") } }))
        .await;
    assert_eq!(second.close_code(Duration::from_secs(10)).await, Some(4429));
    // Anonymous sockets from the same address are not the account's.
    let _anonymous = Socket::connect(&ws_url(gateway), json!({})).await;

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = Socket::open(&ws_url(gateway)).await;
        let init =
            json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {fan}") } });
        again.send(init).await;
        match again.receive(Duration::from_secs(10)).await {
            Some(ack) if ack["type"] == "connection_ack" => break,
            _ => assert!(Instant::now() < deadline, "the closed socket never gave its place back"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
