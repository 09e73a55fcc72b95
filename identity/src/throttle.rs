//! Login throttling: failed logins counted per account and per client address; past a limit, logins
//! are refused with 429 and `Retry-After` until a lockout passes, without spending a password hash.
//!
//! The counters live in Postgres rather than in process memory: every replica then enforces the same
//! limit (with N in-process counters an attacker spreading attempts over replicas would get N times
//! the guesses), a restart does not wipe them, and the cost (two small statements on a failure) is
//! noise next to the ~20 ms argon2 verification each attempt already pays. Each upsert is one atomic
//! statement, so concurrent failures never lose a count; attempts already past the check when the
//! limit is reached still complete, so the overshoot is bounded by the hashing concurrency.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use sqlx::PgPool;

use crate::config::ThrottleConfig;
use crate::domain::Email;
use crate::error::Error;

/// The counters one login attempt touches, as stored: SHA-256 of the account and address keys.
#[derive(Debug, Clone)]
pub struct AttemptKeys {
    account: Vec<u8>,
    address: Vec<u8>,
}

impl AttemptKeys {
    /// Unknown emails get a counter too, so a throttled response does not reveal whether an account
    /// exists.
    pub fn new(email: &Email, client: IpAddr) -> Self {
        Self {
            account: sha256(format!("account:{email}").as_bytes()),
            address: sha256(format!("ip:{}", address_key(client)).as_bytes()),
        }
    }
}

#[derive(Clone)]
pub struct LoginThrottle {
    pool: PgPool,
    config: ThrottleConfig,
}

impl LoginThrottle {
    pub fn new(pool: PgPool, config: ThrottleConfig) -> Self {
        Self { pool, config }
    }

    /// `Err(Throttled)` while the account or the address is locked out.
    pub async fn check(&self, keys: &AttemptKeys) -> Result<(), Error> {
        let remaining: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM max(locked_until) - now())::float8 FROM login_throttle
             WHERE key IN ($1, $2) AND locked_until > now()",
        )
        .bind(&keys.account)
        .bind(&keys.address)
        .fetch_one(&self.pool)
        .await?;
        match remaining {
            Some(seconds) if seconds > 0.0 => {
                Err(Error::Throttled { retry_after: Duration::from_secs_f64(seconds) })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt against the account and the address.
    pub async fn record_failure(&self, keys: &AttemptKeys) -> Result<(), Error> {
        self.count_failure(&keys.account, self.config.max_failures_per_account).await?;
        self.count_failure(&keys.address, self.config.max_failures_per_address).await?;
        Ok(())
    }

    /// A successful login clears the account's failures. The address counter is left alone: one
    /// account the attacker controls must not reset the budget for guessing everyone else's.
    pub async fn record_success(&self, keys: &AttemptKeys) -> Result<(), Error> {
        sqlx::query("DELETE FROM login_throttle WHERE key = $1")
            .bind(&keys.account)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Forgets counters whose window and lockout are both over.
    pub async fn delete_stale(&self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "DELETE FROM login_throttle
             WHERE window_started_at < now() - make_interval(secs => $1)
               AND (locked_until IS NULL OR locked_until < now())",
        )
        .bind(self.config.window.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn count_failure(&self, key: &[u8], max_failures: i32) -> Result<(), sqlx::Error> {
        // A window older than `window` starts over at one failure; reaching the limit (again) locks.
        sqlx::query(
            "INSERT INTO login_throttle AS t (key, failures, window_started_at, locked_until)
             VALUES ($1, 1, now(), CASE WHEN $2 <= 1 THEN now() + make_interval(secs => $4) END)
             ON CONFLICT (key) DO UPDATE SET
               failures = CASE WHEN t.window_started_at <= now() - make_interval(secs => $3)
                               THEN 1 ELSE t.failures + 1 END,
               window_started_at = CASE WHEN t.window_started_at <= now() - make_interval(secs => $3)
                                        THEN now() ELSE t.window_started_at END,
               locked_until = CASE WHEN (CASE WHEN t.window_started_at <= now() - make_interval(secs => $3)
                                              THEN 1 ELSE t.failures + 1 END) >= $2
                                   THEN now() + make_interval(secs => $4) ELSE t.locked_until END",
        )
        .bind(key)
        .bind(max_failures)
        .bind(self.config.window.as_secs_f64())
        .bind(self.config.lockout.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !trusted_proxies.contains(&peer) {
        return peer;
    }
    // Entries are appended by each hop, so the rightmost ones are the most trustworthy; anything left
    // of the first untrusted entry could have been written by the client.
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in forwarded.into_iter().rev() {
        match entry.parse::<IpAddr>() {
            Ok(ip) if trusted_proxies.contains(&ip.to_canonical()) => continue,
            Ok(ip) => return ip.to_canonical(),
            Err(_) => break,
        }
    }
    peer
}

/// IPv6 clients usually control a whole /64, so they are counted per /64.
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let ip = client_address(peer("203.0.113.9"), &forwarded("198.51.100.1"), &[]);
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted = ["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()];
        let headers = forwarded("1.2.3.4, 198.51.100.7, 10.0.0.3");
        assert_eq!(client_address(peer("10.0.0.2"), &headers, &trusted).to_string(), "198.51.100.7");
        assert_eq!(client_address(peer("10.0.0.2"), &HeaderMap::new(), &trusted).to_string(), "10.0.0.2");
        assert_eq!(client_address(peer("10.0.0.2"), &forwarded("garbage"), &trusted).to_string(), "10.0.0.2");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        let ip = client_address(peer("::ffff:192.0.2.1"), &HeaderMap::new(), &[]);
        assert_eq!(ip.to_string(), "192.0.2.1");
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
    }
}
