//! A buyer is told once about each thing that happens to their order, whatever the broker repeats,
//! and messages the worker cannot understand end up in the dead-letter queue without stopping it.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{RecordingSender, World, order_event};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use notifications::App;
use notifications::notification::NotificationKind;
use platform::events::{OrderEventType, OrderStatus};

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_placed_order_is_recorded_and_the_buyer_told_once() {
    let mut world = World::new().await;
    let worker = world.start_worker().await;

    let event = order_event(OrderEventType::Created);
    world.publish(&event).await;
    world.wait_for_rows(1, WITHIN).await;

    assert_eq!(world.rows_for(event.event_id).await, 1, "recorded with sent_at");
    let sent = world.inbox.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, NotificationKind::OrderReceived);
    assert_eq!(sent[0].order_id, event.order_id);
    assert_eq!(sent[0].recipient.address(), "buyer@example.com");
    assert!(sent[0].body.contains("held until"), "{}", sent[0].body);

    let pg = world.pg().await;
    let (kind, subject): (String, String) =
        sqlx::query_as("SELECT notification_type, subject FROM notifications WHERE event_id = $1")
            .bind(event.event_id)
            .fetch_one(&pg)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), subject.as_str()), ("order_received", "We received your order"));

    let metrics = common::metrics_of(&worker).await;
    assert!(metrics.contains("notifications_processed_total{type=\"order_received\"}"), "{metrics}");
    assert!(metrics.contains("notification_processing_seconds"), "{metrics}");

    worker.stop().await.unwrap();
    assert_eq!(world.messages_in(&world.queue).await, 0, "acked");
}

#[tokio::test]
async fn the_default_worker_logs_the_notification_and_records_it() {
    let mut world = World::new().await;
    // App::build without SMTP_URL: the log sender.
    let app = App::build(world.config()).await.unwrap();
    let worker = common::spawn(app);
    worker.wait_healthy(WITHIN).await.unwrap();

    let event = order_event(OrderEventType::Confirmed);
    world.publish(&event).await;
    world.wait_for_rows(1, WITHIN).await;
    assert_eq!(world.rows_for(event.event_id).await, 1);

    worker.stop().await.unwrap();
}

#[tokio::test]
async fn the_same_event_delivered_five_times_notifies_once() {
    let mut world = World::new().await;
    let worker = world.start_worker().await;
    // The registry is per process; no other test in this file produces duplicates.
    let duplicates_before = common::counter(&worker, "notifications_duplicates_total").await;

    let event = order_event(OrderEventType::Cancelled);
    for _ in 0..5 {
        world.publish(&event).await;
    }
    world.wait_for_rows(1, WITHIN).await;
    tokio::time::timeout(WITHIN, async {
        while common::counter(&worker, "notifications_duplicates_total").await < duplicates_before + 4.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("four copies skipped as duplicates");
    worker.stop().await.unwrap();

    assert_eq!(world.notification_rows().await, 1);
    assert_eq!(world.inbox.times_sent(event.event_id), 1);
    assert_eq!(world.messages_in(&world.queue).await, 0, "every copy acked");
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_and_the_worker_keeps_consuming() {
    let mut world = World::new().await;
    let worker = world.start_worker().await;

    let json = BasicProperties::default().with_content_type("application/json".into());
    common::confirmed(world.publish_raw("order.created", b"{not json", json.clone()).await).await;
    common::confirmed(world.publish_raw("order.shipped", br#"{"type":"order.shipped"}"#, json).await).await;
    let event = order_event(OrderEventType::Confirmed);
    world.publish(&event).await;

    world.wait_for_rows(1, WITHIN).await;
    assert_eq!(world.inbox.times_sent(event.event_id), 1);

    let first = world.next_dead_letter(WITHIN).await.expect("the malformed message in the DLQ");
    assert_eq!(first.data, b"{not json");
    let headers = first.properties.headers().clone().unwrap();
    assert_eq!(headers.inner().get("x-dead-letter-reason"), Some(&AMQPValue::LongString("malformed".into())));
    assert_eq!(
        headers.inner().get("x-original-routing-key"),
        Some(&AMQPValue::LongString("order.created".into()))
    );
    assert!(
        matches!(headers.inner().get("x-dead-letter-error"), Some(AMQPValue::LongString(s)) if s.to_string().contains("JSON"))
    );

    let second = world.next_dead_letter(WITHIN).await.expect("the unknown event in the DLQ");
    let headers = second.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-dead-letter-reason"),
        Some(&AMQPValue::LongString("unknown_type".into()))
    );

    let metrics = common::metrics_of(&worker).await;
    assert!(metrics.contains("notifications_dead_lettered_total{reason=\"malformed\"}"), "{metrics}");
    worker.stop().await.unwrap();
    assert_eq!(world.notification_rows().await, 1);
}

#[tokio::test]
async fn an_order_placed_without_a_hold_deadline_is_still_notified() {
    // `holdExpiresAt` is not in the contract's event table: a producer may leave it out.
    let mut world = World::new().await;
    let worker = world.start_worker().await;

    let mut event = order_event(OrderEventType::Created);
    event.hold_expires_at = None;
    world.publish(&event).await;
    world.wait_for_rows(1, WITHIN).await;
    worker.stop().await.unwrap();

    let sent = world.inbox.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].kind, NotificationKind::OrderReceived);
    assert!(sent[0].body.contains("held for a limited time"), "{}", sent[0].body);
    assert_eq!(world.rows_for(event.event_id).await, 1);
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn an_event_with_fields_this_worker_does_not_know_is_processed() {
    // A newer ordering adding a field during a rolling deploy must not dead-letter every event.
    let mut world = World::new().await;
    let worker = world.start_worker().await;

    let event = order_event(OrderEventType::Confirmed);
    let mut body = serde_json::to_value(&event).unwrap();
    body["seatNumbers"] = serde_json::json!(["A12", "A13"]);
    body["loyalty"] = serde_json::json!({"points": 120, "tier": "gold"});
    world.publish_json(&event, &body).await;
    world.wait_for_rows(1, WITHIN).await;
    worker.stop().await.unwrap();

    assert_eq!(world.inbox.times_sent(event.event_id), 1);
    assert_eq!(world.rows_for(event.event_id).await, 1);
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 0);
    assert_eq!(world.messages_in(&world.queue).await, 0, "acked");
}

#[tokio::test]
async fn an_event_that_breaks_the_contract_is_dead_lettered_without_retries() {
    let world = World::new().await;
    let worker = world.start_worker().await;

    // A placed order must be Pending; one that says otherwise contradicts its own type.
    let mut event = order_event(OrderEventType::Created);
    event.status = OrderStatus::Confirmed;
    world.publish(&event).await;

    let dead = world.next_dead_letter(WITHIN).await.expect("in the DLQ");
    let headers = dead.properties.headers().clone().unwrap();
    assert_eq!(headers.inner().get("x-dead-letter-reason"), Some(&AMQPValue::LongString("invalid".into())));
    assert!(headers.inner().get("x-attempt").is_none(), "dead-lettered on the first attempt");
    assert!(world.inbox.sent().is_empty());
    worker.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_mail_server_delays_deliveries_but_fails_none_when_more_are_prefetched_than_pooled() {
    let mut world = World::new().await;
    // Any transient failure (such as waiting too long for a pooled connection) would send the
    // event straight to the dead-letter queue, and the buyer would never hear of it.
    world.max_attempts = 1;
    // Each send outlasts the pool's 1 s acquire timeout.
    world.inbox = RecordingSender::slow(Duration::from_millis(1200));
    let mut config = world.config();
    config.prefetch = 16;
    config.database.max_connections = 3;
    config.database.acquire_timeout = Duration::from_secs(1);
    let worker = world.start_worker_with(config).await;

    let events: Vec<_> = (0..8).map(|_| order_event(OrderEventType::Confirmed)).collect();
    for event in &events {
        world.publish(event).await;
    }
    world.wait_for_rows(8, Duration::from_secs(60)).await;
    worker.stop().await.unwrap();

    for event in &events {
        assert_eq!(world.inbox.times_sent(event.event_id), 1);
        assert_eq!(world.rows_for(event.event_id).await, 1);
    }
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 0, "nothing dead-lettered");
    let most = world.inbox.most_at_once();
    assert!((1..=2).contains(&most), "{most} sends at once; the pool of 3 keeps one for /health");
}

#[tokio::test]
async fn a_mail_server_that_never_answers_costs_a_retry_not_a_stuck_delivery() {
    let mut world = World::new().await;
    world.inbox = RecordingSender::hanging_first(1);
    let mut config = world.config();
    config.send_timeout = Duration::from_millis(500);
    let worker = world.start_worker_with(config).await;

    let event = order_event(OrderEventType::Created);
    world.publish(&event).await;
    world.wait_for_rows(1, WITHIN).await;
    worker.stop().await.unwrap();

    assert_eq!(world.inbox.times_sent(event.event_id), 1, "sent by the retry, once");
    assert_eq!(world.rows_for(event.event_id).await, 1);
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 0);
    for queue in world.topology().queues() {
        assert_eq!(world.messages_in(&queue).await, 0, "{queue} is empty");
    }
}

#[tokio::test]
async fn health_reports_the_broker_and_the_database() {
    let world = World::new().await;
    let worker = world.start_worker().await;
    let health: serde_json::Value =
        reqwest::get(format!("{}/health", worker.http_url())).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["checks"]["rabbitmq"]["status"], "healthy");
    assert_eq!(health["checks"]["postgres"]["status"], "healthy");
    worker.stop().await.unwrap();
}
