//! Login latency on this machine: a measurement run by hand, not a pass/fail test.
//!
//! `cargo test -p identity --release --test api -- --ignored --nocapture login_latency`

use std::time::{Duration, Instant};

use identity::domain::Password;
use identity::passwords::PasswordHasher;
use reqwest::StatusCode;

use crate::helpers::{PASSWORD, spawn_app_with, unique_email};

const ROUNDS: usize = 30;

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap();
    println!(
        "{label:<40} n={:<3} mean {:>6.1} ms  p50 {:>6.1} ms  p95 {:>6.1} ms  max {:>6.1} ms",
        samples.len(),
        ms(mean),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 95 / 100]),
        ms(samples[samples.len() - 1]),
    );
}

async fn timed<F: Future<Output = ()>>(run: impl Fn() -> F) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        run().await;
        samples.push(started.elapsed());
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "measurement: run by hand with --release"]
async fn login_latency() {
    let hasher = PasswordHasher::new(2).await.unwrap();
    let password = || Password::parse(PASSWORD).unwrap();
    let stored = hasher.hash(password()).await.unwrap();
    summary(
        "argon2id hash (m=19MiB,t=2,p=1)",
        timed(|| async {
            hasher.hash(password()).await.unwrap();
        })
        .await,
    );
    summary(
        "argon2id verify",
        timed(|| async { assert!(hasher.verify(password(), Some(stored.clone())).await.unwrap()) }).await,
    );

    let app = spawn_app_with(|c| {
        c.throttle.failures_before_delay = 100_000;
        c.throttle.max_failures_per_account = 100_000;
        c.throttle.max_failures_per_address = 100_000;
    })
    .await;
    let email = unique_email();
    app.register(&email, PASSWORD, "Timer").await;
    let app = &app;
    let email = email.as_str();
    summary(
        "POST /auth/login, success",
        timed(|| async move { assert_eq!(app.login(email, PASSWORD).await.status(), StatusCode::OK) }).await,
    );
    summary(
        "POST /auth/login, wrong password",
        timed(|| async move {
            assert_eq!(app.login(email, "wrong password!").await.status(), StatusCode::UNAUTHORIZED)
        })
        .await,
    );
    summary(
        "POST /auth/login, unknown email",
        timed(|| async move {
            assert_eq!(app.login(&unique_email(), "wrong password!").await.status(), StatusCode::UNAUTHORIZED)
        })
        .await,
    );

    // Throughput with more logins in flight than hashing slots (one per CPU by default).
    let total = 60;
    let started = Instant::now();
    let logins = (0..total).map(|_| async move { app.login(email, PASSWORD).await.status() });
    let statuses = futures::future::join_all(logins).await;
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    println!(
        "{total} concurrent successful logins: {:.2} s, {:.0} logins/s",
        elapsed.as_secs_f64(),
        f64::from(total) / elapsed.as_secs_f64()
    );
}
