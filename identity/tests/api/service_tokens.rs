//! Services get tokens by the OAuth 2.0 client-credentials grant, and those tokens are good for
//! service calls only.

use base64::Engine as _;
use identity::service_tokens::{ServiceClients, generate_client};
use platform::auth::{AuthError, JwtVerifier, KeySource, SCOPE_SEATS_WRITE};
use reqwest::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app_with, unique_email};

/// identity with two clients: `ordering` (seats:write) and `reporting` (concerts:read).
async fn app_with_clients() -> (TestApp, String, String) {
    let (ordering_secret, ordering) = generate_client("ordering", SCOPE_SEATS_WRITE).unwrap();
    let (reporting_secret, reporting) = generate_client("reporting", "concerts:read").unwrap();
    let clients = ServiceClients::parse(&format!("{ordering},{reporting}")).unwrap();
    let app = spawn_app_with(|config| config.service_clients = clients).await;
    (app, ordering_secret, reporting_secret)
}

async fn token_request(app: &TestApp, basic: Option<(&str, &str)>, form: &str) -> Response {
    let mut request = app
        .client
        .post(app.url("/oauth/token"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form.to_owned());
    if let Some((id, secret)) = basic {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
        request = request.header(AUTHORIZATION, format!("Basic {encoded}"));
    }
    request.send().await.unwrap()
}

async fn error_code(response: Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["error"].as_str().unwrap_or_default().to_owned()
}

fn verifier(app: &TestApp) -> JwtVerifier {
    JwtVerifier::new(KeySource::identity(&app.url("")).unwrap(), app.config.audience.clone())
}

#[tokio::test]
async fn a_client_with_its_secret_gets_a_short_lived_service_token() {
    let (app, secret, _) = app_with_clients().await;
    let response =
        token_request(&app, Some(("ordering", &secret)), "grant_type=client_credentials&scope=seats%3Awrite")
            .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "seats:write");
    assert_eq!(body["expires_in"], 300);

    let claims = verifier(&app).verify_service(body["access_token"].as_str().unwrap()).await.unwrap();
    assert_eq!(claims.sub, "ordering");
    assert!(claims.has_scope(SCOPE_SEATS_WRITE));
    assert_eq!(claims.exp - claims.iat, 300);

    // The same credentials in the form (RFC 6749 §2.3.1) work too; no scope asked means all allowed.
    let response = token_request(
        &app,
        None,
        &format!("grant_type=client_credentials&client_id=ordering&client_secret={secret}"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["scope"], "seats:write");
}

#[tokio::test]
async fn a_service_token_is_not_a_user_token_and_a_user_token_is_not_a_service_token() {
    let (app, secret, _) = app_with_clients().await;
    let response = token_request(&app, Some(("ordering", &secret)), "grant_type=client_credentials").await;
    let body: Value = response.json().await.unwrap();
    let service_token = body["access_token"].as_str().unwrap().to_owned();
    let user = app.registered_session(&unique_email()).await;

    let verifier = verifier(&app);
    assert_eq!(verifier.verify(&service_token).await, Err(AuthError::Invalid));
    assert_eq!(verifier.verify_service(&user.access).await, Err(AuthError::Invalid));
    assert_eq!(app.me(&service_token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&user.access).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_or_unknown_credentials_are_invalid_client() {
    let (app, secret, reporting_secret) = app_with_clients().await;
    let response =
        token_request(&app, Some(("ordering", &reporting_secret)), "grant_type=client_credentials").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers()[WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic"));
    assert_eq!(error_code(response).await, "invalid_client");

    let response = token_request(&app, Some(("nobody", &secret)), "grant_type=client_credentials").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "invalid_client");

    let response = token_request(&app, None, "grant_type=client_credentials").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "invalid_client");
}

#[tokio::test]
async fn a_scope_the_client_may_not_have_is_invalid_scope() {
    let (app, _, reporting_secret) = app_with_clients().await;
    let response = token_request(
        &app,
        Some(("reporting", &reporting_secret)),
        "grant_type=client_credentials&scope=seats%3Awrite",
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "invalid_scope");
}

#[tokio::test]
async fn only_the_client_credentials_grant_is_supported() {
    let (app, secret, _) = app_with_clients().await;
    let response =
        token_request(&app, Some(("ordering", &secret)), "grant_type=password&username=a&password=b").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "unsupported_grant_type");
    let response = token_request(&app, Some(("ordering", &secret)), "scope=seats%3Awrite").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "invalid_request");
}
