//! What the gateway refuses on its own, before any service behind it is asked: oversized and
//! abusive queries, mutations over GET, cross-site form posts, anonymous orders, floods, too many
//! subscriptions on one socket; and the offline playground.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use serde_json::{Value, json};
use support::{Gateway, Socket, Stack, error_code, unique_email};

/// A port where catalog would be, counting the connections the gateway opens to it.
async fn counting_catalog() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (format!("http://{addr}"), connections)
}

#[tokio::test]
async fn depth_and_complexity_bombs_are_rejected_before_any_downstream_call() {
    let (catalog_url, connections) = counting_catalog().await;
    let gateway = Gateway::alone(&[("CATALOG_GRPC_URL", &catalog_url), ("GRAPHQL_MAX_DEPTH", "4")]).await;

    let deep = "{ concerts { edges { node { price { cents } } } } }";
    let response = gateway.graphql(None, deep, json!({})).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
    assert!(response["errors"][0]["message"].as_str().unwrap().contains("nested too deep"), "{response}");

    let aliases: String = (0..10)
        .map(|i| format!("a{i}: concerts(first: 100) {{ edges {{ node {{ title artist venue city }} }} }} "))
        .collect();
    let response = gateway.graphql(None, &format!("{{ {aliases} }}"), json!({})).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
    assert!(response["errors"][0]["message"].as_str().unwrap().contains("too complex"), "{response}");
    assert!(response.get("data").is_none_or(Value::is_null));

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "catalog was never contacted");

    // Introspection has room for the standard query, not for a bomb.
    let nested = format!(
        "{{ __schema {{ types {{ fields {{ type {{ name {} {} }} }} }} }} }}",
        "ofType { name ".repeat(20),
        "}".repeat(20)
    );
    let response = gateway.graphql(None, &nested, json!({})).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
    assert!(response["errors"][0]["message"].as_str().unwrap().contains("nested too deep"), "{response}");

    // A field within the limits does reach catalog (which here hangs up: UNAVAILABLE).
    let response = gateway.graphql(None, "{ concerts(first: 5) { edges { cursor } } }", json!({})).await;
    assert_eq!(error_code(&response).as_deref(), Some("UNAVAILABLE"), "{response}");
    assert!(connections.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn long_query_texts_and_large_batches_are_refused() {
    let gateway = Gateway::alone(&[
        ("GRAPHQL_MAX_QUERY_BYTES", "256"),
        ("GRAPHQL_MAX_BATCH", "2"),
        ("HTTP_MAX_BODY_BYTES", "4096"),
    ])
    .await;
    let long = format!("{{ __typename {} }}", " ".repeat(300));
    let response = gateway.graphql(None, &long, json!({})).await;
    assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");

    let operation = json!({ "query": "{ __typename }" });
    let two =
        gateway.http.post(gateway.graphql_url()).json(&json!([operation, operation])).send().await.unwrap();
    assert_eq!(two.status(), StatusCode::OK);
    assert_eq!(two.json::<Value>().await.unwrap().as_array().unwrap().len(), 2);
    let three = gateway
        .http
        .post(gateway.graphql_url())
        .json(&json!([operation, operation, operation]))
        .send()
        .await
        .unwrap();
    assert_eq!(three.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&three.json().await.unwrap()).as_deref(), Some("BAD_USER_INPUT"));

    let huge = json!({ "query": "{ __typename }", "variables": { "padding": "x".repeat(10_000) } });
    let response = gateway.http.post(gateway.graphql_url()).json(&huge).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn introspection_can_be_switched_off() {
    let open = Gateway::alone(&[]).await;
    let response = open.graphql(None, "{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(response["data"]["__schema"]["queryType"]["name"], "QueryRoot");
    // Deeper than operations may go (10): type references nest that deep in GraphiQL's own query.
    let type_refs = format!(
        "{{ __schema {{ types {{ fields {{ type {{ name {} {} }} }} }} }} }}",
        "ofType { name ".repeat(8),
        "}".repeat(8)
    );
    let response = open.graphql(None, &type_refs, json!({})).await;
    assert!(response.get("errors").is_none(), "{response}");

    let closed = Gateway::alone(&[("INTROSPECTION_ENABLED", "false")]).await;
    let response = closed.graphql(None, "{ __schema { queryType { name } } }", json!({})).await;
    assert!(response["data"]["__schema"].is_null(), "{response}");
    let response = closed.graphql(None, "{ __type(name: \"Concert\") { fields { name } } }", json!({})).await;
    assert!(response["data"]["__type"].is_null(), "{response}");
    let typo = closed.graphql(None, "{ concertz { edges { cursor } } }", json!({})).await;
    assert!(!typo.to_string().contains("Did you mean"), "no hints about the schema either: {typo}");
}

#[tokio::test]
async fn the_playground_loads_only_from_the_gateway() {
    let gateway = Gateway::alone(&[]).await;
    let page = gateway.http.get(gateway.graphql_url()).header(ACCEPT, "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()[CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();

    let references: Vec<&str> = html
        .split(['"', '\''])
        .filter(|part| {
            part.ends_with(".js")
                || part.ends_with(".css")
                || part.starts_with("http")
                || part.starts_with("//")
        })
        .collect();
    assert!(references.len() >= 5, "{references:?}");
    for reference in &references {
        assert!(reference.starts_with("/assets/"), "{reference} is not served by the gateway");
    }

    let script = references.iter().find(|r| r.ends_with("/graphiql.min.js")).unwrap();
    let js = gateway.http.get(format!("{}{script}", gateway.url())).send().await.unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert_eq!(js.headers()[CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert!(js.headers()[CACHE_CONTROL].to_str().unwrap().contains("immutable"));
    assert!(js.bytes().await.unwrap().len() > 1_000_000, "the whole GraphiQL bundle");
    for reference in &references {
        let asset = gateway.http.get(format!("{}{reference}", gateway.url())).send().await.unwrap();
        assert_eq!(asset.status(), StatusCode::OK, "{reference}");
    }

    let off = Gateway::alone(&[("PLAYGROUND_ENABLED", "false")]).await;
    let page = off.http.get(off.graphql_url()).header(ACCEPT, "text/html").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
}

/// `/graphql?query=<query>`, percent-encoded.
fn with_query(gateway: &Gateway, query: &str) -> String {
    let encoded: String = query
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    format!("{}?query={encoded}", gateway.graphql_url())
}

#[tokio::test]
async fn get_runs_queries_but_never_mutations() {
    let gateway = Gateway::alone(&[]).await;
    let query = gateway.http.get(with_query(&gateway, "{ __typename }")).send().await.unwrap();
    assert_eq!(query.status(), StatusCode::OK);
    assert_eq!(query.json::<Value>().await.unwrap()["data"]["__typename"], "QueryRoot");

    let mutation = "mutation { logout(refreshToken: \"x\") }";
    let refused = gateway.http.get(with_query(&gateway, mutation)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(refused.headers()["allow"], "POST");
    assert_eq!(error_code(&refused.json().await.unwrap()).as_deref(), Some("BAD_USER_INPUT"));
}

#[tokio::test]
async fn posts_that_a_cross_site_form_could_send_are_refused() {
    let gateway = Gateway::alone(&[]).await;
    let body = json!({ "query": "mutation { logout(refreshToken: \"x\") }" }).to_string();
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = gateway.http.post(gateway.graphql_url()).body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type:?}");
    }
}

#[tokio::test]
async fn orders_need_a_signed_in_user() {
    let gateway = Gateway::alone(&[]).await;
    let place = "mutation { placeOrder(input: { concertId: \"0190a0a0-0000-7000-8000-000000000000\", quantity: 1 }, idempotencyKey: \"k\") { id } }";
    let anonymous = gateway.graphql(None, place, json!({})).await;
    assert_eq!(error_code(&anonymous).as_deref(), Some("UNAUTHENTICATED"), "{anonymous}");
    let garbage = gateway.graphql(Some("not-a-jwt"), place, json!({})).await;
    assert_eq!(error_code(&garbage).as_deref(), Some("UNAUTHENTICATED"), "{garbage}");
    let me = gateway.graphql(None, "{ me { id } }", json!({})).await;
    assert_eq!(error_code(&me).as_deref(), Some("UNAUTHENTICATED"), "{me}");
    let admin = gateway
        .graphql(None, "mutation { updateConcert(id: \"0190a0a0-0000-7000-8000-000000000000\", input: { title: \"x\" }) { id } }", json!({}))
        .await;
    assert_eq!(error_code(&admin).as_deref(), Some("UNAUTHENTICATED"), "{admin}");

    // Over WebSocket: an anonymous socket may connect, but not subscribe to orders...
    let ws_url = gateway.graphql_url().replacen("http://", "ws://", 1);
    let mut socket = Socket::connect(&ws_url, json!({})).await;
    socket.subscribe("subscription { myOrderUpdates { status } }", json!({})).await;
    let refused = socket.next_payload(Duration::from_secs(10)).await;
    assert_eq!(error_code(&refused).as_deref(), Some("UNAUTHENTICATED"), "{refused}");
    // ...and a socket with a token that does not verify is closed.
    let mut socket = Socket::open(&ws_url).await;
    socket
        .send(json!({ "type": "connection_init", "payload": { "Authorization": "Bearer not-a-jwt" } }))
        .await;
    assert!(socket.receive(Duration::from_secs(10)).await.is_none(), "closed without an ack");
}

#[tokio::test]
async fn floods_from_one_client_are_rate_limited() {
    let gateway =
        Gateway::alone(&[("AUTH_RATE_LIMIT_PER_MINUTE", "1"), ("AUTH_RATE_LIMIT_BURST", "2")]).await;
    let login = "mutation { login(input: { email: \"a@example.com\", password: \"whatever-it-is\" }) { accessToken } }";
    for _ in 0..2 {
        // identity is unreachable here; the attempt still counts.
        let response = gateway.graphql(None, login, json!({})).await;
        assert_eq!(error_code(&response).as_deref(), Some("UNAVAILABLE"), "{response}");
    }
    let limited = gateway.graphql(None, login, json!({})).await;
    assert_eq!(error_code(&limited).as_deref(), Some("RATE_LIMITED"), "{limited}");
    assert!(limited["errors"][0]["extensions"]["retryAfter"].as_u64().unwrap() >= 1);
    let browse = gateway.graphql(None, "{ __typename }", json!({})).await;
    assert_eq!(browse["data"]["__typename"], "QueryRoot", "other operations are not affected");

    let gateway = Gateway::alone(&[("RATE_LIMIT_PER_SECOND", "1"), ("RATE_LIMIT_BURST", "3")]).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let response = gateway
            .http
            .post(gateway.graphql_url())
            .json(&json!({ "query": "{ __typename }" }))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(error_code(&response.json().await.unwrap()).as_deref(), Some("RATE_LIMITED"));
        }
    }
    assert_eq!(&statuses[..3], &[StatusCode::OK; 3], "the burst is allowed");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "then the budget runs out: {statuses:?}");
}

#[tokio::test]
async fn the_admin_health_names_the_services_that_are_down_and_the_public_one_does_not() {
    let gateway = Gateway::alone(&[]).await;
    let response = gateway.http.get(format!("{}/health", gateway.admin_url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let report: Value = response.json().await.unwrap();
    for service in ["identity", "ordering", "catalog"] {
        assert_eq!(report["checks"][service]["status"], "unhealthy", "{report}");
    }
    let public = gateway.http.get(format!("{}/health", gateway.url())).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(public.json::<Value>().await.unwrap(), json!({"status": "unhealthy"}));
}

#[tokio::test]
async fn metrics_are_on_the_admin_port_only() {
    let gateway = Gateway::alone(&[]).await;
    let public = gateway.http.get(format!("{}/metrics", gateway.url())).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let admin = gateway.http.get(format!("{}/metrics", gateway.admin_url)).send().await.unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
}

#[tokio::test]
async fn shuts_down_promptly_with_websockets_open() {
    let gateway = Gateway::alone(&[]).await;
    let mut socket = Socket::connect(&gateway.graphql_url().replacen("http://", "ws://", 1), json!({})).await;
    let started = std::time::Instant::now();
    gateway.service.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(socket.receive(Duration::from_secs(5)).await.is_none(), "the socket was closed");
}

#[tokio::test]
async fn one_websocket_may_hold_only_so_many_subscriptions() {
    let stack = Stack::start_with(&[("WS_MAX_SUBSCRIPTIONS", "2")]).await;
    let gateway = &stack.gateway;
    let fan = gateway.sign_up(&unique_email("fan")).await;
    let watch = "subscription { myOrderUpdates { status } }";

    let mut socket = gateway.websocket(&fan).await;
    let first = gateway.subscribe_and_wait(&mut socket, watch, json!({})).await;
    gateway.subscribe_and_wait(&mut socket, watch, json!({})).await;
    socket.subscribe(watch, json!({})).await;
    let refused = socket.next_payload(Duration::from_secs(10)).await;
    assert_eq!(error_code(&refused).as_deref(), Some("RATE_LIMITED"), "{refused}");
    let done = socket.receive(Duration::from_secs(10)).await.unwrap();
    assert_eq!(done["type"], "complete", "the refused subscription ends: {done}");
    assert_eq!(gateway.events.listeners(), 2, "the refused one never listened");

    // Stopping one gives its place back.
    socket.complete(&first).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gateway.events.listeners() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the stopped subscription kept listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.subscribe_and_wait(&mut socket, watch, json!({})).await;

    // The budget is the connection's: another socket has its own.
    let mut other = gateway.websocket(&fan).await;
    gateway.subscribe_and_wait(&mut other, watch, json!({})).await;
    assert_eq!(gateway.events.listeners(), 3);
}
