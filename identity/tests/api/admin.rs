//! Operator commands: making an admin.

use identity::key_encryption::{DEVELOPMENT_KEY_ENCRYPTION_KEYS, KeyEncryptionKeys};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Tokens, spawn_app, unique_email};

#[tokio::test]
async fn granting_admin_shows_in_the_roles_after_the_next_login() {
    let app = spawn_app().await;
    let email = unique_email();
    let before = app.registered_session(&email).await;

    identity::admin::grant_role(&app.db.url, &email.to_uppercase(), "admin").await.unwrap();
    // Granting twice is harmless.
    identity::admin::grant_role(&app.db.url, &email, "admin").await.unwrap();

    let old: Value = app.me(&before.access).await.json().await.unwrap();
    assert_eq!(old["roles"], json!(["customer"]), "an issued token keeps its roles");
    let after = app.session(&email).await;
    let me: Value = app.me(&after.access).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["admin", "customer"]));
    // A refresh of a session opened before the grant picks the role up too.
    let refreshed = app.refresh(&before.refresh).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed = Tokens::from(refreshed).await;
    let me: Value = app.me(&refreshed.access).await.json().await.unwrap();
    assert_eq!(me["roles"], json!(["admin", "customer"]));
}

#[tokio::test]
async fn granting_to_an_unknown_account_or_an_unknown_role_fails() {
    let app = spawn_app().await;
    let email = unique_email();
    app.registered_session(&email).await;

    let error = identity::admin::grant_role(&app.db.url, &unique_email(), "admin").await.unwrap_err();
    assert!(error.to_string().contains("no account"), "{error}");
    let error = identity::admin::grant_role(&app.db.url, &email, "root").await.unwrap_err();
    assert!(error.to_string().contains("unknown role"), "{error}");
}

#[tokio::test]
async fn rotating_the_key_before_the_service_ever_started_creates_a_key_that_signs_at_once() {
    integration::init();
    let db = integration::TestDatabase::create(&integration::TestNames::new().database("identity"))
        .await
        .expect("test database");
    // The command must create the database itself; the guard still drops it afterwards.
    platform::db::drop_database(&db.url).await.expect("drop the fresh database");

    let keks = KeyEncryptionKeys::parse(DEVELOPMENT_KEY_ENCRYPTION_KEYS).unwrap();
    let kid = identity::admin::rotate_signing_key(&db.url, &keks, std::time::Duration::from_secs(120))
        .await
        .expect("rotate on a database the service never used");

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (stored, active): (String, bool) =
        sqlx::query_as("SELECT kid, activates_at <= now() FROM signing_keys").fetch_one(&pool).await.unwrap();
    pool.close().await;
    assert_eq!(stored, kid);
    assert!(active, "with no key to hand over from, the first key must sign at once");
}
