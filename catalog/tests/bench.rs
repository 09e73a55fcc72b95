//! Hand-run measurements (not timed tests): GetConcert latency with and without the cache, and
//! flash-sale reservation throughput on one concert. Run on a quiet machine with
//! `cargo test --release -p catalog --test bench -- --ignored --nocapture --test-threads 1`.
//! Client and server share the process, so the figures include both ends of the gRPC call.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use proto::catalog::v1 as pb;
use support::{row, spawn};
use uuid::Uuid;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:?} p95={:?} p99={:?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: run by hand with --release"]
async fn measure_get_concert_latency_cached_and_uncached() {
    const N: usize = 2_000;
    let catalog = spawn().await;
    let id = catalog.insert(row(10)).await;
    let key = format!("{}concert:{}", catalog.names.redis_prefix(), id.simple());
    let mut redis = redis::Client::open(integration::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut client = catalog.client.clone();
    let request = || pb::GetConcertRequest { id: id.to_string() };
    for _ in 0..200 {
        client.get_concert(request()).await.unwrap();
    }

    let mut cached = Vec::with_capacity(N);
    for _ in 0..N {
        let started = Instant::now();
        client.get_concert(request()).await.unwrap();
        cached.push(started.elapsed());
    }

    let mut uncached = Vec::with_capacity(N);
    for _ in 0..N {
        // Forget the entry (not timed), so the read goes to Postgres and refills the cache.
        let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut redis).await.unwrap();
        let started = Instant::now();
        client.get_concert(request()).await.unwrap();
        uncached.push(started.elapsed());
    }
    report("GetConcert cached (redis hit)", cached);
    report("GetConcert uncached (miss: redis + postgres + refill)", uncached);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: run by hand with --release"]
async fn measure_flash_sale_reservations_per_second() {
    const SEATS: i32 = 5_000;
    const BUYERS: usize = 6_000;
    const IN_FLIGHT: usize = 64;
    let catalog = spawn().await;
    let mut r = row(10);
    r.capacity = SEATS;
    let concert = catalog.insert(r).await;

    let started = Instant::now();
    let outcomes: Vec<bool> = futures::stream::iter(0..BUYERS)
        .map(|_| {
            let mut client = catalog.client.clone();
            async move {
                let request = pb::ReserveSeatsRequest {
                    order_id: Uuid::new_v4().to_string(),
                    concert_id: concert.to_string(),
                    quantity: 1,
                    hold_seconds: 600,
                };
                match client.reserve_seats(request).await {
                    Ok(_) => true,
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => false,
                    Err(status) => panic!("unexpected {status:?}"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let sold = outcomes.iter().filter(|ok| **ok).count();
    assert_eq!(sold, usize::try_from(SEATS).unwrap());
    assert_eq!(catalog.available_in_db(concert).await, 0);
    println!(
        "flash sale: {BUYERS} ReserveSeats ({IN_FLIGHT} in flight) on one {SEATS}-seat concert in {elapsed:?}: \
         {:.0} requests/s, {:.0} seats held/s, {} refused",
        BUYERS as f64 / elapsed.as_secs_f64(),
        sold as f64 / elapsed.as_secs_f64(),
        BUYERS - sold
    );
}
