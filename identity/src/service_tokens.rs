//! Service tokens: the OAuth 2.0 client-credentials grant (RFC 6749 §4.4) for calls between services.
//!
//! Clients and the scopes each may ask for come from configuration (`SERVICE_CLIENTS`), with only
//! the SHA-256 of each secret stored. Secrets are long random strings, not passwords, so a fast hash
//! is enough: nobody can guess one to match its digest. A token is an EdDSA JWT signed with the same
//! keys as access tokens, but with its own `typ` header, audience and claims, so that the verifier
//! never takes one kind for the other (`platform::auth::JwtVerifier::verify_service`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Header};
use platform::auth::{SERVICE_TOKEN_TYPE, ServiceClaims, TokenAudience};
use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use crate::keys::SigningKeys;

/// One configured client.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceClient {
    pub id: String,
    secret_sha256: [u8; 32],
    /// What this client may ask for.
    pub scopes: BTreeSet<String>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient").field("id", &self.id).field("scopes", &self.scopes).finish()
    }
}

/// Every client allowed to ask for a service token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceClients {
    clients: HashMap<String, ServiceClient>,
}

impl ServiceClients {
    /// Parses `id:sha256-of-secret-in-hex:scope[ scope...]` entries separated by commas, e.g.
    /// `ordering:9f86d0...:seats:write`. The secret field is `printf %s "$secret" | sha256sum`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut clients = HashMap::new();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.splitn(3, ':');
            let (Some(id), Some(hash), Some(scopes)) = (parts.next(), parts.next(), parts.next()) else {
                return Err("each client is id:sha256-hex:scopes".to_owned());
            };
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!("client id {id:?} must be letters, digits, '-', '_' or '.'"));
            }
            let secret_sha256 = decode_sha256_hex(hash)
                .ok_or_else(|| format!("client {id}: the secret must be its SHA-256 as 64 hex digits"))?;
            let scopes: BTreeSet<String> =
                scopes.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if scopes.is_empty() || !scopes.iter().all(|s| is_scope_token(s)) {
                return Err(format!("client {id}: scopes must be one or more space-separated names"));
            }
            let client = ServiceClient { id: id.to_owned(), secret_sha256, scopes };
            if clients.insert(id.to_owned(), client).is_some() {
                return Err(format!("client {id} is configured twice"));
            }
        }
        Ok(Self { clients })
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client whose id and secret these are. The digests are compared in constant time, and an
    /// unknown id costs the same work as a known one.
    pub fn authenticate(&self, id: &str, secret: &str) -> Option<&ServiceClient> {
        let presented = digest(&SHA256, secret.as_bytes());
        let client = self.clients.get(id);
        let expected = client.map_or([0u8; 32], |c| c.secret_sha256);
        let matches: bool = presented.as_ref().ct_eq(&expected).into();
        client.filter(|_| matches)
    }
}

/// A new client with a random 256-bit secret: `(secret, SERVICE_CLIENTS entry)`. For the launcher
/// and test stacks, which make up credentials per run; operators do the same with
/// `openssl rand -hex 32` and `sha256sum`.
pub fn generate_client(id: &str, scopes: &str) -> anyhow::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let secret = to_hex(&bytes);
    let entry = format!("{id}:{}:{scopes}", to_hex(digest(&SHA256, secret.as_bytes()).as_ref()));
    Ok((secret, entry))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
}

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| char::from(b).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Why a token was not issued, in RFC 6749 §5.2 terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("a requested scope is not allowed for this client")]
    InvalidScope,
}

/// A token and what it grants.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: String,
}

/// Issues service tokens for authenticated clients.
#[derive(Clone)]
pub struct ServiceTokens {
    keys: Arc<SigningKeys>,
    audience: TokenAudience,
    ttl: Duration,
    clients: Arc<ServiceClients>,
}

impl ServiceTokens {
    pub fn new(
        keys: Arc<SigningKeys>,
        audience: TokenAudience,
        ttl: Duration,
        clients: ServiceClients,
    ) -> Self {
        Self { keys, audience, ttl, clients: Arc::new(clients) }
    }

    pub fn clients(&self) -> &ServiceClients {
        &self.clients
    }

    /// A token for `client` with the `requested` scopes (space-separated), or all its scopes when
    /// none are requested (RFC 6749 §3.3 lets the server pick a default).
    pub async fn issue(
        &self,
        client: &ServiceClient,
        requested: Option<&str>,
    ) -> Result<IssuedToken, IssueError> {
        let scopes: BTreeSet<String> = match requested.map(str::trim).filter(|s| !s.is_empty()) {
            None => client.scopes.clone(),
            Some(requested) => {
                let scopes: BTreeSet<String> =
                    requested.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
                if !scopes.is_subset(&client.scopes) {
                    return Err(GrantError::InvalidScope.into());
                }
                scopes
            }
        };
        let scope = scopes.into_iter().collect::<Vec<_>>().join(" ");
        let key = self.keys.signing_key().await?;
        let iat = chrono::Utc::now().timestamp();
        let claims = ServiceClaims {
            sub: client.id.clone(),
            scope: scope.clone(),
            iss: self.audience.issuer.clone(),
            aud: self.audience.service_audience(),
            exp: iat + i64::try_from(self.ttl.as_secs()).map_err(anyhow::Error::from)?,
            iat,
            jti: Uuid::new_v4(),
        };
        let header = Header {
            kid: Some(key.kid.clone()),
            typ: Some(SERVICE_TOKEN_TYPE.to_owned()),
            ..Header::new(Algorithm::EdDSA)
        };
        let access_token =
            jsonwebtoken::encode(&header, &claims, &key.encoding_key).map_err(anyhow::Error::from)?;
        tracing::info!(client.id = %client.id, token.scope = %scope, "issued a service token");
        Ok(IssuedToken { access_token, expires_in: self.ttl.as_secs(), scope })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(id: &str, secret: &str, scopes: &str) -> String {
        format!("{id}:{}:{scopes}", to_hex(digest(&SHA256, secret.as_bytes()).as_ref()))
    }

    #[test]
    fn generated_clients_authenticate() {
        let (secret, entry) = generate_client("ordering", "seats:write").unwrap();
        assert_eq!(secret.len(), 64);
        let clients = ServiceClients::parse(&entry).unwrap();
        assert!(clients.authenticate("ordering", &secret).is_some());
        assert!(!entry.contains(&secret));
    }

    #[test]
    fn clients_authenticate_with_their_own_secret_only() {
        let raw = format!(
            "{}, {}",
            entry("ordering", "s3cret-ordering", "seats:write"),
            entry("reporting", "other", "concerts:read seats:read")
        );
        let clients = ServiceClients::parse(&raw).unwrap();
        let ordering = clients.authenticate("ordering", "s3cret-ordering").unwrap();
        assert_eq!(ordering.scopes, BTreeSet::from(["seats:write".to_owned()]));
        assert!(clients.authenticate("ordering", "other").is_none());
        assert!(clients.authenticate("nobody", "s3cret-ordering").is_none());
        assert_eq!(clients.authenticate("reporting", "other").unwrap().scopes.len(), 2);
    }

    #[test]
    fn malformed_client_lists_are_refused_without_echoing_secrets() {
        for raw in [
            "ordering",
            "ordering:abc:seats:write",
            &entry("a b", "x", "s"),
            &entry("ordering", "x", " "),
            &format!("{},{}", entry("o", "x", "s"), entry("o", "y", "s")),
        ] {
            let error = ServiceClients::parse(raw).unwrap_err();
            assert!(!error.contains("seats:write:"), "{error}");
        }
        assert!(ServiceClients::parse("").unwrap().is_empty());
    }

    #[test]
    fn the_debug_form_has_no_secret() {
        let clients = ServiceClients::parse(&entry("ordering", "x", "seats:write")).unwrap();
        let shown = format!("{clients:?}");
        assert!(!shown.contains(&to_hex(digest(&SHA256, b"x").as_ref())), "{shown}");
    }
}
