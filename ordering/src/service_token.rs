//! Ordering's own credential for catalog's seat RPCs: a service token from identity's OAuth 2.0
//! client-credentials grant (`POST {IDENTITY_URL}/oauth/token`).
//!
//! One token is cached and shared by every call until shortly before it expires. Refreshing holds
//! the cache's lock, so concurrent callers wait for that one fetch instead of each asking identity
//! (single flight). When catalog refuses the token anyway (identity rotated its key, a clock skew),
//! the caller drops it with [`ServiceTokens::invalidate`] and asks again once.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The client id and secret ordering authenticates to identity with. The secret never reaches a log.
#[derive(Clone)]
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Identity did not answer, or answered 5xx: a later attempt can succeed.
    #[error("identity is unavailable: {0}")]
    Unavailable(String),
    /// Identity refused the credentials or the scope: a configuration error, not an outage.
    #[error("identity refused ordering's client credentials: {0}")]
    Refused(String),
}

struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
}

/// Service tokens for ordering, fetched and cached. Cheap to share behind an `Arc`.
pub struct ServiceTokens {
    http: reqwest::Client,
    url: String,
    credentials: ClientCredentials,
    scope: &'static str,
    cached: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTokens")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .finish()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl ServiceTokens {
    /// Tokens with `scope` from the identity service at `identity_url`.
    pub fn new(
        identity_url: &str,
        credentials: ClientCredentials,
        scope: &'static str,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let url = format!("{}/oauth/token", identity_url.trim_end_matches('/'));
        Ok(Self { http, url, credentials, scope, cached: Mutex::new(None) })
    }

    /// A token that is never refreshed, for tests that do not reach catalog's seat RPCs.
    pub fn fixed(token: &str) -> Self {
        let far = Instant::now() + Duration::from_secs(365 * 86_400);
        Self {
            http: reqwest::Client::new(),
            url: String::new(),
            credentials: ClientCredentials { client_id: String::new(), client_secret: String::new() },
            scope: "",
            cached: Mutex::new(Some(Cached { token: token.into(), refresh_at: far })),
        }
    }

    /// The current token, fetching a new one first if it is missing or about to expire.
    pub async fn token(&self) -> Result<Arc<str>, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref()
            && Instant::now() < current.refresh_at
        {
            return Ok(current.token.clone());
        }
        let (token, lifetime) = self.fetch().await?;
        *cached = Some(Cached { token: token.clone(), refresh_at: Instant::now() + refresh_after(lifetime) });
        Ok(token)
    }

    /// Forgets `rejected` if it is still the cached token, so the next call fetches a new one. A token
    /// already replaced by a concurrent caller is left alone: one refresh per rejection wave.
    pub async fn invalidate(&self, rejected: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| &*c.token == rejected) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<(Arc<str>, Duration), TokenError> {
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.credentials.client_id, Some(&self.credentials.client_secret))
            .form(&[("grant_type", "client_credentials"), ("scope", self.scope)])
            .send()
            .await
            .map_err(|error| TokenError::Unavailable(error.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(TokenError::Unavailable(format!("token endpoint answered {status}")));
        }
        if !status.is_success() {
            // The body is an RFC 6749 error (`invalid_client`, `invalid_scope`): no secret in it.
            let body = response.text().await.unwrap_or_default();
            tracing::error!(http.status = status.as_u16(), body = %body.chars().take(200).collect::<String>(), client.id = %self.credentials.client_id, "identity refused ordering's client credentials");
            return Err(TokenError::Refused(format!("{status}")));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|error| TokenError::Unavailable(error.without_url().to_string()))?;
        tracing::debug!(expires_in = body.expires_in, "fetched a service token");
        Ok((body.access_token.into(), Duration::from_secs(body.expires_in)))
    }
}

/// When to fetch the next token: a fifth of its lifetime (at most a minute) before it expires, so a
/// call in flight never carries a token that expires on the way.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime.saturating_sub((lifetime / 5).min(Duration::from_secs(60)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::post;

    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(refresh_after(Duration::from_secs(300)), Duration::from_secs(240));
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(3540));
        assert_eq!(refresh_after(Duration::from_secs(10)), Duration::from_secs(8));
    }

    #[test]
    fn the_secret_is_not_in_the_debug_form() {
        let credentials =
            ClientCredentials { client_id: "ordering".into(), client_secret: "hunter2hunter2".into() };
        assert!(!format!("{credentials:?}").contains("hunter2"));
    }

    /// A token endpoint that counts its calls and answers each with a new token.
    async fn endpoint() -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let app = Router::new().route(
            "/oauth/token",
            post(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    axum::Json(serde_json::json!({"access_token": format!("t{n}"), "token_type": "Bearer", "expires_in": 300}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    fn credentials() -> ClientCredentials {
        platform::install_crypto_provider();
        ClientCredentials { client_id: "ordering".into(), client_secret: "s".repeat(32) }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let (url, calls) = endpoint().await;
        let tokens = Arc::new(ServiceTokens::new(&url, credentials(), "seats:write").unwrap());
        let all = futures::future::join_all((0..20).map(|_| {
            let tokens = tokens.clone();
            async move { tokens.token().await.unwrap() }
        }))
        .await;
        assert!(all.iter().all(|t| &**t == "t0"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_rejected_token_is_replaced_once() {
        let (url, calls) = endpoint().await;
        let tokens = ServiceTokens::new(&url, credentials(), "seats:write").unwrap();
        let first = tokens.token().await.unwrap();
        tokens.invalidate(&first).await;
        let second = tokens.token().await.unwrap();
        assert_ne!(first, second);
        // A late rejection of the old token does not throw away the new one.
        tokens.invalidate(&first).await;
        assert_eq!(tokens.token().await.unwrap(), second);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_identity_is_unavailable() {
        let tokens = ServiceTokens::new("http://127.0.0.1:9", credentials(), "seats:write").unwrap();
        assert!(matches!(tokens.token().await, Err(TokenError::Unavailable(_))));
    }
}
