-- Login throttling per (account, client address) with a progressive delay, and the addresses an
-- account signed in from: `key` may now also be the SHA-256 of "pair:<address>:<email>", whose row
-- remembers the last successful login from that address (`last_success_at`), letting it past the
-- account-wide ceiling.
ALTER TABLE login_throttle ADD COLUMN last_success_at timestamptz;
