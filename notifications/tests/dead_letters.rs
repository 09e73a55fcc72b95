//! An operator working on the dead-letter queue with `notifications dlq ...`: what they see, what a
//! replay and a purge do, and that no message is lost, even when the command is killed halfway.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::time::Duration;

use common::{World, confirmed, event_properties, order_event};
use integration::process::{ServiceProcess, Stream};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use notifications::dead_letters::{DeadLetterQueue, Selection};
use notifications::envelope::{
    ATTEMPT_HEADER, DIED_AT_HEADER, ERROR_HEADER, REASON_HEADER, ROUTING_KEY_HEADER, string_value,
};
use platform::events::{OrderEvent, OrderEventType};
use serde_json::json;
use uuid::Uuid;

/// The properties the worker gives an event it dead-letters after every attempt failed.
fn dead_letter_properties(event: &OrderEvent) -> BasicProperties {
    let mut properties = event_properties(event.event_id);
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(REASON_HEADER.into(), string_value("max_attempts"));
    headers.insert(ERROR_HEADER.into(), string_value("gave up after 6 attempts: database unavailable"));
    headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(6));
    headers.insert(DIED_AT_HEADER.into(), string_value("2030-01-01T10:00:00.000Z"));
    headers.insert(ROUTING_KEY_HEADER.into(), string_value(event.kind.routing_key()));
    properties = properties.with_headers(headers);
    properties
}

/// Puts `events` into the DLQ as the worker would have, in order.
async fn dead_letter(world: &World, events: &[OrderEvent]) {
    let dlq = world.topology().dead_letter_queue();
    let mut confirms = Vec::new();
    for event in events {
        let body = serde_json::to_vec(event).unwrap();
        confirms.push(world.publish_to_queue_unconfirmed(&dlq, &body, dead_letter_properties(event)).await);
    }
    for confirm in confirms {
        confirmed(confirm).await;
    }
}

fn events(count: usize) -> Vec<OrderEvent> {
    (0..count).map(|_| order_event(OrderEventType::Confirmed)).collect()
}

async fn open_dlq(world: &World) -> DeadLetterQueue {
    DeadLetterQueue::connect(&integration::amqp_url(), world.topology()).await.unwrap()
}

/// Event ids of `queue`'s messages, in order, taking them off the queue.
async fn drained_ids(world: &World, queue: &str) -> Vec<String> {
    world.drain(queue).await.iter().map(|d| d.properties.message_id().as_ref().unwrap().to_string()).collect()
}

fn ids(events: &[OrderEvent]) -> Vec<String> {
    events.iter().map(|e| e.event_id.to_string()).collect()
}

/// Runs the real binary on this world's queues.
fn run(world: &World, args: &[&str]) -> ServiceProcess {
    let env = [
        ("AMQP_URL", integration::amqp_url()),
        ("EVENTS_EXCHANGE", world.exchange.clone()),
        ("NOTIFICATIONS_QUEUE", world.queue.clone()),
        ("RETRY_DELAYS", world.retry_delays.to_owned()),
    ];
    ServiceProcess::spawn("notifications", env!("CARGO_BIN_EXE_notifications").as_ref(), args, env).unwrap()
}

async fn finished(mut process: ServiceProcess) -> (bool, Vec<String>, Vec<String>) {
    let status = process.wait_exit(Duration::from_secs(60)).await.unwrap();
    (status.success(), process.lines(Stream::Stdout), process.lines(Stream::Stderr))
}

#[tokio::test]
async fn listing_shows_why_and_when_each_message_died_and_leaves_the_queue_as_it_was() {
    let world = World::new().await;
    let _worker = world.start_worker().await;
    let unknown = order_event(OrderEventType::Created);
    let mut body = serde_json::to_value(&unknown).unwrap();
    body["type"] = json!("order.refunded");
    world.publish_json(&unknown, &body).await;
    let mut invalid = order_event(OrderEventType::Confirmed);
    invalid.buyer_email = "not-an-address".to_owned();
    world.publish(&invalid).await;
    let dlq = world.topology().dead_letter_queue();
    wait_until(|| async { world.messages_in(&dlq).await == 2 }).await;

    let queue = open_dlq(&world).await;
    let mut listed = Vec::new();
    queue.list(100, |letter| listed.push(letter.clone())).await.unwrap();

    let by_id = |event: &OrderEvent| {
        listed.iter().find(|l| l.event_id.as_deref() == Some(&event.event_id.to_string())).unwrap().clone()
    };
    let (unknown_letter, invalid_letter) = (by_id(&unknown), by_id(&invalid));
    assert_eq!(unknown_letter.reason.as_deref(), Some("unknown_type"));
    assert_eq!(unknown_letter.event_type.as_deref(), Some("order.refunded"));
    assert_eq!(unknown_letter.order_id, Some(unknown.order_id.to_string()));
    assert!(unknown_letter.error.as_deref().unwrap().contains("order.refunded"));
    assert_eq!(invalid_letter.reason.as_deref(), Some("invalid"));
    assert_eq!(invalid_letter.event_type.as_deref(), Some("order.confirmed"));
    assert_eq!(invalid_letter.attempts, 1);
    for letter in [&unknown_letter, &invalid_letter] {
        let died = letter.died_at.expect("the worker stamps when it dead-lettered");
        assert!((chrono::Utc::now() - died).num_seconds() < 60, "{died}");
    }
    // Listing again shows the same messages in the same order: nothing was taken.
    let mut again = Vec::new();
    queue.list(100, |letter| again.push(letter.clone())).await.unwrap();
    assert_eq!(again, listed);
    queue.close().await;
    assert_eq!(world.messages_in(&dlq).await, 2);
}

#[tokio::test]
async fn the_command_prints_a_table_or_json_lines_for_scripts() {
    let world = World::new().await;
    world.declare_topology().await;
    let letters = events(2);
    dead_letter(&world, &letters).await;

    let (ok, table, stderr) = finished(run(&world, &["dlq", "list"])).await;
    assert!(ok, "{stderr:?}");
    assert!(table[0].starts_with("EVENT ID"), "{table:?}");
    assert!(table[1].starts_with(&letters[0].event_id.to_string()) && table[1].contains("max_attempts"));
    assert!(stderr.iter().any(|l| l.starts_with("2 message(s) in")), "{stderr:?}");

    let (ok, lines, _) = finished(run(&world, &["dlq", "list", "--json"])).await;
    assert!(ok);
    let parsed: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[1]["event_id"], json!(letters[1].event_id));
    assert_eq!(parsed[1]["order_id"], json!(letters[1].order_id));
    assert_eq!(parsed[1]["reason"], "max_attempts");
    assert_eq!(parsed[1]["attempts"], 6);
    assert_eq!(parsed[1]["died_at"], "2030-01-01T10:00:00Z");
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 2);
}

#[tokio::test]
async fn replaying_one_event_gets_it_notified_and_leaves_the_others_in_order() {
    let mut world = World::new().await;
    world.declare_topology().await;
    let letters = events(3);
    dead_letter(&world, &letters).await;
    let _worker = world.start_worker().await;

    let (ok, stdout, stderr) =
        finished(run(&world, &["dlq", "replay", "--event-id", &letters[1].event_id.to_string()])).await;
    assert!(ok, "{stderr:?}");
    assert_eq!(
        stdout,
        [
            format!("replayed {}", letters[1].event_id),
            format!("1 message(s) replayed from {}", world.topology().dead_letter_queue())
        ]
    );

    world.wait_for_rows(1, Duration::from_secs(20)).await;
    assert_eq!(world.rows_for(letters[1].event_id).await, 1);
    let dlq = world.topology().dead_letter_queue();
    let queue = open_dlq(&world).await;
    let mut left = Vec::new();
    queue.list(100, |l| left.push(l.event_id.clone().unwrap())).await.unwrap();
    queue.close().await;
    assert_eq!(left, [letters[0].event_id.to_string(), letters[2].event_id.to_string()]);

    // An unknown id is an error that changes nothing.
    let (ok, _, stderr) =
        finished(run(&world, &["dlq", "replay", "--event-id", &Uuid::new_v4().to_string()])).await;
    assert!(!ok);
    assert!(stderr.iter().any(|l| l.starts_with("error: no dead letter has event id")), "{stderr:?}");
    assert_eq!(world.messages_in(&dlq).await, 2);
}

#[tokio::test]
async fn replaying_everything_notifies_each_event_once_even_if_it_was_already_notified() {
    let mut world = World::new().await;
    let _worker = world.start_worker().await;
    let letters = events(3);
    world.publish(&letters[0]).await;
    world.wait_for_rows(1, Duration::from_secs(20)).await;
    // The first one was notified before: its dead letter is a stale copy.
    dead_letter(&world, &letters).await;

    let queue = open_dlq(&world).await;
    let replayed = queue.replay(&Selection::All, |_| {}).await.unwrap();
    queue.close().await;

    assert_eq!(replayed, 3);
    world.wait_for_rows(3, Duration::from_secs(20)).await;
    wait_until(|| async { world.messages_waiting().await == 0 }).await;
    for event in &letters {
        assert_eq!(world.inbox.times_sent(event.event_id), 1);
    }
    assert_eq!(world.messages_in(&world.topology().dead_letter_queue()).await, 0);
}

#[tokio::test]
async fn replaying_a_message_the_worker_dead_letters_again_ends_and_keeps_it() {
    let world = World::new().await;
    let _worker = world.start_worker().await;
    let mut broken = order_event(OrderEventType::Confirmed);
    broken.buyer_email = "not-an-address".to_owned();
    world.publish(&broken).await;
    let dlq = world.topology().dead_letter_queue();
    wait_until(|| async { world.messages_in(&dlq).await == 1 }).await;

    // The worker sends it straight back to the DLQ; the replay must not chase it forever.
    let queue = open_dlq(&world).await;
    let replayed = tokio::time::timeout(Duration::from_secs(20), queue.replay(&Selection::All, |_| {}))
        .await
        .expect("the replay ends")
        .unwrap();
    queue.close().await;

    assert_eq!(replayed, 1);
    wait_until(|| async { world.messages_in(&dlq).await == 1 }).await;
    assert_eq!(drained_ids(&world, &dlq).await, [broken.event_id.to_string()]);
}

#[tokio::test]
async fn purging_asks_first_and_removes_only_the_chosen_event() {
    let world = World::new().await;
    world.declare_topology().await;
    let letters = events(3);
    dead_letter(&world, &letters).await;
    let dlq = world.topology().dead_letter_queue();
    let target = letters[1].event_id.to_string();

    // No terminal to answer the question: nothing is removed.
    let (ok, _, stderr) = finished(run(&world, &["dlq", "purge", "--event-id", &target])).await;
    assert!(!ok);
    assert!(stderr.iter().any(|l| l.contains("error: nothing removed")), "{stderr:?}");
    assert_eq!(world.messages_in(&dlq).await, 3);

    let (ok, stdout, stderr) = finished(run(&world, &["dlq", "purge", "--event-id", &target, "--yes"])).await;
    assert!(ok, "{stderr:?}");
    assert_eq!(stdout, [format!("removed {target}")]);
    assert_eq!(
        drained_ids(&world, &dlq).await,
        [letters[0].event_id.to_string(), letters[2].event_id.to_string()]
    );
}

#[tokio::test]
async fn a_replay_killed_halfway_loses_no_message() {
    let world = World::new().await;
    world.declare_topology().await;
    // No worker: replayed copies stay in the work queue where the test can count them.
    let letters = events(1500);
    dead_letter(&world, &letters).await;

    let mut replay = run(&world, &["dlq", "replay", "--all"]);
    replay
        .wait_for_line(Duration::from_secs(30), |line| line == format!("replayed {}", letters[20].event_id))
        .await
        .unwrap();
    drop(replay); // SIGKILL

    let topology = world.topology();
    let dlq = topology.dead_letter_queue();
    // The broker requeues what the dead process held once it notices the closed connection.
    wait_until(|| async { world.messages_in(&dlq).await + world.messages_in(&topology.queue).await >= 1500 })
        .await;
    let in_dlq = drained_ids(&world, &dlq).await;
    let replayed = drained_ids(&world, &topology.queue).await;
    assert!(
        !in_dlq.is_empty() && !replayed.is_empty(),
        "killed halfway: {} left, {} replayed",
        in_dlq.len(),
        replayed.len()
    );
    let mut seen: Vec<String> = in_dlq.iter().chain(&replayed).cloned().collect();
    seen.sort();
    seen.dedup();
    let mut all = ids(&letters);
    all.sort();
    assert_eq!(seen, all, "every message is in the DLQ or was republished (both is fine)");
}

#[tokio::test]
async fn a_listing_killed_halfway_leaves_every_message_in_place() {
    let world = World::new().await;
    world.declare_topology().await;
    let letters = events(3000);
    dead_letter(&world, &letters).await;

    let mut list = run(&world, &["dlq", "list"]);
    list.wait_for_line(Duration::from_secs(30), |line| line.starts_with(&letters[20].event_id.to_string()))
        .await
        .unwrap();
    let finished_already = list.lines(Stream::Stderr).iter().any(|l| l.contains("message(s) in"));
    drop(list); // SIGKILL
    assert!(!finished_already, "the listing ended before the kill: list more messages");

    let dlq = world.topology().dead_letter_queue();
    wait_until(|| async { world.messages_in(&dlq).await == 3000 }).await;
    // RabbitMQ puts them back at their old positions where it can; what matters is that all are there.
    let mut left = drained_ids(&world, &dlq).await;
    left.sort();
    let mut all = ids(&letters);
    all.sort();
    assert_eq!(left, all);
}

/// Polls `condition` for up to 20 s.
async fn wait_until<F: Future<Output = bool>>(condition: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_worker_exports_how_many_messages_wait_in_the_dead_letter_queue() {
    let world = World::new().await;
    world.declare_topology().await;
    dead_letter(&world, &events(2)).await;

    let worker = world.start_worker().await;

    let series = "notifications_queue_messages{queue=\"dead_letter\"}";
    wait_until(|| async { common::counter(&worker, series).await == 2.0 }).await;
    world.publish(&order_event(OrderEventType::Created)).await;
    wait_until(|| async { common::metrics_of(&worker).await.contains("notification_event_age_seconds") })
        .await;
}
