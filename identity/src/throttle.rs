//! Login throttling: failed logins slow down the one guessing, not the account's owner.
//!
//! Three counters, each over a window of `LOGIN_FAILURE_WINDOW_SECS`:
//! - per (account, client address): after `LOGIN_FAILURES_BEFORE_DELAY` free failures every further
//!   one refuses that pair for a delay doubling from `LOGIN_DELAY_BASE_SECS` up to
//!   `LOGIN_MAX_DELAY_SECS`. Someone guessing one account from one address is slowed to a crawl; the
//!   owner at another address is not affected at all, so failures from elsewhere cannot lock them out.
//! - per client address (IPv6 per /64): `LOGIN_MAX_FAILURES_PER_ADDRESS`, then a lockout of
//!   `LOGIN_LOCKOUT_SECS`, against one address trying many accounts.
//! - per account, a ceiling far above the pair's (`LOGIN_MAX_FAILURES_PER_ACCOUNT`) against a
//!   distributed attack on one account from many addresses. Once reached, only addresses that signed
//!   in to that account successfully within `LOGIN_KNOWN_ADDRESS_DAYS` still get in: the owner at
//!   their usual address is never locked out; the cost is that the owner on a new network waits out
//!   the lockout while such an attack is running.
//!
//! The counters live in Postgres rather than in process memory: every replica then enforces the same
//! limit (with N in-process counters an attacker spreading attempts over replicas would get N times
//! the guesses), a restart does not wipe them, and the cost (a few small statements on a failure) is
//! noise next to the ~20 ms argon2 verification each attempt already pays. Each upsert is one atomic
//! statement, so concurrent failures never lose a count; attempts already past the check when a
//! limit is reached still complete, so the overshoot is bounded by the hashing concurrency. Known and
//! unknown emails run the same statements, so timing does not tell them apart.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use ipnet::{IpNet, Ipv4Net};
use sqlx::PgPool;

use crate::config::ThrottleConfig;
use crate::domain::Email;
use crate::error::Error;

/// The counters one login attempt touches, as stored: SHA-256 of the account, address and pair keys.
#[derive(Debug, Clone)]
pub struct AttemptKeys {
    account: Vec<u8>,
    address: Vec<u8>,
    pair: Vec<u8>,
}

impl AttemptKeys {
    /// Unknown emails get counters too, so a throttled response does not reveal whether an account
    /// exists.
    pub fn new(email: &Email, client: IpAddr) -> Self {
        let address = address_key(client);
        Self {
            account: sha256(format!("account:{email}").as_bytes()),
            address: sha256(format!("ip:{address}").as_bytes()),
            pair: sha256(format!("pair:{address}:{email}").as_bytes()),
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

    /// `Err(Throttled)` while this pair or this address is delayed, or the account's ceiling is
    /// reached and this address has not signed in to it recently.
    pub async fn check(&self, keys: &AttemptKeys) -> Result<(), Error> {
        let remaining: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM max(locked_until) - now())::float8 FROM login_throttle
             WHERE locked_until > now()
               AND (key IN ($1, $2)
                    OR (key = $3 AND NOT EXISTS (
                          SELECT 1 FROM login_throttle
                          WHERE key = $1 AND last_success_at > now() - make_interval(secs => $4))))",
        )
        .bind(&keys.pair)
        .bind(&keys.address)
        .bind(&keys.account)
        .bind(self.config.known_address_for.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        match remaining {
            Some(seconds) if seconds > 0.0 => {
                Err(Error::Throttled { retry_after: Duration::from_secs_f64(seconds) })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed attempt against the pair (progressive delay), the address and the account.
    pub async fn record_failure(&self, keys: &AttemptKeys) -> Result<(), Error> {
        let config = &self.config;
        // A window older than `window` starts over at one failure. Past the free failures, each one
        // refuses the pair for base * 2^(n - free - 1), at most `max_delay`.
        sqlx::query(
            "INSERT INTO login_throttle AS t (key, failures, window_started_at, locked_until)
             VALUES ($1, 1, now(), CASE WHEN $2 < 1 THEN now() + make_interval(secs => $4) END)
             ON CONFLICT (key) DO UPDATE SET
               failures = CASE WHEN t.window_started_at <= now() - make_interval(secs => $3)
                               THEN 1 ELSE t.failures + 1 END,
               window_started_at = CASE WHEN t.window_started_at <= now() - make_interval(secs => $3)
                                        THEN now() ELSE t.window_started_at END,
               locked_until = CASE
                 WHEN t.window_started_at <= now() - make_interval(secs => $3)
                   THEN CASE WHEN $2 < 1 THEN now() + make_interval(secs => $4) END
                 WHEN t.failures + 1 > $2
                   THEN now() + make_interval(secs =>
                          LEAST($5, $4 * power(2, LEAST(t.failures - $2, 30))::float8))
                 ELSE t.locked_until END",
        )
        .bind(&keys.pair)
        .bind(config.failures_before_delay)
        .bind(config.window.as_secs_f64())
        .bind(config.delay_base.as_secs_f64())
        .bind(config.max_delay.as_secs_f64())
        .execute(&self.pool)
        .await?;
        self.count_failure(&keys.address, config.max_failures_per_address).await?;
        self.count_failure(&keys.account, config.max_failures_per_account).await?;
        Ok(())
    }

    /// A successful login clears the pair's failures and remembers the address as one the owner uses,
    /// which lets it past the account's ceiling. The address and account counters are left alone: one
    /// account the attacker controls must not reset the budget for guessing everyone else's, and the
    /// owner signing in must not hand a distributed attack a fresh budget.
    pub async fn record_success(&self, keys: &AttemptKeys) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO login_throttle (key, failures, window_started_at, locked_until, last_success_at)
             VALUES ($1, 0, now(), NULL, now())
             ON CONFLICT (key) DO UPDATE SET
               failures = 0, window_started_at = now(), locked_until = NULL, last_success_at = now()",
        )
        .bind(&keys.pair)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets counters whose window and lockout are both over, unless they remember a recent success.
    pub async fn delete_stale(&self) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "DELETE FROM login_throttle
             WHERE window_started_at < now() - make_interval(secs => $1)
               AND (locked_until IS NULL OR locked_until < now())
               AND (last_success_at IS NULL OR last_success_at < now() - make_interval(secs => $2))",
        )
        .bind(self.config.window.as_secs_f64())
        .bind(self.config.known_address_for.as_secs_f64())
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

/// The peers whose `X-Forwarded-For` is believed (`TRUSTED_PROXY_ADDRS`): single addresses and
/// CIDR ranges, because proxies such as the gateway run as pods whose addresses change on every
/// rollout; only their subnet is stable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// An entry of `TRUSTED_PROXY_ADDRS` that is neither an address nor a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither an IP address nor a CIDR range")]
pub struct InvalidProxyEntry(pub String);

impl TrustedProxies {
    /// Comma-separated addresses (`127.0.0.1`, `::1`) and ranges (`10.0.0.0/8`, `fd00::/8`); blank
    /// entries are ignored, so an empty list trusts nobody.
    pub fn parse(list: &str) -> Result<Self, InvalidProxyEntry> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let net = if entry.contains('/') {
                    entry.parse::<IpNet>().ok()
                } else {
                    entry.parse::<IpAddr>().ok().map(IpNet::from)
                };
                net.map(canonical_net).ok_or_else(|| InvalidProxyEntry(entry.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// `trusted == [addr, ..]`: the list is exactly these single addresses, in order (what a deployment
/// check that names one proxy asserts).
impl<const N: usize> PartialEq<[IpAddr; N]> for TrustedProxies {
    fn eq(&self, addresses: &[IpAddr; N]) -> bool {
        self.0.len() == N
            && self.0.iter().zip(addresses).all(|(net, ip)| *net == canonical_net(IpNet::from(*ip)))
    }
}

/// Host bits cleared, and IPv4-mapped IPv6 ranges (`::ffff:10.0.0.0/104`) written as IPv4, since
/// addresses are compared in their canonical form.
fn canonical_net(net: IpNet) -> IpNet {
    match net.trunc() {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(IpNet::V6(v6), IpNet::V4),
            None => IpNet::V6(v6),
        },
        other => other,
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_address(peer: SocketAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    // Each hop appends the address it received from, so entries are read right to left: the first
    // untrusted one was written by a proxy we trust; anything further left could be the client's
    // own invention. When every entry is a trusted proxy the left-most is the origin.
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut nearest = peer;
    for entry in forwarded.into_iter().rev() {
        // Some proxies append the port too (`203.0.113.9:51234`, `[2001:db8::1]:443`).
        let parsed =
            entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()));
        match parsed.map(|ip| ip.to_canonical()) {
            Some(ip) if trusted.contains(ip) => nearest = ip,
            Some(ip) => return ip,
            // A hop we trust wrote something unreadable: stop at the last address we can vouch for.
            None => break,
        }
    }
    nearest
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

    fn trusted(list: &str) -> TrustedProxies {
        TrustedProxies::parse(list).unwrap()
    }

    fn client(peer_ip: &str, headers: &HeaderMap, list: &str) -> String {
        client_address(peer(peer_ip), headers, &trusted(list)).to_string()
    }

    #[test]
    fn trusted_proxies_are_addresses_and_cidr_ranges() {
        let proxies = trusted(" 10.0.0.0/8, 127.0.0.1 ,fd00::/8, ::1,");
        for inside in ["10.0.0.1", "10.255.3.4", "127.0.0.1", "fd12::7", "::1", "::ffff:10.1.2.3"] {
            assert!(proxies.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in ["11.0.0.1", "127.0.0.2", "192.168.1.1", "fe80::1", "::2"] {
            assert!(!proxies.contains(outside.parse().unwrap()), "{outside}");
        }
        assert!(trusted("").is_empty());
        assert!(trusted(" , ").is_empty());
    }

    #[test]
    fn host_bits_and_ipv4_mapped_ranges_are_normalised() {
        let proxies = trusted("10.1.2.3/16, ::ffff:192.168.0.0/112");
        assert_eq!(proxies, trusted("10.1.0.0/16, 192.168.0.0/16"));
        assert!(proxies.contains("10.1.200.9".parse().unwrap()));
        assert!(proxies.contains("192.168.44.1".parse().unwrap()));
    }

    #[test]
    fn a_list_of_single_addresses_equals_those_addresses() {
        let gateway: IpAddr = "172.29.80.10".parse().unwrap();
        assert_eq!(trusted("172.29.80.10"), [gateway]);
        assert_ne!(trusted("172.29.80.0/24"), [gateway]);
        assert_ne!(trusted("172.29.80.10, 127.0.0.1"), [gateway]);
    }

    #[test]
    fn malformed_entries_are_named() {
        for (list, bad) in [
            ("10.0.0.1, gateway", "gateway"),
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("10.0.0.0/", "10.0.0.0/"),
            ("/8", "/8"),
            ("10.0.0.0/8/8", "10.0.0.0/8/8"),
            ("10.0.0.1:8080", "10.0.0.1:8080"),
        ] {
            assert_eq!(TrustedProxies::parse(list), Err(InvalidProxyEntry(bad.to_owned())), "{list}");
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(client("203.0.113.9", &forwarded("198.51.100.1"), ""), "203.0.113.9");
        assert_eq!(client("203.0.113.9", &forwarded("198.51.100.1"), "10.0.0.0/8"), "203.0.113.9");
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let list = "10.0.0.0/8, 127.0.0.1";
        // The client forged the first entry; the ingress (10.1.0.5) appended the real one.
        let headers = forwarded("1.2.3.4, 198.51.100.7, 10.1.0.5");
        assert_eq!(client("10.42.3.17", &headers, list), "198.51.100.7");
        assert_eq!(client("127.0.0.1", &forwarded("198.51.100.8"), list), "198.51.100.8");
        // Several header lines are one list, in order.
        let mut headers = forwarded("1.2.3.4");
        headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.9, 10.0.0.3"));
        assert_eq!(client("10.0.0.2", &headers, list), "198.51.100.9");
    }

    #[test]
    fn forwarded_entries_may_carry_a_port() {
        let list = "10.0.0.0/8";
        assert_eq!(client("10.0.0.2", &forwarded("198.51.100.7:51234"), list), "198.51.100.7");
        assert_eq!(client("10.0.0.2", &forwarded("[2001:db8::1]:443"), list), "2001:db8::1");
    }

    #[test]
    fn without_a_usable_forwarded_address_the_nearest_trusted_hop_is_the_client() {
        let list = "10.0.0.0/8";
        assert_eq!(client("10.0.0.2", &HeaderMap::new(), list), "10.0.0.2");
        assert_eq!(client("10.0.0.2", &forwarded("garbage"), list), "10.0.0.2");
        // Unreadable left of a trusted hop: that hop is as far as we can vouch for.
        assert_eq!(client("10.0.0.2", &forwarded("garbage, 10.0.0.9"), list), "10.0.0.9");
        // Traffic from inside the trusted network: the origin is the left-most hop.
        assert_eq!(client("10.0.0.2", &forwarded("10.7.7.7, 10.0.0.9"), list), "10.7.7.7");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_ipv4() {
        assert_eq!(client("::ffff:192.0.2.1", &HeaderMap::new(), ""), "192.0.2.1");
        assert_eq!(
            client("::ffff:10.0.0.2", &forwarded("::ffff:198.51.100.7"), "10.0.0.0/8"),
            "198.51.100.7"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
    }
}
