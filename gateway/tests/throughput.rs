//! How many cached `concerts` queries per second the gateway serves on this machine. A measurement,
//! not a test: run by hand, in release, while nothing else runs:
//!
//! `cargo test -p gateway --release --test throughput -- --ignored --nocapture`
//!
//! (`THROUGHPUT_SECONDS`, `THROUGHPUT_CONCURRENCY` to vary; defaults 10 s and 32 clients.)

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::Stack;

const QUERY: &str = "{ concerts(first: 20) { edges { node { id title artist city startsAt price { cents currency } available } }
    pageInfo { hasNextPage endCursor } } }";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: run by hand with --release"]
async fn cached_concerts_query_throughput() {
    let stack =
        Stack::start_with(&[("RATE_LIMIT_PER_SECOND", "1000000"), ("RATE_LIMIT_BURST", "1000000")]).await;
    let admin = stack.admin_token().await;
    for i in 0..25 {
        stack
            .create_concert(
                &admin,
                json!({
                    "title": format!("Benchmark Night {i}"), "artist": "Load", "venue": "Hall", "city": "Utrecht",
                    "startsAt": (chrono::Utc::now() + chrono::Duration::days(i + 1)).to_rfc3339(),
                    "priceCents": 5000, "currency": "EUR", "capacity": 1000,
                }),
            )
            .await;
    }
    // Warm catalog's cache and the connection pools.
    let warm = stack.gateway.data(None, QUERY, json!({})).await;
    assert_eq!(warm["concerts"]["edges"].as_array().unwrap().len(), 20);

    let seconds = env_or("THROUGHPUT_SECONDS", 10);
    let concurrency = env_or("THROUGHPUT_CONCURRENCY", 32);
    let url = stack.gateway.graphql_url();
    let body = json!({ "query": QUERY }).to_string();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let clients = (0..concurrency).map(|_| {
        let (url, body) = (url.clone(), body.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let good = match response {
                    Ok(response) => {
                        response.status().is_success()
                            && !response.text().await.unwrap().contains("\"errors\"")
                    }
                    Err(_) => false,
                };
                latencies.push(sent.elapsed());
                if good { ok += 1 } else { failed += 1 }
            }
            (ok, failed, latencies)
        })
    });
    let (mut ok, mut failed, mut latencies) = (0, 0, Vec::new());
    for client in futures::future::join_all(clients).await {
        let (o, f, l) = client.unwrap();
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "cached concerts(first: 20) through the gateway: {concurrency} clients, {elapsed:.1} s: {ok} ok, {failed} failed, \
         {:.0} req/s; latency p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        ok as f64 / elapsed,
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        latencies.last().unwrap(),
    );
    assert_eq!(failed, 0);
}
