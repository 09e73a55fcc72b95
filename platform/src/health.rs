//! Liveness, readiness and metrics endpoints.
//!
//! `/alive` answers while the process runs. `/health` runs every dependency check concurrently, each
//! under a timeout, and answers 200 when all required checks pass (a failed optional check, such as a
//! cache, makes the status `degraded` but still 200) or 503 with a JSON body naming what is down.
//! `/metrics` renders the process-wide Prometheus registry.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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

/// The dependency checks behind `/health`.
#[derive(Clone)]
pub struct HealthChecks {
    checks: Vec<Check>,
    timeout: Duration,
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
        Self { checks: Vec::new(), timeout }
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

/// `/alive`, `/health` and `/metrics`, to merge into a service's HTTP router or serve on an admin port.
///
/// Building it installs the Prometheus recorder, so nothing counted before the first scrape is lost.
pub fn router(checks: HealthChecks) -> Router {
    prometheus();
    Router::new()
        .route("/alive", get(|| async { "alive" }))
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .with_state(Arc::new(checks))
}

async fn health(State(checks): State<Arc<HealthChecks>>) -> impl IntoResponse {
    let report = checks.report().await;
    let code =
        if report.status == Status::Unhealthy { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    if report.status != Status::Healthy {
        tracing::warn!(health.status = ?report.status, health.checks = ?report.checks, "health check not green");
    }
    (code, Json(report))
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
    async fn a_hung_check_times_out() {
        let checks = HealthChecks::new(Duration::from_millis(50))
            .required("slow", || async { std::future::pending::<Result<(), String>>().await });
        let report = checks.report().await;
        assert_eq!(report.status, Status::Unhealthy);
        assert!(report.checks["slow"].error.as_deref().unwrap_or("").contains("no answer"));
    }
}
