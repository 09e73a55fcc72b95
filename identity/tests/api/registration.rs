//! Creating accounts.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, spawn_app, unique_email};

#[tokio::test]
async fn registering_returns_the_new_user_id() {
    let app = spawn_app().await;
    let response = app.register(&unique_email(), PASSWORD, "Ada Lovelace").await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert!(body["userId"].as_str().unwrap().parse::<uuid::Uuid>().is_ok(), "{body}");
}

#[tokio::test]
async fn an_email_can_only_be_registered_once_whatever_its_case() {
    let app = spawn_app().await;
    assert_eq!(app.register("Alice@Example.com", PASSWORD, "Alice").await.status(), StatusCode::CREATED);

    let response = app.register("  alice@EXAMPLE.com ", PASSWORD, "Other Alice").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn the_stored_email_is_trimmed_and_lower_cased_so_login_ignores_case() {
    let app = spawn_app().await;
    app.register("  Bob@Example.COM", PASSWORD, "Bob").await;
    let tokens = app.session("bob@example.com").await;
    let me: Value = app.me(&tokens.access).await.json().await.unwrap();
    assert_eq!(me["email"], "bob@example.com");
}

#[tokio::test]
async fn invalid_fields_are_each_named_in_the_problem() {
    let app = spawn_app().await;
    let response = app.register("not-an-email", "short", "   ").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.unwrap();
    for field in ["email", "password", "displayName"] {
        assert!(problem["errors"][field].is_string(), "{field} missing from {problem}");
    }
}

#[tokio::test]
async fn passwords_longer_than_128_characters_are_refused() {
    let app = spawn_app().await;
    let response = app.register(&unique_email(), &"p".repeat(129), "Long").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["errors"]["password"].is_string(), "{problem}");
}

#[tokio::test]
async fn common_passwords_are_refused_naming_the_field_and_the_rule() {
    let app = spawn_app().await;
    let email = unique_email();
    for common in ["password123", "qwertyuiop", "iloveyou1", "P@ssw0rd!"] {
        let response = app.register(&email, common, "Common").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{common}");
        let problem: Value = response.json().await.unwrap();
        let message = problem["errors"]["password"].as_str().unwrap_or_default();
        assert!(message.contains("too easy to guess"), "{common}: {problem}");
    }
    // Nor a password made of the account's own email.
    let response = app.register(&email, &email, "Lazy").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // The account was never created: a strong password registers it now.
    assert_eq!(app.register(&email, PASSWORD, "Careful").await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn unknown_and_missing_fields_are_rejected_by_name() {
    let app = spawn_app().await;
    let body =
        json!({"email": unique_email(), "password": PASSWORD, "displayName": "Eve", "roles": ["admin"]});
    let response = app.post("/auth/register", body).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["errors"]["roles"].is_string(), "{problem}");

    let response = app.post("/auth/register", json!({"email": unique_email(), "password": PASSWORD})).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["errors"]["displayName"].is_string(), "{problem}");
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let app = spawn_app().await;
    let body = json!({"email": unique_email(), "password": PASSWORD, "displayName": "x".repeat(100_000)});
    let response = app.post("/auth/register", body).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn health_reports_postgres_on_the_admin_port_only() {
    let app = spawn_app().await;
    let response = app.client.get(format!("{}/health", app.admin_url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"]["status"], "healthy");

    let public: Value = app.client.get(app.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(public, serde_json::json!({"status": "healthy"}), "the public port names no dependency");
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_port_not_the_public_one() {
    let app = spawn_app().await;
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let admin = app.client.get(format!("{}/metrics", app.admin_url)).send().await.unwrap();
    assert_eq!(admin.status(), StatusCode::OK);
}
