//! A measurement, not a check: place-order throughput and latency, and outbox-to-broker lag, with
//! identity, catalog and ordering in one process on this machine. Run it by hand:
//!
//! `cargo test -p ordering --release --test throughput -- --ignored --nocapture`
//!
//! `ORDERS` (default 2000) and `CONCURRENCY` (default 32) change the load.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by hand with --release"]
async fn place_order_throughput_latency_and_outbox_lag() {
    let orders = env_or("ORDERS", 2000);
    let concurrency = env_or("CONCURRENCY", 32);
    let stack = support::spawn().await;
    let mut events = stack.events().await;
    let mut buyers = Vec::new();
    for n in 0..8 {
        buyers.push(stack.buyer(&format!("buyer{n}")).await);
    }
    let concert = stack.concert(100_000).await;
    stack.wait_broker_connected().await;

    // Warm-up: connections, JWKS cache, catalog channel, prepared statements.
    for n in 0..20 {
        assert_eq!(
            stack.place(&buyers[n % 8], &format!("warm-{n}"), concert, 1).await.status,
            StatusCode::CREATED
        );
    }
    events.drain(Duration::from_secs(1)).await;

    let started = Instant::now();
    let mut latencies: Vec<Duration> = futures::stream::iter(0..orders)
        .map(|n| {
            let (stack, buyer) = (&stack, &buyers[n % buyers.len()]);
            async move {
                let sent = Instant::now();
                let answer = stack.place(buyer, &format!("load-{n}"), concert, 1).await;
                assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
                sent.elapsed()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut received = 0;
    while received < orders {
        events.next(Duration::from_secs(30)).await.expect("every event arrives");
        received += 1;
    }
    let all_published = started.elapsed();

    latencies.sort();
    let lag: (f64, f64, f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.95) WITHIN GROUP (ORDER BY s),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY s), max(s)
         FROM (SELECT extract(epoch FROM published_at - created_at)::float8 AS s
               FROM outbox WHERE published_at IS NOT NULL) lags",
    )
    .fetch_one(&stack.orders_db)
    .await
    .expect("outbox lag");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("place-order: {orders} orders, concurrency {concurrency}, {:.2} s", elapsed.as_secs_f64());
    println!("  throughput {:.0} orders/s", orders as f64 / elapsed.as_secs_f64());
    println!(
        "  latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.95)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies[latencies.len() - 1])
    );
    println!(
        "outbox lag (published_at - created_at) ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}",
        lag.0 * 1000.0,
        lag.1 * 1000.0,
        lag.2 * 1000.0,
        lag.3 * 1000.0
    );
    println!("last event on the test queue {:.2} s after the first request", all_published.as_secs_f64());
}
