//! Ordering calls catalog's seat RPCs with a service token of its own, and replaces a token catalog
//! refuses.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use ordering::catalog::{Catalog, HoldState};
use ordering::config::CatalogConfig;
use ordering::domain::Quantity;
use ordering::service_token::{ClientCredentials, ServiceTokens};
use reqwest::StatusCode;
use uuid::Uuid;

#[tokio::test]
async fn a_token_catalog_refuses_is_replaced_once_and_the_call_goes_through() {
    let stack = support::spawn().await;
    let concert = stack.concert(10).await;

    // A token endpoint whose first answer is a token catalog cannot verify (as after identity lost
    // the key that signed it), and later answers are real tokens from identity.
    let real = stack.service_tokens();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/oauth/token",
        post(move || {
            let (real, n) = (real.clone(), counter.fetch_add(1, Ordering::SeqCst));
            async move {
                let token = if n == 0 {
                    "eyJhbGciOiJFZERTQSJ9.e30.c2ln".to_owned()
                } else {
                    real.token().await.unwrap().to_string()
                };
                axum::Json(
                    serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 300}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let credentials = ClientCredentials { client_id: "ordering".into(), client_secret: "x".repeat(32) };
    let tokens =
        Arc::new(ServiceTokens::new(&token_url, credentials, platform::auth::SCOPE_SEATS_WRITE).unwrap());
    let config = CatalogConfig {
        url: format!("http://{}", stack.catalog_grpc),
        timeout: Duration::from_secs(3),
        attempts: 1,
        breaker: platform::breaker::BreakerConfig::default(),
    };
    let catalog = Catalog::connect_lazy(&config, tokens).unwrap();
    let hold = catalog
        .reserve_seats(Uuid::now_v7(), concert, Quantity::new(2).unwrap(), Duration::from_secs(60))
        .await
        .expect("the call succeeds with the second token");
    assert_eq!(hold.state, HoldState::Held);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh, not one per attempt");
    stack.wait_available(concert, 8).await;
}

#[tokio::test]
async fn orders_hold_seats_with_ordering_s_own_credential_not_the_buyer_s_token() {
    let stack = support::spawn().await;
    let buyer = stack.buyer("ada").await;
    let concert = stack.concert(10).await;
    let placed = stack.place(&buyer, "k1", concert, 2).await;
    assert_eq!(placed.status, StatusCode::CREATED, "{}", placed.text);
    let id = placed.json["id"].as_str().unwrap().to_owned();
    let confirmed = stack.confirm(&buyer, &id, "tok_visa").await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    assert_eq!(stack.cancel(&buyer, &id).await.status, StatusCode::OK);
    stack.wait_available(concert, 10).await;
}
