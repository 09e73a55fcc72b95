//! A circuit breaker for calls to another service or a cache.
//!
//! After `failure_threshold` consecutive failures the circuit opens and calls fail at once for
//! `cool_down`, so a dead dependency costs callers nothing but an error. Then one trial call goes
//! through (half-open): success closes the circuit, failure opens it again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is in flight; if it never reports (its future was dropped), another may start
    /// after a further cool-down.
    HalfOpen {
        since: Instant,
    },
}

/// The call was not attempted because the circuit is open, or the call itself failed.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    #[error("{0} is unavailable (circuit open)")]
    Open(&'static str),
    #[error(transparent)]
    Inner(E),
}

#[derive(Debug)]
pub struct CircuitBreaker {
    name: &'static str,
    failure_threshold: u32,
    cool_down: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(name: &'static str, failure_threshold: u32, cool_down: Duration) -> Self {
        Self {
            name,
            failure_threshold: failure_threshold.max(1),
            cool_down,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain value: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go ahead now. An open circuit past its cool-down lets one trial through.
    pub fn allow(&self) -> bool {
        let mut state = self.state();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { since: until } if now >= until => {
                *state = State::HalfOpen { since: now + self.cool_down };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }

    pub fn record_success(&self) {
        *self.state() = State::Closed { failures: 0 };
    }

    pub fn record_failure(&self) {
        let mut state = self.state();
        let open = State::Open { until: Instant::now() + self.cool_down };
        *state = match *state {
            State::Closed { failures } if failures + 1 < self.failure_threshold => {
                State::Closed { failures: failures + 1 }
            }
            State::Closed { .. } | State::HalfOpen { .. } => {
                metrics::counter!("circuit_breaker_opened_total", "breaker" => self.name).increment(1);
                tracing::warn!(
                    breaker = self.name,
                    cool_down_ms = self.cool_down.as_millis(),
                    "circuit opened"
                );
                open
            }
            State::Open { until } => State::Open { until },
        };
    }

    /// Runs `call` unless the circuit is open. `is_failure` says which errors mean the dependency is
    /// unhealthy (a timeout, "unavailable") as opposed to a normal answer ("not found", "sold out").
    pub async fn call<T, E>(
        &self,
        call: impl Future<Output = Result<T, E>>,
        is_failure: impl Fn(&E) -> bool,
    ) -> Result<T, BreakerError<E>> {
        if !self.allow() {
            return Err(BreakerError::Open(self.name));
        }
        match call.await {
            Ok(value) => {
                self.record_success();
                Ok(value)
            }
            Err(error) => {
                if is_failure(&error) {
                    self.record_failure();
                } else {
                    self.record_success();
                }
                Err(BreakerError::Inner(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fail(breaker: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        breaker.call(async { Err::<(), _>("down") }, |_| true).await
    }

    #[tokio::test]
    async fn opens_after_consecutive_failures_and_fails_fast() {
        let breaker = CircuitBreaker::new("catalog", 3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(matches!(fail(&breaker).await, Err(BreakerError::Inner("down"))));
        }
        let mut called = false;
        let result = breaker
            .call(
                async {
                    called = true;
                    Ok::<_, &str>(())
                },
                |_| true,
            )
            .await;
        assert!(matches!(result, Err(BreakerError::Open("catalog"))));
        assert!(!called, "an open circuit does not call the dependency");
    }

    #[tokio::test]
    async fn answers_that_are_not_failures_keep_it_closed() {
        let breaker = CircuitBreaker::new("catalog", 2, Duration::from_secs(60));
        for _ in 0..5 {
            let _ = breaker.call(async { Err::<(), _>("not found") }, |_| false).await;
        }
        assert!(!breaker.is_open());
    }

    #[tokio::test]
    async fn a_successful_trial_after_the_cool_down_closes_it() {
        let breaker = CircuitBreaker::new("catalog", 1, Duration::from_millis(20));
        let _ = fail(&breaker).await;
        assert!(breaker.is_open());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(breaker.allow(), "one trial goes through");
        assert!(!breaker.allow(), "only one trial at a time");
        breaker.record_success();
        assert!(!breaker.is_open());
    }

    #[tokio::test]
    async fn a_failed_trial_opens_it_again() {
        let breaker = CircuitBreaker::new("catalog", 1, Duration::from_millis(20));
        let _ = fail(&breaker).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = fail(&breaker).await;
        assert!(!breaker.allow());
    }
}
