//! Ordering when a dependency goes away: catalog (fail fast, write nothing; a cancel still
//! succeeds and its seats come back later) and the broker (keep taking orders, publish every event
//! once it is back; a stuck broker holds neither locks nor shutdown). Each outage is a proxy between
//! one test's services, so the shared servers stay up for every other test.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use platform::events::OrderEventType;
use reqwest::StatusCode;
use support::broker_link::Flow;
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
    // Named, so that the gateway does not hold catalog's outage against ordering.
    assert_eq!(refused.json["type"], "https://ticketflow.dev/problems/catalog-unavailable");
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
    // Well under one catalog attempt's 3 s deadline: no attempt was made.
    assert!(started.elapsed() < Duration::from_secs(2), "open circuit took {:?}", started.elapsed());
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
    let stack = support::spawn_with(support::Options { broker_via_proxy: true, ..Default::default() }).await;
    let mut events = stack.events().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(100).await;
    stack.wait_broker_connected().await;
    let link = stack.broker_proxy.as_ref().expect("broker link");

    // Orders keep coming, a few every 50 ms for about 3 s, while the relay's connection is dropped
    // twice (as on a broker restart): publishes are in flight when it goes.
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
    let drop_twice = async {
        for _ in 0..2 {
            // Drop the connection once it has published something, so it goes mid-stream.
            let (connections, before) = (link.connections_carried(), published(&stack).await);
            wait_until("the relay publishes on its connection", || async {
                published(&stack).await > before
            })
            .await;
            link.cut();
            link.restore();
            wait_until("the relay reconnects", || async { link.connections_carried() > connections }).await;
        }
    };
    let (answers, ()) = tokio::join!(place_all, drop_twice);
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
    assert!(link.connections_carried() >= 3, "the relay reconnected after each drop");
}

#[tokio::test]
async fn cancelling_a_paid_order_while_catalog_is_unreachable_cancels_it_and_gives_the_seats_back_later() {
    let stack = support::spawn_with(support::Options { catalog_via_proxy: true, ..Default::default() }).await;
    let mut events = stack.events().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(10).await;
    let placed = stack.place(&buyer, "paid", concert, 2).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    let id = placed.json["id"].as_str().expect("order id").to_owned();
    let confirmed = stack.confirm(&buyer, &id, "tok_visa").await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    assert_eq!(events.expect().await.event.kind, OrderEventType::Created);
    assert_eq!(events.expect().await.event.kind, OrderEventType::Confirmed);
    stack.wait_available(concert, 8).await;

    let proxy = stack.catalog_proxy.as_ref().expect("catalog proxy");
    proxy.cut();
    let cancelled = stack.cancel(&buyer, &id).await;
    assert_eq!(cancelled.status, StatusCode::OK, "the cancel does not depend on catalog: {}", cancelled.text);
    assert_eq!(cancelled.json["status"], "Cancelled");
    let event = events.expect().await;
    assert_eq!((event.event.kind, event.event.reason.as_deref()), (OrderEventType::Cancelled, Some("buyer")));
    assert_eq!(stack.get(&buyer, &format!("/orders/{id}")).await.json["status"], "Cancelled");
    // Catalog has not heard of it: the seats stay off sale (never on sale twice), and ordering
    // remembers that it owes catalog the release.
    assert_eq!(stack.available(concert).await, 8);
    assert_eq!(stack.owed_seat_releases().await, 1);

    proxy.restore();
    stack.wait_available(concert, 10).await;
    wait_until("the release is recorded", || async { stack.owed_seat_releases().await == 0 }).await;
    assert!(events.next(Duration::from_millis(500)).await.is_none(), "cancelled once, announced once");
}

#[tokio::test]
async fn a_broker_that_stops_taking_publishes_neither_holds_the_outbox_locked_nor_stalls_shutdown() {
    let stack = support::spawn_with(support::Options { broker_via_proxy: true, ..Default::default() }).await;
    stack.wait_broker_connected().await;
    let link = stack.broker_proxy.as_ref().expect("broker link");

    // The broker stops reading (as under a memory alarm, which blocks publishers). Events bigger
    // than every socket buffer on the way make the publish itself block, not only its confirm.
    link.set_flow(Flow::Stalled);
    const ROWS: i64 = 24;
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload)
         SELECT gen_random_uuid(), 'test.padding', jsonb_build_object('padding', repeat('x', 512 * 1024))
         FROM generate_series(1, $1)",
    )
    .bind(ROWS)
    .execute(&stack.orders_db)
    .await
    .expect("insert a backlog of large events");
    wait_until("the relay claims the backlog", || async { lockable_rows(&stack).await < ROWS }).await;

    // It gives up within its publish timeout (3 s here): the rows are free for another replica
    // and /health says the broker is away.
    let stuck = Instant::now();
    wait_until("the relay lets go of the backlog", || async { lockable_rows(&stack).await == ROWS }).await;
    wait_until("/health reports the broker", || async {
        stack.health().await["checks"]["rabbitmq"]["status"] != "healthy"
    })
    .await;
    assert!(stuck.elapsed() < Duration::from_secs(20), "rows locked for {:?}", stuck.elapsed());

    // Nor does shutdown wait for the broker (RunningService::stop allows 10 s).
    let ordering = stack.ordering;
    ordering.stop().await.expect("ordering stops while the broker takes nothing");
    assert_eq!(unpublished(&stack.orders_db).await, ROWS, "nothing was marked published");
}

#[tokio::test]
async fn shutdown_publishes_a_backlog_for_a_bounded_time_and_leaves_the_rest_for_the_next_start() {
    let stack = support::spawn_with(support::Options { broker_via_proxy: true, ..Default::default() }).await;
    stack.wait_broker_connected().await;
    let link = stack.broker_proxy.as_ref().expect("broker link");

    // A slow broker link: each batch of 100 takes at least 100 ms (publishes one way, confirms the
    // other), so this backlog needs well over 30 s.
    link.set_flow(Flow::Slow(Duration::from_millis(50)));
    const ROWS: i64 = 30_000;
    sqlx::query(
        "INSERT INTO outbox (event_id, routing_key, payload)
         SELECT gen_random_uuid(), 'test.backlog', jsonb_build_object('n', n) FROM generate_series(1, $1) n",
    )
    .bind(ROWS)
    .execute(&stack.orders_db)
    .await
    .expect("insert a backlog");
    wait_until("the relay starts on the backlog", || async { unpublished(&stack.orders_db).await < ROWS })
        .await;

    // The relay finishes its batch in flight, then drains for at most 5 s more.
    let ordering = stack.ordering;
    ordering.stop().await.expect("ordering stops within 10 s despite the backlog");
    let left = unpublished(&stack.orders_db).await;
    assert!(left > 0, "the drain was bounded, so part of the backlog waits for the next start");
}

/// Unpublished outbox rows that nobody holds locked right now.
async fn lockable_rows(stack: &support::Stack) -> i64 {
    let mut tx = stack.orders_db.begin().await.expect("begin");
    let count = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT id FROM outbox WHERE published_at IS NULL FOR UPDATE SKIP LOCKED) free",
    )
    .fetch_one(&mut *tx)
    .await
    .expect("count lockable rows");
    tx.rollback().await.expect("rollback");
    count
}

async fn unpublished(db: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(db)
        .await
        .expect("count unpublished")
}

/// Outbox rows the relay has published so far.
async fn published(stack: &support::Stack) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
        .fetch_one(&stack.orders_db)
        .await
        .expect("count published")
}

/// Polls `condition` every 50 ms for up to 30 s.
async fn wait_until<F, Fut>(what: &str, condition: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
