//! The REST surface: request and response shapes, routes, and thin handlers over the capabilities.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use platform::auth::{AuthUser, JwtVerifier};
use platform::http::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::accounts::{Accounts, NewAccount};
use crate::domain::{DisplayName, Email, Password};
use crate::error::Error;
use crate::keys::SigningKeys;
use crate::sessions::{Sessions, TokenPair};
use crate::throttle::{TrustedProxies, client_address};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub accounts: Accounts,
    pub sessions: Sessions,
    pub keys: Arc<SigningKeys>,
    pub verifier: JwtVerifier,
    pub trusted_proxies: Arc<TrustedProxies>,
}

impl FromRef<AppState> for JwtVerifier {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/me", get(me))
        .route("/.well-known/jwks.json", get(jwks))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RegisterRequest {
    email: String,
    password: String,
    display_name: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisterResponse {
    user_id: Uuid,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RefreshTokenRequest {
    refresh_token: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MeResponse {
    user_id: Uuid,
    email: String,
    display_name: String,
    roles: Vec<String>,
}

async fn register(
    State(state): State<AppState>,
    Json(request): Json<RegisterRequest>,
) -> Result<impl IntoResponse, Error> {
    let account = parse_registration(&request)?;
    let user_id = state.accounts.register(account).await?;
    tracing::info!(user.id = %user_id, "registered");
    Ok((StatusCode::CREATED, Json(RegisterResponse { user_id })))
}

/// Every field checked, every problem reported at once.
fn parse_registration(request: &RegisterRequest) -> Result<NewAccount, Error> {
    let email = Email::parse(&request.email);
    // The account's own email and name are the first things an attacker who knows them would try.
    let password =
        Password::parse_new(&request.password, &[request.email.trim(), request.display_name.trim()]);
    let display_name = DisplayName::parse(&request.display_name);
    match (email, password, display_name) {
        (Ok(email), Ok(password), Ok(display_name)) => Ok(NewAccount { email, password, display_name }),
        (email, password, display_name) => {
            let errors =
                [("email", email.err()), ("password", password.err()), ("displayName", display_name.err())]
                    .into_iter()
                    .filter_map(|(field, error)| error.map(|message| (field, message.to_owned())))
                    .collect();
            Err(Error::Invalid(errors))
        }
    }
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Json(request): Json<LoginRequest>,
) -> Result<Response, Error> {
    let email = Email::parse(&request.email).map_err(|e| Error::Invalid(vec![("email", e.to_owned())]))?;
    let client = client_address(peer, &headers, &state.trusted_proxies);
    let pair = state.sessions.login(email, &request.password, client).await?;
    Ok(token_response(pair))
}

async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshTokenRequest>,
) -> Result<Response, Error> {
    let pair = state.sessions.refresh(&request.refresh_token).await?;
    Ok(token_response(pair))
}

async fn logout(
    State(state): State<AppState>,
    Json(request): Json<RefreshTokenRequest>,
) -> Result<StatusCode, Error> {
    state.sessions.logout(&request.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's profile. Roles are the token's: what this caller is authorised for right now, the
/// same roles every other service sees (a newly granted role appears after the next refresh).
async fn me(State(state): State<AppState>, user: AuthUser) -> Result<Json<MeResponse>, Error> {
    let profile = state
        .accounts
        .profile(user.id)
        .await?
        .ok_or(Error::Unauthenticated(platform::auth::AuthError::Invalid))?;
    Ok(Json(MeResponse {
        user_id: profile.user_id,
        email: profile.email,
        display_name: profile.display_name,
        roles: user.roles,
    }))
}

async fn jwks(State(state): State<AppState>) -> Response {
    let set = state.keys.jwks().await;
    let mut response = Json(set).into_response();
    // Short: verifiers re-fetch on an unknown `kid` anyway, and a rotation must reach them quickly.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    response
}

fn token_response(pair: TokenPair) -> Response {
    let body = TokenResponse {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        token_type: "Bearer",
        expires_in: pair.expires_in_secs,
    };
    let mut response = Json(body).into_response();
    // RFC 6749 §5.1: responses carrying tokens must not be cached.
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_reports_every_invalid_field() {
        let request =
            RegisterRequest { email: "nope".into(), password: "short".into(), display_name: " ".into() };
        let Err(Error::Invalid(errors)) = parse_registration(&request) else { panic!("expected invalid") };
        let fields: Vec<_> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["email", "password", "displayName"]);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let parsed = serde_json::from_str::<LoginRequest>(r#"{"email":"a@b.c","password":"x","admin":true}"#);
        assert!(parsed.unwrap_err().to_string().contains("unknown field `admin`"));
    }
}
