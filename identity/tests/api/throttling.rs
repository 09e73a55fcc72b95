//! Repeated failed logins are refused for a while.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{PASSWORD, spawn_app_with, unique_email};

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

    tokio::time::sleep(Duration::from_secs(retry_after(&refused)) + Duration::from_millis(200)).await;
    assert_eq!(app.login(&email, PASSWORD).await.status(), StatusCode::OK);
}
