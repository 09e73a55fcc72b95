//! A stand-in for identity's token signing, for catalog tests that need tokens but not accounts: an
//! Ed25519 key published as a JWKS on a port of its own, and tokens signed with it exactly as
//! identity signs them (same header, claims and audiences).

use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
    OctetKeyPairType,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::{Claims, SERVICE_TOKEN_TYPE, ServiceClaims, TokenAudience};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use uuid::Uuid;

const KID: &str = "test-issuer";

pub struct TestIssuer {
    /// Base URL to give catalog as `IDENTITY_URL`.
    pub url: String,
    key: EncodingKey,
    audience: TokenAudience,
    _server: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    pub async fn start() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("a key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key parses");
        let jwk = Jwk {
            common: CommonParameters {
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(KID.into()),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
        };
        let set = JwkSet { keys: vec![jwk] };
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(move || async move { axum::Json(set) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the issuer");
        let url = format!("http://{}", listener.local_addr().expect("issuer address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            audience: TokenAudience::new("ticketflow-identity", "ticketflow"),
            _server: server,
        }
    }

    /// A service token for client `ordering` with `scope`, valid for five minutes (as identity issues).
    pub fn service_token(&self, scope: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = ServiceClaims {
            sub: "ordering".into(),
            scope: scope.into(),
            iss: self.audience.issuer.clone(),
            aud: self.audience.service_audience(),
            exp: now + 300,
            iat: now,
            jti: Uuid::new_v4(),
        };
        self.sign(Some(SERVICE_TOKEN_TYPE), &claims)
    }

    /// A user's access token with `roles`, valid for an hour.
    pub fn user_token(&self, roles: &[&str]) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: Uuid::new_v4(),
            email: "someone@example.com".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iss: self.audience.issuer.clone(),
            aud: self.audience.audience.clone(),
            exp: now + 300,
            iat: now,
            jti: Uuid::new_v4(),
        };
        self.sign(None, &claims)
    }

    fn sign(&self, typ: Option<&str>, claims: &impl serde::Serialize) -> String {
        let mut header = Header { kid: Some(KID.into()), ..Header::new(Algorithm::EdDSA) };
        if let Some(typ) = typ {
            header.typ = Some(typ.into());
        }
        jsonwebtoken::encode(&header, claims, &self.key).expect("signing")
    }
}
