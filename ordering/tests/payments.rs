//! Ordering takes money through a hosted card processor's payment-intents API, here a fake of that
//! API in the test: accepted and declined cards, an unwell processor, idempotent retries, refunds
//! and signed webhooks.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode as HttpStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ordering::payment_intents::{SIGNATURE_HEADER, sign_webhook};
use reqwest::StatusCode;
use serde_json::json;

const API_KEY: &str = "sk_test_fake_processor_key";
const WEBHOOK_SECRET: &str = "whsec_fake_signing_secret";

/// What the fake processor saw and did.
#[derive(Default)]
struct Processor {
    /// Every request: (path, Idempotency-Key, form).
    requests: Vec<(String, String, HashMap<String, String>)>,
    /// Answers by Idempotency-Key, replayed for a repeated key as real processors do.
    answers: HashMap<String, (u16, serde_json::Value)>,
    intents: usize,
    refunds: usize,
}

type Shared = Arc<Mutex<Processor>>;

async fn intents(
    State(p): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(&p, "/v1/payment_intents", &headers, form).await
}

async fn refunds(
    State(p): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(&p, "/v1/refunds", &headers, form).await
}

async fn answer(p: &Shared, path: &str, headers: &HeaderMap, form: HashMap<String, String>) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {API_KEY}")) {
        return (HttpStatus::UNAUTHORIZED, axum::Json(json!({"error": {"type": "authentication_error"}})))
            .into_response();
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let method = form.get("payment_method").cloned().unwrap_or_default();
    if method == "pm_slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut processor = p.lock().unwrap();
    processor.requests.push((path.to_owned(), key.clone(), form.clone()));
    if method == "pm_down" {
        return (HttpStatus::SERVICE_UNAVAILABLE, "down").into_response();
    }
    let first_time = !processor.answers.contains_key(&key);
    if first_time {
        let stored = if path == "/v1/refunds" {
            processor.refunds += 1;
            (200, json!({"id": format!("re_{}", processor.refunds), "status": "succeeded"}))
        } else if !method.starts_with("pm_") {
            (400, json!({"error": {"type": "invalid_request_error", "code": "resource_missing"}}))
        } else if method == "pm_card_declined" {
            (402, json!({"error": {"type": "card_error", "code": "card_declined"}}))
        } else {
            processor.intents += 1;
            (200, json!({"id": format!("pi_{}", processor.intents), "status": "succeeded"}))
        };
        processor.answers.insert(key.clone(), stored);
        // The charge went through, but the answer is lost on the way: the client must retry with
        // the same key and get this same payment, not a second one.
        if method == "pm_flaky" {
            return (HttpStatus::BAD_GATEWAY, "lost").into_response();
        }
    }
    let (status, body) = processor.answers[&key].clone();
    (HttpStatus::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn fake_processor() -> (String, Shared) {
    let shared = Shared::default();
    let app = Router::new()
        .route("/v1/payment_intents", post(intents))
        .route("/v1/refunds", post(refunds))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

async fn stack_with_processor() -> (support::Stack, Shared) {
    let (url, processor) = fake_processor().await;
    let options = support::Options {
        payments: vec![
            ("PAYMENT_PROVIDER", "payment-intents".to_owned()),
            ("PAYMENT_API_BASE_URL", url),
            ("PAYMENT_API_KEY", API_KEY.to_owned()),
            ("PAYMENT_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
            ("PAYMENT_TIMEOUT_MS", "1000".to_owned()),
        ],
        ..support::Options::default()
    };
    (support::spawn_with(options).await, processor)
}

async fn pending_order(stack: &support::Stack, buyer: &support::Buyer, key: &str) -> String {
    let concert = stack.concert(10).await;
    let placed = stack.place(buyer, key, concert, 2).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    placed.json["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_card_the_processor_accepts_pays_the_order_and_the_test_token_does_not() {
    let (stack, processor) = stack_with_processor().await;
    let buyer = stack.buyer("ada").await;
    let id = pending_order(&stack, &buyer, "k1").await;

    // The test provider's well-known token is just an unknown payment method to a real processor.
    let free = stack.confirm(&buyer, &id, "tok_visa").await;
    assert_eq!(free.status, StatusCode::BAD_REQUEST, "{}", free.text);
    assert!(free.json["errors"]["paymentToken"].is_string(), "{}", free.text);

    let paid = stack.confirm(&buyer, &id, "pm_card_visa").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    assert_eq!(paid.json["status"], "Confirmed");
    let payment: Option<String> = sqlx::query_scalar("SELECT payment_id FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&stack.orders_db)
        .await
        .unwrap();
    assert_eq!(payment.as_deref(), Some("pi_1"));
    let processor = processor.lock().unwrap();
    let (path, key, form) = processor.requests.last().unwrap();
    assert_eq!(path, "/v1/payment_intents");
    assert!(key.starts_with(&format!("charge-{id}-")), "{key}");
    assert_eq!((form["amount"].as_str(), form["currency"].as_str()), ("9000", "eur"));
    assert_eq!(form["metadata[order_id]"], id);
}

#[tokio::test]
async fn a_declined_card_is_402_and_the_order_stays_pending() {
    let (stack, _processor) = stack_with_processor().await;
    let buyer = stack.buyer("ada").await;
    let id = pending_order(&stack, &buyer, "k1").await;
    let declined = stack.confirm(&buyer, &id, "pm_card_declined").await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED, "{}", declined.text);
    assert_eq!(declined.json["type"], "https://ticketflow.dev/problems/payment-declined");
    assert_eq!(stack.get(&buyer, &format!("/orders/{id}")).await.json["status"], "Pending");
}

#[tokio::test]
async fn a_processor_that_fails_or_does_not_answer_is_503_payment_provider_unavailable() {
    let (stack, processor) = stack_with_processor().await;
    let buyer = stack.buyer("ada").await;
    let id = pending_order(&stack, &buyer, "k1").await;
    for method in ["pm_down", "pm_slow"] {
        let answer = stack.confirm(&buyer, &id, method).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{method}: {}", answer.text);
        assert_eq!(answer.json["type"], "https://ticketflow.dev/problems/payment-provider-unavailable");
    }
    assert_eq!(stack.get(&buyer, &format!("/orders/{id}")).await.json["status"], "Pending");
    // Each was tried twice, each time with its own attempt's key repeated.
    let processor = processor.lock().unwrap();
    let down: Vec<_> =
        processor.requests.iter().filter(|(_, _, f)| f["payment_method"] == "pm_down").collect();
    assert_eq!(down.len(), 2);
    assert_eq!(down[0].1, down[1].1, "a retry carries the same Idempotency-Key");
}

#[tokio::test]
async fn a_lost_answer_is_retried_with_the_same_key_and_charges_once() {
    let (stack, processor) = stack_with_processor().await;
    let buyer = stack.buyer("ada").await;
    let id = pending_order(&stack, &buyer, "k1").await;
    let paid = stack.confirm(&buyer, &id, "pm_flaky").await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.text);
    let processor = processor.lock().unwrap();
    assert_eq!(processor.intents, 1, "one payment for two requests");
    assert_eq!(processor.requests.len(), 2);
    assert_eq!(processor.requests[0].1, processor.requests[1].1);
}

#[tokio::test]
async fn cancelling_a_paid_order_refunds_it_once() {
    let (stack, processor) = stack_with_processor().await;
    let buyer = stack.buyer("ada").await;
    let id = pending_order(&stack, &buyer, "k1").await;
    assert_eq!(stack.confirm(&buyer, &id, "pm_card_visa").await.status, StatusCode::OK);
    assert_eq!(stack.cancel(&buyer, &id).await.status, StatusCode::OK);
    let processor = processor.lock().unwrap();
    let refunds: Vec<_> = processor.requests.iter().filter(|(path, _, _)| path == "/v1/refunds").collect();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].1, "refund-pi_1");
    assert_eq!(refunds[0].2["payment_intent"], "pi_1");
}

#[tokio::test]
async fn webhooks_are_accepted_only_with_a_fresh_valid_signature() {
    let (stack, _processor) = stack_with_processor().await;
    let url = format!("{}/payments/webhook", stack.ordering_url);
    let body = json!({
        "id": "evt_1",
        "type": "payment_intent.succeeded",
        "data": {"object": {"id": "pi_1", "status": "succeeded", "metadata": {"order_id": "x"}}}
    })
    .to_string();
    let send = |signature: String, body: String| {
        stack
            .http
            .post(&url)
            .header(SIGNATURE_HEADER, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let now = chrono::Utc::now().timestamp();

    let signed = send(sign_webhook(WEBHOOK_SECRET, now, body.as_bytes()), body.clone()).await.unwrap();
    assert_eq!(signed.status(), StatusCode::NO_CONTENT);
    let forged = send(sign_webhook("not-the-secret", now, body.as_bytes()), body.clone()).await.unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    let tampered =
        send(sign_webhook(WEBHOOK_SECRET, now, body.as_bytes()), body.replace("pi_1", "pi_2")).await.unwrap();
    assert_eq!(tampered.status(), StatusCode::BAD_REQUEST);
    let replayed =
        send(sign_webhook(WEBHOOK_SECRET, now - 3600, body.as_bytes()), body.clone()).await.unwrap();
    assert_eq!(replayed.status(), StatusCode::BAD_REQUEST);
    let unsigned = stack.http.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(unsigned.status(), StatusCode::BAD_REQUEST);
    let not_an_event = send(sign_webhook(WEBHOOK_SECRET, now, b"[]"), "[]".to_owned()).await.unwrap();
    assert_eq!(not_an_event.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn with_the_test_provider_there_is_no_webhook_route() {
    let stack = support::spawn().await;
    let response =
        stack.http.post(format!("{}/payments/webhook", stack.ordering_url)).body("{}").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
