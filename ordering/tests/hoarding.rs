//! One buyer cannot take a concert off sale with orders it never pays for: pending orders and their
//! seats are capped per buyer, atomically, and a refused order leaves no seats held.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use reqwest::StatusCode;

const PROBLEM: &str = "https://ticketflow.dev/problems/pending-limit";

#[tokio::test]
async fn twenty_concurrent_orders_from_one_buyer_stop_at_five_pending_orders() {
    let stack = support::spawn_with(support::Options { pending_limits: true, ..Default::default() }).await;
    let hoarder = stack.buyer("hoarder").await;
    let concert = stack.concert(100).await;

    let answers = futures::future::join_all((0..20).map(|n| {
        let (stack, hoarder) = (&stack, &hoarder);
        async move { stack.place(hoarder, &format!("hoard-{n}"), concert, 1).await }
    }))
    .await;
    let created = answers.iter().filter(|a| a.status == StatusCode::CREATED).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.status != StatusCode::CREATED).collect();
    assert_eq!(created, 5, "MAX_PENDING_ORDERS_PER_BUYER is 5");
    for answer in &refused {
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.text);
        assert_eq!(answer.json["type"], PROBLEM, "{}", answer.text);
        assert!(answer.json["detail"].as_str().unwrap().contains("at most 5 orders"), "{}", answer.text);
    }
    assert_eq!(stack.order_count().await, 5);
    // The refused orders' holds, if catalog had already taken them, are given back.
    stack.wait_available(concert, 95).await;

    // Someone else is not affected.
    let other = stack.buyer("other").await;
    assert_eq!(stack.place(&other, "mine", concert, 1).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn seats_in_unpaid_orders_are_capped_per_concert_and_replays_still_answer() {
    let stack = support::spawn_with(support::Options { pending_limits: true, ..Default::default() }).await;
    let hoarder = stack.buyer("hoarder").await;
    let concert = stack.concert(100).await;

    let answers = futures::future::join_all((0..20).map(|n| {
        let (stack, hoarder) = (&stack, &hoarder);
        async move { (n, stack.place(hoarder, &format!("three-{n}"), concert, 3).await) }
    }))
    .await;
    let created: Vec<_> = answers.iter().filter(|(_, a)| a.status == StatusCode::CREATED).collect();
    assert_eq!(created.len(), 3, "3 orders of 3 seats: 9 of MAX_PENDING_SEATS_PER_BUYER 10");
    for (_, answer) in answers.iter().filter(|(_, a)| a.status != StatusCode::CREATED) {
        assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.text);
        assert_eq!(answer.json["type"], PROBLEM, "{}", answer.text);
        assert!(
            answer.json["errors"]["quantity"].as_str().unwrap().contains("at most 10 seats"),
            "{}",
            answer.text
        );
    }
    stack.wait_available(concert, 91).await;

    // A replay of an order placed before the limit was reached is that order, not a refusal.
    let (n, first) = created[0];
    let replay = stack.place(&hoarder, &format!("three-{n}"), concert, 3).await;
    assert_eq!(replay.status, StatusCode::CREATED, "{}", replay.text);
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.json["id"], first.json["id"]);

    // Paying for one frees its seats from the cap.
    let id = first.json["id"].as_str().unwrap();
    assert_eq!(stack.confirm(&hoarder, id, "tok_visa").await.status, StatusCode::OK);
    let more = stack.place(&hoarder, "after-paying", concert, 3).await;
    assert_eq!(more.status, StatusCode::CREATED, "{}", more.text);
}
