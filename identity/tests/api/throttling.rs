//! Repeated failed logins are refused for a while.

use std::time::Duration;

use identity::throttle::TrustedProxies;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{PASSWORD, TestApp, eventually, spawn_app_with, unique_email};

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"].to_str().unwrap().parse().unwrap()
}

/// A login arriving through the (trusted, loopback) proxy on behalf of `client`.
async fn login_from(app: &TestApp, client: &str, email: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// identity behind a trusted loopback proxy, so each test names its clients' addresses.
async fn spawn_behind_proxy(adjust: impl FnOnce(&mut identity::config::ThrottleConfig)) -> TestApp {
    spawn_app_with(|c| {
        c.trusted_proxies = TrustedProxies::parse("127.0.0.0/8").unwrap();
        adjust(&mut c.throttle);
    })
    .await
}

const OWNER: &str = "192.0.2.10";

#[tokio::test]
async fn failures_from_other_addresses_never_lock_the_owner_out() {
    // The defaults: a handful of attackers cannot reach the account-wide ceiling.
    let app = spawn_behind_proxy(|_| {}).await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Target").await;

    // Five addresses, each past its free failures and being delayed.
    for attacker in 1..=5 {
        let attacker = format!("198.51.100.{attacker}");
        let mut refused = false;
        for _ in 0..5 {
            refused |= login_from(&app, &attacker, &email, "guess guess guess").await.status()
                == StatusCode::TOO_MANY_REQUESTS;
        }
        assert!(refused, "{attacker} is slowed down");
    }

    let response = login_from(&app, OWNER, &email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK, "the owner at their own address signs in");
}

#[tokio::test]
async fn one_address_guessing_one_account_is_delayed_progressively() {
    let app = spawn_behind_proxy(|t| {
        t.failures_before_delay = 2;
        t.delay_base = Duration::from_secs(1);
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Target").await;
    let attacker = "198.51.100.7";

    for _ in 0..3 {
        assert_eq!(
            login_from(&app, attacker, &email, "guess guess guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The third failure earned a 1 s delay, refused without spending a hash, even for the right password.
    let refused = login_from(&app, attacker, &email, PASSWORD).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["content-type"], "application/problem+json");
    assert_eq!(retry_after(&refused), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The next failure doubles it.
    assert_eq!(
        login_from(&app, attacker, &email, "guess guess guess").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let refused = login_from(&app, attacker, &email, "guess guess guess").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&refused), 2);

    // Meanwhile the owner, elsewhere, is not delayed at all.
    assert_eq!(login_from(&app, OWNER, &email, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn past_the_account_ceiling_only_addresses_the_owner_used_get_in() {
    let app = spawn_behind_proxy(|t| {
        t.failures_before_delay = 100;
        t.max_failures_per_account = 4;
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Target").await;
    assert_eq!(login_from(&app, OWNER, &email, PASSWORD).await.status(), StatusCode::OK);

    // A distributed attack: one guess from each of many addresses.
    for attacker in 1..=4 {
        let status =
            login_from(&app, &format!("198.51.100.{attacker}"), &email, "guess guess guess").await.status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = login_from(&app, "198.51.100.99", &email, "guess guess guess").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "a new address meets the ceiling");
    assert!(retry_after(&response) >= 1);
    // Even with the right password: the ceiling cannot tell the owner on a new network from an attacker.
    assert_eq!(
        login_from(&app, "203.0.113.5", &email, PASSWORD).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // The owner's usual address is not affected.
    assert_eq!(login_from(&app, OWNER, &email, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_emails_are_throttled_like_real_accounts() {
    let app = spawn_app_with(|c| c.throttle.failures_before_delay = 2).await;
    let nobody = unique_email();
    for _ in 0..3 {
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
async fn a_successful_login_resets_the_delay() {
    let app = spawn_app_with(|c| c.throttle.failures_before_delay = 2).await;
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
async fn the_delay_ends_after_its_time() {
    let app = spawn_app_with(|c| {
        c.throttle.failures_before_delay = 0;
        c.throttle.delay_base = Duration::from_secs(1);
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Patient").await;
    assert_eq!(app.login(&email, "wrong wrong wrong").await.status(), StatusCode::UNAUTHORIZED);
    let refused = app.login(&email, PASSWORD).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    // A refused login neither counts as a failure nor extends the delay, so polling is harmless.
    let within = Duration::from_secs(retry_after(&refused) + 10);
    eventually(within, "the delay ended", || async {
        app.login(&email, PASSWORD).await.status() == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn wrong_passwords_and_unknown_emails_take_the_same_time() {
    let app = spawn_app_with(|c| {
        c.throttle.failures_before_delay = 1000;
        c.throttle.max_failures_per_address = 100_000;
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Timed").await;
    let timed = |email: String| {
        let app = &app;
        async move {
            let started = std::time::Instant::now();
            assert_eq!(app.login(&email, "wrong password!").await.status(), StatusCode::UNAUTHORIZED);
            started.elapsed()
        }
    };
    // Interleaved, so load from other tests on the machine hits both alike; medians, so one stall
    // does not decide.
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        known.push(timed(email.clone()).await);
        unknown.push(timed(unique_email()).await);
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[7].as_secs_f64(), unknown[7].as_secs_f64());
    let ratio = known.max(unknown) / known.min(unknown);
    assert!(ratio < 1.5, "median wrong password {known:.4} s, unknown email {unknown:.4} s");
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
