//! When Postgres or the broker connection goes away for a moment, no buyer misses a notification
//! and none gets one twice. Each outage is a `TcpProxy` cut between this test's worker and the
//! shared server, so other tests keep their dependencies.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{World, order_event, route_through, upstream_of};
use integration::{RunningService, TcpProxy};
use platform::events::OrderEventType;
use uuid::Uuid;

async fn health_of(worker: &RunningService) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("{}/health", worker.http_url())).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Polls `/health` until `check` reports `status`, failing after 20 s.
async fn wait_for_check(worker: &RunningService, check: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, health) = health_of(worker).await;
        if health["checks"][check]["status"] == status {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{check} never became {status}: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_event_arriving_while_the_database_is_down_is_retried_and_delivered_once() {
    let mut world = World::new().await;
    // Enough attempts to outlast the outage below.
    world.max_attempts = 30;
    let proxy = TcpProxy::start(upstream_of(&world.db.url, 5432).await).await.unwrap();
    let config = world.config_via(&integration::amqp_url(), &route_through(&world.db.url, proxy.addr).await);
    let worker = world.start_worker_with(config).await;

    // The registry is per process; the other test in this file schedules no retries.
    let retried_before = common::counter(&worker, "notifications_retried_total").await;
    proxy.cut();
    let event = order_event(OrderEventType::Created);
    world.publish(&event).await;
    wait_for_check(&worker, "postgres", "unhealthy").await;
    let (status, _) = health_of(&worker).await;
    assert_eq!(status, 503);
    // Wait until the worker has failed an attempt and scheduled a retry while the database is away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while common::counter(&worker, "notifications_retried_total").await < retried_before + 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "no retry scheduled during the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(world.inbox.sent().is_empty(), "nothing can be sent before it is recorded");

    proxy.restore();
    world.wait_for_rows(1, Duration::from_secs(30)).await;
    worker.stop().await.unwrap();

    assert_eq!(world.inbox.times_sent(event.event_id), 1);
    assert_eq!(world.rows_for(event.event_id).await, 1);
    for queue in world.topology().queues() {
        assert_eq!(world.messages_in(&queue).await, 0, "{queue} is empty");
    }
}

#[tokio::test]
async fn losing_the_broker_connection_mid_stream_loses_nothing() {
    let mut world = World::new().await;
    let amqp_url = integration::amqp_url();
    let proxy = TcpProxy::start(upstream_of(&amqp_url, 5672).await).await.unwrap();
    let config = world.config_via(&route_through(&amqp_url, proxy.addr).await, &world.db.url);
    let worker = world.start_worker_with(config).await;

    // Ordering keeps publishing to the real broker throughout; only the worker's link is cut.
    let mut published: Vec<Uuid> = Vec::new();
    let mut publish_batch = async |world: &World, count: usize| {
        let mut confirms = Vec::new();
        for _ in 0..count {
            let event = order_event(OrderEventType::Confirmed);
            published.push(event.event_id);
            confirms.push(world.publish_without_confirm(&event).await);
        }
        for confirm in confirms {
            common::confirmed(confirm).await;
        }
    };
    publish_batch(&world, 300).await;
    proxy.cut();
    publish_batch(&world, 200).await;
    // Once the worker knows it is disconnected, these pile up for its reconnection.
    wait_for_check(&worker, "rabbitmq", "unhealthy").await;
    publish_batch(&world, 200).await;
    proxy.restore();
    publish_batch(&world, 300).await;

    world.wait_for_rows(1000, Duration::from_secs(90)).await;
    wait_for_check(&worker, "rabbitmq", "healthy").await;
    worker.stop().await.unwrap();

    assert_eq!(world.notification_rows().await, 1000);
    let sent = world.inbox.sent();
    assert_eq!(sent.len(), 1000, "each event sent once: redeliveries of recorded events are skipped");
    for event_id in published {
        assert_eq!(world.inbox.times_sent(event_id), 1);
    }
    assert_eq!(world.messages_in(&world.queue).await, 0);
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 0);
}
