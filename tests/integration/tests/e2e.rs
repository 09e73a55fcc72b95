//! End to end: the five real service binaries, each its own process started as an operator would
//! (the launcher's defaults, this test's ports, databases, Redis prefix, exchange and queue, JSON
//! logs), driven only through their public interfaces: GraphQL for the purchase, HTTP for health
//! and the in-flight requests, SIGTERM for stopping, the worker's log and its own database for
//! what it did.
//!
//! The binaries are built by `integration::binaries` (a no-op under `cargo test --workspace`,
//! which has built them already). Each test starts its own stack; expect ~20 s per test.

#![allow(clippy::unwrap_used)] // a panic is how a test fails (and makes the stack print its logs)

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use integration::{BinaryStack, GraphqlClient, HalfSentRequest, ServiceProcess};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, Row};
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// Registers through GraphQL and signs in; returns the access token.
async fn sign_up(api: &GraphqlClient, email: &str) -> String {
    let registered = api
        .data(
            None,
            "mutation($input: RegisterInput!) { register(input: $input) { userId } }",
            json!({ "input": { "email": email, "password": PASSWORD, "displayName": "Festival Fan" } }),
        )
        .await
        .unwrap();
    assert!(registered["register"]["userId"].is_string(), "{registered}");
    let login = api
        .data(
            None,
            "mutation($input: LoginInput!) { login(input: $input) { accessToken tokenType expiresIn } }",
            json!({ "input": { "email": email, "password": PASSWORD } }),
        )
        .await
        .unwrap();
    assert_eq!(login["login"]["tokenType"], "Bearer");
    login["login"]["accessToken"].as_str().unwrap().to_owned()
}

/// A seeded concert with seats to spare.
async fn some_concert(api: &GraphqlClient) -> Value {
    let page = api
        .data(
            None,
            "{ concerts(first: 50) { edges { node { id title city available price { cents currency } } } } }",
            json!({}),
        )
        .await
        .unwrap();
    let concerts: Vec<Value> =
        page["concerts"]["edges"].as_array().unwrap().iter().map(|edge| edge["node"].clone()).collect();
    assert!(concerts.len() >= 20, "the launcher's demo catalogue is seeded: {page}");
    concerts.into_iter().find(|c| c["available"].as_i64().unwrap() >= 10).unwrap()
}

fn unique_email() -> String {
    format!("fan-{}@example.com", Uuid::new_v4().simple())
}

/// `notification sent` lines in the worker's JSON log, keyed by (order id, notification type).
fn notification_lines(worker: &ServiceProcess) -> BTreeMap<(String, String), Vec<Value>> {
    let mut lines: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
    for log in worker.json_logs().into_iter().filter(|log| log["message"] == "notification sent") {
        let key = (
            log["order.id"].as_str().unwrap_or_default().to_owned(),
            log["notification.type"].as_str().unwrap_or_default().to_owned(),
        );
        lines.entry(key).or_default().push(log);
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_buys_and_cancels_through_graphql_and_the_worker_records_and_logs_each_event_once() {
    let mut stack = BinaryStack::start().await.unwrap();
    let api = stack.graphql().unwrap();

    // Sign up, sign in, browse the seeded catalogue.
    let email = unique_email();
    let token = sign_up(&api, &email).await;
    let me = api.data(Some(&token), "{ me { email roles } }", json!({})).await.unwrap();
    assert_eq!(me["me"], json!({ "email": email, "roles": ["customer"] }));
    let concert = some_concert(&api).await;
    let concert_id = concert["id"].as_str().unwrap();

    // Buy two seats and pay.
    let place = "mutation($input: PlaceOrderInput!, $key: String!) {
        placeOrder(input: $input, idempotencyKey: $key) { id status quantity total { cents currency } } }";
    let placed = api
        .data(
            Some(&token),
            place,
            json!({ "input": { "concertId": concert_id, "quantity": 2 }, "key": Uuid::new_v4().to_string() }),
        )
        .await
        .unwrap()["placeOrder"]
        .clone();
    assert_eq!(placed["status"], "PENDING");
    let unit = &concert["price"];
    assert_eq!(
        placed["total"],
        json!({ "cents": unit["cents"].as_i64().unwrap() * 2, "currency": unit["currency"] })
    );
    let paid_id = placed["id"].as_str().unwrap().to_owned();
    let confirmed = api
        .data(
            Some(&token),
            "mutation($id: ID!) { confirmOrder(id: $id, paymentToken: \"tok_visa\") { id status } }",
            json!({ "id": paid_id }),
        )
        .await
        .unwrap();
    assert_eq!(confirmed["confirmOrder"], json!({ "id": paid_id, "status": "CONFIRMED" }));

    // Change of mind on a second order: cancel it before paying.
    let placed = api
        .data(
            Some(&token),
            place,
            json!({ "input": { "concertId": concert_id, "quantity": 1 }, "key": Uuid::new_v4().to_string() }),
        )
        .await
        .unwrap()["placeOrder"]
        .clone();
    let cancelled_id = placed["id"].as_str().unwrap().to_owned();
    let cancelled = api
        .data(
            Some(&token),
            "mutation($id: ID!) { cancelOrder(id: $id) { status cancelReason } }",
            json!({ "id": cancelled_id }),
        )
        .await
        .unwrap();
    assert_eq!(cancelled["cancelOrder"]["status"], "CANCELLED");

    // My orders, newest first, with their concert.
    let mine = api
        .data(
            Some(&token),
            "{ myOrders(first: 10) { edges { node { id status quantity concert { id title } } } } }",
            json!({}),
        )
        .await
        .unwrap();
    let concert_ref = json!({ "id": concert_id, "title": concert["title"] });
    assert_eq!(
        mine["myOrders"]["edges"],
        json!([
            { "node": { "id": cancelled_id, "status": "CANCELLED", "quantity": 1, "concert": concert_ref } },
            { "node": { "id": paid_id, "status": "CONFIRMED", "quantity": 2, "concert": concert_ref } },
        ])
    );

    // The worker hears of all four events: one log line each, naming the order and what was sent.
    let expected = [
        (&paid_id, "order.created", "order_received"),
        (&paid_id, "order.confirmed", "tickets_confirmed"),
        (&cancelled_id, "order.created", "order_received"),
        (&cancelled_id, "order.cancelled", "order_cancelled"),
    ];
    for (order_id, routing_key, kind) in expected {
        let line = stack
            .notifications
            .wait_for_log(Duration::from_secs(60), |log| {
                log["message"] == "notification sent"
                    && log["order.id"] == order_id.as_str()
                    && log["notification.type"] == kind
            })
            .await
            .unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["span"]["messaging.routing_key"], routing_key, "{line}");
        let recipient = line["notification.recipient"].as_str().unwrap();
        assert!(recipient.ends_with("@example.com") && recipient != email, "masked, not {recipient}");
    }

    // ...and one record each in its own database, matching the log line by event id. Read-only:
    // this is the worker's store.
    let mut db = PgConnection::connect(&stack.databases.notifications.url).await.unwrap();
    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").execute(&mut db).await.unwrap();
    let rows = sqlx::query(
        "SELECT event_id::text AS event_id, order_id::text AS order_id, notification_type, recipient, \
         sent_at IS NOT NULL AS sent FROM notifications ORDER BY occurred_at",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let records: BTreeMap<(String, String), (String, String, bool)> = rows
        .iter()
        .map(|row| {
            let key = (row.get::<String, _>("order_id"), row.get::<String, _>("notification_type"));
            (key, (row.get("event_id"), row.get("recipient"), row.get("sent")))
        })
        .collect();
    assert_eq!(rows.len(), 4, "one record per event, no more: {records:?}");
    let logged = notification_lines(&stack.notifications);
    assert_eq!(logged.values().map(Vec::len).sum::<usize>(), 4, "one line per event: {logged:?}");
    for (order_id, _, kind) in expected {
        let key = (order_id.clone(), kind.to_owned());
        let (event_id, recipient, sent) = records.get(&key).unwrap_or_else(|| panic!("no record {key:?}"));
        assert_eq!(recipient, &email);
        assert!(sent, "{key:?} recorded as sent");
        assert_eq!(logged[&key].len(), 1);
        assert_eq!(logged[&key][0]["event.id"], event_id.as_str(), "the log line is the record's event");
    }
    db.close().await.unwrap();
}

/// The names each service's `/health` reports on.
const CHECKS: [(&str, &[&str]); 5] = [
    ("identity", &["postgres"]),
    ("catalog", &["postgres", "redis"]),
    ("ordering", &["catalog", "postgres", "rabbitmq"]),
    ("notifications", &["postgres", "rabbitmq"]),
    ("gateway", &["catalog", "identity", "ordering", "rabbitmq"]),
];

/// Polls `/health` until every check is `healthy` (dependencies connect in the background).
async fn healthy_report(http: &reqwest::Client, url: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = http.get(url).send().await.unwrap();
        let status = response.status();
        let report: Value = response.json().await.unwrap();
        if report["status"] == "healthy" {
            assert_eq!(status, 200);
            return report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url}: {status} {report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Holds a request in flight at `process`, sends SIGTERM, waits for the process to take it, then
/// completes the request and returns the response along with the exit status.
async fn stop_during(
    process: &mut ServiceProcess,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (integration::inflight::RawResponse, std::process::ExitStatus) {
    let request_id = format!("e2e-in-flight-{}", Uuid::new_v4().simple());
    let mut all_headers = vec![("X-Request-Id", request_id.as_str())];
    all_headers.extend_from_slice(headers);
    let request = HalfSentRequest::post_json(addr, path, &all_headers, &body).await.unwrap();
    // The service's own log says its handler has the request (and is waiting for the body).
    process
        .wait_for_log(Duration::from_secs(30), |log| {
            log["message"] == "started processing request" && log["span"]["request.id"] == request_id.as_str()
        })
        .await
        .unwrap();
    process.terminate().unwrap();
    process.wait_for_line(Duration::from_secs(10), |line| line.contains("SIGTERM received")).await.unwrap();
    let response = request.finish(Duration::from_secs(30)).await.unwrap();
    let status = process.wait_exit(Duration::from_secs(10)).await.unwrap();
    (response, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_is_healthy_and_stops_on_sigterm_after_finishing_the_request_in_flight() {
    let mut stack = BinaryStack::start().await.unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    for ((process, addr), (service, checks)) in stack.health_endpoints().into_iter().zip(CHECKS) {
        assert_eq!(process.name, service);
        let alive = http.get(format!("http://{addr}/alive")).send().await.unwrap();
        assert_eq!(alive.status(), 200, "{service} /alive");
        let report = healthy_report(&http, &format!("http://{addr}/health")).await;
        let named: BTreeSet<&str> =
            report["checks"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(named, checks.iter().copied().collect(), "{service}: {report}");
        for check in checks {
            assert_eq!(report["checks"][check]["status"], "healthy", "{service}: {report}");
        }
    }

    let api = stack.graphql().unwrap();
    let email = unique_email();
    let token = sign_up(&api, &email).await;
    let bearer = format!("Bearer {token}");
    let concert = some_concert(&api).await;
    let addrs = stack.addrs;

    // The gateway answers a GraphQL query that was still arriving when SIGTERM came.
    let (response, exit) = stop_during(
        &mut stack.gateway,
        addrs.gateway,
        "/graphql",
        &[("Authorization", &bearer)],
        json!({ "query": "{ me { email } }" }),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.json().unwrap(), json!({ "data": { "me": { "email": email } } }));
    assert!(exit.success(), "gateway exited with {exit}");

    // Ordering places the order whose request was in flight.
    let key = Uuid::new_v4().to_string();
    let (response, exit) = stop_during(
        &mut stack.ordering,
        addrs.ordering,
        "/orders",
        &[("Authorization", &bearer), ("Idempotency-Key", &key)],
        json!({ "concertId": concert["id"], "quantity": 1 }),
    )
    .await;
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(response.json().unwrap()["status"], "Pending");
    assert!(exit.success(), "ordering exited with {exit}");

    // Identity finishes a login (argon2 and all).
    let (response, exit) = stop_during(
        &mut stack.identity,
        addrs.identity,
        "/auth/login",
        &[],
        json!({ "email": email, "password": PASSWORD }),
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(response.json().unwrap()["accessToken"].is_string());
    assert!(exit.success(), "identity exited with {exit}");

    // Catalog (gRPC) and the worker have no HTTP request to hold; they stop cleanly too.
    for process in [&mut stack.catalog, &mut stack.notifications] {
        process.terminate().unwrap();
        let exit = process.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(exit.success(), "{} exited with {exit}", process.name);
    }
}
