//! Who is asking: the bearer token of an HTTP request or of a WebSocket's `connection_init`,
//! verified once at the edge and handed to resolvers as request data.
//!
//! A missing token is fine for public fields (browsing concerts). An invalid or expired one is not
//! rejected up front either: it only fails the fields that need a user, with a message saying why,
//! so a client whose token lapsed can still browse while it refreshes.

use std::net::{IpAddr, Ipv4Addr};

use async_graphql::Context;
use chrono::{DateTime, Utc};
use platform::auth::{AuthError, JwtVerifier, ROLE_ADMIN, bearer_token};
use uuid::Uuid;

use crate::error::{GatewayError, Service};

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    /// The raw access token, forwarded to ordering and catalog so they verify it too.
    pub token: String,
    /// When the token stops being valid; subscriptions end then.
    pub expires_at: DateTime<Utc>,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|role| role == ROLE_ADMIN)
    }
}

/// The outcome of checking a request's credentials.
#[derive(Debug, Clone)]
pub enum Credentials {
    Anonymous,
    User(Viewer),
    Rejected(AuthError),
}

impl Credentials {
    /// Verifies an `Authorization` header value, if any.
    pub async fn from_authorization(verifier: &JwtVerifier, authorization: Option<&str>) -> Self {
        let Some(authorization) = authorization.map(str::trim).filter(|a| !a.is_empty()) else {
            return Self::Anonymous;
        };
        match bearer_token(authorization) {
            Ok(token) => Self::from_token(verifier, token).await,
            Err(error) => Self::Rejected(error),
        }
    }

    pub async fn from_token(verifier: &JwtVerifier, token: &str) -> Self {
        match verifier.verify(token).await {
            Ok(claims) => Self::User(Viewer {
                id: claims.sub,
                email: claims.email,
                roles: claims.roles,
                token: token.to_owned(),
                expires_at: DateTime::from_timestamp(claims.exp, 0).unwrap_or(DateTime::<Utc>::MIN_UTC),
            }),
            Err(error) => Self::Rejected(error),
        }
    }

    /// Reads the `connection_init` payload of a WebSocket: `{"Authorization": "Bearer ..."}` (what
    /// GraphiQL and most clients send) or `{"token": "..."}`.
    pub async fn from_init_payload(verifier: &JwtVerifier, payload: &serde_json::Value) -> Self {
        let field = |name: &str| {
            payload.as_object().and_then(|object| {
                object.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_str())
            })
        };
        if let Some(authorization) = field("authorization") {
            Self::from_authorization(verifier, Some(authorization)).await
        } else if let Some(token) = field("token") {
            Self::from_token(verifier, token.trim()).await
        } else {
            Self::Anonymous
        }
    }

    /// The verified user, or why there is none.
    pub fn viewer(&self) -> Result<&Viewer, GatewayError> {
        match self {
            Self::User(viewer) if viewer.expires_at > Utc::now() => Ok(viewer),
            Self::User(_) => Err(GatewayError::Unauthenticated(AuthError::Expired.to_string())),
            Self::Anonymous => Err(GatewayError::unauthenticated()),
            // Identity's keys could not be fetched: not the caller's fault.
            Self::Rejected(AuthError::KeysUnavailable(_)) => {
                Err(GatewayError::Unavailable(Service::Identity))
            }
            Self::Rejected(error) => Err(GatewayError::Unauthenticated(error.to_string())),
        }
    }
}

/// The client's address, for rate limits.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl Default for ClientIp {
    fn default() -> Self {
        Self(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// The signed-in user of this request, or `UNAUTHENTICATED`.
pub fn viewer<'a>(ctx: &Context<'a>) -> Result<&'a Viewer, GatewayError> {
    ctx.data_opt::<Credentials>().map_or_else(|| Err(GatewayError::unauthenticated()), Credentials::viewer)
}

/// The signed-in user if they are an admin: `UNAUTHENTICATED` without a user, `FORBIDDEN` otherwise.
pub fn admin<'a>(ctx: &Context<'a>) -> Result<&'a Viewer, GatewayError> {
    let viewer = viewer(ctx)?;
    if viewer.is_admin() {
        Ok(viewer)
    } else {
        Err(GatewayError::Forbidden("only admins may do this".to_owned()))
    }
}

pub fn client_ip(ctx: &Context<'_>) -> IpAddr {
    ctx.data_opt::<ClientIp>().copied().unwrap_or_default().0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use platform::auth::{KeySource, TokenAudience};

    use super::*;
    use crate::error::ErrorCode;

    fn verifier() -> JwtVerifier {
        let source = KeySource::Local(Arc::new(|| Box::pin(async { anyhow::bail!("identity is down") })));
        JwtVerifier::new(source, TokenAudience::new("i", "a"))
    }

    fn viewer(expires_at: DateTime<Utc>, roles: &[&str]) -> Credentials {
        Credentials::User(Viewer {
            id: Uuid::nil(),
            email: "a@example.com".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            token: "t".into(),
            expires_at,
        })
    }

    #[tokio::test]
    async fn no_token_is_anonymous_and_anonymous_cannot_act() {
        let credentials = Credentials::from_authorization(&verifier(), None).await;
        assert!(matches!(credentials, Credentials::Anonymous));
        assert_eq!(credentials.viewer().unwrap_err().code(), ErrorCode::Unauthenticated);
    }

    #[tokio::test]
    async fn a_malformed_header_is_rejected() {
        let credentials = Credentials::from_authorization(&verifier(), Some("Basic abc")).await;
        assert_eq!(credentials.viewer().unwrap_err().code(), ErrorCode::Unauthenticated);
    }

    #[tokio::test]
    async fn keys_that_cannot_be_fetched_mean_identity_is_unavailable() {
        // A well-formed access-token header (EdDSA, at+jwt, a kid), so verification gets as far as the
        // key lookup.
        let token = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4In0.c2ln";
        let credentials =
            Credentials::from_authorization(&verifier(), Some(&format!("Bearer {token}"))).await;
        assert_eq!(credentials.viewer().unwrap_err().code(), ErrorCode::Unavailable);
    }

    #[tokio::test]
    async fn init_payloads_carry_the_token_either_way() {
        let v = verifier();
        let none = Credentials::from_init_payload(&v, &serde_json::json!({})).await;
        assert!(matches!(none, Credentials::Anonymous));
        let header =
            Credentials::from_init_payload(&v, &serde_json::json!({"Authorization": "Bearer x.y.z"})).await;
        assert!(matches!(header, Credentials::Rejected(_)));
        let token = Credentials::from_init_payload(&v, &serde_json::json!({"token": "x.y.z"})).await;
        assert!(matches!(token, Credentials::Rejected(_)));
    }

    #[test]
    fn an_expired_token_no_longer_counts() {
        let expired = viewer(Utc::now() - chrono::Duration::seconds(1), &[]);
        assert_eq!(expired.viewer().unwrap_err().code(), ErrorCode::Unauthenticated);
        let valid = viewer(Utc::now() + chrono::Duration::minutes(5), &["admin"]);
        assert!(valid.viewer().unwrap().is_admin());
    }
}
