-- Signing keys at rest: `private_key` holds the PKCS#8 document sealed with AES-256-GCM
-- (nonce || ciphertext || tag, the key id as associated data) under the key-encryption key
-- `kek_id` from KEY_ENCRYPTION_KEYS. NULL marks a row still in plain text, written before
-- encryption at rest; identity seals those at start-up.
ALTER TABLE signing_keys ADD COLUMN kek_id text;
COMMENT ON COLUMN signing_keys.private_key IS 'sealed PKCS#8 under kek_id (plain text only while kek_id IS NULL)';
