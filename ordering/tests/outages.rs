//! Ordering when a dependency goes away: catalog (fail fast, write nothing) and the broker (keep
//! taking orders, publish every event once it is back). Each outage is a proxy cut for one test only.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use platform::events::OrderEventType;
use reqwest::StatusCode;
use uuid::Uuid;

#[tokio::test]
async fn with_catalog_unreachable_placing_an_order_fails_fast_and_writes_nothing() {
    let stack = support::spawn_with(support::Options { catalog_via_proxy: true, ..Default::default() }).await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(10).await;
    assert_eq!(stack.place(&buyer, "before", concert, 1).await.status, StatusCode::CREATED);

    let proxy = stack.catalog_proxy.as_ref().expect("catalog proxy");
    proxy.cut();
    let started = Instant::now();
    let refused = stack.place(&buyer, "during", concert, 1).await;
    let took = started.elapsed();
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text);
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert!(took < Duration::from_secs(5), "503 took {took:?}");
    assert_eq!(stack.order_count().await, 1, "nothing half-written");

    // Once the breaker is open, callers are turned away without trying catalog at all.
    for n in 0..6 {
        assert_eq!(
            stack.place(&buyer, &format!("storm-{n}"), concert, 1).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let started = Instant::now();
    assert_eq!(stack.place(&buyer, "open", concert, 1).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(1), "open circuit took {:?}", started.elapsed());
    let health = stack.health().await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["postgres"]["status"], "healthy");
    assert_eq!(stack.order_count().await, 1);

    // The failed key was not used up: the same retry succeeds once catalog is back.
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let retry = stack.place(&buyer, "during", concert, 1).await;
        if retry.status == StatusCode::CREATED {
            break;
        }
        assert_eq!(retry.status, StatusCode::SERVICE_UNAVAILABLE, "{}", retry.text);
        assert!(Instant::now() < deadline, "catalog never came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(stack.order_count().await, 2);
    stack.wait_available(concert, 8).await;
}

#[tokio::test]
async fn orders_placed_while_the_broker_is_unreachable_are_all_announced_once_it_is_back() {
    let stack = support::spawn_with(support::Options { broker_via_proxy: true, ..Default::default() }).await;
    let mut events = stack.events().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(100).await;
    stack.wait_broker_connected().await;
    let first = stack.place(&buyer, "before", concert, 1).await;
    assert_eq!(events.expect().await.event.order_id.to_string(), first.json["id"].as_str().expect("id"));

    let proxy = stack.broker_proxy.as_ref().expect("broker proxy");
    proxy.cut();
    const N: usize = 20;
    let mut placed = HashSet::new();
    for n in 0..N {
        let started = Instant::now();
        let answer = stack.place(&buyer, &format!("during-{n}"), concert, 1).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        assert!(started.elapsed() < Duration::from_secs(5), "a request waited on the broker");
        placed.insert(Uuid::parse_str(answer.json["id"].as_str().expect("id")).expect("uuid"));
    }
    assert!(events.next(Duration::from_secs(1)).await.is_none(), "nothing gets through while cut");
    assert_eq!(stack.health().await["checks"]["rabbitmq"]["status"], "degraded");

    proxy.restore();
    let mut announced = HashSet::new();
    let mut event_ids = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while announced.len() < N {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(received) = events.next(remaining).await else {
            panic!("only {} of {N} events arrived after the broker came back", announced.len());
        };
        assert_eq!(received.event.kind, OrderEventType::Created);
        event_ids.insert(received.event.event_id);
        announced.insert(received.event.order_id);
    }
    assert_eq!(announced, placed, "every order placed during the outage was announced");
    assert_eq!(event_ids.len(), N, "one distinct event per order, none missing (redeliveries repeat an id)");
    // Delivery to the queue can beat the confirm back to the relay: the rows are marked just after.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&stack.orders_db)
            .await
            .expect("count unpublished");
        if unpublished == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{unpublished} rows never marked published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_broker_dropping_the_relay_mid_stream_loses_no_event() {
    let stack = support::spawn().await;
    let mut events = stack.events().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(100).await;
    stack.wait_broker_connected().await;

    // Orders keep coming, a few every 50 ms for about 3 s, while the broker closes the relay's
    // connection twice (as on a restart): publishes are in flight when it goes.
    const N: usize = 60;
    let place_all = async {
        let mut answers = Vec::new();
        for wave in 0..N / 3 {
            let keys: Vec<String> = (0..3).map(|n| format!("k-{wave}-{n}")).collect();
            answers.extend(
                futures::future::join_all(keys.iter().map(|k| stack.place(&buyer, k, concert, 1))).await,
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    };
    let close_twice = async {
        let mut closed = stack.broker_closes_relay_connection().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.wait_broker_connected().await;
        closed += stack.broker_closes_relay_connection().await;
        closed
    };
    let (answers, closed) = tokio::join!(place_all, close_twice);
    assert!(closed >= 1, "the relay had a connection to close");
    let mut placed = HashSet::new();
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        placed.insert(Uuid::parse_str(answer.json["id"].as_str().expect("id")).expect("uuid"));
    }

    let mut announced = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while announced.len() < N {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(received) = events.next(remaining).await else {
            panic!("only {} of {N} orders were announced", announced.len());
        };
        announced.insert(received.event.order_id);
    }
    assert_eq!(announced, placed);
}
