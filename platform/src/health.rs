//! Liveness, readiness and metrics endpoints, for a public and an admin listener.
//!
//! `/alive` answers while the process runs. `/health` runs every dependency check concurrently, each
//! under a timeout, and answers 200 when all required checks pass (a failed optional check, such as a
//! cache, makes the status `degraded` but still 200) or 503 when a required one fails. A report is
//! reused for up to a second and concurrent probes share one run, so probing `/health` in a loop
//! cannot turn into a flood of database pings.
//!
//! On a public port ([`public_router`]) the body says only `healthy`, `degraded` or `unhealthy`;
//! the per-check report (errors, timings) and `/metrics` (login failures, order volume) are for
//! operators and are served on the admin port alone ([`admin_router`]).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;

type CheckFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone)]
struct Check {
    name: &'static str,
    required: bool,
    run: CheckFn,
}

/// How long a health report is reused before the checks run again.
const REPORT_REUSE: Duration = Duration::from_secs(1);

/// The dependency checks behind `/health`. Clones share the last report.
#[derive(Clone)]
pub struct HealthChecks {
    checks: Vec<Check>,
    timeout: Duration,
    last: Arc<Mutex<Option<(tokio::time::Instant, HealthReport)>>>,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    pub status: Status,
    pub checks: BTreeMap<&'static str, CheckReport>,
}

impl HealthChecks {
    /// `timeout` bounds each check, so one hung dependency cannot hang the probe.
    pub fn new(timeout: Duration) -> Self {
        Self { checks: Vec::new(), timeout, last: Arc::default() }
    }

    /// A dependency the service cannot work without.
    pub fn required<F, Fut>(self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add(name, true, check)
    }

    /// A dependency the service works without, less well (a cache): failure means `degraded`.
    pub fn optional<F, Fut>(self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add(name, false, check)
    }

    fn add<F, Fut>(mut self, name: &'static str, required: bool, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let run: CheckFn = Arc::new(move || Box::pin(check()));
        self.checks.push(Check { name, required, run });
        self
    }

    /// The last report if it is under a second old, otherwise a fresh one. Callers arriving while a
    /// run is in progress wait for it rather than starting their own.
    pub async fn recent_report(&self) -> HealthReport {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < REPORT_REUSE
        {
            return report.clone();
        }
        let report = self.report().await;
        if report.status != Status::Healthy {
            tracing::warn!(health.status = ?report.status, health.checks = ?report.checks, "health check not green");
        }
        *last = Some((tokio::time::Instant::now(), report.clone()));
        report
    }

    /// Runs every check now.
    pub async fn report(&self) -> HealthReport {
        let runs = self.checks.iter().map(|check| async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(self.timeout, (check.run)()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
            };
            let status = match (&outcome, check.required) {
                (Ok(()), _) => Status::Healthy,
                (Err(_), true) => Status::Unhealthy,
                (Err(_), false) => Status::Degraded,
            };
            let report = CheckReport {
                status,
                error: outcome.err(),
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            };
            (check.name, report)
        });
        let checks: BTreeMap<_, _> = futures::future::join_all(runs).await.into_iter().collect();
        let status = checks.values().map(|c| c.status).max_by_key(|s| *s as u8).unwrap_or(Status::Healthy);
        HealthReport { status, checks }
    }
}

/// `/alive` and a `/health` whose body says only the overall status, to merge into a service's
/// public router.
pub fn public_router(checks: HealthChecks) -> Router {
    Router::new()
        .route("/alive", get(|| async { "alive" }))
        .route("/health", get(health_summary))
        .with_state(Arc::new(checks))
}

/// `/alive`, `/health` with the per-check report, and `/metrics`: the admin listener's routes.
///
/// Building it installs the Prometheus recorder, so nothing counted before the first scrape is lost.
pub fn admin_router(checks: HealthChecks) -> Router {
    prometheus();
    Router::new()
        .route("/alive", get(|| async { "alive" }))
        .route("/health", get(health_report))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(checks))
}

/// What a public `/health` shows: enough for a load balancer, nothing about the dependencies.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HealthSummary {
    pub status: Status,
}

fn status_code(status: Status) -> StatusCode {
    if status == Status::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

async fn health_summary(State(checks): State<Arc<HealthChecks>>) -> impl IntoResponse {
    let status = checks.recent_report().await.status;
    (status_code(status), Json(HealthSummary { status }))
}

async fn health_report(State(checks): State<Arc<HealthChecks>>) -> impl IntoResponse {
    let report = checks.recent_report().await;
    (status_code(report.status), Json(report))
}

async fn render_metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus().render())
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// Several services may share one process (the launcher, the tests); they share one registry.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; metrics then go there instead.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_required_check_makes_the_service_unhealthy() {
        let checks = HealthChecks::default()
            .required("postgres", || async { Ok(()) })
            .required("rabbitmq", || async { Err("connection refused".to_owned()) });
        let report = checks.report().await;
        assert_eq!(report.status, Status::Unhealthy);
        assert_eq!(report.checks["rabbitmq"].error.as_deref(), Some("connection refused"));
        assert_eq!(report.checks["postgres"].status, Status::Healthy);
    }

    #[tokio::test]
    async fn a_failed_optional_check_only_degrades() {
        let checks = HealthChecks::default().optional("redis", || async { Err("down".to_owned()) });
        assert_eq!(checks.report().await.status, Status::Degraded);
    }

    #[tokio::test]
    async fn probes_within_a_second_share_one_run_of_the_checks() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let checks = HealthChecks::default().required("postgres", move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            }
        });
        let (a, b) = tokio::join!(checks.recent_report(), checks.recent_report());
        let c = checks.clone().recent_report().await;
        assert!([a.status, b.status, c.status].iter().all(|s| *s == Status::Healthy));
        assert_eq!(
            runs.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "concurrent and quick probes share a run"
        );
    }

    #[tokio::test]
    async fn a_report_older_than_a_second_is_not_reused() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let checks = HealthChecks::default().required("postgres", move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(()) }
        });
        checks.recent_report().await;
        tokio::time::sleep(REPORT_REUSE + Duration::from_millis(50)).await;
        checks.recent_report().await;
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_public_health_says_only_the_status_and_serves_no_metrics() {
        use tower::ServiceExt as _;
        let checks = HealthChecks::default()
            .required("postgres", || async { Err("password authentication failed".to_owned()) });
        let get = |path: &str| axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();

        let public = public_router(checks.clone());
        let health = public.clone().oneshot(get("/health")).await.unwrap();
        assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(health.into_body(), 1 << 16).await.unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"status": "unhealthy"})
        );
        assert_eq!(public.oneshot(get("/metrics")).await.unwrap().status(), StatusCode::NOT_FOUND);

        let admin = admin_router(checks);
        let health = admin.clone().oneshot(get("/health")).await.unwrap();
        let body = axum::body::to_bytes(health.into_body(), 1 << 16).await.unwrap();
        let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(report["checks"]["postgres"]["error"], "password authentication failed");
        assert_eq!(admin.oneshot(get("/metrics")).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_hung_check_times_out() {
        let checks = HealthChecks::new(Duration::from_millis(50))
            .required("slow", || async { std::future::pending::<Result<(), String>>().await });
        let report = checks.report().await;
        assert_eq!(report.status, Status::Unhealthy);
        assert!(report.checks["slow"].error.as_deref().unwrap_or("").contains("no answer"));
    }
}
