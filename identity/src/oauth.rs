//! `POST /oauth/token`: the OAuth 2.0 token endpoint for the client-credentials grant (transport).
//!
//! Form-encoded request, client authentication by HTTP Basic or by `client_id`/`client_secret` form
//! fields (RFC 6749 §2.3.1, one method per request), JSON answers with `Cache-Control: no-store`, and
//! errors as RFC 6749 §5.2 `{error, error_description}` rather than problem+json: OAuth clients
//! parse this shape.

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::service_tokens::{GrantError, IssueError, ServiceTokens};

pub fn router(tokens: ServiceTokens) -> Router {
    Router::new().route("/oauth/token", post(token)).with_state(tokens)
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

#[derive(Debug, Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: String,
}

/// RFC 6749 §5.2 error codes this endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OAuthError {
    InvalidRequest(&'static str),
    /// Unknown client or wrong secret. `basic` says the client tried HTTP Basic, which must then be
    /// answered with a `WWW-Authenticate` challenge.
    InvalidClient {
        basic: bool,
    },
    UnsupportedGrantType,
    InvalidScope,
    ServerError,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let (status, error, description) = match self {
            Self::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", why),
            Self::InvalidClient { .. } => {
                (StatusCode::UNAUTHORIZED, "invalid_client", "client authentication failed")
            }
            Self::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only the client_credentials grant is supported",
            ),
            Self::InvalidScope => {
                (StatusCode::BAD_REQUEST, "invalid_scope", "a requested scope is not allowed")
            }
            Self::ServerError => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the token could not be issued")
            }
        };
        let body = serde_json::json!({"error": error, "error_description": description});
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(self, Self::InvalidClient { basic: true }) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ticketflow\""));
        }
        response
    }
}

async fn token(
    State(tokens): State<ServiceTokens>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(request) =
        form.map_err(|_| OAuthError::InvalidRequest("the body must be a form-encoded token request"))?;
    match request.grant_type.as_deref() {
        None => return Err(OAuthError::InvalidRequest("grant_type is required")),
        Some("client_credentials") => {}
        Some(_) => return Err(OAuthError::UnsupportedGrantType),
    }
    let (id, secret, basic) = credentials(&headers, &request)?;
    let Some(client) = tokens.clients().authenticate(&id, &secret) else {
        tracing::warn!(client.id = %id, "service client authentication failed");
        return Err(OAuthError::InvalidClient { basic });
    };
    let issued = tokens.issue(client, request.scope.as_deref()).await.map_err(|error| match error {
        IssueError::Grant(GrantError::InvalidScope) => OAuthError::InvalidScope,
        IssueError::Internal(error) => {
            tracing::error!(error = %format!("{error:#}"), "issuing a service token failed");
            OAuthError::ServerError
        }
    })?;
    let body = TokenResponse {
        access_token: issued.access_token,
        token_type: "Bearer",
        expires_in: issued.expires_in,
        scope: issued.scope,
    };
    let mut response = axum::Json(body).into_response();
    // RFC 6749 §5.1: responses carrying tokens must not be cached.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The client id and secret, from HTTP Basic or the form, never both (RFC 6749 §2.3: one method).
/// Client ids and secrets here are unreserved characters, so their form-encoding is themselves.
fn credentials(headers: &HeaderMap, request: &TokenRequest) -> Result<(String, String, bool), OAuthError> {
    let basic = headers.get(header::AUTHORIZATION).map(|value| {
        let value = value.to_str().ok()?;
        let (scheme, encoded) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some((id.to_owned(), secret.to_owned()))
    });
    match (basic, &request.client_id, &request.client_secret) {
        (Some(Some(_)), Some(_), _) | (Some(Some(_)), _, Some(_)) => {
            Err(OAuthError::InvalidRequest("use one client authentication method"))
        }
        (Some(Some((id, secret))), None, None) => Ok((id, secret, true)),
        (Some(None), _, _) => Err(OAuthError::InvalidClient { basic: true }),
        (None, Some(id), Some(secret)) => Ok((id.clone(), secret.clone(), false)),
        (None, _, _) => Err(OAuthError::InvalidClient { basic: false }),
    }
}
