//! The signing key: published as a JWKS, kept across restarts, rotated without breaking tokens.

use std::time::Duration;

use identity::key_encryption::{DEVELOPMENT_KEY_ENCRYPTION_KEYS, KeyEncryptionKeys, Sealed};
use identity::keys::Resealed;
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

    let new_kid =
        identity::admin::rotate_signing_key(&app.db.url, &app.config.key_encryption, Duration::ZERO)
            .await
            .unwrap();
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

    let next_kid = identity::admin::rotate_signing_key(
        &app.db.url,
        &app.config.key_encryption,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
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
        identity::keys::ensure_key(&pool, &app.config.key_encryption).await.unwrap();
        pool.close().await;
    });
    futures::future::join_all(attempts).await;
    assert_eq!(kids(&app.jwks().await).len(), 1);
}

/// The private keys as stored: (kid, private_key, kek_id).
async fn stored_keys(app: &TestApp) -> Vec<(String, Vec<u8>, Option<String>)> {
    let pool = app.db_pool().await;
    let rows = sqlx::query_as("SELECT kid, private_key, kek_id FROM signing_keys ORDER BY activates_at")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

/// Whether `stored` is a usable Ed25519 PKCS#8 document as it is, i.e. readable by anyone with the
/// database.
fn is_plain_text_key(stored: &[u8]) -> bool {
    ring::signature::Ed25519KeyPair::from_pkcs8(stored).is_ok()
        || ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(stored).is_ok()
}

fn keks(list: &str) -> KeyEncryptionKeys {
    KeyEncryptionKeys::parse(list).unwrap()
}

const NEW_KEK: &str = "kek-2:HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=";

#[tokio::test]
async fn private_keys_are_stored_sealed_under_the_key_encryption_key() {
    let app = spawn_app().await;
    identity::admin::rotate_signing_key(&app.db.url, &app.config.key_encryption, Duration::ZERO)
        .await
        .unwrap();

    let stored = stored_keys(&app).await;
    assert_eq!(stored.len(), 2);
    for (kid, private_key, kek_id) in &stored {
        assert_eq!(kek_id.as_deref(), Some("dev-only"), "{kid}");
        assert!(!is_plain_text_key(private_key), "{kid} is readable without the key-encryption key");
    }
}

#[tokio::test]
async fn plain_text_keys_from_before_encryption_are_sealed_at_start_up_and_keep_verifying() {
    let app = spawn_app().await;
    let before = app.registered_session(&unique_email()).await;
    // Put the key back the way older versions stored it: the PKCS#8 document in clear.
    let pool = app.db_pool().await;
    for (kid, blob, kek_id) in stored_keys(&app).await {
        let plain = app.config.key_encryption.open(&kid, &Sealed { kek_id: kek_id.unwrap(), blob }).unwrap();
        sqlx::query("UPDATE signing_keys SET private_key = $2, kek_id = NULL WHERE kid = $1")
            .bind(&kid)
            .bind(&plain)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    assert!(stored_keys(&app).await.iter().all(|(_, key, kek)| kek.is_none() && is_plain_text_key(key)));

    let app = app.restart().await;

    let stored = stored_keys(&app).await;
    assert!(stored.iter().all(|(_, key, kek)| kek.as_deref() == Some("dev-only") && !is_plain_text_key(key)));
    assert_eq!(app.me(&before.access).await.status(), StatusCode::OK, "the same key, now sealed");
    let after = app.session(&unique_email_registered(&app).await).await;
    assert_eq!(kid_of(&after.access), kid_of(&before.access));
}

async fn unique_email_registered(app: &TestApp) -> String {
    let email = unique_email();
    app.registered_session(&email).await;
    email
}

#[tokio::test]
async fn rotating_the_key_encryption_key_reseals_every_key_at_start_up() {
    let app = spawn_app().await;
    let before = app.registered_session(&unique_email()).await;
    identity::admin::rotate_signing_key(&app.db.url, &app.config.key_encryption, Duration::from_secs(3600))
        .await
        .unwrap();

    // The new KEK first, the old one kept for opening.
    let mut app = app;
    app.config.key_encryption = keks(&format!("{NEW_KEK},{}", DEVELOPMENT_KEY_ENCRYPTION_KEYS));
    let app = app.restart().await;

    let stored = stored_keys(&app).await;
    assert_eq!(stored.len(), 2);
    assert!(
        stored.iter().all(|(_, _, kek)| kek.as_deref() == Some("kek-2")),
        "{:?}",
        stored.iter().map(|s| &s.2).collect::<Vec<_>>()
    );
    assert_eq!(app.me(&before.access).await.status(), StatusCode::OK);
    // Nothing left to re-seal, so the old KEK can go: the service starts with the new one alone.
    let resealed = identity::admin::rewrap_keys(&app.db.url, &app.config.key_encryption).await.unwrap();
    assert_eq!(resealed, Resealed::default());
    let mut app = app;
    app.config.key_encryption = keks(NEW_KEK);
    let app = app.restart().await;
    assert_eq!(app.me(&before.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_key_sealed_under_an_unlisted_key_encryption_key_stops_start_up_with_a_clear_error() {
    let app = spawn_app().await;
    let mut config = app.config.clone();
    config.key_encryption = keks(NEW_KEK);
    let error = identity::App::build(config).await.err().expect("start-up refused");
    let message = format!("{error:#}");
    assert!(message.contains("\"dev-only\"") && message.contains("KEY_ENCRYPTION_KEYS"), "{message}");
}
