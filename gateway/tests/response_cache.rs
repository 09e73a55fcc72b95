//! Anonymous visitors loading the same public page share one answer for up to a second: a crowd
//! costs catalog one call, a concert created through the gateway shows at once, and nothing
//! personal is ever shared.
//!
//! Alone in its file: it reads the process-wide metrics registry.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use serde_json::json;
use support::{Stack, unique_email};

const PAGE: &str = "{ concerts(first: 50) { edges { node { title } } } }";

/// Calls to catalog's `ListConcerts` so far, from the gateway's metrics.
async fn list_calls(stack: &Stack) -> u64 {
    let metrics =
        stack.gateway.http.get(format!("{}/metrics", stack.gateway.admin_url)).send().await.unwrap();
    metrics
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|line| line.starts_with("gateway_downstream_duration_seconds_count"))
        .filter(|line| line.contains("operation=\"ListConcerts\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn titles(data: &serde_json::Value) -> Vec<String> {
    data["concerts"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"]["title"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_crowd_loading_one_page_costs_catalog_one_call_and_changes_show_at_once() {
    let stack = Stack::start_with(&[("RESPONSE_CACHE_TTL_MS", "60000")]).await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = |title: &str| {
        json!({
            "title": title, "artist": "Cache", "venue": "Hall", "city": "Zwolle",
            "startsAt": (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339(),
            "priceCents": 1000, "currency": "EUR", "capacity": 20,
        })
    };
    stack.create_concert(&admin, concert("First Light")).await;

    let before = list_calls(&stack).await;
    let crowd = (0..20).map(|_| gateway.data(None, PAGE, json!({})));
    let pages = futures::future::join_all(crowd).await;
    assert!(pages.iter().all(|page| titles(page).contains(&"First Light".to_owned())));
    assert_eq!(list_calls(&stack).await - before, 1, "twenty visitors, one catalog call");

    // A concert created through the gateway empties the cache at once, despite the long TTL.
    stack.create_concert(&admin, concert("Second Wind")).await;
    let page = gateway.data(None, PAGE, json!({})).await;
    assert!(titles(&page).contains(&"Second Wind".to_owned()), "{page}");

    // Signed-in requests are never answered from the shared cache.
    let fan = gateway.sign_up(&unique_email("regular")).await;
    let before = list_calls(&stack).await;
    gateway.data(Some(&fan), PAGE, json!({})).await;
    gateway.data(Some(&fan), PAGE, json!({})).await;
    assert_eq!(list_calls(&stack).await - before, 2);
}
