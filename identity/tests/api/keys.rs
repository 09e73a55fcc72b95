//! The signing key: published as a JWKS, kept across restarts, rotated without breaking tokens.

use std::time::Duration;

use platform::auth::{JwtVerifier, KeySource};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, eventually, kid_of, spawn_app, spawn_app_with, unique_email};

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
}

/// Waits until the running service has reloaded its keys and publishes `kid`.
async fn wait_until_published(app: &TestApp, kid: &str) {
    eventually(Duration::from_secs(10), &format!("key {kid} published"), || async {
        kids(&app.jwks().await).iter().any(|k| k == kid)
    })
    .await;
}

#[tokio::test]
async fn the_jwks_publishes_the_signing_key() {
    let app = spawn_app().await;
    let tokens = app.registered_session(&unique_email()).await;

    let response = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cache_control = response.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cache_control.contains("max-age=60"), "{cache_control}");
    let jwks: Value = response.json().await.unwrap();

    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["kid"], kid_of(&tokens.access).as_str());
    assert_eq!(key["x"].as_str().unwrap().len(), 43, "a base64url 32-byte public key");
    assert!(key.get("d").is_none(), "the private key must never be published");
}

#[tokio::test]
async fn a_token_issued_before_a_restart_still_verifies_after_it() {
    let app = spawn_app().await;
    let tokens = app.registered_session(&unique_email()).await;
    let kids_before = kids(&app.jwks().await);

    let app = app.restart().await;

    assert_eq!(app.me(&tokens.access).await.status(), StatusCode::OK);
    assert_eq!(kids(&app.jwks().await), kids_before);
    assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn rotating_the_key_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key() {
    let app = spawn_app_with(|c| c.signing_keys_reload = Duration::from_millis(100)).await;
    let email = unique_email();
    let before = app.registered_session(&email).await;
    let old_kid = kid_of(&before.access);

    let new_kid = identity::admin::rotate_signing_key(&app.db.url, Duration::ZERO).await.unwrap();
    assert_ne!(new_kid, old_kid);
    wait_until_published(&app, &new_kid).await;

    let after = app.session(&email).await;
    assert_eq!(kid_of(&after.access), new_kid);
    let published = kids(&app.jwks().await);
    assert!(published.contains(&old_kid) && published.contains(&new_kid), "{published:?}");
    // Old and new tokens both verify, for identity and for every other service.
    assert_eq!(app.me(&before.access).await.status(), StatusCode::OK);
    let verifier =
        JwtVerifier::new(KeySource::identity(&app.service.http_url()).unwrap(), app.config.audience.clone());
    verifier.verify(&before.access).await.unwrap();
    verifier.verify(&after.access).await.unwrap();
}

#[tokio::test]
async fn a_scheduled_key_is_published_before_it_signs() {
    let app = spawn_app_with(|c| c.signing_keys_reload = Duration::from_millis(100)).await;
    let email = unique_email();
    let before = app.registered_session(&email).await;

    let next_kid = identity::admin::rotate_signing_key(&app.db.url, Duration::from_secs(3600)).await.unwrap();
    wait_until_published(&app, &next_kid).await;

    let still = app.session(&email).await;
    assert_eq!(kid_of(&still.access), kid_of(&before.access));
}

#[tokio::test]
async fn replicas_starting_together_share_one_key() {
    let app = spawn_app().await;
    // identity already created the first key; racing creators must all find it rather than add more.
    let attempts = (0..5).map(|_| async {
        let pool = app.db_pool().await;
        identity::keys::ensure_key(&pool).await.unwrap();
        pool.close().await;
    });
    futures::future::join_all(attempts).await;
    assert_eq!(kids(&app.jwks().await).len(), 1);
}
