//! Per-client-IP request budgets (GCRA, via `governor`): one for every GraphQL request, a much
//! smaller one for `login` and `register`. Exceeding either is `RATE_LIMITED` with a retry delay.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, NotUntil, Quota};
use tokio_util::sync::CancellationToken;

use crate::config::RateLimits;
use crate::error::GatewayError;

/// The gateway's limiters. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    requests: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    auth: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl RateLimiter {
    pub fn new(limits: &RateLimits) -> Self {
        let requests = Quota::per_second(limits.requests_per_second).allow_burst(limits.request_burst);
        let auth = Quota::per_minute(limits.auth_per_minute).allow_burst(limits.auth_burst);
        Self {
            requests: Arc::new(DefaultKeyedRateLimiter::keyed(requests)),
            auth: Arc::new(DefaultKeyedRateLimiter::keyed(auth)),
        }
    }

    /// Takes one unit of `client`'s general budget.
    pub fn check_request(&self, client: IpAddr) -> Result<(), GatewayError> {
        check(&self.requests, client, "request")
    }

    /// Takes `n` units of `client`'s general budget (a batch costs one per operation).
    pub fn check_requests(&self, client: IpAddr, n: u32) -> Result<(), GatewayError> {
        let Some(n) = std::num::NonZeroU32::new(n) else { return Ok(()) };
        match self.requests.check_key_n(&client, n) {
            Ok(outcome) => outcome.map_err(|not_until| limited(&not_until, "request")),
            // More than the whole burst at once can never pass.
            Err(_) => Err(GatewayError::RateLimited { retry_after_secs: 1 }),
        }
    }

    /// Takes one unit of `client`'s budget for `login` and `register`.
    pub fn check_auth(&self, client: IpAddr) -> Result<(), GatewayError> {
        check(&self.auth, client, "auth")
    }

    /// Forgets clients whose budget is full again, so the maps do not grow without bound.
    pub fn spawn_cleanup(&self, shutdown: CancellationToken) {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        for map in [&limiter.requests, &limiter.auth] {
                            map.retain_recent();
                            map.shrink_to_fit();
                        }
                    }
                }
            }
        });
    }
}

fn check(
    limiter: &DefaultKeyedRateLimiter<IpAddr>,
    client: IpAddr,
    kind: &'static str,
) -> Result<(), GatewayError> {
    limiter.check_key(&client).map_err(|not_until| limited(&not_until, kind))
}

fn limited(not_until: &NotUntil<<DefaultClock as Clock>::Instant>, kind: &'static str) -> GatewayError {
    metrics::counter!("gateway_rate_limited_total", "limit" => kind).increment(1);
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    GatewayError::RateLimited { retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;
    use std::num::NonZeroU32;

    use super::*;
    use crate::error::ErrorCode;

    fn n(value: u32) -> NonZeroU32 {
        NonZeroU32::new(value).unwrap()
    }

    #[test]
    fn the_auth_budget_runs_out_per_client() {
        let limiter = RateLimiter::new(&RateLimits {
            requests_per_second: n(100),
            request_burst: n(100),
            auth_per_minute: n(1),
            auth_burst: n(2),
        });
        let (a, b) = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert!(limiter.check_auth(a).is_ok());
        assert!(limiter.check_auth(a).is_ok());
        let error = limiter.check_auth(a).unwrap_err();
        assert_eq!(error.code(), ErrorCode::RateLimited);
        assert!(matches!(error, GatewayError::RateLimited { retry_after_secs } if retry_after_secs >= 1));
        assert!(limiter.check_auth(b).is_ok(), "another client has its own budget");
        assert!(limiter.check_request(a).is_ok(), "the general budget is separate");
        assert!(limiter.check_requests(a, 99).is_ok(), "a batch pays per operation");
        assert!(limiter.check_requests(a, 1).is_err());
        assert!(limiter.check_requests(b, 1000).is_err(), "more than the burst never passes");
    }
}
