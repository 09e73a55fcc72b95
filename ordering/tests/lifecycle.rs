//! A buyer's order from placement to confirmation and cancellation, and the events it produces.

mod support;

use std::time::Duration;

use platform::events::{OrderEventType, OrderStatus};
use reqwest::StatusCode;
use uuid::Uuid;

#[tokio::test]
async fn a_buyer_places_confirms_and_cancels_an_order_and_every_step_is_announced() {
    let stack = support::spawn().await;
    let mut events = stack.events().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(100).await;

    let placed = stack.place(&buyer, "lifecycle-1", concert, 2).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    let order = &placed.json;
    let order_id = order["id"].as_str().expect("order id").to_owned();
    assert_eq!(order["status"], "Pending");
    assert_eq!(order["quantity"], 2);
    assert_eq!(order["unitPriceCents"], 4_500, "the price comes from catalog");
    assert_eq!(order["totalCents"], 9_000);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["buyerId"], buyer.id.to_string());
    assert!(order["holdExpiresAt"].is_string());
    stack.wait_available(concert, 98).await;

    let created = events.expect().await;
    assert_eq!(created.routing_key, "order.created");
    assert_eq!(created.event.kind, OrderEventType::Created);
    assert_eq!(created.event.order_id.to_string(), order_id);
    assert_eq!(created.event.buyer_id, buyer.id);
    assert_eq!(created.event.buyer_email, buyer.email, "buyerEmail comes from the token");
    assert_eq!(created.event.concert_id, concert);
    assert_eq!((created.event.quantity, created.event.total_cents), (2, 9_000));
    assert_eq!(created.event.status, OrderStatus::Pending);
    assert!(created.event.hold_expires_at.is_some());
    assert_eq!(created.message_id, Some(created.event.event_id.to_string()));
    assert_eq!(created.content_type.as_deref(), Some("application/json"));
    assert_eq!(created.delivery_mode, Some(2), "persistent");
    let traceparent = created.traceparent.expect("a traceparent header");
    assert_eq!(traceparent.split('-').count(), 4, "{traceparent}");

    let confirmed = stack.confirm(&buyer, &order_id, "tok_visa").await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    assert_eq!(confirmed.json["status"], "Confirmed");
    let event = events.expect().await;
    assert_eq!((event.event.kind, event.event.status), (OrderEventType::Confirmed, OrderStatus::Confirmed));
    assert_eq!(stack.get(&buyer, &format!("/orders/{order_id}")).await.json["status"], "Confirmed");
    assert_eq!(stack.available(concert).await, 98, "confirmed seats stay sold");

    let cancelled = stack.cancel(&buyer, &order_id).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.json["status"], "Cancelled");
    assert_eq!(cancelled.json["cancelReason"], "buyer");
    let event = events.expect().await;
    assert_eq!(event.event.kind, OrderEventType::Cancelled);
    assert_eq!(event.event.reason.as_deref(), Some("buyer"));
    stack.wait_available(concert, 100).await;

    let again = stack.cancel(&buyer, &order_id).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "a cancelled order stays cancelled");
    assert_eq!(again.headers["content-type"], "application/problem+json");
    assert!(events.next(Duration::from_millis(500)).await.is_none(), "nothing more happened");

    let metrics = support::answer(stack.http.get(format!("{}/metrics", stack.ordering_admin_url))).await.text;
    for name in ["orders_placed_total", "outbox_published_total", "outbox_lag_seconds", "outbox_pending"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let public = support::answer(stack.http.get(format!("{}/metrics", stack.ordering_url))).await;
    assert_eq!(public.status, StatusCode::NOT_FOUND, "order volume is for the admin port only");
}

#[tokio::test]
async fn confirming_twice_is_a_conflict_and_announces_one_confirmation() {
    let stack = support::spawn().await;
    let mut events = stack.events().await;
    let buyer = stack.buyer("grace").await;
    let concert = stack.concert(100).await;

    let order_id = placed_id(&stack, &buyer, "twice-1", concert).await;
    assert_eq!(stack.confirm(&buyer, &order_id, "tok_visa").await.status, StatusCode::OK);
    let second = stack.confirm(&buyer, &order_id, "tok_visa").await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{}", second.text);

    // Five confirms racing on one order: one wins, the rest lose on the version check.
    let raced = placed_id(&stack, &buyer, "twice-2", concert).await;
    let attempts = (0..5).map(|_| stack.confirm(&buyer, &raced, "tok_visa"));
    let statuses: Vec<StatusCode> =
        futures::future::join_all(attempts).await.iter().map(|a| a.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| matches!(*s, StatusCode::OK | StatusCode::CONFLICT)), "{statuses:?}");

    // Two created, two confirmed, and nothing more.
    let received = events.take(4).await;
    assert!(events.next(Duration::from_millis(500)).await.is_none(), "one confirmation per order");
    let confirmations = |id: &str| {
        received
            .iter()
            .filter(|r| r.event.kind == OrderEventType::Confirmed && r.event.order_id.to_string() == id)
            .count()
    };
    assert_eq!(confirmations(&order_id), 1);
    assert_eq!(confirmations(&raced), 1);
}

#[tokio::test]
async fn a_declined_payment_leaves_the_order_pending_and_a_good_card_confirms_it() {
    let stack = support::spawn().await;
    let buyer = stack.buyer("alan").await;
    let concert = stack.concert(10).await;
    let order_id = placed_id(&stack, &buyer, "declined-1", concert).await;

    let declined = stack.confirm(&buyer, &order_id, "tok_declined").await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED, "{}", declined.text);
    assert_eq!(declined.json["type"], "https://ticketflow.dev/problems/payment-declined");
    assert_eq!(stack.get(&buyer, &format!("/orders/{order_id}")).await.json["status"], "Pending");

    let invalid = stack.confirm(&buyer, &order_id, "4242 4242 4242 4242").await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert!(invalid.json["errors"]["paymentToken"].is_string(), "{}", invalid.text);

    assert_eq!(stack.confirm(&buyer, &order_id, "tok_visa").await.json["status"], "Confirmed");
}

#[tokio::test]
async fn every_orders_route_needs_a_valid_token() {
    let stack = support::spawn().await;
    let id = Uuid::now_v7();
    for (method, path) in [
        ("POST", "/orders".to_owned()),
        ("GET", "/orders".to_owned()),
        ("GET", format!("/orders/{id}")),
        ("POST", format!("/orders/{id}/confirm")),
        ("POST", format!("/orders/{id}/cancel")),
    ] {
        let url = format!("{}{path}", stack.ordering_url);
        let request = if method == "GET" { stack.http.get(&url) } else { stack.http.post(&url) };
        let anonymous = support::answer(request).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        let request = if method == "GET" { stack.http.get(&url) } else { stack.http.post(&url) };
        let forged = support::answer(request.bearer_auth("eyJhbGciOiJFZERTQSJ9.e30.c2ln")).await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

async fn placed_id(stack: &support::Stack, buyer: &support::Buyer, key: &str, concert: Uuid) -> String {
    let placed = stack.place(buyer, key, concert, 1).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    placed.json["id"].as_str().expect("order id").to_owned()
}
