//! Events pile up while the worker is down; when it comes back every buyer is told exactly once,
//! including when the worker is stopped again in the middle of the backlog.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{World, order_event};
use platform::events::OrderEventType;

const EVENTS: usize = 1000;

/// Publishes `count` events of every kind and waits for the broker's confirms.
async fn publish_backlog(world: &World, count: usize) {
    let kinds = [OrderEventType::Created, OrderEventType::Confirmed, OrderEventType::Cancelled];
    let mut confirms = Vec::with_capacity(count);
    for i in 0..count {
        confirms.push(world.publish_without_confirm(&order_event(kinds[i % kinds.len()])).await);
    }
    for confirm in confirms {
        common::confirmed(confirm).await;
    }
}

#[tokio::test]
async fn a_thousand_events_published_while_the_worker_was_stopped_are_each_notified_once() {
    let mut world = World::new().await;
    // A first run declares the queue, as a deployed worker would have; then it goes away.
    world.start_worker().await.stop().await.unwrap();

    publish_backlog(&world, EVENTS).await;
    assert_eq!(world.messages_in(&world.queue).await as usize, EVENTS);

    let worker = world.start_worker().await;
    world.wait_for_rows(EVENTS as i64, Duration::from_secs(120)).await;
    worker.stop().await.unwrap();

    assert_eq!(world.notification_rows().await, EVENTS as i64);
    let sent = world.inbox.sent();
    let distinct: HashSet<_> = sent.iter().map(|n| n.event_id).collect();
    assert_eq!(sent.len(), EVENTS, "no notification sent twice");
    assert_eq!(distinct.len(), EVENTS);
    assert_eq!(world.messages_in(&world.queue).await, 0);
}

#[tokio::test]
async fn a_worker_stopped_mid_backlog_finishes_what_it_started_and_the_next_one_resumes() {
    let mut world = World::new().await;
    world.start_worker().await.stop().await.unwrap();
    publish_backlog(&world, EVENTS).await;

    let worker = world.start_worker().await;
    world.wait_for_rows(100, Duration::from_secs(60)).await;
    worker.stop().await.unwrap();
    let after_first = world.notification_rows().await;
    assert_eq!(world.inbox.sent().len() as i64, after_first, "everything sent was recorded");
    assert_eq!(
        world.messages_waiting().await as i64,
        EVENTS as i64 - after_first,
        "in-flight deliveries were acked, the rest returned to the queue"
    );
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 0);

    let worker = world.start_worker().await;
    world.wait_for_rows(EVENTS as i64, Duration::from_secs(120)).await;
    worker.stop().await.unwrap();

    let sent = world.inbox.sent();
    let distinct: HashSet<_> = sent.iter().map(|n| n.event_id).collect();
    assert_eq!((sent.len(), distinct.len()), (EVENTS, EVENTS));
}
