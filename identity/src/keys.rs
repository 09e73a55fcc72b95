//! The Ed25519 keys that sign access tokens: created once, shared through the database by every replica
//! and restart, rotated by the operator, published as a JWKS.
//!
//! The key with the latest activation time not in the future signs. A rotation inserts a new key that
//! activates later (by default), so it is published before it signs, and verifiers that re-fetch the
//! JWKS on an unknown `kid` already find it. An old key stays published until its successor has been
//! active for longer than an access token lives (plus reload lag), so its last token can still be
//! verified; then it drops out of the JWKS and, days later, out of the table.
//!
//! Private keys are stored sealed under the key-encryption key (`crate::key_encryption`); `open`
//! re-seals, under the same advisory lock, any row not under the current KEK.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use sqlx::PgPool;

use crate::key_encryption::{KeyEncryptionKeys, Sealed};

/// Serialises key creation and rotation across replicas and the CLI (`pg_advisory_xact_lock` id).
const KEY_LOCK_ID: i64 = 0x0074_665f_6b65_7973; // "tf_keys"

/// Keys superseded this long ago are deleted. Far longer than any access token may live
/// (`ACCESS_TOKEN_TTL_SECS` is capped at one day), so deleting one can never strand a valid token.
const DELETE_SUPERSEDED_AFTER_DAYS: i32 = 7;

/// Margin added to how long a superseded key stays published: clock skew between replicas and the
/// verifiers' leeway.
const PUBLISH_MARGIN: Duration = Duration::from_secs(60);

/// A key that can sign, with its public half as a JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub encoding_key: EncodingKey,
    jwk: Jwk,
    activates_at: DateTime<Utc>,
}

struct Loaded {
    /// Oldest activation first.
    keys: Arc<Vec<SigningKey>>,
    loaded_at: Instant,
}

/// This replica's view of the signing keys, re-read from the database every `reload_every`.
pub struct SigningKeys {
    pool: PgPool,
    keks: KeyEncryptionKeys,
    reload_every: Duration,
    /// How long a superseded key stays in the JWKS.
    keep_published: Duration,
    loaded: RwLock<Loaded>,
    /// One reload at a time; the others keep using what is loaded.
    reloading: tokio::sync::Mutex<()>,
}

impl SigningKeys {
    /// Creates the first key if the database has none, re-seals keys not under the current KEK, then
    /// loads them all.
    pub async fn open(
        pool: PgPool,
        keks: KeyEncryptionKeys,
        reload_every: Duration,
        access_token_ttl: Duration,
    ) -> anyhow::Result<Self> {
        ensure_key(&pool, &keks).await?;
        let keys = load(&pool, &keks).await?;
        Ok(Self {
            pool,
            keks,
            reload_every,
            keep_published: access_token_ttl + reload_every + PUBLISH_MARGIN,
            loaded: RwLock::new(Loaded { keys: Arc::new(keys), loaded_at: Instant::now() }),
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The key to sign with now.
    pub async fn signing_key(&self) -> anyhow::Result<SigningKey> {
        let keys = self.keys().await;
        let now = Utc::now();
        keys.iter()
            .rev()
            .find(|key| key.activates_at <= now)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no signing key is active yet"))
    }

    /// The public keys verifiers must know: the active one, any scheduled to activate, and those
    /// superseded recently enough that tokens they signed may still be valid.
    pub async fn jwks(&self) -> JwkSet {
        let keys = self.keys().await;
        JwkSet {
            keys: published(&keys, Utc::now(), self.keep_published).map(|key| key.jwk.clone()).collect(),
        }
    }

    async fn keys(&self) -> Arc<Vec<SigningKey>> {
        let (keys, fresh) = self.snapshot();
        if fresh {
            return keys;
        }
        let Ok(_guard) = self.reloading.try_lock() else {
            return keys; // another task is reloading; the current keys are still good for now
        };
        match load(&self.pool, &self.keks).await {
            Ok(reloaded) if !reloaded.is_empty() => {
                let reloaded = Arc::new(reloaded);
                if let Ok(mut loaded) = self.loaded.write() {
                    *loaded = Loaded { keys: reloaded.clone(), loaded_at: Instant::now() };
                }
                reloaded
            }
            Ok(_) => {
                tracing::error!("the signing_keys table is empty; keeping the keys already loaded");
                keys
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "reloading signing keys failed; keeping the loaded ones");
                keys
            }
        }
    }

    fn snapshot(&self) -> (Arc<Vec<SigningKey>>, bool) {
        match self.loaded.read() {
            Ok(loaded) => (loaded.keys.clone(), loaded.loaded_at.elapsed() < self.reload_every),
            // A writer panicked mid-update; the value is a whole `Loaded` either way, so use it.
            Err(poisoned) => {
                let loaded = poisoned.into_inner();
                (loaded.keys.clone(), false)
            }
        }
    }
}

/// Keys still published at `now`: everything from the newest key that has been active for at least
/// `keep_published` onwards (older ones can no longer have valid tokens).
fn published(
    keys: &[SigningKey],
    now: DateTime<Utc>,
    keep_published: Duration,
) -> impl Iterator<Item = &SigningKey> {
    let cutoff = now - keep_published;
    let first = keys.iter().rposition(|key| key.activates_at <= cutoff).unwrap_or(0);
    keys[first..].iter()
}

/// Creates the first signing key unless one exists, and re-seals every key under the current KEK.
/// Replicas starting together race here; the advisory lock lets exactly one of them create it (and
/// re-seal) and the others find it done.
pub async fn ensure_key(pool: &PgPool, keks: &KeyEncryptionKeys) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEY_LOCK_ID).execute(&mut *tx).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys)").fetch_one(&mut *tx).await?;
    if !exists {
        let kid = insert_new_key(&mut tx, keks, Duration::ZERO).await?;
        tracing::info!(key.id = %kid, "created the first signing key");
    }
    reseal_in(&mut tx, keks).await?;
    tx.commit().await?;
    Ok(())
}

/// What [`reseal`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resealed {
    /// Keys stored in plain text before encryption at rest, now sealed.
    pub from_plain_text: u64,
    /// Keys sealed under an older KEK, now under the current one.
    pub from_older_keks: u64,
}

/// Seals every signing key under the current KEK: plain-text rows (written before encryption at rest)
/// and rows sealed under an older KEK still listed in `KEY_ENCRYPTION_KEYS`. After it, the older KEKs
/// can be removed from the configuration. Runs at every start-up, and as `identity rewrap-keys`.
pub async fn reseal(pool: &PgPool, keks: &KeyEncryptionKeys) -> anyhow::Result<Resealed> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEY_LOCK_ID).execute(&mut *tx).await?;
    let resealed = reseal_in(&mut tx, keks).await?;
    tx.commit().await?;
    Ok(resealed)
}

async fn reseal_in(tx: &mut sqlx::PgConnection, keks: &KeyEncryptionKeys) -> anyhow::Result<Resealed> {
    type Row = (String, Vec<u8>, Option<String>);
    let stale: Vec<Row> = sqlx::query_as(
        "SELECT kid, private_key, kek_id FROM signing_keys WHERE kek_id IS DISTINCT FROM $1 FOR UPDATE",
    )
    .bind(keks.current_id())
    .fetch_all(&mut *tx)
    .await?;
    let mut resealed = Resealed::default();
    for (kid, stored, kek_id) in stale {
        let private_key = match kek_id {
            None => {
                resealed.from_plain_text += 1;
                stored
            }
            Some(kek_id) => {
                resealed.from_older_keks += 1;
                keks.open(&kid, &Sealed { kek_id, blob: stored })?
            }
        };
        let sealed = keks.seal(&kid, &private_key)?;
        sqlx::query("UPDATE signing_keys SET private_key = $2, kek_id = $3 WHERE kid = $1")
            .bind(&kid)
            .bind(&sealed.blob)
            .bind(&sealed.kek_id)
            .execute(&mut *tx)
            .await?;
    }
    if resealed != Resealed::default() {
        tracing::info!(
            keys.from_plain_text = resealed.from_plain_text,
            keys.from_older_keks = resealed.from_older_keks,
            kek.id = keks.current_id(),
            "sealed signing keys under the current key-encryption key"
        );
    }
    Ok(resealed)
}

/// Adds a new signing key that takes over after `activate_after`, and deletes keys superseded long
/// ago. Returns the new key id. Running replicas pick the key up at their next reload.
pub async fn rotate(
    pool: &PgPool,
    keks: &KeyEncryptionKeys,
    activate_after: Duration,
) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEY_LOCK_ID).execute(&mut *tx).await?;
    // With no key yet there is nothing to hand over from: a delayed first key would leave identity
    // unable to sign until it activates.
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys)").fetch_one(&mut *tx).await?;
    let activate_after = if exists { activate_after } else { Duration::ZERO };
    let kid = insert_new_key(&mut tx, keks, activate_after).await?;
    let deleted = sqlx::query(
        "DELETE FROM signing_keys k
         WHERE EXISTS (SELECT 1 FROM signing_keys n
                       WHERE n.activates_at > k.activates_at
                         AND n.activates_at < now() - make_interval(days => $1))",
    )
    .bind(DELETE_SUPERSEDED_AFTER_DAYS)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    tracing::info!(key.id = %kid, activate_after_secs = activate_after.as_secs(), keys.deleted = deleted, "rotated the signing key");
    Ok(kid)
}

async fn insert_new_key(
    tx: &mut sqlx::PgConnection,
    keks: &KeyEncryptionKeys,
    activate_after: Duration,
) -> anyhow::Result<String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("new Ed25519 key rejected: {e}"))?;
    let public = pair.public_key().as_ref().to_vec();
    let kid = key_id(&public)?;
    let sealed = keks.seal(&kid, pkcs8.as_ref())?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, private_key, kek_id, public_key, activates_at)
         VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5))",
    )
    .bind(&kid)
    .bind(&sealed.blob)
    .bind(&sealed.kek_id)
    .bind(&public)
    .bind(activate_after.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    Ok(kid)
}

async fn load(pool: &PgPool, keks: &KeyEncryptionKeys) -> anyhow::Result<Vec<SigningKey>> {
    type Row = (String, Vec<u8>, Option<String>, Vec<u8>, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT kid, private_key, kek_id, public_key, activates_at FROM signing_keys ORDER BY activates_at",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(kid, stored, kek_id, public, activates_at)| {
            // A plain-text row can only be one written by an older binary since start-up (which sealed
            // the rest); it is sealed at the next start or `identity rewrap-keys`.
            let private = match kek_id {
                Some(kek_id) => keks.open(&kid, &Sealed { kek_id, blob: stored })?,
                None => stored,
            };
            // Parsing proves the private key is well-formed and belongs to the stored public key.
            let pair = Ed25519KeyPair::from_pkcs8(&private)
                .map_err(|e| anyhow::anyhow!("signing key {kid} is unusable: {e}"))?;
            anyhow::ensure!(
                pair.public_key().as_ref() == public.as_slice(),
                "signing key {kid}: public key mismatch"
            );
            Ok(SigningKey {
                jwk: jwk(&kid, &public),
                encoding_key: EncodingKey::from_ed_der(&private),
                kid,
                activates_at,
            })
        })
        .collect()
}

fn jwk(kid: &str, public_key: &[u8]) -> Jwk {
    Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            key_id: Some(kid.to_owned()),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: URL_SAFE_NO_PAD.encode(public_key),
        }),
    }
}

/// The RFC 7638 thumbprint of the public key: stable, and derived from nothing secret.
fn key_id(public_key: &[u8]) -> anyhow::Result<String> {
    Ok(jwk("", public_key).thumbprint(ThumbprintHash::SHA256)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(activates_at: DateTime<Utc>) -> SigningKey {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let kid = key_id(pair.public_key().as_ref()).unwrap();
        SigningKey {
            jwk: jwk(&kid, pair.public_key().as_ref()),
            encoding_key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            kid,
            activates_at,
        }
    }

    fn kids<'a>(keys: impl Iterator<Item = &'a SigningKey>) -> Vec<&'a str> {
        keys.map(|k| k.kid.as_str()).collect()
    }

    #[test]
    fn a_superseded_key_stays_published_until_its_tokens_have_expired() {
        let now = Utc::now();
        let keep = Duration::from_secs(1000);
        let old = key(now - chrono::Duration::seconds(5000));
        let current = key(now - chrono::Duration::seconds(500));
        let keys = vec![old.clone(), current.clone()];
        assert_eq!(kids(published(&keys, now, keep)), [old.kid.as_str(), current.kid.as_str()]);
        let later = now + chrono::Duration::seconds(600);
        assert_eq!(kids(published(&keys, later, keep)), [current.kid.as_str()]);
    }

    #[test]
    fn a_scheduled_key_is_published_before_it_signs() {
        let now = Utc::now();
        let current = key(now - chrono::Duration::seconds(5000));
        let next = key(now + chrono::Duration::seconds(60));
        let keys = vec![current.clone(), next.clone()];
        assert_eq!(
            kids(published(&keys, now, Duration::from_secs(1000))),
            [current.kid.as_str(), next.kid.as_str()]
        );
    }

    #[test]
    fn the_jwk_carries_kid_algorithm_and_use() {
        let key = key(Utc::now());
        let json = serde_json::to_value(&key.jwk).unwrap();
        assert_eq!(json["kty"], "OKP");
        assert_eq!(json["crv"], "Ed25519");
        assert_eq!(json["alg"], "EdDSA");
        assert_eq!(json["use"], "sig");
        assert_eq!(json["kid"], key.kid.as_str());
        assert_eq!(key.kid.len(), 43, "a base64url SHA-256 thumbprint");
    }
}
