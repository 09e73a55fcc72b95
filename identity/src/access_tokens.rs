//! Issuing access tokens: short-lived EdDSA JWTs carrying the claims every service verifies.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use platform::auth::{ACCESS_TOKEN_TYPE, Claims, TokenAudience};
use uuid::Uuid;

use crate::keys::SigningKeys;

/// Who a token is for.
#[derive(Debug, Clone)]
pub struct Subject {
    pub user_id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
}

#[derive(Clone)]
pub struct AccessTokens {
    keys: Arc<SigningKeys>,
    audience: TokenAudience,
    ttl: Duration,
}

impl AccessTokens {
    pub fn new(keys: Arc<SigningKeys>, audience: TokenAudience, ttl: Duration) -> Self {
        Self { keys, audience, ttl }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A signed token for `subject`, valid for the configured lifetime from now.
    pub async fn issue(&self, subject: Subject) -> anyhow::Result<String> {
        let key = self.keys.signing_key().await?;
        let iat = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(self.ttl.as_secs())?;
        let claims = Claims {
            sub: subject.user_id,
            email: subject.email,
            roles: subject.roles,
            iss: self.audience.issuer.clone(),
            aud: self.audience.audience.clone(),
            exp: iat + ttl,
            iat,
            jti: Uuid::new_v4(),
        };
        let header = Header {
            typ: Some(ACCESS_TOKEN_TYPE.to_owned()),
            kid: Some(key.kid.clone()),
            ..Header::new(Algorithm::EdDSA)
        };
        Ok(jsonwebtoken::encode(&header, &claims, &key.encoding_key)?)
    }
}
