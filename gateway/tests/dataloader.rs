//! `Order.concert` goes through a DataLoader: a page of orders costs one `BatchGetConcerts`.
//!
//! Alone in its file: it reads the process-wide metrics registry, which parallel tests in the same
//! binary would also move.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use serde_json::json;
use support::{Stack, unique_email};

/// Calls to catalog's `BatchGetConcerts` so far, from the gateway's `/metrics`.
async fn batch_calls(stack: &Stack) -> u64 {
    let metrics =
        stack.gateway.http.get(format!("{}/metrics", stack.gateway.admin_url)).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("gateway_downstream_duration_seconds_count"))
        .filter(|line| line.contains("operation=\"BatchGetConcerts\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn listing_orders_with_their_concerts_asks_catalog_once() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let fan = gateway.sign_up(&unique_email("collector")).await;
    for i in 0..4 {
        let concert = stack
            .create_concert(
                &admin,
                json!({
                    "title": format!("Show {i}"), "artist": "Batch", "venue": "Hall", "city": "Leiden",
                    "startsAt": (chrono::Utc::now() + chrono::Duration::days(i + 3)).to_rfc3339(),
                    "priceCents": 1000, "currency": "EUR", "capacity": 20,
                }),
            )
            .await;
        gateway
            .data(
                Some(&fan),
                "mutation($c: ID!, $k: String!) { placeOrder(input: { concertId: $c, quantity: 1 }, idempotencyKey: $k) { id } }",
                json!({ "c": concert, "k": format!("order-{i}") }),
            )
            .await;
    }

    let before = batch_calls(&stack).await;
    let data = gateway
        .data(Some(&fan), "{ myOrders(first: 10) { edges { node { concert { title } } } } }", json!({}))
        .await;
    let mut titles: Vec<String> = data["myOrders"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"]["concert"]["title"].as_str().unwrap().to_owned())
        .collect();
    titles.sort();
    assert_eq!(titles, ["Show 0", "Show 1", "Show 2", "Show 3"]);
    assert_eq!(batch_calls(&stack).await - before, 1, "one batch for four orders");

    // Paging through them, newest first.
    let page = "query($after: String) { myOrders(first: 3, after: $after) {
        edges { node { concert { title } } } pageInfo { hasNextPage endCursor } } }";
    let titles = |data: &serde_json::Value| -> Vec<String> {
        data["myOrders"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["concert"]["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = gateway.data(Some(&fan), page, json!({ "after": null })).await;
    assert_eq!(titles(&first), ["Show 3", "Show 2", "Show 1"]);
    assert_eq!(first["myOrders"]["pageInfo"]["hasNextPage"], true);
    let rest =
        gateway.data(Some(&fan), page, json!({ "after": first["myOrders"]["pageInfo"]["endCursor"] })).await;
    assert_eq!(titles(&rest), ["Show 0"]);
    assert_eq!(rest["myOrders"]["pageInfo"]["hasNextPage"], false);
}
