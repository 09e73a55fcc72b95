//! Unconfirmed orders whose seat hold lapses are cancelled and their seats go back on sale.

mod support;

use std::time::Duration;

use platform::events::OrderEventType;
use reqwest::StatusCode;

#[tokio::test]
async fn an_order_left_unconfirmed_past_its_hold_is_cancelled_as_expired_and_its_seats_return() {
    let stack = support::spawn_with(support::Options { hold_seconds: 1, ..Default::default() }).await;
    let mut events = stack.events().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(10).await;

    let placed = stack.place(&buyer, "will-lapse", concert, 3).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    let id = placed.json["id"].as_str().expect("order id").to_owned();
    assert_eq!(events.expect().await.event.kind, OrderEventType::Created);

    let cancelled = events.expect().await;
    assert_eq!(cancelled.event.kind, OrderEventType::Cancelled);
    assert_eq!(cancelled.event.order_id.to_string(), id);
    assert_eq!(cancelled.event.reason.as_deref(), Some("expired"));

    let order = stack.get(&buyer, &format!("/orders/{id}")).await;
    assert_eq!(
        (order.json["status"].as_str(), order.json["cancelReason"].as_str()),
        (Some("Cancelled"), Some("expired"))
    );
    // Catalog's own hold expiry is off in these tests: ordering's sweeper released the seats.
    stack.wait_available(concert, 10).await;

    let too_late = stack.confirm(&buyer, &id, "tok_visa").await;
    assert_eq!(too_late.status, StatusCode::CONFLICT, "{}", too_late.text);
    assert!(events.next(Duration::from_millis(500)).await.is_none(), "expired once, announced once");
}
