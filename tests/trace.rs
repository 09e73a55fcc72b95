//! `ticketflow trace ORDER_ID` as an operator runs it after a purchase on a running stack: the
//! order's story from ordering's, notifications' and catalog's databases, in time order.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::path::Path;
use std::time::Duration;

use integration::process::Stream;
use integration::{BinaryStack, ServiceProcess};

/// Runs the launcher's trace command against the stack's databases, as the launcher would find them.
async fn trace(stack: &BinaryStack, order_id: &str) -> (bool, Vec<String>, Vec<String>) {
    let dbs = &stack.databases;
    let env = [
        ("ORDERING_DATABASE_URL", dbs.ordering.url.clone()),
        ("CATALOG_DATABASE_URL", dbs.catalog.url.clone()),
        ("NOTIFICATIONS_DATABASE_URL", dbs.notifications.url.clone()),
    ];
    let program = Path::new(env!("CARGO_BIN_EXE_ticketflow"));
    let mut process = ServiceProcess::spawn("ticketflow trace", program, &["trace", order_id], env).unwrap();
    let status = process.wait_exit(Duration::from_secs(30)).await.unwrap();
    (status.success(), process.lines(Stream::Stdout), process.lines(Stream::Stderr))
}

/// The index of the first line containing every one of `parts`.
fn line_with(lines: &[String], parts: &[&str]) -> usize {
    lines
        .iter()
        .position(|line| parts.iter().all(|part| line.contains(part)))
        .unwrap_or_else(|| panic!("no line with {parts:?} in:\n{}", lines.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_a_paid_order_tells_its_story_in_time_order_with_the_trace_ids() {
    integration::init();
    let stack = BinaryStack::start().await.unwrap();
    let purchase = stack.graphql().unwrap().buy_pay_and_cancel().await.unwrap();

    // The worker needs a moment to tell the buyer about both events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let (ok, lines, stderr) = trace(&stack, &purchase.paid).await;
        assert!(ok, "{stderr:?}");
        if lines.iter().filter(|line| line.contains(" sent to ")).count() == 2 {
            break lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "not notified in time:\n{}", lines.join("\n"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    assert!(lines[0].starts_with(&format!("order {}: Confirmed, 1 seat(s)", purchase.paid)), "{lines:?}");
    let placed = line_with(&lines, &["ordering", "order placed: Pending"]);
    let held = line_with(&lines, &["catalog", "1 seat(s) held until"]);
    let created_written = line_with(&lines, &["outbox event order.created", "written (trace "]);
    let created_published = line_with(&lines, &["outbox event order.created", "published to RabbitMQ"]);
    let received = line_with(&lines, &["notifications", "order_received sent to f***@example.com"]);
    let confirmed = line_with(&lines, &["ordering", "order Confirmed"]);
    let confirmed_published = line_with(&lines, &["outbox event order.confirmed", "published to RabbitMQ"]);
    let hold_confirmed = line_with(&lines, &["catalog", "hold confirmed"]);
    let tickets = line_with(&lines, &["notifications", "tickets_confirmed sent to f***@example.com"]);
    assert!(held < created_written && placed <= created_written, "{lines:#?}");
    // `published_at` is stamped once the relay has the broker's confirm, which can be after the
    // worker already received the event: only the write is certain to come before the notification.
    assert!(created_written < created_published && created_written < received, "{lines:#?}");
    assert!(hold_confirmed < confirmed && confirmed < confirmed_published, "{lines:#?}");
    assert!(confirmed < tickets, "{lines:#?}");
    let search = lines.last().unwrap();
    assert!(search.starts_with(&format!("search the logs for order.id={} or trace.id ", purchase.paid)));
    assert!(search.contains("(order.created)") && search.contains("(order.confirmed)"), "{search}");

    // The cancelled one says why, and its hold was given back.
    let (ok, lines, _) = trace(&stack, &purchase.cancelled).await;
    assert!(ok);
    assert!(lines[0].contains(": Cancelled (buyer)"), "{lines:?}");
    line_with(&lines, &["catalog", "hold released"]);

    // An order nobody placed is one line on stderr.
    let (ok, _, stderr) = trace(&stack, "01a2b3c4-0000-7000-8000-000000000000").await;
    assert!(!ok);
    assert_eq!(stderr, ["error: ordering has no order 01a2b3c4-0000-7000-8000-000000000000"]);
}
