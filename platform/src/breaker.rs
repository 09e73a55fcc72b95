//! A circuit breaker for calls to another service or a cache.
//!
//! The circuit opens when, over the last `window`, at least `minimum_calls` calls were made and at
//! least `failure_ratio` of them failed; then calls fail at once for `cool_down`, so a dead dependency
//! costs callers nothing but an error. Then one trial call goes through (half-open): success closes
//! the circuit (with a fresh window), failure opens it again.
//!
//! Why a rate over a window and not N consecutive failures: with a consecutive count, three bad
//! requests in a row from one client were enough to black out a dependency for everyone, and a
//! handful per second kept it dark. A rate needs most of *all* traffic to fail, and the minimum keeps
//! a quiet moment's single error from counting as 100 %. What counts as a failure is the caller's
//! call (`is_failure`): an answer the request itself caused (invalid input, not found, sold out) is a
//! success as far as the dependency's health goes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{ConfigError, Env};

/// When a circuit opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Share of failed calls in the window that opens the circuit, above 0 and at most 1.
    pub failure_ratio: f64,
    /// Calls the window must hold before its failure ratio is judged (at least 1).
    pub minimum_calls: u32,
    /// How far back calls are counted (a sliding window of [`BUCKETS`] buckets).
    pub window: Duration,
    /// How long an open circuit fails calls at once before letting one trial through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            minimum_calls: 10,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
        }
    }
}

impl BreakerConfig {
    /// Checks the values, so a typo in configuration is refused at start-up instead of giving a
    /// breaker that never (or always) opens.
    pub fn validated(self) -> Result<Self, InvalidBreakerConfig> {
        let invalid = |field, expected| Err(InvalidBreakerConfig { field, expected });
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return invalid("failure_ratio", "above 0 and at most 1");
        }
        if self.minimum_calls == 0 {
            return invalid("minimum_calls", "at least 1");
        }
        if self.window.is_zero() {
            return invalid("window", "a positive duration");
        }
        Ok(self)
    }

    /// Reads `<prefix>FAILURE_RATIO`, `<prefix>MINIMUM_CALLS`, `<prefix>WINDOW<seconds>` and
    /// `<prefix>COOL_DOWN<seconds>` (`seconds` is the service's spelling, `_SECONDS` or `_SECS`),
    /// defaulting to [`BreakerConfig::default`].
    ///
    /// `deprecated_threshold` names the variable that used to count consecutive failures: when set
    /// (and `<prefix>MINIMUM_CALLS` is not) it becomes the minimum number of calls, which is what it
    /// meant when every call fails, so old deployments keep roughly the same sensitivity to a real
    /// outage while no longer opening on a few bad requests among good ones.
    pub fn from_env(
        env: &Env<'_>,
        prefix: &str,
        seconds: &str,
        deprecated_threshold: &str,
    ) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let ratio_name = format!("{prefix}FAILURE_RATIO");
        let failure_ratio =
            env.parse(&ratio_name, defaults.failure_ratio, "a number above 0 and at most 1")?;
        let minimum_name = format!("{prefix}MINIMUM_CALLS");
        let minimum_calls = match (env.optional(&minimum_name), env.optional(deprecated_threshold)) {
            (None, Some(_)) => env.int_in(deprecated_threshold, defaults.minimum_calls, 1..=1000)?,
            _ => env.int_in(&minimum_name, defaults.minimum_calls, 1..=1_000_000)?,
        };
        let window_name = format!("{prefix}WINDOW{seconds}");
        let window = env.seconds(&window_name, defaults.window)?;
        let cool_down = env.seconds(&format!("{prefix}COOL_DOWN{seconds}"), defaults.cool_down)?;
        Self { failure_ratio, minimum_calls, window, cool_down }.validated().map_err(|invalid| {
            let (name, got) = match invalid.field {
                "failure_ratio" => (ratio_name, failure_ratio.to_string()),
                "window" => (window_name, format!("{window:?}")),
                _ => (minimum_name, minimum_calls.to_string()),
            };
            ConfigError::new(&name, invalid.expected, got)
        })
    }
}

/// A [`BreakerConfig`] value out of its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be {expected}")]
pub struct InvalidBreakerConfig {
    pub field: &'static str,
    pub expected: &'static str,
}

/// The window is this many buckets, each `window / BUCKETS` long: old calls leave it a bucket at a
/// time, at a fixed memory cost.
pub const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One trial call is in flight; if it never reports (its future was dropped), another may start
    /// after a further cool-down.
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slot of time (bucket length since the breaker was made) the counts belong to.
    slot: u64,
    calls: u32,
    failures: u32,
}

/// Calls and failures over the last `window`.
#[derive(Debug)]
struct Window {
    started: Instant,
    bucket_len: Duration,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    fn new(window: Duration) -> Self {
        let bucket_len = (window / BUCKETS as u32).max(Duration::from_millis(1));
        Self { started: Instant::now(), bucket_len, buckets: [Bucket::default(); BUCKETS] }
    }

    fn slot(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.started).as_nanos();
        u64::try_from(elapsed / self.bucket_len.as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&mut self, now: Instant, failed: bool) {
        let slot = self.slot(now);
        let bucket = &mut self.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot != slot {
            *bucket = Bucket { slot, calls: 0, failures: 0 };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failed));
    }

    /// (calls, failures) in the buckets still inside the window.
    fn totals(&self, now: Instant) -> (u32, u32) {
        let current = self.slot(now);
        self.buckets
            .iter()
            .filter(|b| b.slot <= current && current - b.slot < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (calls.saturating_add(b.calls), failures.saturating_add(b.failures))
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
        self.started = Instant::now();
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    window: Window,
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
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    /// `config` out of range is clamped (ratio into (0, 1], at least one call), never a panic:
    /// services validate their configuration with [`BreakerConfig::validated`] at start-up.
    pub fn new(name: &'static str, config: BreakerConfig) -> Self {
        let config = BreakerConfig {
            failure_ratio: if config.failure_ratio > 0.0 { config.failure_ratio.min(1.0) } else { 1.0 },
            minimum_calls: config.minimum_calls.max(1),
            ..config
        };
        // Exported from the start, so "is any circuit open" has a series to read before the first trip.
        metrics::gauge!("circuit_breaker_open", "breaker" => name).set(0.0);
        Self {
            name,
            config,
            inner: Mutex::new(Inner { state: State::Closed, window: Window::new(config.window) }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is plain values: a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a call may go ahead now. An open circuit past its cool-down lets one trial through.
    pub fn allow(&self) -> bool {
        let mut inner = self.inner();
        let now = Instant::now();
        match inner.state {
            State::Closed => true,
            State::Open { until } | State::HalfOpen { since: until } if now >= until => {
                inner.state = State::HalfOpen { since: now + self.config.cool_down };
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => false,
        }
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.inner().state, State::Closed)
    }

    /// The dependency answered (with a value, or with an answer the request itself caused).
    pub fn record_success(&self) {
        let mut inner = self.inner();
        match inner.state {
            State::Closed => inner.window.record(Instant::now(), false),
            State::HalfOpen { .. } => {
                inner.window.clear();
                inner.state = State::Closed;
                metrics::gauge!("circuit_breaker_open", "breaker" => self.name).set(0.0);
                tracing::info!(breaker = self.name, "circuit closed");
            }
            // A call that started before the circuit opened says nothing about the trial to come.
            State::Open { .. } => {}
        }
    }

    /// The dependency did not answer, or answered that it is unwell.
    pub fn record_failure(&self) {
        let mut inner = self.inner();
        let now = Instant::now();
        let opens = match inner.state {
            State::Closed => {
                inner.window.record(now, true);
                let (calls, failures) = inner.window.totals(now);
                calls >= self.config.minimum_calls
                    && f64::from(failures) >= self.config.failure_ratio * f64::from(calls)
            }
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if opens {
            inner.state = State::Open { until: now + self.config.cool_down };
            metrics::counter!("circuit_breaker_opened_total", "breaker" => self.name).increment(1);
            metrics::gauge!("circuit_breaker_open", "breaker" => self.name).set(1.0);
            tracing::warn!(
                breaker = self.name,
                cool_down_ms = self.config.cool_down.as_millis(),
                "circuit opened"
            );
        }
    }

    /// Runs `call` unless the circuit is open. `is_failure` says which errors mean the dependency is
    /// unhealthy (a timeout, "unavailable") as opposed to a normal answer ("not found", "sold out",
    /// "invalid argument"), which counts as a success.
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

    fn breaker(
        minimum_calls: u32,
        failure_ratio: f64,
        window: Duration,
        cool_down: Duration,
    ) -> CircuitBreaker {
        CircuitBreaker::new("catalog", BreakerConfig { failure_ratio, minimum_calls, window, cool_down })
    }

    async fn fail(breaker: &CircuitBreaker) -> Result<(), BreakerError<&'static str>> {
        breaker.call(async { Err::<(), _>("down") }, |_| true).await
    }

    async fn succeed(breaker: &CircuitBreaker) {
        let _ = breaker.call(async { Ok::<_, &str>(()) }, |_| true).await;
    }

    #[test]
    fn the_open_gauge_says_whether_the_circuit_is_open_now() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = || {
            handle.render().lines().find_map(|line| {
                line.strip_prefix("circuit_breaker_open{breaker=\"catalog\"} ").map(str::to_owned)
            })
        };
        metrics::with_local_recorder(&recorder, || {
            let breaker = breaker(1, 1.0, Duration::from_secs(60), Duration::ZERO);
            assert_eq!(gauge().as_deref(), Some("0"), "exported before the first call");
            breaker.record_failure();
            assert_eq!(gauge().as_deref(), Some("1"));
            assert!(breaker.allow(), "the cool-down is over: a trial goes through");
            breaker.record_success();
            assert_eq!(gauge().as_deref(), Some("0"));
        });
    }

    #[tokio::test]
    async fn opens_once_enough_calls_mostly_failed_and_then_fails_fast() {
        let breaker = breaker(4, 0.5, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..3 {
            assert!(matches!(fail(&breaker).await, Err(BreakerError::Inner("down"))));
        }
        assert!(!breaker.is_open(), "three calls are below the minimum of four");
        let _ = fail(&breaker).await;
        assert!(breaker.is_open());
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
    async fn a_failure_rate_below_the_ratio_keeps_it_closed() {
        let breaker = breaker(10, 0.5, Duration::from_secs(60), Duration::from_secs(60));
        // Under 30 % failures, in runs of two consecutive failures (which used to be enough).
        for _ in 0..20 {
            let _ = fail(&breaker).await;
            let _ = fail(&breaker).await;
            for _ in 0..5 {
                succeed(&breaker).await;
            }
        }
        assert!(!breaker.is_open());
    }

    #[tokio::test]
    async fn answers_that_are_not_failures_count_as_successes() {
        let breaker = breaker(2, 0.5, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..50 {
            let _ = breaker.call(async { Err::<(), _>("invalid argument") }, |_| false).await;
        }
        assert!(!breaker.is_open());
        // And they dilute real failures: 1 failure in 51 calls is no outage.
        let _ = fail(&breaker).await;
        assert!(!breaker.is_open());
    }

    #[tokio::test]
    async fn failures_older_than_the_window_are_forgotten() {
        let breaker = breaker(3, 0.5, Duration::from_millis(100), Duration::from_secs(60));
        let _ = fail(&breaker).await;
        let _ = fail(&breaker).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let _ = fail(&breaker).await;
        assert!(!breaker.is_open(), "only one failure is still inside the window");
        let _ = fail(&breaker).await;
        let _ = fail(&breaker).await;
        assert!(breaker.is_open());
    }

    #[tokio::test]
    async fn a_successful_trial_after_the_cool_down_closes_it_with_a_fresh_window() {
        let breaker = breaker(1, 1.0, Duration::from_secs(60), Duration::from_millis(20));
        let _ = fail(&breaker).await;
        assert!(breaker.is_open());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(breaker.allow(), "one trial goes through");
        assert!(!breaker.allow(), "only one trial at a time");
        breaker.record_success();
        assert!(!breaker.is_open());
        succeed(&breaker).await;
        assert!(!breaker.is_open(), "the failure that opened it no longer counts");
    }

    #[tokio::test]
    async fn a_failed_trial_opens_it_again() {
        let breaker = breaker(1, 1.0, Duration::from_secs(60), Duration::from_millis(20));
        let _ = fail(&breaker).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = fail(&breaker).await;
        assert!(!breaker.allow());
    }

    #[test]
    fn configuration_is_read_with_the_old_threshold_as_the_minimum() {
        use std::collections::HashMap;
        let read = |pairs: &[(&'static str, &str)]| {
            let vars: HashMap<&'static str, String> =
                pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            BreakerConfig::from_env(&Env::new(&vars), "BREAKER_", "_SECONDS", "BREAKER_FAILURE_THRESHOLD")
        };
        assert_eq!(read(&[]).unwrap(), BreakerConfig::default());
        let set = read(&[
            ("BREAKER_FAILURE_RATIO", "0.8"),
            ("BREAKER_MINIMUM_CALLS", "20"),
            ("BREAKER_WINDOW_SECONDS", "30"),
            ("BREAKER_COOL_DOWN_SECONDS", "2"),
        ])
        .unwrap();
        assert_eq!(
            set,
            BreakerConfig {
                failure_ratio: 0.8,
                minimum_calls: 20,
                window: Duration::from_secs(30),
                cool_down: Duration::from_secs(2)
            }
        );
        assert_eq!(read(&[("BREAKER_FAILURE_THRESHOLD", "7")]).unwrap().minimum_calls, 7);
        let both = [("BREAKER_FAILURE_THRESHOLD", "7"), ("BREAKER_MINIMUM_CALLS", "12")];
        assert_eq!(read(&both).unwrap().minimum_calls, 12, "the new name wins");
        assert_eq!(read(&[("BREAKER_FAILURE_RATIO", "2")]).unwrap_err().name, "BREAKER_FAILURE_RATIO");
        assert_eq!(read(&[("BREAKER_WINDOW_SECONDS", "0")]).unwrap_err().name, "BREAKER_WINDOW_SECONDS");
    }

    #[test]
    fn nonsense_configuration_is_refused() {
        let ok = BreakerConfig::default();
        assert!(ok.validated().is_ok());
        assert!(BreakerConfig { failure_ratio: 0.0, ..ok }.validated().is_err());
        assert!(BreakerConfig { failure_ratio: 1.5, ..ok }.validated().is_err());
        assert!(BreakerConfig { failure_ratio: f64::NAN, ..ok }.validated().is_err());
        assert!(BreakerConfig { minimum_calls: 0, ..ok }.validated().is_err());
        assert!(BreakerConfig { window: Duration::ZERO, ..ok }.validated().is_err());
    }
}
