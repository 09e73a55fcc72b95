//! Calling the services behind the gateway: one pooled client per service, a deadline on every call,
//! a circuit breaker per service, and retries only where repeating a call cannot do harm.
//!
//! Retry rules ([`Retry`]): reads are retried once when the failure was quick (the service could
//! not be reached or said it is unavailable), never after a timeout, so a retry never doubles the
//! worst-case latency. `placeOrder` carries an idempotency key, so ordering would answer a replay
//! with the first order; even so it is only retried when the first attempt never reached ordering
//! (connection refused), because a replay that races the first attempt could see it in flight.
//! Everything else (login, `refreshToken` whose token is single-use, confirm, cancel, admin writes)
//! is sent exactly once.

pub mod catalog;
pub mod identity;
pub mod ordering;
mod rest;

use std::time::{Duration, Instant};

use platform::breaker::{BreakerError, CircuitBreaker};

use crate::error::Service;

/// Whether a call may be repeated after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Sent once, whatever happens.
    Never,
    /// Repeated only when the first attempt certainly never reached the service.
    IfNotSent,
    /// A read: repeated after any quick failure.
    Idempotent,
}

/// How an attempt failed, as far as health and retries are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A normal answer (not found, invalid input): the service is fine.
    Answer,
    /// The service could not be reached; the request was not processed.
    NotSent,
    /// The service is unhealthy and may or may not have processed the request.
    Unhealthy,
}

/// Why a call produced no usable answer.
#[derive(Debug)]
pub enum CallError<E> {
    /// The circuit is open: not attempted.
    Open,
    /// No answer within the deadline.
    Timeout,
    Failed(E),
}

/// The policy every downstream call goes through.
#[derive(Debug)]
pub struct Policy {
    pub service: Service,
    pub deadline: Duration,
    pub breaker: CircuitBreaker,
}

const MAX_ATTEMPTS: u32 = 2;
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

impl Policy {
    pub fn new(service: Service, config: &crate::config::DownstreamConfig) -> Self {
        Self {
            service,
            deadline: config.call_timeout,
            breaker: CircuitBreaker::new(service.name(), config.breaker),
        }
    }

    /// Runs `attempt` under the deadline and the breaker, repeating it as `retry` allows.
    /// `classify` says what an error means for the service's health.
    pub async fn call<T, E, Fut>(
        &self,
        operation: &'static str,
        retry: Retry,
        mut attempt: impl FnMut() -> Fut,
        classify: impl Fn(&E) -> Failure,
    ) -> Result<T, CallError<E>>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        let outcome = loop {
            attempts += 1;
            let remaining = self.deadline.saturating_sub(started.elapsed());
            let timed = async {
                match tokio::time::timeout(remaining, attempt()).await {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(error)) => Err(CallError::Failed(error)),
                    Err(_) => Err(CallError::Timeout),
                }
            };
            let result = self
                .breaker
                .call(timed, |error| match error {
                    CallError::Failed(error) => classify(error) != Failure::Answer,
                    CallError::Timeout | CallError::Open => true,
                })
                .await;
            let error = match result {
                Ok(value) => break Ok(value),
                Err(BreakerError::Open(_)) => break Err(CallError::Open),
                Err(BreakerError::Inner(error)) => error,
            };
            let failure = match &error {
                CallError::Failed(error) => classify(error),
                // A timed-out request may have been processed and has used up the deadline.
                CallError::Timeout | CallError::Open => Failure::Answer,
            };
            let may_retry = match retry {
                Retry::Never => false,
                Retry::IfNotSent => failure == Failure::NotSent,
                Retry::Idempotent => failure != Failure::Answer,
            };
            if !may_retry || attempts >= MAX_ATTEMPTS || started.elapsed() + RETRY_BACKOFF >= self.deadline {
                break Err(error);
            }
            tracing::debug!(service = self.service.name(), operation, attempts, "retrying");
            tokio::time::sleep(RETRY_BACKOFF).await;
        };
        let label = match &outcome {
            Ok(_) => "ok",
            Err(CallError::Open) => "circuit_open",
            Err(CallError::Timeout) => "timeout",
            Err(CallError::Failed(error)) if classify(error) == Failure::Answer => "answer",
            Err(CallError::Failed(_)) => "failed",
        };
        let labels = [("service", self.service.name()), ("operation", operation), ("outcome", label)];
        metrics::histogram!("gateway_downstream_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        outcome
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use platform::breaker::BreakerConfig;

    use super::*;

    fn policy(deadline: Duration) -> Policy {
        Policy {
            service: Service::Catalog,
            deadline,
            breaker: CircuitBreaker::new(
                "test",
                BreakerConfig {
                    minimum_calls: 3,
                    cool_down: Duration::from_secs(60),
                    ..BreakerConfig::default()
                },
            ),
        }
    }

    async fn failing(policy: &Policy, retry: Retry, failure: Failure) -> u32 {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = policy
            .call(
                "op",
                retry,
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err::<(), _>(failure) }
                },
                |f: &Failure| *f,
            )
            .await;
        assert!(result.is_err());
        calls.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn reads_are_retried_once_after_a_quick_failure() {
        assert_eq!(failing(&policy(Duration::from_secs(5)), Retry::Idempotent, Failure::Unhealthy).await, 2);
    }

    #[tokio::test]
    async fn writes_are_sent_once() {
        assert_eq!(failing(&policy(Duration::from_secs(5)), Retry::Never, Failure::NotSent).await, 1);
    }

    #[tokio::test]
    async fn keyed_writes_are_retried_only_when_never_sent() {
        let p = policy(Duration::from_secs(5));
        assert_eq!(failing(&p, Retry::IfNotSent, Failure::NotSent).await, 2);
        assert_eq!(failing(&p, Retry::IfNotSent, Failure::Unhealthy).await, 1);
    }

    #[tokio::test]
    async fn normal_answers_are_not_retried() {
        assert_eq!(failing(&policy(Duration::from_secs(5)), Retry::Idempotent, Failure::Answer).await, 1);
    }

    #[tokio::test]
    async fn a_slow_service_hits_the_deadline_and_is_not_retried() {
        let p = policy(Duration::from_millis(50));
        let calls = AtomicU32::new(0);
        let result: Result<(), CallError<Failure>> = p
            .call(
                "op",
                Retry::Idempotent,
                || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    std::future::pending()
                },
                |f| *f,
            )
            .await;
        assert!(matches!(result, Err(CallError::Timeout)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_open_circuit_fails_without_calling() {
        let p = policy(Duration::from_secs(5));
        for _ in 0..2 {
            failing(&p, Retry::Idempotent, Failure::Unhealthy).await;
        }
        let calls = failing(&p, Retry::Idempotent, Failure::Unhealthy).await;
        assert_eq!(calls, 0, "circuit open after 3 calls that all failed");
    }
}
