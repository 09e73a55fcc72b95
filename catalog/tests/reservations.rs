//! Ordering holds seats for its orders: atomically, idempotently, never more than there are.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::time::Duration;

use proto::catalog::v1 as pb;
use support::{Settings, eventually, row, spawn, spawn_with};
use tonic::Code;
use uuid::Uuid;

#[tokio::test]
async fn a_flash_sale_of_200_buyers_for_50_seats_sells_exactly_50() {
    let catalog = spawn().await;
    let mut r = row(7);
    r.capacity = 50;
    let concert = catalog.insert(r).await;

    let buyers = (0..200).map(|_| {
        let catalog_client = catalog.client.clone();
        tokio::spawn(async move {
            let mut client = catalog_client;
            let request = pb::ReserveSeatsRequest {
                order_id: Uuid::new_v4().to_string(),
                concert_id: concert.to_string(),
                quantity: 1,
                hold_seconds: 600,
            };
            client.reserve_seats(request).await.map(|_| ()).map_err(|s| s.code())
        })
    });
    let results: Vec<Result<(), Code>> =
        futures::future::join_all(buyers).await.into_iter().map(|r| r.expect("buyer task")).collect();

    let sold = results.iter().filter(|r| r.is_ok()).count();
    let refused = results.iter().filter(|r| **r == Err(Code::ResourceExhausted)).count();
    assert_eq!((sold, refused), (50, 150), "{results:?}");
    assert_eq!(catalog.available_in_db(concert).await, 0);
    let held: i64 = sqlx::query_scalar("SELECT coalesce(sum(quantity), 0) FROM holds WHERE concert_id = $1")
        .bind(concert)
        .fetch_one(&catalog.pool)
        .await
        .unwrap();
    assert_eq!(held, 50);
    assert_eq!(catalog.get(concert).await.unwrap().available, 0);
}

#[tokio::test]
async fn repeating_an_order_id_returns_the_same_hold_and_takes_no_more_seats() {
    let catalog = spawn().await;
    let concert = catalog.insert(row(7)).await;
    let order = Uuid::new_v4();

    let first = catalog.reserve(order, concert, 3).await.expect("first reservation");
    assert_eq!(first.status(), pb::HoldStatus::Held);
    let again = catalog.reserve(order, concert, 3).await.expect("repeat");
    assert_eq!(again, first);
    assert_eq!(catalog.available_in_db(concert).await, 497);

    // Ten copies of one request racing each other still hold the seats once.
    let racing = Uuid::new_v4();
    let copies = (0..10).map(|_| {
        let client = catalog.client.clone();
        tokio::spawn(async move {
            let mut client = client;
            let request = pb::ReserveSeatsRequest {
                order_id: racing.to_string(),
                concert_id: concert.to_string(),
                quantity: 2,
                hold_seconds: 0,
            };
            client.reserve_seats(request).await.map(|r| r.into_inner())
        })
    });
    let holds: Vec<pb::SeatHold> =
        futures::future::join_all(copies).await.into_iter().map(|r| r.unwrap().expect("reserve")).collect();
    assert!(holds.windows(2).all(|w| w[0] == w[1]), "every copy sees the same hold");
    assert_eq!(catalog.available_in_db(concert).await, 495);
}

#[tokio::test]
async fn an_order_id_cannot_be_reused_for_other_seats() {
    let catalog = spawn().await;
    let concert = catalog.insert(row(7)).await;
    let order = Uuid::new_v4();
    catalog.reserve(order, concert, 2).await.expect("reserve");
    let status = catalog.reserve(order, concert, 3).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert!(status.message().starts_with("order_id: "), "{}", status.message());
    assert_eq!(catalog.available_in_db(concert).await, 498);
}

#[tokio::test]
async fn asking_for_more_seats_than_are_left_or_for_an_unknown_concert_is_refused() {
    let catalog = spawn().await;
    let mut r = row(7);
    r.capacity = 5;
    let concert = catalog.insert(r).await;

    assert_eq!(
        catalog.reserve(Uuid::new_v4(), concert, 6).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    assert_eq!(catalog.available_in_db(concert).await, 5, "a refused request takes nothing");
    let refused_order = Uuid::new_v4();
    catalog.reserve(Uuid::new_v4(), concert, 4).await.expect("4 of 5");
    assert_eq!(catalog.reserve(refused_order, concert, 2).await.unwrap_err().code(), Code::ResourceExhausted);
    // The refused order left no hold behind: once seats are free it can try again.
    assert!(catalog.reserve(refused_order, concert, 1).await.is_ok());

    assert_eq!(catalog.reserve(Uuid::new_v4(), Uuid::new_v4(), 1).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn invalid_seat_requests_name_the_field() {
    let catalog = spawn().await;
    let concert = catalog.insert(row(7)).await;
    let status = catalog.reserve(Uuid::new_v4(), concert, 0).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "quantity: must be between 1 and 100")
    );
    let status = catalog.reserve_for(Uuid::new_v4(), concert, 1, 7200).await.unwrap_err();
    assert!(status.message().starts_with("hold_seconds: "), "{}", status.message());
    let mut client = catalog.client.clone();
    let status =
        client.confirm_reservation(pb::ConfirmReservationRequest { order_id: "x".into() }).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "order_id: must be a UUID"));
}

#[tokio::test]
async fn confirming_and_releasing_are_idempotent() {
    let catalog = spawn().await;
    let concert = catalog.insert(row(7)).await;
    let mut client = catalog.client.clone();
    let confirm = |order: Uuid| pb::ConfirmReservationRequest { order_id: order.to_string() };
    let release = |order: Uuid| pb::ReleaseReservationRequest { order_id: order.to_string() };

    let paid = Uuid::new_v4();
    catalog.reserve(paid, concert, 2).await.unwrap();
    for _ in 0..2 {
        let hold = client.confirm_reservation(confirm(paid)).await.expect("confirm").into_inner();
        assert_eq!(hold.status(), pb::HoldStatus::Confirmed);
    }
    assert_eq!(catalog.available_in_db(concert).await, 498, "confirmed seats stay sold");

    let abandoned = Uuid::new_v4();
    catalog.reserve(abandoned, concert, 3).await.unwrap();
    for _ in 0..2 {
        let hold = client.release_reservation(release(abandoned)).await.expect("release").into_inner();
        assert_eq!(hold.status(), pb::HoldStatus::Released);
    }
    assert_eq!(catalog.available_in_db(concert).await, 498, "released seats come back once");

    let status = client.confirm_reservation(confirm(abandoned)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "a released hold cannot be confirmed");

    let unknown = Uuid::new_v4();
    assert_eq!(client.confirm_reservation(confirm(unknown)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(client.release_reservation(release(unknown)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn cancelling_a_confirmed_order_gives_its_seats_back() {
    let catalog = spawn().await;
    let concert = catalog.insert(row(7)).await;
    let order = Uuid::new_v4();
    catalog.reserve(order, concert, 4).await.unwrap();
    let mut client = catalog.client.clone();
    client.confirm_reservation(pb::ConfirmReservationRequest { order_id: order.to_string() }).await.unwrap();

    let hold = client
        .release_reservation(pb::ReleaseReservationRequest { order_id: order.to_string() })
        .await
        .unwrap();
    assert_eq!(hold.into_inner().status(), pb::HoldStatus::Released);
    assert_eq!(catalog.available_in_db(concert).await, 500);
    assert_eq!(catalog.get(concert).await.unwrap().available, 500, "the cache shows it at once");
}

#[tokio::test]
async fn a_hold_that_expires_unconfirmed_is_released_by_the_sweeper() {
    let catalog = spawn_with(Settings { sweep_interval_secs: 0.2, ..Settings::default() }).await;
    let mut r = row(7);
    r.capacity = 10;
    let concert = catalog.insert(r).await;
    let order = Uuid::new_v4();
    catalog.reserve_for(order, concert, 4, 1).await.expect("a one-second hold");
    assert_eq!(catalog.get(concert).await.unwrap().available, 6);

    let released =
        eventually(Duration::from_secs(15), || async { catalog.available_in_db(concert).await == 10 }).await;
    assert!(released, "the seats came back");
    let status: String = sqlx::query_scalar("SELECT status FROM holds WHERE order_id = $1")
        .bind(order)
        .fetch_one(&catalog.pool)
        .await
        .unwrap();
    assert_eq!(status, "expired");
    // The sweeper invalidates right after its commit: well within the 30 s TTL the entry would
    // otherwise live, readers see the seats back.
    let fresh =
        eventually(Duration::from_secs(5), || async { catalog.get(concert).await.unwrap().available == 10 })
            .await;
    assert!(fresh, "and the cache was invalidated");

    let mut client = catalog.client.clone();
    let status = client
        .confirm_reservation(pb::ConfirmReservationRequest { order_id: order.to_string() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "too late to confirm");
    let hold = client
        .release_reservation(pb::ReleaseReservationRequest { order_id: order.to_string() })
        .await
        .expect("releasing an expired hold is a no-op");
    assert_eq!(hold.into_inner().status(), pb::HoldStatus::Expired);
    assert_eq!(catalog.available_in_db(concert).await, 10);
}
