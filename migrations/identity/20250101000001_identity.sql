-- Identity: accounts, roles, signing keys, refresh token families, login throttling.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    -- Stored trimmed and lower-cased, so the unique constraint is case-insensitive by construction.
    email         text NOT NULL UNIQUE CHECK (email = lower(btrim(email)) AND email <> ''),
    display_name  text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 100),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_roles (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('customer', 'admin')),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, role)
);

-- Ed25519 keys that sign access tokens. The key with the latest `activates_at` not in the future
-- signs; every key stays published in the JWKS until its successor has been active long enough for
-- the last token it signed to expire. A key inserted with a future `activates_at` is published
-- before it signs, so verifiers already know it when its first token arrives.
CREATE TABLE signing_keys (
    kid          text PRIMARY KEY,
    algorithm    text NOT NULL DEFAULT 'EdDSA' CHECK (algorithm = 'EdDSA'),
    private_key  bytea NOT NULL,  -- PKCS#8 document
    public_key   bytea NOT NULL,  -- raw 32-byte Ed25519 public key
    created_at   timestamptz NOT NULL DEFAULT now(),
    activates_at timestamptz NOT NULL UNIQUE
);

-- A login session: every refresh token issued from one login. Revoking the family (logout, reuse of
-- a spent token) invalidates every token in it, including descendants issued later.
CREATE TABLE refresh_token_families (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE TABLE refresh_tokens (
    id         uuid PRIMARY KEY,
    family_id  uuid NOT NULL REFERENCES refresh_token_families (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the token; the token itself is never stored.
    token_hash bytea NOT NULL UNIQUE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    spent_at   timestamptz
);

CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires_idx ON refresh_tokens (expires_at);

-- Failed logins per account and per client address, shared by every replica. `key` is the SHA-256
-- of "account:<email>" or "ip:<address>", so addresses and unregistered emails are not kept in clear.
CREATE TABLE login_throttle (
    key               bytea PRIMARY KEY,
    failures          integer NOT NULL,
    window_started_at timestamptz NOT NULL,
    locked_until      timestamptz
);
