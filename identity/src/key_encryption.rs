//! Envelope encryption of the signing keys at rest: each private key is sealed with AES-256-GCM under
//! a key-encryption key (KEK) from configuration, so reading the database is not enough to mint tokens.
//!
//! `KEY_ENCRYPTION_KEYS` lists the KEKs as `id:base64`, the current one first; older ones stay listed
//! only to open keys sealed before a KEK rotation. Every sealed key records the id of its KEK, a random
//! 96-bit nonce, and is bound to its signing key's `kid` as associated data: a sealed blob copied onto
//! another row does not open. Start-up re-seals every key not under the current KEK (plain-text rows
//! from before encryption included), so rotating the KEK is a configuration change and a restart.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// A well-known KEK for local development only: the launcher (`cargo run --release`) and the tests
/// set it, nothing else does. Anyone can read it here, so it protects nothing.
pub const DEVELOPMENT_KEY_ENCRYPTION_KEYS: &str = "dev-only:ZGV2ZWxvcG1lbnQgb25seSwgbm90IGEgc2VjcmV0ISE=";

/// Associated-data prefix: versions the format and keeps these blobs from opening in any other use
/// of the same KEK.
const AAD_PREFIX: &[u8] = b"ticketflow identity signing key v1\0";

const KEY_LEN: usize = 32;
const MAX_ID_LEN: usize = 64;

/// One key-encryption key.
struct Kek {
    id: String,
    key: LessSafeKey,
}

/// The configured KEKs: the current one seals, every one opens. `Debug` shows the ids only.
#[derive(Clone)]
pub struct KeyEncryptionKeys {
    keys: std::sync::Arc<Vec<Kek>>,
}

/// What is wrong with `KEY_ENCRYPTION_KEYS`. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    #[error("no key given")]
    Empty,
    #[error("entry {0} is not id:base64-key")]
    Shape(usize),
    #[error("entry {0}: the id must be 1 to 64 letters, digits, '.', '_' or '-'")]
    Id(usize),
    #[error("entry {0}: the key must be 32 bytes in base64 (openssl rand -base64 32)")]
    Key(usize),
    #[error("the id {0:?} is listed twice")]
    Duplicate(String),
}

/// A private key as stored: sealed under the KEK `kek_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub kek_id: String,
    /// nonce ‖ ciphertext ‖ tag
    pub blob: Vec<u8>,
}

impl KeyEncryptionKeys {
    /// `id:base64key[,id:base64key...]`, the current KEK first.
    pub fn parse(list: &str) -> Result<Self, KekError> {
        let mut keys: Vec<Kek> = Vec::new();
        for (index, entry) in list.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let position = index + 1;
            let (id, encoded) = entry.split_once(':').ok_or(KekError::Shape(position))?;
            let (id, encoded) = (id.trim(), encoded.trim());
            let id_ok = !id.is_empty()
                && id.len() <= MAX_ID_LEN
                && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !id_ok {
                return Err(KekError::Id(position));
            }
            let bytes = STANDARD
                .decode(encoded)
                .or_else(|_| URL_SAFE_NO_PAD.decode(encoded.trim_end_matches('=')))
                .map_err(|_| KekError::Key(position))?;
            if bytes.len() != KEY_LEN {
                return Err(KekError::Key(position));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KekError::Duplicate(id.to_owned()));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KekError::Key(position))?;
            keys.push(Kek { id: id.to_owned(), key: LessSafeKey::new(unbound) });
        }
        if keys.is_empty() {
            return Err(KekError::Empty);
        }
        Ok(Self { keys: std::sync::Arc::new(keys) })
    }

    /// The id of the KEK new keys are sealed with.
    pub fn current_id(&self) -> &str {
        &self.current().id
    }

    fn current(&self) -> &Kek {
        // `parse` refuses an empty list.
        &self.keys[0]
    }

    /// Seals the private key of signing key `kid` under the current KEK, with a fresh random nonce.
    pub fn seal(&self, kid: &str, private_key: &[u8]) -> anyhow::Result<Sealed> {
        let kek = self.current();
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut in_out = private_key.to_vec();
        kek.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad(kid)), &mut in_out)
            .map_err(|_| anyhow::anyhow!("sealing signing key {kid} failed"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&in_out);
        Ok(Sealed { kek_id: kek.id.clone(), blob })
    }

    /// Opens what [`seal`](Self::seal) produced for `kid`.
    pub fn open(&self, kid: &str, sealed: &Sealed) -> anyhow::Result<Vec<u8>> {
        let kek = self.keys.iter().find(|k| k.id == sealed.kek_id).ok_or_else(|| {
            anyhow::anyhow!(
                "signing key {kid} is sealed with key-encryption key {:?}, which KEY_ENCRYPTION_KEYS does \
                 not list (listed: {self:?})",
                sealed.kek_id
            )
        })?;
        anyhow::ensure!(sealed.blob.len() > NONCE_LEN, "signing key {kid}: sealed key is truncated");
        let (nonce, ciphertext) = sealed.blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("signing key {kid}: malformed nonce"))?;
        let mut in_out = ciphertext.to_vec();
        let plain = kek.key.open_in_place(nonce, Aad::from(aad(kid)), &mut in_out).map_err(|_| {
            anyhow::anyhow!(
                "signing key {kid} does not open with key-encryption key {:?}: wrong key, or the row was \
                 altered",
                sealed.kek_id
            )
        })?;
        Ok(plain.to_vec())
    }
}

impl fmt::Debug for KeyEncryptionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| &k.id)).finish()
    }
}

fn aad(kid: &str) -> Vec<u8> {
    [AAD_PREFIX, kid.as_bytes()].concat()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: &str = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B: &str = "b:HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=";

    fn keks(list: &str) -> KeyEncryptionKeys {
        KeyEncryptionKeys::parse(list).unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_own_kid() {
        let keks = keks(A);
        let sealed = keks.seal("kid-1", b"private").unwrap();
        assert_eq!(sealed.kek_id, "a");
        assert!(!sealed.blob.windows(7).any(|w| w == b"private"), "not in clear");
        assert_eq!(keks.open("kid-1", &sealed).unwrap(), b"private");
        assert!(keks.open("kid-2", &sealed).is_err(), "bound to its kid");
        let mut tampered = sealed.clone();
        *tampered.blob.last_mut().unwrap() ^= 1;
        assert!(keks.open("kid-1", &tampered).is_err());
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let keks = keks(A);
        let (one, two) = (keks.seal("k", b"same").unwrap(), keks.seal("k", b"same").unwrap());
        assert_ne!(one.blob[..NONCE_LEN], two.blob[..NONCE_LEN]);
    }

    #[test]
    fn the_first_key_seals_and_the_others_only_open() {
        let old = keks(A).seal("k", b"secret").unwrap();
        let rotated = keks(&format!("{B},{A}"));
        assert_eq!(rotated.current_id(), "b");
        assert_eq!(rotated.open("k", &old).unwrap(), b"secret");
        assert_eq!(rotated.seal("k", b"secret").unwrap().kek_id, "b");
        let error = keks(B).open("k", &old).unwrap_err().to_string();
        assert!(error.contains("\"a\"") && error.contains("does not list"), "{error}");
    }

    #[test]
    fn malformed_lists_are_refused_without_echoing_key_material() {
        for (list, expected) in [
            ("", KekError::Empty),
            (" , ", KekError::Empty),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", KekError::Shape(1)),
            ("a:c2hvcnQ=", KekError::Key(1)),
            ("a b:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", KekError::Id(1)),
            (&format!("{A},{A}"), KekError::Duplicate("a".into())),
        ] {
            assert_eq!(KeyEncryptionKeys::parse(list).unwrap_err(), expected, "{list}");
        }
        assert_eq!(format!("{:?}", keks(&format!("{A},{B}"))), r#"["a", "b"]"#);
    }

    #[test]
    fn the_development_keys_parse() {
        assert_eq!(keks(DEVELOPMENT_KEY_ENCRYPTION_KEYS).current_id(), "dev-only");
    }
}
