//! Password hashing with argon2id, off the async runtime and bounded in parallelism.
//!
//! Every hash and verify runs on a blocking thread behind a semaphore: argon2 holds a core and 19 MiB
//! for ~20 ms, so unbounded parallel logins would only exhaust memory and starve the runtime. Logins
//! for unknown emails verify against a dummy hash with the same parameters, so they cost the same time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::Password;
use crate::error::Error;

/// OWASP's recommended argon2id configuration: m = 19 MiB, t = 2, p = 1.
const MEMORY_KIB: u32 = 19 * 1024;
const ITERATIONS: u32 = 2;
const PARALLELISM: u32 = 1;

/// A request waiting longer than this for a hashing slot gets a 503 rather than a timeout.
const MAX_WAIT_FOR_SLOT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct PasswordHasher {
    slots: Arc<Semaphore>,
    /// Verified against when the email is unknown, so that path spends the same time.
    dummy_hash: Arc<str>,
}

fn argon2() -> Argon2<'static> {
    // The constants are valid argon2 parameters; `Params::new` only rejects out-of-range values.
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordHasher {
    /// Computes the dummy hash (one argon2 run), so call it once at start-up.
    pub async fn new(max_concurrent: usize) -> anyhow::Result<Self> {
        let dummy_hash = tokio::task::spawn_blocking(|| {
            argon2()
                .hash_password(b"not a real password: unknown accounts verify against this")
                .map(|hash| hash.to_string())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("computing the dummy password hash: {e}"))?;
        Ok(Self { slots: Arc::new(Semaphore::new(max_concurrent)), dummy_hash: dummy_hash.into() })
    }

    /// The PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) to store.
    pub async fn hash(&self, password: Password) -> Result<String, Error> {
        self.run("hash", move || {
            argon2()
                .hash_password(password.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
        })
        .await
    }

    /// Whether `password` matches `stored` (a PHC string); `None` verifies against the dummy hash
    /// and always answers `false`, in the same time.
    pub async fn verify(&self, password: Password, stored: Option<String>) -> Result<bool, Error> {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .run("verify", move || {
                let hash = PasswordHash::new(&stored)
                    .map_err(|e| anyhow::anyhow!("stored hash is malformed: {e}"))?;
                // The parameters come from the stored hash, so older hashes keep verifying.
                Ok(argon2().verify_password(password.as_bytes(), &hash).is_ok())
            })
            .await?;
        Ok(known && matches)
    }

    async fn run<T, F>(&self, operation: &'static str, work: F) -> Result<T, Error>
    where
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let waited = Instant::now();
        let permit = tokio::time::timeout(MAX_WAIT_FOR_SLOT, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::Busy)?
            .map_err(|_| Error::Busy)?;
        metrics::histogram!("identity_password_hash_wait_seconds").record(waited.elapsed().as_secs_f64());
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| anyhow::anyhow!("password {operation} task failed: {e}"))?;
        metrics::histogram!("identity_password_hash_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        Ok(result?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn password(raw: &str) -> Password {
        Password::parse(raw).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let hasher = PasswordHasher::new(2).await.unwrap();
        let hash = hasher.hash(password("correct horse")).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(hasher.verify(password("correct horse"), Some(hash.clone())).await.unwrap());
        assert!(!hasher.verify(password("wrong horse!"), Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_verifies() {
        let hasher = PasswordHasher::new(1).await.unwrap();
        assert!(!hasher.verify(password("anything at all"), None).await.unwrap());
    }
}
