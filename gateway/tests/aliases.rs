//! `concert(id)` goes through the request's DataLoader: a document of many `concert` aliases costs
//! catalog one `BatchGetConcerts`, not one call per alias.
//!
//! Alone in its file: it reads the process-wide metrics registry, which parallel tests in the same
//! binary would also move.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use serde_json::json;
use support::Stack;

/// Calls to catalog's `operation` so far, from the gateway's metrics.
async fn catalog_calls(stack: &Stack, operation: &str) -> u64 {
    let metrics =
        stack.gateway.http.get(format!("{}/metrics", stack.gateway.admin_url)).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let operation = format!("operation=\"{operation}\"");
    text.lines()
        .filter(|line| line.starts_with("gateway_downstream_duration_seconds_count"))
        .filter(|line| line.contains(&operation))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn many_aliases_of_one_concert_cost_catalog_one_call() {
    let stack = Stack::start().await;
    let admin = stack.admin_token().await;
    let concert = stack
        .create_concert(
            &admin,
            json!({
                "title": "Echo", "artist": "Alias", "venue": "Hall", "city": "Delft",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(5)).to_rfc3339(),
                "priceCents": 1000, "currency": "EUR", "capacity": 20,
            }),
        )
        .await;
    let (batches, singles) =
        (catalog_calls(&stack, "BatchGetConcerts").await, catalog_calls(&stack, "GetConcert").await);

    let aliases: String = (0..20).map(|i| format!("c{i}: concert(id: $id) {{ title }} ")).collect();
    let query = format!("query($id: ID!) {{ {aliases} }}");
    let data = stack.gateway.data(None, &query, json!({ "id": concert })).await;
    assert_eq!(data["c19"]["title"], "Echo");

    assert_eq!(catalog_calls(&stack, "BatchGetConcerts").await - batches, 1, "one batch for 20 aliases");
    assert_eq!(catalog_calls(&stack, "GetConcert").await, singles, "no call per alias");

    let unknown = stack
        .gateway
        .graphql(None, "{ concert(id: \"6a4f4a4e-0000-4000-8000-000000000000\") { title } }", json!({}))
        .await;
    assert_eq!(support::error_code(&unknown).as_deref(), Some("NOT_FOUND"), "{unknown}");
}
