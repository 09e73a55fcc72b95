//! Reading orders: only one's own, newest first, a page at a time.

mod support;

use std::collections::HashSet;

use reqwest::StatusCode;
use uuid::Uuid;

#[tokio::test]
async fn another_buyers_order_does_not_exist_for_you() {
    let stack = support::spawn().await;
    let (ada, mallory) = (stack.buyer("ada").await, stack.buyer("mallory").await);
    let concert = stack.concert(10).await;
    let placed = stack.place(&ada, "mine", concert, 1).await;
    let id = placed.json["id"].as_str().expect("order id").to_owned();

    assert_eq!(stack.get(&ada, &format!("/orders/{id}")).await.status, StatusCode::OK);
    let peek = stack.get(&mallory, &format!("/orders/{id}")).await;
    assert_eq!(peek.status, StatusCode::NOT_FOUND, "404, not 403: existence is not revealed");
    let unknown = stack.get(&mallory, &format!("/orders/{}", Uuid::now_v7())).await;
    assert_eq!(unknown.json, peek.json, "indistinguishable from an order that does not exist");
    assert_eq!(stack.confirm(&mallory, &id, "tok_visa").await.status, StatusCode::NOT_FOUND);
    assert_eq!(stack.cancel(&mallory, &id).await.status, StatusCode::NOT_FOUND);
    assert_eq!(stack.get(&mallory, "/orders").await.json["orders"], serde_json::json!([]));
    assert_eq!(stack.get(&mallory, "/orders/not-a-uuid").await.status, StatusCode::NOT_FOUND);

    assert_eq!(stack.get(&ada, &format!("/orders/{id}")).await.json["status"], "Pending", "untouched");
}

#[tokio::test]
async fn a_buyer_pages_through_their_orders_newest_first() {
    let stack = support::spawn().await;
    let (ada, grace) = (stack.buyer("ada").await, stack.buyer("grace").await);
    let concert = stack.concert(100).await;
    let mut placed = Vec::new();
    for n in 0..5 {
        let answer = stack.place(&ada, &format!("page-{n}"), concert, 1).await;
        placed.push(answer.json["id"].as_str().expect("order id").to_owned());
    }
    stack.place(&grace, "page-0", concert, 1).await;

    let mut seen = Vec::new();
    let mut path = "/orders?limit=2".to_owned();
    loop {
        let page = stack.get(&ada, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        let orders = page.json["orders"].as_array().expect("orders").clone();
        assert!(orders.len() <= 2);
        seen.extend(orders.iter().map(|o| o["id"].as_str().expect("id").to_owned()));
        match page.json["nextCursor"].as_str() {
            Some(cursor) => path = format!("/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    placed.reverse();
    assert_eq!(seen, placed, "all five, newest first, no repeats");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5);

    let default_page = stack.get(&ada, "/orders").await;
    assert_eq!(default_page.json["orders"].as_array().map(Vec::len), Some(5));
    assert!(default_page.json["nextCursor"].is_null());

    for bad in ["/orders?limit=0", "/orders?limit=101", "/orders?limit=ten"] {
        let refused = stack.get(&ada, bad).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(refused.json["errors"]["limit"].is_string());
    }
    let forged = stack.get(&ada, "/orders?cursor=bm90LWEtY3Vyc29y").await;
    assert_eq!(forged.status, StatusCode::BAD_REQUEST);
    assert!(forged.json["errors"]["cursor"].is_string());
}

#[tokio::test]
async fn a_crafted_cursor_is_a_400_naming_the_cursor_and_never_a_500() {
    use base64::Engine as _;
    let forge = |text: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    let stack = support::spawn().await;
    let ada = stack.buyer("ada").await;
    let concert = stack.concert(10).await;
    let id = Uuid::now_v7();
    let cursors = [
        // A year Postgres cannot store (chrono can): used to reach the query and fail as a 500.
        forge(format!("-8000000000000000000.{id}")),
        forge(format!("{}.{id}", i64::MIN)),
        forge(format!("253402300800000000.{id}")),
        forge(format!("1.{id}.1")),
        forge("1\0.x".to_owned()),
        "%00".to_owned(),
        "A".repeat(3_000),
    ];
    for cursor in &cursors {
        let refused = stack.get(&ada, &format!("/orders?cursor={cursor}")).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{cursor}: {}", refused.text);
        assert!(refused.json["errors"]["cursor"].is_string(), "{}", refused.text);
    }
    // Placing and reading still work for everyone.
    let placed = stack.place(&ada, "after-forgeries", concert, 1).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    assert_eq!(stack.get(&ada, "/orders").await.json["orders"].as_array().map(Vec::len), Some(1));
}
