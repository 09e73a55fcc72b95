//! Sessions: logging in (throttled, constant-time for unknown emails), refreshing and logging out.

use std::net::IpAddr;

use crate::access_tokens::AccessTokens;
use crate::accounts::Accounts;
use crate::domain::{Email, Password};
use crate::error::Error;
use crate::passwords::PasswordHasher;
use crate::refresh_tokens::RefreshTokens;
use crate::throttle::{AttemptKeys, LoginThrottle};

/// What a login or refresh hands the client.
#[derive(Debug)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in_secs: u64,
}

#[derive(Clone)]
pub struct Sessions {
    pub accounts: Accounts,
    pub hasher: PasswordHasher,
    pub throttle: LoginThrottle,
    pub access_tokens: AccessTokens,
    pub refresh_tokens: RefreshTokens,
}

impl Sessions {
    /// Checks the credentials and opens a session (a new refresh token family).
    ///
    /// A wrong password and an unknown email take the same path to the same `InvalidCredentials`:
    /// both pay one argon2 verification and count one failure against the throttle.
    pub async fn login(&self, email: Email, password: &str, client: IpAddr) -> Result<TokenPair, Error> {
        let keys = AttemptKeys::new(&email, client);
        if let Err(error) = self.throttle.check(&keys).await {
            metrics::counter!("identity_logins_total", "outcome" => "throttled").increment(1);
            return Err(error);
        }
        let credentials = self.accounts.credentials(&email).await?;
        // No account can have a password outside the allowed lengths; skip hashing an over-long one.
        let verified = match Password::parse(password) {
            Ok(password) => {
                let stored = credentials.as_ref().map(|(_, hash)| hash.clone());
                self.hasher.verify(password, stored).await?
            }
            Err(_) => false,
        };
        let user_id = match credentials {
            Some((user_id, _)) if verified => user_id,
            _ => {
                self.throttle.record_failure(&keys).await?;
                metrics::counter!("identity_logins_total", "outcome" => "invalid_credentials").increment(1);
                return Err(Error::InvalidCredentials);
            }
        };
        self.throttle.record_success(&keys).await?;
        let refresh_token = self.refresh_tokens.start_family(user_id).await?;
        let pair = self.pair(user_id, refresh_token).await?;
        metrics::counter!("identity_logins_total", "outcome" => "success").increment(1);
        tracing::info!(user.id = %user_id, "logged in");
        Ok(pair)
    }

    /// Spends `refresh_token` for a new pair. Roles are re-read, so a granted role arrives here.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, Error> {
        let outcome = self.refresh_tokens.rotate(refresh_token).await;
        let label = if outcome.is_ok() { "success" } else { "rejected" };
        metrics::counter!("identity_refreshes_total", "outcome" => label).increment(1);
        let issued = outcome?;
        self.pair(issued.user_id, issued.token).await
    }

    pub async fn logout(&self, refresh_token: &str) -> Result<(), Error> {
        self.refresh_tokens.revoke_family_of(refresh_token).await
    }

    async fn pair(&self, user_id: uuid::Uuid, refresh_token: String) -> Result<TokenPair, Error> {
        // The account may have been deleted since the refresh token was issued.
        let subject = self.accounts.subject(user_id).await?.ok_or(Error::InvalidRefreshToken)?;
        let access_token = self.access_tokens.issue(subject).await?;
        Ok(TokenPair { access_token, refresh_token, expires_in_secs: self.access_tokens.ttl().as_secs() })
    }
}
