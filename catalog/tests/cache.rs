//! Reads come from Redis after the first one, writes make the next read fresh, and a Redis outage
//! costs nothing but speed.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::{Duration, Instant};

use proto::catalog::v1 as pb;
use support::{Settings, eventually, redis_keys, row, spawn, spawn_with};
use uuid::Uuid;

async fn set_title_behind_the_api(catalog: &support::TestCatalog, id: Uuid, title: &str) {
    sqlx::query("UPDATE concerts SET title = $2 WHERE id = $1")
        .bind(id)
        .bind(title)
        .execute(&catalog.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_second_read_is_served_from_the_cache() {
    let catalog = spawn().await;
    let id = catalog.insert(row(3)).await;
    assert_eq!(catalog.get(id).await.unwrap().title, "Evening Show");

    // Changed behind catalog's back: readers keep seeing the cached row until the TTL or a write.
    set_title_behind_the_api(&catalog, id, "Changed In The Database").await;
    assert_eq!(catalog.get(id).await.unwrap().title, "Evening Show");
    let mut client = catalog.client.clone();
    let batch = client
        .batch_get_concerts(pb::BatchGetConcertsRequest { ids: vec![id.to_string()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.concerts[0].title, "Evening Show", "batch reads share the per-concert entries");

    let key = format!("{}concert:{}", catalog.names.redis_prefix(), id.simple());
    let mut redis = redis::Client::open(integration::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut redis).await.unwrap();
    assert!((1..=30).contains(&ttl), "entries carry the configured prefix and TTL (ttl {ttl})");
}

#[tokio::test]
async fn list_pages_are_cached_and_a_write_makes_the_next_page_fresh() {
    let catalog = spawn().await;
    let id = catalog.insert(row(3)).await;
    let list = || {
        let mut client = catalog.client.clone();
        async move {
            let page = client.list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
            page.concerts.into_iter().map(|c| (c.title, c.available)).collect::<Vec<_>>()
        }
    };
    assert_eq!(list().await, [("Evening Show".to_owned(), 500)]);
    set_title_behind_the_api(&catalog, id, "Renamed").await;
    assert_eq!(list().await, [("Evening Show".to_owned(), 500)], "served from the cache");

    // Taking seats is a write: the next page and the next single read show the database again.
    catalog.reserve(Uuid::new_v4(), id, 2).await.unwrap();
    assert_eq!(list().await, [("Renamed".to_owned(), 498)]);
    assert_eq!(catalog.get(id).await.unwrap().available, 498);
}

#[tokio::test]
async fn reads_keep_answering_when_redis_goes_away_and_health_says_degraded() {
    let redis_addr =
        integration::redis_url().trim_start_matches("redis://").parse().expect("redis host:port");
    let proxy = integration::TcpProxy::start(redis_addr).await.unwrap();
    // The production timeout: this test is about a Redis that stops answering.
    let catalog = spawn_with(Settings {
        redis_url: format!("redis://{}", proxy.addr),
        redis_timeout_ms: 100,
        ..Settings::default()
    })
    .await;
    let id = catalog.insert(row(3)).await;
    catalog.get(id).await.expect("read with redis up");
    let (status, body) = catalog.health().await;
    assert_eq!((status, body["checks"]["redis"]["status"].as_str()), (200, Some("healthy")));

    proxy.cut();
    let started = Instant::now();
    for _ in 0..20 {
        let concert = catalog.get(id).await.expect("a read while redis is down");
        assert_eq!(concert.id, id.to_string());
    }
    catalog.reserve(Uuid::new_v4(), id, 1).await.expect("reservations never needed redis");
    assert_eq!(catalog.get(id).await.unwrap().available, 499, "fresh from postgres");
    // 20 reads would take 2 s at the 100 ms timeout each; the breaker skips Redis after a few.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // /health reuses a report for up to a second, so the outage shows within about that.
    let degraded =
        eventually(Duration::from_secs(5), || async { catalog.health().await.1["status"] == "degraded" })
            .await;
    let (status, body) = catalog.health().await;
    assert!(degraded, "{body}");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"]["status"], "degraded", "{body}");

    proxy.restore();
    let recovered =
        eventually(Duration::from_secs(20), || async { catalog.health().await.1["status"] == "healthy" })
            .await;
    assert!(recovered, "health recovers with redis");
}

#[tokio::test]
async fn catalog_starts_and_serves_without_redis() {
    // A cut proxy hangs up on every connection; a port that "nothing listens on" may be taken.
    let redis_addr =
        integration::redis_url().trim_start_matches("redis://").parse().expect("redis host:port");
    let down = integration::TcpProxy::start(redis_addr).await.unwrap();
    down.cut();
    let catalog = spawn_with(Settings {
        redis_url: format!("redis://{}", down.addr),
        redis_timeout_ms: 100,
        ..Settings::default()
    })
    .await;
    let id = catalog.insert(row(3)).await;
    assert_eq!(catalog.get(id).await.unwrap().title, "Evening Show");
    let page =
        catalog.client.clone().list_concerts(pb::ListConcertsRequest::default()).await.unwrap().into_inner();
    assert_eq!(page.concerts.len(), 1);
    let (status, body) = catalog.health().await;
    assert_eq!((status, body["status"].as_str()), (200, Some("degraded")), "{body}");
}

#[tokio::test]
async fn a_finished_test_leaves_no_redis_keys_behind() {
    let catalog = spawn().await;
    let prefix = catalog.names.redis_prefix();
    let id = catalog.insert(row(3)).await;
    catalog.get(id).await.unwrap();
    catalog.client.clone().list_concerts(pb::ListConcertsRequest::default()).await.unwrap();
    catalog.reserve(Uuid::new_v4(), id, 1).await.unwrap();
    catalog.get(id).await.unwrap();
    let keys = redis_keys(&prefix).await;
    assert!(keys.iter().any(|k| k.ends_with("version")), "the version counter exists: {keys:?}");
    assert!(keys.len() >= 2, "{keys:?}");

    catalog.stop().await;
    assert_eq!(redis_keys(&prefix).await, Vec::<String>::new());
}
