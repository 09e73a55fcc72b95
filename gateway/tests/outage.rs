//! When catalog goes away, the gateway says so at once (`UNAVAILABLE`) instead of hanging, keeps
//! serving what does not need catalog, and recovers by itself when catalog is back.
//!
//! Alone in its file: it reads the process-wide metrics registry.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Stack, error_code, unique_email};

#[tokio::test]
async fn catalog_down_means_unavailable_well_within_the_deadline_and_recovery_after() {
    let stack = Stack::start_with(&[("BREAKER_COOL_DOWN_SECONDS", "1")]).await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = stack
        .create_concert(
            &admin,
            json!({
                "title": "Storm Night", "artist": "Outage", "venue": "Melkweg", "city": "Amsterdam",
                "startsAt": (chrono::Utc::now() + chrono::Duration::days(5)).to_rfc3339(),
                "priceCents": 3000, "currency": "EUR", "capacity": 50,
            }),
        )
        .await;
    let fan = gateway.sign_up(&unique_email("fan")).await;
    let browse = "{ concerts { edges { node { id } } } }";
    assert_eq!(
        gateway.data(None, browse, json!({})).await["concerts"]["edges"][0]["node"]["id"],
        concert.as_str()
    );

    stack.catalog_proxy.cut();
    for attempt in 0..8 {
        let started = Instant::now();
        let response = gateway.graphql(None, browse, json!({})).await;
        let elapsed = started.elapsed();
        assert_eq!(error_code(&response).as_deref(), Some("UNAVAILABLE"), "attempt {attempt}: {response}");
        assert_eq!(response["errors"][0]["extensions"]["service"], "catalog");
        // Fast means well inside the 5 s downstream deadline (a hung call would take all of it); the
        // bound is loose because the machine running the tests is shared.
        assert!(elapsed < Duration::from_secs(3), "attempt {attempt} took {elapsed:?}");
    }
    let single = gateway
        .graphql(None, "query($id: ID!) { concert(id: $id) { title } }", json!({ "id": concert }))
        .await;
    assert_eq!(error_code(&single).as_deref(), Some("UNAVAILABLE"), "{single}");

    // After a few failures the circuit is open: later calls fail without trying catalog at all.
    let metrics = gateway
        .http
        .get(format!("{}/metrics", gateway.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|line| line.starts_with("circuit_breaker_opened_total{breaker=\"catalog\"}")),
        "the catalog circuit opened:\n{metrics}"
    );

    // What does not need catalog still works.
    let me = gateway.data(Some(&fan), "{ me { email } myOrders { edges { cursor } } }", json!({})).await;
    assert!(me["me"]["email"].as_str().is_some());

    stack.catalog_proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = gateway.graphql(None, browse, json!({})).await;
        if response.get("errors").is_none() {
            assert_eq!(response["data"]["concerts"]["edges"][0]["node"]["id"], concert.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "catalog never came back: {response}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
