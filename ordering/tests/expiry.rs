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

#[tokio::test]
async fn several_sweepers_at_once_cancel_each_lapsed_order_exactly_once() {
    // The service's own sweeper is idle here; three replicas' sweepers race on the same database.
    let options = support::Options { hold_seconds: 1, sweep_interval_secs: 3600.0, ..Default::default() };
    let stack = support::spawn_with(options).await;
    let mut events = stack.events().await;
    // Three buyers: one may hold at most MAX_PENDING_ORDERS_PER_BUYER (5) unpaid orders.
    let buyers = [stack.buyer("ada").await, stack.buyer("grace").await, stack.buyer("edsger").await];
    let concert = stack.concert(100).await;
    let mut placed = std::collections::HashSet::new();
    for n in 0..12 {
        let answer = stack.place(&buyers[n % 3], &format!("lapse-{n}"), concert, 1).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        placed.insert(answer.json["id"].as_str().expect("id").to_owned());
    }
    stack.wait_available(concert, 88).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let live: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE hold_expires_at > now()")
            .fetch_one(&stack.orders_db)
            .await
            .expect("count live holds");
        if live == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{live} holds never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let catalog_config = ordering::config::CatalogConfig {
        url: format!("http://{}", stack.catalog_grpc),
        timeout: Duration::from_secs(3),
        attempts: 3,
        breaker: platform::breaker::BreakerConfig::default(),
    };
    let replicas: Vec<_> = (0..3)
        .map(|_| ordering::sweeper::Sweeper {
            db: stack.orders_db.clone(),
            catalog: std::sync::Arc::new(
                ordering::catalog::Catalog::connect_lazy(&catalog_config, stack.service_tokens())
                    .expect("catalog client"),
            ),
            interval: Duration::from_secs(3600),
            idempotency_retention: Duration::from_secs(86_400),
            outbox_retention: Duration::from_secs(86_400),
        })
        .collect();
    let swept = futures::future::join_all(replicas.iter().map(|s| s.expire_lapsed_holds())).await;
    let swept: usize = swept.into_iter().map(|n| n.expect("sweep")).sum();
    assert_eq!(swept, 12, "every lapsed order cancelled, none twice");

    // 12 created, then 12 cancelled, and nothing more.
    let received = events.take(24).await;
    assert!(
        events.next(Duration::from_millis(500)).await.is_none(),
        "each order cancelled once, announced once"
    );
    let cancelled: Vec<String> = received
        .iter()
        .filter(|r| r.event.kind == OrderEventType::Cancelled)
        .map(|r| r.event.order_id.to_string())
        .collect();
    assert_eq!(cancelled.len(), 12, "one cancellation event per order");
    assert_eq!(cancelled.into_iter().collect::<std::collections::HashSet<_>>(), placed);
    stack.wait_available(concert, 100).await;
}
