//! A hostile client sends bad input (control characters, forged cursors) to make the services fail.
//! Each such request is answered `BAD_USER_INPUT` naming the argument, and however many arrive,
//! they never count against a service's circuit breaker: honest clients keep browsing and buying.
//!
//! Alone in its file: it reads the process-wide metrics registry.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::{Stack, error_code, unique_email};
use uuid::Uuid;

const BROWSE: &str = "query($first: Int!, $after: String, $filter: ConcertFilter) {
    concerts(first: $first, after: $after, filter: $filter) { edges { node { id } } }
}";
const MY_ORDERS: &str =
    "query($after: String) { myOrders(first: 5, after: $after) { edges { node { id } } } }";
const PLACE: &str = "mutation($input: PlaceOrderInput!, $key: String!) {
    placeOrder(input: $input, idempotencyKey: $key) { id status }
}";

/// A gateway cursor around a downstream token, as an attacker who read one can forge it.
fn gateway_cursor(downstream_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("0:{downstream_token}"))
}

/// Catalog's page token format with a start time of `micros` (Postgres stores 4713 BC to 294276 AD;
/// chrono, which decodes it, goes further).
fn catalog_token(micros: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{micros}:{}", Uuid::new_v4().simple()))
}

/// Ordering's cursor format with a creation time of `micros`.
fn ordering_cursor(micros: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{micros}.{}", Uuid::now_v7()))
}

fn field(response: &Value) -> Option<&str> {
    response["errors"][0]["extensions"]["field"].as_str()
}

fn concert_input() -> Value {
    json!({
        "title": "Quiet Storm", "artist": "Night Owls", "venue": "Paradiso", "city": "Amsterdam",
        "startsAt": (chrono::Utc::now() + chrono::Duration::days(9)).to_rfc3339(),
        "priceCents": 2500, "currency": "EUR", "capacity": 500,
    })
}

fn catalog_circuit_opened(metrics: &str) -> bool {
    metrics.lines().any(|line| line.starts_with("circuit_breaker_opened_total{breaker=\"catalog\"}"))
}

#[tokio::test]
async fn control_characters_in_filters_and_forged_cursors_never_black_out_browsing() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = stack.create_concert(&admin, concert_input()).await;

    // A NUL byte in each filter: refused at the gateway, naming the argument.
    for name in ["city", "artist", "search"] {
        let filter = json!({ name: "Amster\u{0}dam" });
        let response = gateway.graphql(None, BROWSE, json!({ "first": 5, "filter": filter })).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
        assert_eq!(field(&response), Some(format!("filter.{name}").as_str()), "{response}");
    }

    // Forged cursors: garbage, the wrong shape, and a start time Postgres cannot hold (this one gets
    // past the gateway, which does not read catalog's tokens, and is refused by catalog itself).
    let forged = [
        "!!not base64!!".to_owned(),
        URL_SAFE_NO_PAD.encode("no colon here"),
        URL_SAFE_NO_PAD.encode("1:has spaces and \u{0}"),
        gateway_cursor(&URL_SAFE_NO_PAD.encode("garbage")),
        gateway_cursor(&catalog_token(-8_000_000_000_000_000_000)),
        gateway_cursor(&catalog_token(8_000_000_000_000_000_000)),
    ];
    for after in &forged {
        let response = gateway.graphql(None, BROWSE, json!({ "first": 5, "after": after })).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{after}: {response}");
        assert_eq!(field(&response), Some("after"), "{response}");
    }

    // Many more of both, faster than an honest client browses: catalog's circuit stays closed.
    let out_of_range = gateway_cursor(&catalog_token(-8_000_000_000_000_000_000));
    for n in 0..20 {
        let filter = json!({ "search": format!("tour\u{0}{n}") });
        let response = gateway.graphql(None, BROWSE, json!({ "first": 5, "filter": filter })).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
        let response = gateway.graphql(None, BROWSE, json!({ "first": 5, "after": out_of_range })).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
    }
    let browsing = gateway.data(None, BROWSE, json!({ "first": 5 })).await;
    assert_eq!(browsing["concerts"]["edges"][0]["node"]["id"], concert.as_str());
    let metrics = gateway
        .http
        .get(format!("{}/metrics", gateway.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!catalog_circuit_opened(&metrics), "bad input opened catalog's circuit:\n{metrics}");
}

#[tokio::test]
async fn forged_order_cursors_are_bad_input_and_buying_keeps_working() {
    let stack = Stack::start().await;
    let gateway = &stack.gateway;
    let admin = stack.admin_token().await;
    let concert = stack.create_concert(&admin, concert_input()).await;
    let mallory = gateway.sign_up(&unique_email("mallory")).await;
    let ada = gateway.sign_up(&unique_email("ada")).await;

    for n in 0..20 {
        // A creation time before 4713 BC reaches ordering's query unless ordering checks it.
        let after = gateway_cursor(&ordering_cursor(-8_000_000_000_000_000_000 + n));
        let response = gateway.graphql(Some(&mallory), MY_ORDERS, json!({ "after": after })).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{response}");
        assert_eq!(field(&response), Some("after"), "{response}");
    }
    for after in ["%%%", &URL_SAFE_NO_PAD.encode("5"), &gateway_cursor(&"A".repeat(500))] {
        let response = gateway.graphql(Some(&mallory), MY_ORDERS, json!({ "after": after })).await;
        assert_eq!(error_code(&response).as_deref(), Some("BAD_USER_INPUT"), "{after}: {response}");
    }

    // Every other buyer still places orders and reads them.
    let placed = gateway
        .data(
            Some(&ada),
            PLACE,
            json!({ "input": { "concertId": concert, "quantity": 2 }, "key": Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(placed["placeOrder"]["status"], "PENDING");
    let mine = gateway.data(Some(&ada), MY_ORDERS, json!({})).await;
    assert_eq!(mine["myOrders"]["edges"][0]["node"]["id"], placed["placeOrder"]["id"]);
}
