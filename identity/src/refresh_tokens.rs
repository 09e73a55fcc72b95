//! Refresh tokens: opaque, single use, rotated on every refresh, grouped in families (one per login).
//!
//! Only the SHA-256 of a token is stored. Spending a token and issuing its successor happen in one
//! transaction whose first statement is a conditional UPDATE, so of two concurrent refreshes of one
//! token exactly one matches the row; the other waits on the row lock, re-checks, finds it spent.
//! Presenting a spent token means it was copied (or a client raced itself): the whole family is
//! revoked, including the successor already handed out, and the user logs in again.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom as _;
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::Error;

/// 256 random bits.
const TOKEN_BYTES: usize = 32;
/// The base64url (unpadded) length of a token.
const TOKEN_CHARS: usize = 43;

/// A freshly issued refresh token, to hand to the client once.
#[derive(Debug)]
pub struct IssuedToken {
    pub token: String,
    pub user_id: Uuid,
}

#[derive(Clone)]
pub struct RefreshTokens {
    pool: PgPool,
    ttl: Duration,
}

impl RefreshTokens {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, ttl }
    }

    /// Starts a new family for a login and returns its first token.
    pub async fn start_family(&self, user_id: Uuid) -> Result<String, Error> {
        let (token, hash) = generate()?;
        let family_id = Uuid::now_v7();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO refresh_token_families (id, user_id) VALUES ($1, $2)")
            .bind(family_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        self.insert(&mut tx, family_id, user_id, &hash).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Spends `presented` and issues its successor in the same family.
    pub async fn rotate(&self, presented: &str) -> Result<IssuedToken, Error> {
        let hash = hash_of(presented).ok_or(Error::InvalidRefreshToken)?;
        let mut tx = self.pool.begin().await?;
        let spent: Option<(Uuid, Uuid)> = sqlx::query_as(
            "UPDATE refresh_tokens t SET spent_at = now()
             FROM refresh_token_families f
             WHERE t.token_hash = $1 AND t.spent_at IS NULL AND t.expires_at > now()
               AND f.id = t.family_id AND f.revoked_at IS NULL
             RETURNING t.family_id, t.user_id",
        )
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((family_id, user_id)) = spent else {
            tx.rollback().await?;
            self.revoke_if_reused(&hash).await?;
            return Err(Error::InvalidRefreshToken);
        };
        let (token, successor_hash) = generate()?;
        self.insert(&mut tx, family_id, user_id, &successor_hash).await?;
        tx.commit().await?;
        Ok(IssuedToken { token, user_id })
    }

    /// Revokes the family `presented` belongs to (logout). Unknown tokens are ignored: logging out
    /// twice, or with a token that has long expired, is not an error.
    pub async fn revoke_family_of(&self, presented: &str) -> Result<(), Error> {
        let Some(hash) = hash_of(presented) else { return Ok(()) };
        sqlx::query(
            "UPDATE refresh_token_families SET revoked_at = now()
             WHERE id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL",
        )
        .bind(&hash)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes tokens that expired a day ago, and families left without tokens.
    pub async fn delete_expired(&self) -> Result<u64, sqlx::Error> {
        let tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'")
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query(
            "DELETE FROM refresh_token_families f
             WHERE f.created_at < now() - interval '1 day'
               AND NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.family_id = f.id)",
        )
        .execute(&self.pool)
        .await?;
        Ok(tokens)
    }

    /// A token that exists but could not be spent: if it was spent before, it is being reused.
    async fn revoke_if_reused(&self, hash: &[u8]) -> Result<(), Error> {
        let revoked: Option<(Uuid, Uuid)> = sqlx::query_as(
            "UPDATE refresh_token_families f SET revoked_at = now()
             FROM refresh_tokens t
             WHERE t.token_hash = $1 AND t.spent_at IS NOT NULL
               AND f.id = t.family_id AND f.revoked_at IS NULL
             RETURNING f.id, f.user_id",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((family_id, user_id)) = revoked {
            metrics::counter!("identity_refresh_token_reuse_total").increment(1);
            tracing::warn!(user.id = %user_id, token.family = %family_id, "spent refresh token presented again; family revoked");
        }
        Ok(())
    }

    async fn insert(
        &self,
        tx: &mut sqlx::PgConnection,
        family_id: Uuid,
        user_id: Uuid,
        hash: &[u8],
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(Uuid::now_v7())
        .bind(family_id)
        .bind(user_id)
        .bind(hash)
        .bind(self.ttl.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// A new token and the hash to store.
fn generate() -> Result<(String, Vec<u8>), Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = sha256(token.as_bytes());
    Ok((token, hash))
}

/// The stored hash of a presented token, or `None` when it cannot be one of ours.
fn hash_of(presented: &str) -> Option<Vec<u8>> {
    let well_formed = presented.len() == TOKEN_CHARS
        && presented.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| sha256(presented.as_bytes()))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_256_bit_base64url_and_hash_as_issued() {
        let (token, hash) = generate().unwrap();
        assert_eq!(token.len(), TOKEN_CHARS);
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
        assert_eq!(hash_of(&token), Some(hash));
        assert_ne!(generate().unwrap().0, token);
    }

    #[test]
    fn malformed_tokens_are_not_looked_up() {
        assert_eq!(hash_of(""), None);
        assert_eq!(hash_of("short"), None);
        assert_eq!(hash_of(&format!("{}+", "a".repeat(42))), None);
        assert_eq!(hash_of(&format!("{}=", "a".repeat(42))), None);
    }
}
