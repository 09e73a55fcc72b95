//! Operator tasks run from the command line (`identity grant-role`, `identity rotate-signing-key`,
//! `identity rewrap-keys`) against the service's database, and by tests that need an admin.

use std::time::Duration;

use platform::db::DatabaseConfig;
use sqlx::PgPool;

use crate::accounts::{self, Granted};
use crate::domain::{Email, Role};
use crate::key_encryption::KeyEncryptionKeys;
use crate::keys::Resealed;

/// Gives the account registered with `email` the role `role` (`admin` or `customer`). Idempotent.
/// The change reaches the user's access token at their next login or refresh.
pub async fn grant_role(database_url: &str, email: &str, role: &str) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("email {e}"))?;
    let role = Role::parse(role).map_err(anyhow::Error::msg)?;
    let pool = connect(database_url).await?;
    let granted = accounts::grant_role(&pool, &email, role).await;
    pool.close().await;
    match granted? {
        Granted::Granted => tracing::info!(role = role.as_str(), "role granted"),
        Granted::AlreadyHeld => tracing::info!(role = role.as_str(), "the account already had this role"),
    }
    Ok(())
}

/// Creates a new signing key that starts signing after `activate_after` (at once when it is the first
/// key), and returns its key id. Replicas publish it at their next key reload, before its first token;
/// the previous key stays published until the tokens it signed have expired.
pub async fn rotate_signing_key(
    database_url: &str,
    keks: &KeyEncryptionKeys,
    activate_after: Duration,
) -> anyhow::Result<String> {
    let pool = connect(database_url).await?;
    let rotated = crate::keys::rotate(&pool, keks, activate_after).await;
    pool.close().await;
    rotated
}

/// Seals every signing key under the current key-encryption key (the first of `KEY_ENCRYPTION_KEYS`).
/// Start-up does the same; the command lets an operator finish a KEK rotation, and confirm it, before
/// removing the old KEK from the configuration.
pub async fn rewrap_keys(database_url: &str, keks: &KeyEncryptionKeys) -> anyhow::Result<Resealed> {
    let pool = connect(database_url).await?;
    let resealed = crate::keys::reseal(&pool, keks).await;
    pool.close().await;
    resealed
}

async fn connect(database_url: &str) -> anyhow::Result<PgPool> {
    let mut config = DatabaseConfig::for_url(database_url);
    config.max_connections = 2;
    // Creating and migrating makes the command work before the service has ever started.
    platform::db::prepare(&config, &crate::MIGRATOR).await
}
