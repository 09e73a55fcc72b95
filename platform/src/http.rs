//! The HTTP plumbing every service shares: common layers, serving with graceful shutdown, and a JSON
//! extractor whose rejections are problem+json naming the offending field.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::problem::Problem;
use crate::trace_context::{self, HeaderExtractor};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits applied to every request a service accepts.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_body_bytes: 64 * 1024, request_timeout: Duration::from_secs(15) }
    }
}

/// Wraps a router in request ids, tracing spans (child of the caller's `traceparent`), metrics, a body
/// size limit and a timeout.
pub fn with_common_layers(router: Router, limits: HttpLimits) -> Router {
    router.layer(middleware::from_fn(record_metrics)).layer(
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
            .layer(TraceLayer::new_for_http().make_span_with(make_span))
            .layer(PropagateRequestIdLayer::new(REQUEST_ID))
            .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout)),
    )
}

fn make_span(request: &Request) -> tracing::Span {
    let request_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
    let route = request.extensions().get::<MatchedPath>().map_or(request.uri().path(), MatchedPath::as_str);
    let span = tracing::info_span!(
        "http.request",
        http.method = %request.method(),
        http.route = %route,
        request.id = %request_id,
        trace.id = tracing::field::Empty,
    );
    trace_context::set_parent(&span, &HeaderExtractor(request.headers()));
    span
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [("method", method), ("route", route), ("status", response.status().as_u16().to_string())];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

/// Serves `router` until `shutdown` is cancelled, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// JSON in and out; a body that does not parse is a problem+json 400 naming the field when it can.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(request, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_problem(rejection: &JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(error) => {
            let message = error.body_text();
            let message = message
                .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                .unwrap_or(&message);
            match offending_field(message) {
                Some(field) => Problem::invalid_field(&field, message),
                None => Problem::bad_request(message),
            }
        }
        JsonRejection::MissingJsonContentType(_) => {
            Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json")
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
        }
        other => Problem::bad_request(other.body_text()),
    }
}

/// Finds the field a serde error is about: the `path: ` prefix axum adds, or the name in
/// "missing field `x`" / "unknown field `x`".
fn offending_field(message: &str) -> Option<String> {
    for marker in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.split_once(marker).map(|(_, rest)| rest)
            && let Some((name, _)) = rest.split_once('`')
        {
            return Some(name.to_owned());
        }
    }
    let (path, _) = message.split_once(": ")?;
    let looks_like_path = !path.is_empty()
        && path != "."
        && path.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    looks_like_path.then(|| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::offending_field;

    #[test]
    fn finds_the_field_in_serde_messages() {
        assert_eq!(offending_field("missing field `email` at line 1 column 2").as_deref(), Some("email"));
        assert_eq!(
            offending_field("unknown field `admin`, expected one of `email`, `password`").as_deref(),
            Some("admin")
        );
        assert_eq!(
            offending_field("quantity: invalid type: string \"x\", expected u32 at line 1").as_deref(),
            Some("quantity")
        );
        assert_eq!(offending_field("expected value at line 1 column 1"), None);
    }
}
