//! Placing orders: validation, sold-out concerts, and Idempotency-Key replays.

mod support;

use reqwest::StatusCode;
use uuid::Uuid;

#[tokio::test]
async fn a_sold_out_concert_is_a_conflict_and_no_order_is_stored() {
    let stack = support::spawn().await;
    let (ada, grace) = (stack.buyer("ada").await, stack.buyer("grace").await);
    let concert = stack.concert(2).await;

    assert_eq!(stack.place(&ada, "k1", concert, 2).await.status, StatusCode::CREATED);
    let refused = stack.place(&grace, "k1", concert, 1).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert_eq!(refused.json["type"], "https://ticketflow.dev/problems/sold-out");
    assert_eq!(stack.order_count().await, 1);

    let unknown = stack.place(&grace, "k2", Uuid::now_v7(), 1).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text);
    assert_eq!(stack.order_count().await, 1);
}

#[tokio::test]
async fn an_order_is_priced_as_catalog_held_its_seats_not_as_the_concert_is_priced_later() {
    let stack = support::spawn().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(10).await;

    // Catalog keeps the price with the hold: asking again for the same order's seats (as ordering
    // does when it retries) answers the price they were held at, not the concert's price now.
    let order_id = Uuid::now_v7();
    let held = stack.reserve(order_id, concert, 2).await;
    assert_eq!((held.price_cents, held.currency.as_str()), (4_500, "EUR"));
    stack.set_price(concert, 6_000).await;
    let again = stack.reserve(order_id, concert, 2).await;
    assert_eq!((again.price_cents, again.currency.as_str()), (4_500, "EUR"));

    // An order placed now is held, and priced, at the new price.
    let placed = stack.place(&buyer, "after-the-change", concert, 3).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    assert_eq!(
        (placed.json["unitPriceCents"].as_i64(), placed.json["totalCents"].as_i64()),
        (Some(6_000), Some(18_000))
    );
}

#[tokio::test]
async fn bad_requests_name_what_is_wrong() {
    let stack = support::spawn().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(10).await;

    for quantity in [0, 11, -1] {
        let refused = stack.place(&buyer, &format!("q{quantity}"), concert, quantity).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "quantity {quantity}");
        assert!(refused.json["errors"]["quantity"].is_string(), "{}", refused.text);
    }

    let url = format!("{}/orders", stack.ordering_url);
    let body = serde_json::json!({"concertId": concert, "quantity": 1});
    let no_key = support::answer(stack.http.post(&url).bearer_auth(&buyer.token).json(&body)).await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST);
    assert!(no_key.json["errors"]["Idempotency-Key"].is_string(), "{}", no_key.text);

    let long_key = "k".repeat(256);
    let too_long = stack.place(&buyer, &long_key, concert, 1).await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);

    let bad_concert = serde_json::json!({"concertId": "not-a-uuid", "quantity": 1});
    let request =
        stack.http.post(&url).bearer_auth(&buyer.token).header("Idempotency-Key", "c1").json(&bad_concert);
    let refused = support::answer(request).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.json["errors"]["concertId"].is_string(), "{}", refused.text);

    let client_price = serde_json::json!({"concertId": concert, "quantity": 1, "totalCents": 1});
    let request =
        stack.http.post(&url).bearer_auth(&buyer.token).header("Idempotency-Key", "c2").json(&client_price);
    assert_eq!(
        support::answer(request).await.status,
        StatusCode::BAD_REQUEST,
        "prices never come from clients"
    );
    assert_eq!(stack.order_count().await, 0);
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_same_order_and_another_body_is_refused() {
    let stack = support::spawn().await;
    let (ada, grace) = (stack.buyer("ada").await, stack.buyer("grace").await);
    let concert = stack.concert(50).await;

    let first = stack.place(&ada, "retry-me", concert, 2).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let replay = stack.place(&ada, "retry-me", concert, 2).await;
    assert_eq!(replay.status, StatusCode::CREATED);
    assert_eq!(replay.text, first.text, "the stored response, byte for byte");
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(stack.order_count().await, 1);
    stack.wait_available(concert, 48).await;

    let mismatch = stack.place(&ada, "retry-me", concert, 3).await;
    assert_eq!(mismatch.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", mismatch.text);
    assert_eq!(stack.order_count().await, 1);

    // Keys belong to their buyer: another buyer's identical key is another order.
    let other = stack.place(&grace, "retry-me", concert, 2).await;
    assert_eq!(other.status, StatusCode::CREATED);
    assert_ne!(other.json["id"], first.json["id"]);

    // A refusal is an outcome too: replayed, even once seats free up.
    let small = stack.concert(1).await;
    assert_eq!(stack.place(&grace, "small-1", small, 1).await.status, StatusCode::CREATED);
    let sold_out = stack.place(&ada, "small-2", small, 1).await;
    assert_eq!(sold_out.status, StatusCode::CONFLICT);
    let replayed = stack.place(&ada, "small-2", small, 1).await;
    assert_eq!((replayed.status, replayed.text), (sold_out.status, sold_out.text));
    assert_eq!(replayed.headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn ten_concurrent_posts_with_one_key_make_one_order() {
    let stack = support::spawn().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(100).await;

    let attempts = (0..10).map(|_| stack.place(&buyer, "one-click", concert, 3));
    let answers = futures::future::join_all(attempts).await;

    // A duplicate waits for the first request's outcome; an honest "in progress" 409 is allowed if
    // it waited too long, but never a second order.
    let created: Vec<_> = answers.iter().filter(|a| a.status == StatusCode::CREATED).collect();
    assert!(!created.is_empty());
    for answer in &answers {
        assert!(
            answer.status == StatusCode::CREATED
                || (answer.status == StatusCode::CONFLICT
                    && answer.json["type"] == "https://ticketflow.dev/problems/request-in-progress"),
            "{} {}",
            answer.status,
            answer.text
        );
    }
    assert!(created.iter().all(|a| a.json["id"] == created[0].json["id"]), "one order id for every answer");
    assert_eq!(stack.order_count().await, 1);
    stack.wait_available(concert, 97).await;
}
