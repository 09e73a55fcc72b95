//! Verifying the access tokens identity issues, for every other service.
//!
//! Identity alone holds a private key. Everyone else fetches its public keys (JWKS), caches them, and
//! re-fetches when a token names a key id it has not seen (rate-limited, so a flood of forged `kid`s
//! cannot turn into a flood of fetches). Validation is explicit: an algorithm allow-list of asymmetric
//! algorithms only, `iss`, `aud`, required claims and a small leeway, none of jsonwebtoken's defaults.
//! Following RFC 8725 and RFC 9068, the header must say `typ: at+jwt` (so an ID token or any other JWT
//! signed by the same key is not taken for an access token), `iat` may not lie in the future beyond
//! the leeway, and `exp - iat` may not exceed the configured maximum lifetime (a leaked signing key or
//! a bug issuing year-long tokens is bounded by every verifier, not only by identity's settings).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use futures::future::BoxFuture;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::config::{ConfigError, Env};
use crate::problem::Problem;

/// Algorithms a token may be signed with. Symmetric ones (HS*) and `none` are never accepted.
pub const ALLOWED_ALGORITHMS: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// The JWT `typ` of a TicketFlow access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// Tokens longer than this are rejected before parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_CUSTOMER: &str = "customer";

/// The claims of a TicketFlow access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: Uuid,
}

/// Issuer, audience and maximum token lifetime every service agrees on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenAudience {
    pub issuer: String,
    pub audience: String,
    /// The longest `exp - iat` a verifier accepts; identity refuses to issue anything longer.
    pub max_lifetime: Duration,
}

impl TokenAudience {
    /// Default of `JWT_MAX_LIFETIME_SECS`: identity's default access-token lifetime.
    pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(900);

    /// `JWT_ISSUER` (default `ticketflow-identity`), `JWT_AUDIENCE` (default `ticketflow`) and
    /// `JWT_MAX_LIFETIME_SECS` (default 900, at most one day).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let default_max = Self::DEFAULT_MAX_LIFETIME.as_secs();
        Ok(Self {
            issuer: env.string("JWT_ISSUER", "ticketflow-identity"),
            audience: env.string("JWT_AUDIENCE", "ticketflow"),
            max_lifetime: Duration::from_secs(env.int_in(
                "JWT_MAX_LIFETIME_SECS",
                default_max,
                1..=86_400,
            )?),
        })
    }

    /// `issuer` and `audience` with the default maximum lifetime.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self { issuer: issuer.into(), audience: audience.into(), max_lifetime: Self::DEFAULT_MAX_LIFETIME }
    }
}

/// Where public keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// identity's `/.well-known/jwks.json`.
    Remote { url: String, client: reqwest::Client },
    /// In-process, for identity verifying its own tokens.
    Local(Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<JwkSet>> + Send + Sync>),
}

impl KeySource {
    /// The JWKS of the identity service at `identity_url`.
    pub fn identity(identity_url: &str) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let url = format!("{}/.well-known/jwks.json", identity_url.trim_end_matches('/'));
        Ok(Self::Remote { url, client })
    }

    async fn fetch(&self) -> anyhow::Result<JwkSet> {
        match self {
            Self::Remote { url, client } => {
                Ok(client.get(url).send().await?.error_for_status()?.json::<JwkSet>().await?)
            }
            Self::Local(fetch) => fetch().await,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    MissingToken,
    #[error("malformed bearer token")]
    Malformed,
    #[error("access token has expired")]
    Expired,
    #[error("invalid access token")]
    Invalid,
    #[error("signing keys are unavailable: {0}")]
    KeysUnavailable(String),
}

impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::KeysUnavailable(_) => {
                tracing::error!(%error, "cannot verify tokens");
                // Named for the dependency, so callers (the gateway's breakers) can tell "identity is
                // down" from "this service is unwell".
                Problem::unavailable("cannot verify credentials right now").with_type("identity-unavailable")
            }
            other => Problem::unauthorized(other.to_string()),
        }
    }
}

struct KeyCache {
    keys: HashMap<String, (DecodingKey, Algorithm)>,
    /// When the keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch was last tried, successful or not: failures are rate-limited too, so an identity
    /// outage does not turn every request into a serialised call to it.
    attempted_at: Option<Instant>,
}

/// Verifies access tokens against identity's published keys. Cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    source: KeySource,
    audience: TokenAudience,
    leeway: Duration,
    /// Unknown key ids trigger at most one JWKS fetch per this interval.
    min_refetch_interval: Duration,
    /// Keys are re-read this often even without an unknown `kid`, so a withdrawn key stops working.
    max_key_age: Duration,
    cache: RwLock<KeyCache>,
}

impl JwtVerifier {
    pub fn new(source: KeySource, audience: TokenAudience) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                audience,
                leeway: Duration::from_secs(5),
                min_refetch_interval: Duration::from_secs(10),
                max_key_age: Duration::from_secs(600),
                cache: RwLock::new(KeyCache { keys: HashMap::new(), fetched_at: None, attempted_at: None }),
            }),
        }
    }

    /// Verifies the signature, algorithm, issuer, audience and lifetime of `token`.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) || !is_access_token_type(header.typ.as_deref()) {
            return Err(AuthError::Invalid);
        }
        let kid = header.kid.ok_or(AuthError::Invalid)?;
        let (key, key_algorithm) = self.key(&kid).await?;
        if key_algorithm != header.alg {
            return Err(AuthError::Invalid);
        }

        let inner = &self.inner;
        let mut validation = Validation::new(key_algorithm);
        validation.algorithms = vec![key_algorithm];
        validation.leeway = inner.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&inner.audience.issuer]);
        validation.set_audience(&[&inner.audience.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);

        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => self.check_lifetime(data.claims),
            Err(error) if matches!(error.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(AuthError::Expired)
            }
            Err(error) => {
                tracing::debug!(%error, "token rejected");
                Err(AuthError::Invalid)
            }
        }
    }

    /// jsonwebtoken checks `exp` and `nbf` only: a token issued "in the future" or for longer than
    /// identity may issue is a forgery or a broken clock, either way not to be trusted.
    fn check_lifetime(&self, claims: Claims) -> Result<Claims, AuthError> {
        let inner = &self.inner;
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(inner.leeway.as_secs()).unwrap_or(i64::MAX);
        let max_lifetime = i64::try_from(inner.audience.max_lifetime.as_secs()).unwrap_or(i64::MAX);
        if claims.iat > now.saturating_add(leeway) {
            tracing::debug!(iat = claims.iat, now, "token rejected: issued in the future");
            return Err(AuthError::Invalid);
        }
        if claims.exp.saturating_sub(claims.iat) > max_lifetime {
            tracing::debug!(
                lifetime = claims.exp.saturating_sub(claims.iat),
                "token rejected: lives too long"
            );
            return Err(AuthError::Invalid);
        }
        Ok(claims)
    }

    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        let inner = &self.inner;
        let recent = |at: Option<Instant>, within: Duration| at.is_some_and(|at| at.elapsed() < within);
        {
            let cache = inner.cache.read().await;
            let fresh = recent(cache.fetched_at, inner.max_key_age)
                || recent(cache.attempted_at, inner.min_refetch_interval);
            if fresh && let Some(found) = cache.keys.get(kid) {
                return Ok(found.clone());
            }
        }
        let mut cache = inner.cache.write().await;
        // Another task may have fetched (or failed to) while we waited for the lock.
        if !recent(cache.attempted_at, inner.min_refetch_interval) {
            cache.attempted_at = Some(Instant::now());
            match inner.source.fetch().await {
                Ok(set) => {
                    cache.keys = decoding_keys(&set);
                    cache.fetched_at = cache.attempted_at;
                }
                // Keep serving the keys we have; without any, nothing can be verified.
                Err(error) if cache.keys.is_empty() => {
                    return Err(AuthError::KeysUnavailable(error.to_string()));
                }
                Err(error) => tracing::warn!(%error, "JWKS refresh failed, keeping cached keys"),
            }
        } else if cache.keys.is_empty() {
            return Err(AuthError::KeysUnavailable(
                "identity's keys could not be fetched recently".to_owned(),
            ));
        }
        cache.keys.get(kid).cloned().ok_or(AuthError::Invalid)
    }
}

/// `at+jwt`, or its full media type `application/at+jwt`, case-insensitively (RFC 9068 §4).
fn is_access_token_type(typ: Option<&str>) -> bool {
    typ.is_some_and(|typ| {
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE)
    })
}

fn decoding_keys(set: &JwkSet) -> HashMap<String, (DecodingKey, Algorithm)> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let algorithm = jwk_algorithm(jwk)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, (key, algorithm)))
        })
        .collect()
}

fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm};
    let algorithm = match jwk.common.key_algorithm {
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(_) => return None,
        None => match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => return None,
        },
    };
    ALLOWED_ALGORITHMS.contains(&algorithm).then_some(algorithm)
}

/// The token from an `Authorization: Bearer <token>` value.
pub fn bearer_token(authorization: &str) -> Result<&str, AuthError> {
    let (scheme, token) = authorization.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() { Err(AuthError::MissingToken) } else { Ok(token) }
}

/// The authenticated caller, verified from its bearer token.
///
/// Put it in a handler's arguments and the route requires authentication: a missing or invalid
/// token is a 401 problem before the handler runs.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
    /// The raw token, to forward to downstream services that verify it again.
    pub token: String,
}

impl AuthUser {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_admin(&self) -> bool {
        self.has_role(ROLE_ADMIN)
    }

    pub async fn from_authorization(
        verifier: &JwtVerifier,
        authorization: Option<&str>,
    ) -> Result<Self, AuthError> {
        let token = bearer_token(authorization.ok_or(AuthError::MissingToken)?)?;
        let claims = verifier.verify(token).await?;
        Ok(Self { id: claims.sub, email: claims.email, roles: claims.roles, token: token.to_owned() })
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    JwtVerifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = JwtVerifier::from_ref(state);
        let authorization = match parts.headers.get(AUTHORIZATION) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| AuthError::Malformed)?),
        };
        Ok(Self::from_authorization(&verifier, authorization).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_key_source_is_asked_at_most_once_per_interval() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = calls.clone();
        let source = KeySource::Local(Arc::new(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { anyhow::bail!("identity is down") })
        }));
        let verifier = JwtVerifier::new(source, TokenAudience::new("i", "a"));
        // {"alg":"EdDSA","typ":"at+jwt","kid":"k"} . {} . "sig": only the header matters before a key
        // is found.
        let token = "eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsifQ.e30.c2ln";
        for _ in 0..5 {
            assert!(matches!(verifier.verify(token).await, Err(AuthError::KeysUnavailable(_))));
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn only_the_access_token_type_is_accepted() {
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
            assert!(is_access_token_type(Some(typ)), "{typ}");
        }
        for typ in [None, Some("JWT"), Some("jwt"), Some("id+jwt"), Some("at+jwt2"), Some("")] {
            assert!(!is_access_token_type(typ), "{typ:?}");
        }
    }

    #[test]
    fn bearer_tokens_are_parsed_from_the_header() {
        assert_eq!(bearer_token("Bearer abc.def.ghi"), Ok("abc.def.ghi"));
        assert_eq!(bearer_token("bearer  abc "), Ok("abc"));
        assert_eq!(bearer_token("Basic dXNlcg=="), Err(AuthError::Malformed));
        assert_eq!(bearer_token("Bearer"), Err(AuthError::Malformed));
    }

    #[tokio::test]
    async fn unsigned_and_symmetric_tokens_are_rejected_before_any_key_lookup() {
        let source = KeySource::Local(Arc::new(|| Box::pin(async { anyhow::bail!("no keys here") })));
        let verifier = JwtVerifier::new(source, TokenAudience::new("i", "a"));
        // {"alg":"none","typ":"JWT"} . {"sub":"x"} .
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.";
        assert!(verifier.verify(none).await.is_err());
        let hs256 = jsonwebtoken::encode(
            &jsonwebtoken::Header { kid: Some("k".into()), ..Default::default() },
            &serde_json::json!({"sub": "x"}),
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs256).await, Err(AuthError::Invalid));
    }
}
