//! The HTTP plumbing every service shares: common layers, serving with connection limits and
//! graceful shutdown, and a JSON extractor whose rejections are problem+json naming the offending field.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::{ConfigError, Env};
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

/// What one listener lets a client hold: how long it may take to send a request head, and how many
/// connections may be open at once, overall and per client address.
///
/// Read once at start-up with [`ConnectionLimits::from_env`]; every listener of a service (public and
/// admin) uses the same values, each with its own counts.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// `HTTP_HEADER_READ_TIMEOUT_SECONDS` (5; fractions allowed): a request head (request line and
    /// headers) must arrive within this, or the connection is closed. hyper starts the clock whenever
    /// it waits for a head, so it also closes keep-alive connections idle for that long.
    pub header_read_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS` (10000): connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// `HTTP_MAX_CONNECTIONS_PER_IP` (256): connections open at once from one address (an IPv6
    /// client counts by its /64, which one host usually owns whole); more are closed as soon as
    /// accepted.
    pub max_connections_per_ip: usize,
    /// Peers exempt from the per-address cap (a trusted proxy every client arrives through); they
    /// still count towards `max_connections`.
    uncapped_peer: Option<Arc<dyn Fn(IpAddr) -> bool + Send + Sync>>,
}

impl ConnectionLimits {
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let header_read_timeout = env.seconds("HTTP_HEADER_READ_TIMEOUT_SECONDS", Duration::from_secs(5))?;
        if header_read_timeout.is_zero() {
            return Err(ConfigError::new(
                "HTTP_HEADER_READ_TIMEOUT_SECONDS",
                "a positive number of seconds",
                "0",
            ));
        }
        Ok(Self {
            header_read_timeout,
            max_connections: env.int_in("HTTP_MAX_CONNECTIONS", 10_000, 1..=1_000_000)?,
            max_connections_per_ip: env.int_in("HTTP_MAX_CONNECTIONS_PER_IP", 256, 1..=1_000_000)?,
            uncapped_peer: None,
        })
    }

    /// Exempts the peers `is_uncapped` accepts from the per-address cap.
    #[must_use]
    pub fn exempting(mut self, is_uncapped: impl Fn(IpAddr) -> bool + Send + Sync + 'static) -> Self {
        self.uncapped_peer = Some(Arc::new(is_uncapped));
        self
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            uncapped_peer: None,
        }
    }
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("exempts_some_peers", &self.uncapped_peer.is_some())
            .finish()
    }
}

/// Serves `router` until `shutdown` is cancelled, then stops accepting and lets in-flight requests
/// finish (idle connections close at once).
///
/// Handlers can extract `ConnectInfo<SocketAddr>`, and WebSocket upgrades work. A connection over
/// `limits` is closed as soon as it is accepted, before anything is read from it, so it costs a
/// file descriptor for an instant and nothing else.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let counts = ConnectionCounts::new(limits);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
        };
        let Some(slot) = counts.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        serve_connection(&builder, &graceful, stream, peer, router.clone(), slot);
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn serve_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    slot: ConnectionSlot,
) {
    // Small responses (health, JSON) should not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(request.map(Body::new))
    });
    let connection =
        graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
    tokio::spawn(async move {
        // Errors here are the client's doing (a reset, a header-read timeout, garbage): not ours to log loudly.
        if let Err(error) = connection.await {
            tracing::debug!(client.addr = %peer, %error, "HTTP connection ended with an error");
        }
        drop(slot);
    });
}

/// What `axum::serve` does: a connection that died in the backlog is the client's problem; anything
/// else (out of file descriptors) is ours, and retrying at once would spin, so pause first.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting an HTTP connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Open connections of one listener, overall and per client address.
struct ConnectionCounts {
    limits: ConnectionLimits,
    open: Arc<Mutex<OpenConnections>>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it gives its place back.
struct ConnectionSlot {
    open: Arc<Mutex<OpenConnections>>,
    address: Option<IpAddr>,
}

impl ConnectionCounts {
    fn new(limits: ConnectionLimits) -> Self {
        Self { limits, open: Arc::default() }
    }

    /// A slot for a connection from `peer`, or `None` when a cap is reached.
    fn admit(&self, peer: IpAddr) -> Option<ConnectionSlot> {
        let uncapped = self.limits.uncapped_peer.as_ref().is_some_and(|is_uncapped| is_uncapped(peer));
        let address = (!uncapped).then(|| address_key(peer));
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.limits.max_connections {
            metrics::counter!("http_connections_refused_total", "reason" => "max_connections").increment(1);
            tracing::debug!(client.addr = %peer, "connection refused: HTTP_MAX_CONNECTIONS reached");
            return None;
        }
        if let Some(address) = address {
            let from_address = open.per_address.entry(address).or_default();
            if *from_address >= self.limits.max_connections_per_ip {
                metrics::counter!("http_connections_refused_total", "reason" => "max_connections_per_ip")
                    .increment(1);
                tracing::debug!(client.addr = %peer, "connection refused: HTTP_MAX_CONNECTIONS_PER_IP reached");
                return None;
            }
            *from_address += 1;
        }
        open.total += 1;
        Some(ConnectionSlot { open: self.open.clone(), address })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(address) = self.address
            && let Some(count) = open.per_address.get_mut(&address)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_address.remove(&address);
            }
        }
    }
}

/// The address a client is counted under: IPv4 (also when mapped into IPv6) as is, IPv6 by its /64,
/// since one host is routinely given a whole /64 and could otherwise open connections from each.
fn address_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn per_address_cap_counts_an_ipv6_client_by_its_64_and_spares_exempt_peers() {
        let limits = ConnectionLimits { max_connections_per_ip: 1, max_connections: 3, ..Default::default() }
            .exempting(|ip| ip == IpAddr::from([10, 0, 0, 1]));
        let counts = ConnectionCounts::new(limits);
        let first = counts.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(counts.admit("2001:db8::2".parse().unwrap()).is_none(), "same /64");
        let proxy =
            [counts.admit([10, 0, 0, 1].into()).unwrap(), counts.admit([10, 0, 0, 1].into()).unwrap()];
        assert!(counts.admit([192, 0, 2, 1].into()).is_none(), "HTTP_MAX_CONNECTIONS reached");
        drop(first);
        assert!(
            counts.admit("2001:db8::2".parse().unwrap()).is_some(),
            "a closed connection frees its place"
        );
        drop(proxy);
    }

    #[test]
    fn connection_limits_read_their_variables() {
        let source: HashMap<&'static str, String> = [
            ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "0.5".to_owned()),
            ("HTTP_MAX_CONNECTIONS", "100".to_owned()),
            ("HTTP_MAX_CONNECTIONS_PER_IP", "7".to_owned()),
        ]
        .into();
        let limits = ConnectionLimits::from_env(&Env::new(&source)).unwrap();
        assert_eq!(limits.header_read_timeout, Duration::from_millis(500));
        assert_eq!((limits.max_connections, limits.max_connections_per_ip), (100, 7));
        let zero: HashMap<&'static str, String> =
            [("HTTP_HEADER_READ_TIMEOUT_SECONDS", "0".to_owned())].into();
        assert!(ConnectionLimits::from_env(&Env::new(&zero)).is_err());
    }

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
