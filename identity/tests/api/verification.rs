//! Access tokens as every other service sees them: through `platform::auth::JwtVerifier` and the JWKS.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use identity::key_encryption::Sealed;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::{AuthError, Claims, JwtVerifier, KeySource};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, kid_of, spawn_app, unique_email};

fn verifier(app: &TestApp) -> JwtVerifier {
    JwtVerifier::new(KeySource::identity(&app.service.http_url()).unwrap(), app.config.audience.clone())
}

/// The key identity signs with, read from its database and opened with its key-encryption key:
/// forging with the real key proves the verifier checks more than the signature.
async fn real_signing_key(app: &TestApp) -> (String, EncodingKey) {
    let pool = app.db_pool().await;
    let (kid, blob, kek_id): (String, Vec<u8>, String) = sqlx::query_as(
        "SELECT kid, private_key, kek_id FROM signing_keys ORDER BY activates_at DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let pkcs8 = app.config.key_encryption.open(&kid, &Sealed { kek_id, blob }).unwrap();
    (kid, EncodingKey::from_ed_der(&pkcs8))
}

/// The header identity puts on an access token, for forging with its key.
fn access_header(kid: String) -> Header {
    Header { typ: Some("at+jwt".to_owned()), kid: Some(kid), ..Header::new(Algorithm::EdDSA) }
}

/// `claims` signed with identity's real key under `header`.
async fn signed(app: &TestApp, claims: &Value, header: impl FnOnce(String) -> Header) -> String {
    let (kid, key) = real_signing_key(app).await;
    jsonwebtoken::encode(&header(kid), claims, &key).unwrap()
}

fn claims_like(issued: &Claims) -> Value {
    serde_json::to_value(issued).unwrap()
}

async fn issued_token(app: &TestApp) -> (String, Claims) {
    let tokens = app.registered_session(&unique_email()).await;
    let claims = verifier(app).verify(&tokens.access).await.expect("identity's own token verifies");
    (tokens.access, claims)
}

/// Rejected by the platform verifier and by identity's own `/auth/me`.
async fn assert_rejected(app: &TestApp, token: &str) -> AuthError {
    assert_eq!(app.me(token).await.status(), StatusCode::UNAUTHORIZED, "/auth/me accepted {token}");
    verifier(app).verify(token).await.expect_err("the platform verifier accepted a bad token")
}

#[tokio::test]
async fn an_issued_token_carries_the_agreed_claims() {
    let app = spawn_app().await;
    let (token, claims) = issued_token(&app).await;

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"), "RFC 9068: typed as an access token");
    assert!(header.kid.is_some());
    assert_eq!(claims.iss, "ticketflow-identity");
    assert_eq!(claims.aud, "ticketflow");
    assert_eq!(claims.roles, ["customer"]);
    assert_eq!(claims.exp - claims.iat, 900);
    assert!(claims.email.starts_with("user-"));
}

#[tokio::test]
async fn an_expired_token_is_rejected() {
    let app = spawn_app().await;
    let (_, issued) = issued_token(&app).await;
    let (kid, key) = real_signing_key(&app).await;
    let mut claims = claims_like(&issued);
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now - 1000);
    claims["exp"] = json!(now - 100);
    let token = jsonwebtoken::encode(&access_header(kid), &claims, &key).unwrap();

    assert_eq!(assert_rejected(&app, &token).await, AuthError::Expired);
}

#[tokio::test]
async fn a_tampered_token_is_rejected() {
    let app = spawn_app().await;
    let (token, issued) = issued_token(&app).await;
    let mut claims = claims_like(&issued);
    claims["roles"] = json!(["admin", "customer"]);
    let [header, _, signature]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let tampered = format!("{header}.{payload}.{signature}");

    assert_eq!(assert_rejected(&app, &tampered).await, AuthError::Invalid);
}

#[tokio::test]
async fn a_token_for_another_audience_is_rejected() {
    let app = spawn_app().await;
    let (_, issued) = issued_token(&app).await;
    let (kid, key) = real_signing_key(&app).await;
    let mut claims = claims_like(&issued);
    claims["aud"] = json!("some-other-system");
    let token = jsonwebtoken::encode(&access_header(kid), &claims, &key).unwrap();

    assert_eq!(assert_rejected(&app, &token).await, AuthError::Invalid);
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_rejected() {
    let app = spawn_app().await;
    let (token, issued) = issued_token(&app).await;
    let mut claims = claims_like(&issued);
    claims["roles"] = json!(["admin"]);
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid_of(&token)});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );

    assert_rejected(&app, &unsigned).await;
}

#[tokio::test]
async fn an_hs256_token_keyed_with_the_public_key_is_rejected() {
    let app = spawn_app().await;
    let (token, issued) = issued_token(&app).await;
    // The classic key-confusion attack: HMAC "signed" with the published public key.
    let jwks = app.jwks().await;
    let public_x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let mut claims = claims_like(&issued);
    claims["roles"] = json!(["admin"]);
    let header = Header { alg: Algorithm::HS256, ..access_header(kid_of(&token)) };
    for secret in [public_x.as_bytes().to_vec(), URL_SAFE_NO_PAD.decode(&public_x).unwrap()] {
        let forged = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(assert_rejected(&app, &forged).await, AuthError::Invalid);
    }
}

#[tokio::test]
async fn a_token_signed_by_an_unknown_key_is_rejected() {
    let app = spawn_app().await;
    let (token, issued) = issued_token(&app).await;
    let rng = ring::rand::SystemRandom::new();
    let stranger = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = EncodingKey::from_ed_der(stranger.as_ref());
    let claims = claims_like(&issued);
    // Both with the real kid (signature mismatch) and a made-up one (unknown key).
    for kid in [kid_of(&token), "made-up".to_owned()] {
        let forged = jsonwebtoken::encode(&access_header(kid), &claims, &key).unwrap();
        assert_eq!(assert_rejected(&app, &forged).await, AuthError::Invalid);
    }
}

#[tokio::test]
async fn a_token_not_typed_as_an_access_token_is_rejected() {
    let app = spawn_app().await;
    let (_, issued) = issued_token(&app).await;
    let claims = claims_like(&issued);
    // Valid in every other respect: identity's key, claims and lifetime.
    for typ in [Some("JWT"), None, Some("id+jwt")] {
        let token =
            signed(&app, &claims, |kid| Header { typ: typ.map(str::to_owned), ..access_header(kid) }).await;
        assert_eq!(assert_rejected(&app, &token).await, AuthError::Invalid, "typ {typ:?}");
    }
    let token = signed(&app, &claims, access_header).await;
    verifier(&app).verify(&token).await.expect("the same token typed at+jwt verifies");
}

#[tokio::test]
async fn a_token_issued_in_the_future_is_rejected() {
    let app = spawn_app().await;
    let (_, issued) = issued_token(&app).await;
    let mut claims = claims_like(&issued);
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now + 120);
    claims["exp"] = json!(now + 120 + 600);
    let token = signed(&app, &claims, access_header).await;

    assert_eq!(assert_rejected(&app, &token).await, AuthError::Invalid);
}

#[tokio::test]
async fn a_token_living_longer_than_the_configured_maximum_is_rejected() {
    let app = spawn_app().await;
    let (_, issued) = issued_token(&app).await;
    let mut claims = claims_like(&issued);
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 86_400);
    let token = signed(&app, &claims, access_header).await;

    assert_eq!(assert_rejected(&app, &token).await, AuthError::Invalid);
}
