//! Live order updates survive losing the broker: the gateway's consumer reconnects by itself and
//! subscriptions that were open all along carry on.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration::TcpProxy;
use serde_json::{Value, json};
use support::{Stack, unique_email};

/// `amqp://user:pass@host:port/vhost` → (`host:port`, the URL with `addr` in its place).
fn through(url: &str, addr: SocketAddr) -> (SocketAddr, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (credentials, rest) = rest.rsplit_once('@').unwrap();
    let (host, vhost) = rest.split_once('/').unwrap();
    let upstream = host.parse().unwrap();
    (upstream, format!("{scheme}://{credentials}@{addr}/{vhost}"))
}

async fn rabbitmq_status(stack: &Stack) -> String {
    let response =
        stack.gateway.http.get(format!("{}/health", stack.gateway.admin_url)).send().await.unwrap();
    let report: Value = response.json().await.unwrap();
    report["checks"]["rabbitmq"]["status"].as_str().unwrap_or_default().to_owned()
}

async fn wait_for_rabbitmq(stack: &Stack, healthy: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while (rabbitmq_status(stack).await == "healthy") != healthy {
        assert!(
            Instant::now() < deadline,
            "rabbitmq never became {}",
            if healthy { "healthy" } else { "down" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn subscriptions_carry_on_after_the_broker_comes_back() {
    let placeholder: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let (upstream, _) = through(&integration::amqp_url(), placeholder);
    let proxy = TcpProxy::start(upstream).await.unwrap();
    let (_, proxied_url) = through(&integration::amqp_url(), proxy.addr);
    let stack = Stack::start_with(&[("AMQP_URL", &proxied_url)]).await;
    let gateway = &stack.gateway;
    wait_for_rabbitmq(&stack, true).await;

    let admin = stack.admin_token().await;
    let concert = stack
        .create_concert(
            &admin,
            json!({
                "title": "Reconnect Rave", "artist": "Rabbit", "venue": "Hall", "city": "Delft",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(9)).to_rfc3339(),
                "priceCents": 2000, "currency": "EUR", "capacity": 30,
            }),
        )
        .await;
    let fan = gateway.sign_up(&unique_email("fan")).await;
    let mut socket = gateway.websocket(&fan).await;
    gateway
        .subscribe_and_wait(&mut socket, "subscription { myOrderUpdates { orderId status } }", json!({}))
        .await;

    proxy.cut();
    wait_for_rabbitmq(&stack, false).await;
    proxy.restore();
    wait_for_rabbitmq(&stack, true).await;

    let placed = gateway
        .data(
            Some(&fan),
            "mutation($c: ID!) { placeOrder(input: { concertId: $c, quantity: 1 }, idempotencyKey: \"after-outage\") { id } }",
            json!({ "c": concert }),
        )
        .await;
    let update = socket.next_payload(Duration::from_secs(15)).await;
    assert_eq!(update["data"]["myOrderUpdates"]["orderId"], placed["placeOrder"]["id"]);
    assert_eq!(update["data"]["myOrderUpdates"]["status"], "PENDING");
}
