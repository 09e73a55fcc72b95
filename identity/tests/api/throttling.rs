//! Repeated failed logins are refused for a while.

use std::time::Duration;

use identity::throttle::TrustedProxies;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, eventually, spawn_app_with, unique_email};

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_account_is_locked_after_repeated_failures_even_for_the_right_password() {
    let app = spawn_app_with(|c| {
        c.throttle.max_failures_per_account = 3;
        c.throttle.lockout = Duration::from_secs(120);
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Target").await;

    for _ in 0..3 {
        assert_eq!(app.login(&email, "guess guess guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let response = app.login(&email, PASSWORD).await;

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let wait = retry_after(&response);
    assert!((1..=120).contains(&wait), "Retry-After {wait}");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 429);
    // Another account is not affected.
    let other = unique_email();
    app.register(&other, PASSWORD, "Bystander").await;
    assert_eq!(app.login(&other, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_emails_are_throttled_like_real_accounts() {
    let app = spawn_app_with(|c| c.throttle.max_failures_per_account = 2).await;
    let nobody = unique_email();
    for _ in 0..2 {
        assert_eq!(app.login(&nobody, "guess guess guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.login(&nobody, "guess guess guess").await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn one_address_guessing_across_many_accounts_is_throttled() {
    let app = spawn_app_with(|c| {
        c.throttle.max_failures_per_account = 100;
        c.throttle.max_failures_per_address = 4;
    })
    .await;
    for _ in 0..4 {
        assert_eq!(app.login(&unique_email(), "guess guess guess").await.status(), StatusCode::UNAUTHORIZED);
    }
    let response = app.login(&unique_email(), "guess guess guess").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&response) >= 1);
}

#[tokio::test]
async fn a_successful_login_resets_the_account_counter() {
    let app = spawn_app_with(|c| c.throttle.max_failures_per_account = 3).await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Forgetful").await;

    for _ in 0..2 {
        assert_eq!(app.login(&email, "typo typo typo").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(app.login(&email, "typo typo typo").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_lockout_ends_after_its_time() {
    let app = spawn_app_with(|c| {
        c.throttle.max_failures_per_account = 1;
        c.throttle.lockout = Duration::from_secs(1);
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Patient").await;
    assert_eq!(app.login(&email, "wrong wrong wrong").await.status(), StatusCode::UNAUTHORIZED);
    let refused = app.login(&email, PASSWORD).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    // A refused login neither counts as a failure nor extends the lockout, so polling is harmless.
    let within = Duration::from_secs(retry_after(&refused) + 10);
    eventually(within, "the lockout ended", || async {
        app.login(&email, PASSWORD).await.status() == StatusCode::OK
    })
    .await;
}

/// A failed login arriving through a proxy that says it forwards for `forwarded_for`.
async fn failed_login_forwarded_for(app: &TestApp, forwarded_for: &str) -> StatusCode {
    app.client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"email": unique_email(), "password": "guess guess guess"}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn behind_a_trusted_proxy_range_one_guessing_client_does_not_lock_out_the_others() {
    // The test client connects from loopback: trusted as part of a range, as gateway pods are.
    let app = spawn_app_with(|c| {
        c.throttle.max_failures_per_account = 100;
        c.throttle.max_failures_per_address = 2;
        c.trusted_proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.0/8").unwrap();
    })
    .await;
    let guesser = "198.51.100.1";
    for _ in 0..2 {
        assert_eq!(failed_login_forwarded_for(&app, guesser).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(failed_login_forwarded_for(&app, guesser).await, StatusCode::TOO_MANY_REQUESTS);
    // Prepending someone else's address does not help: the proxy appended the real one.
    assert_eq!(
        failed_login_forwarded_for(&app, &format!("203.0.113.50, {guesser}")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy (and a second proxy hop in the range) still gets in.
    assert_eq!(failed_login_forwarded_for(&app, "198.51.100.2, 10.3.0.7").await, StatusCode::UNAUTHORIZED);
    let email = unique_email();
    app.register(&email, PASSWORD, "Bystander").await;
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", "198.51.100.3")
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
