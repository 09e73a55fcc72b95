//! Throughput of the worker, measured by hand (not a timed test):
//! `cargo test --release -p notifications --test throughput -- --ignored --nocapture`
//! (`THROUGHPUT_EVENTS`, default 5000, and `PREFETCH`, default 32, vary the run).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{World, order_event};
use notifications::App;
use platform::events::OrderEventType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run by hand with --release"]
async fn events_per_second() {
    let events: usize = std::env::var("THROUGHPUT_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    let mut world = World::new().await;
    world.start_worker().await.stop().await.unwrap();

    let started = Instant::now();
    let mut confirms = Vec::with_capacity(events);
    for _ in 0..events {
        confirms.push(world.publish_without_confirm(&order_event(OrderEventType::Confirmed)).await);
    }
    for confirm in confirms {
        common::confirmed(confirm).await;
    }
    println!("published {events} events in {:.2?}", started.elapsed());

    // The production set-up: the log sender (with no subscriber installed, logging costs nothing here).
    let mut config = world.config();
    if let Some(prefetch) = std::env::var("PREFETCH").ok().and_then(|v| v.parse().ok()) {
        config.prefetch = prefetch;
    }
    let prefetch = config.prefetch;
    let app = App::build(config).await.unwrap();
    let worker = common::spawn(app);
    let started = Instant::now();
    world.wait_for_rows(events as i64, Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    worker.stop().await.unwrap();
    println!(
        "processed {events} events in {elapsed:.2?} with prefetch {prefetch}: {:.0} events/s",
        events as f64 / elapsed.as_secs_f64()
    );
}
