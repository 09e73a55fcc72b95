//! The HTTP surface: `/graphql` (POST, GET, WebSocket), the playground's assets, health and metrics.
//!
//! async-graphql-axum protects nothing by itself, so this module does:
//! - POST must be `Content-Type: application/json` (a cross-site form can send `text/plain`, which
//!   would otherwise be parsed as JSON: CSRF); anything else is 415.
//! - GET runs queries only: a document with a mutation or subscription is 405 (GraphQL over HTTP).
//! - The body is read with a limit (the extractor would bypass axum's `DefaultBodyLimit`), batches
//!   are bounded, the query text is bounded (in the schema extension, for WebSocket too).
//! - Every GraphQL request and WebSocket upgrade spends the client IP's rate-limit budget.
//! - WebSocket messages are bounded, a connection holds a bounded number of live subscriptions, and
//!   the socket authenticates in `connection_init`; cookies play no part, so a cross-site page
//!   cannot ride on a user's session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, parse_query_string};
use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, Data, Request as GraphqlRequest};
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use platform::auth::{AuthError, JwtVerifier};
use platform::health::HealthChecks;
use platform::http::HttpLimits;
use tokio_util::sync::CancellationToken;

use crate::auth::{ClientIp, Credentials};
use crate::config::GraphqlLimits;
use crate::error::GatewayError;
use crate::playground;
use crate::schema::concerts::ConcertLoader;
use crate::schema::{Schemas, Services};
use crate::subscriptions::SubscriptionSlots;

/// How long a new WebSocket may take to send `connection_init`.
const CONNECTION_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct HttpState {
    pub schemas: Schemas,
    pub services: Arc<Services>,
    pub verifier: JwtVerifier,
    pub limits: GraphqlLimits,
    pub max_body_bytes: usize,
    pub playground_enabled: bool,
    /// Ends WebSocket connections when the gateway shuts down.
    pub shutdown: CancellationToken,
}

/// The gateway's router, with the platform's common layers (request ids, tracing, metrics, body
/// limit, timeout).
pub fn router(state: Arc<HttpState>, health: HealthChecks, limits: HttpLimits) -> Router {
    let routes = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/assets/{version}/{name}", get(playground::asset))
        .with_state(state)
        .merge(platform::health::public_router(health));
    platform::http::with_common_layers(routes, limits)
}

async fn graphql_post(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let client = client_ip(&parts);
    if let Err(error) = state.services.limiter.check_request(client.0) {
        return error_response(StatusCode::TOO_MANY_REQUESTS, error);
    }
    if !is_json(&parts.headers) {
        let error =
            GatewayError::invalid("Content-Type", "GraphQL requests must be sent as application/json");
        return error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, error);
    }
    let Ok(bytes) = axum::body::to_bytes(body, state.max_body_bytes).await else {
        let error = GatewayError::BadUserInput { field: None, message: "request body is too large".into() };
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, error);
    };
    let batch = match serde_json::from_slice::<BatchRequest>(&bytes) {
        Ok(batch) => batch,
        Err(error) => {
            let error = GatewayError::BadUserInput {
                field: None,
                message: format!("not a GraphQL request: {error}"),
            };
            return error_response(StatusCode::BAD_REQUEST, error);
        }
    };
    if let BatchRequest::Batch(requests) = &batch {
        if requests.len() > state.limits.max_batch {
            let message = if state.limits.max_batch == 0 {
                "batched requests are not accepted".to_owned()
            } else {
                format!("a batch may hold at most {} operations", state.limits.max_batch)
            };
            return error_response(
                StatusCode::BAD_REQUEST,
                GatewayError::BadUserInput { field: None, message },
            );
        }
        // The request itself paid for one operation; the rest of the batch pays here.
        let more = u32::try_from(requests.len().saturating_sub(1)).unwrap_or(u32::MAX);
        if let Err(error) = state.services.limiter.check_requests(client.0, more) {
            return error_response(StatusCode::TOO_MANY_REQUESTS, error);
        }
    }
    execute(&state, &parts.headers, client, batch).await
}

async fn graphql_get(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if is_websocket_upgrade(&parts.headers) {
        return websocket(state, parts).await;
    }
    let query_string = parts.uri.query().unwrap_or_default();
    let has_query = query_string.split('&').any(|pair| pair.split('=').next() == Some("query"));
    if !has_query || wants_html(&parts.headers) {
        return if state.playground_enabled {
            playground::page()
        } else {
            let error =
                GatewayError::BadUserInput { field: None, message: "send GraphQL requests as POST".into() };
            error_response(StatusCode::NOT_FOUND, error)
        };
    }
    let client = client_ip(&parts);
    if let Err(error) = state.services.limiter.check_request(client.0) {
        return error_response(StatusCode::TOO_MANY_REQUESTS, error);
    }
    let mut request = match parse_query_string(query_string) {
        Ok(request) => request,
        Err(error) => {
            let error = GatewayError::BadUserInput {
                field: None,
                message: format!("not a GraphQL request: {error}"),
            };
            return error_response(StatusCode::BAD_REQUEST, error);
        }
    };
    if !only_queries(&mut request) {
        let error = GatewayError::BadUserInput {
            field: None,
            message: "GET requests may only run queries; send mutations as POST".into(),
        };
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, error);
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    execute(&state, &parts.headers, client, BatchRequest::Single(request)).await
}

async fn execute(
    state: &HttpState,
    headers: &HeaderMap,
    client: ClientIp,
    mut batch: BatchRequest,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or("invalid"));
    let credentials = Credentials::from_authorization(&state.verifier, authorization).await;
    for request in batch.iter_mut() {
        request.data.insert(credentials.clone());
        request.data.insert(client);
        request.data.insert(ConcertLoader::new(state.services.catalog.clone()));
    }
    let schema = match &mut batch {
        BatchRequest::Single(request) => state.schemas.for_request(request),
        BatchRequest::Batch(_) => &state.schemas.main,
    };
    GraphQLResponse(schema.execute_batch(batch).await).into_response()
}

async fn websocket(state: Arc<HttpState>, mut parts: Parts) -> Response {
    let client = client_ip(&parts);
    if let Err(error) = state.services.limiter.check_request(client.0) {
        return error_response(StatusCode::TOO_MANY_REQUESTS, error);
    }
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(protocol) => protocol,
        Err(status) => return status.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let max = state.max_body_bytes;
    upgrade.max_message_size(max).max_frame_size(max).protocols(ALL_WEBSOCKET_PROTOCOLS).on_upgrade(
        move |socket| async move {
            let (init_state, initialised) = (state.clone(), Arc::new(AtomicBool::new(false)));
            let flag = initialised.clone();
            let connection = GraphQLWebSocket::new(socket, state.schemas.main.clone(), protocol)
                .on_connection_init(move |payload| {
                    flag.store(true, Ordering::Relaxed);
                    connection_data(init_state, payload, client)
                })
                .serve();
            // graphql-transport-ws: a socket that never initialises is dropped, so idle sockets
            // cannot pile up.
            let init_timeout = async {
                tokio::time::sleep(CONNECTION_INIT_TIMEOUT).await;
                if initialised.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = connection => {}
                () = init_timeout => tracing::debug!("WebSocket closed: no connection_init in time"),
                () = state.shutdown.cancelled() => {}
            }
        },
    )
}

/// What every operation on one WebSocket runs with. A token that does not verify closes the
/// socket (with the reason), so the client knows to sign in again; no token at all allows public
/// operations only.
async fn connection_data(
    state: Arc<HttpState>,
    payload: serde_json::Value,
    client: ClientIp,
) -> async_graphql::Result<Data> {
    let credentials = Credentials::from_init_payload(&state.verifier, &payload).await;
    match &credentials {
        Credentials::Rejected(AuthError::KeysUnavailable(_)) => {
            return Err(GatewayError::Unavailable(crate::error::Service::Identity).into_graphql());
        }
        Credentials::Rejected(error) => {
            return Err(GatewayError::Unauthenticated(error.to_string()).into_graphql());
        }
        Credentials::Anonymous | Credentials::User(_) => {}
    }
    let mut data = Data::default();
    data.insert(credentials);
    data.insert(client);
    data.insert(ConcertLoader::new(state.services.catalog.clone()));
    data.insert(SubscriptionSlots::new(state.limits.max_subscriptions_per_connection));
    Ok(data)
}

/// A GraphQL-shaped error body (`{"errors": [...]}`) with an HTTP status, for requests refused
/// before they reach the schema.
fn error_response(status: StatusCode, error: GatewayError) -> Response {
    let retry_after = match &error {
        GatewayError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    let (message, extensions) = error.describe();
    let body = serde_json::json!({ "errors": [{ "message": message, "extensions": extensions }] });
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(seconds) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn client_ip(parts: &Parts) -> ClientIp {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| ClientIp(info.0.ip())).unwrap_or_default()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

/// A browser navigating to `/graphql` (rather than a client asking for JSON).
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|value| value.to_str().ok()).is_some_and(|accept| {
        accept.split(',').next().is_some_and(|first| first.trim().starts_with("text/html"))
    })
}

/// Whether every operation in the document is a query. A document that does not parse counts as
/// queries only: executing it reports the syntax error.
fn only_queries(request: &mut GraphqlRequest) -> bool {
    match request.parsed_query() {
        Ok(document) => {
            document.operations.iter().all(|(_, operation)| operation.node.ty == OperationType::Query)
        }
        Err(_) => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(name, value)| (name.clone(), HeaderValue::from_static(value))).collect()
    }

    #[test]
    fn only_json_posts_are_graphql() {
        assert!(is_json(&headers(&[(header::CONTENT_TYPE, "application/json")])));
        assert!(is_json(&headers(&[(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")])));
        assert!(!is_json(&headers(&[(header::CONTENT_TYPE, "text/plain")])));
        assert!(!is_json(&headers(&[(header::CONTENT_TYPE, "multipart/form-data; boundary=x")])));
        assert!(!is_json(&headers(&[])));
    }

    #[test]
    fn mutations_are_spotted_in_any_operation_of_a_document() {
        let mut query = GraphqlRequest::new("{ concerts { edges { cursor } } }");
        assert!(only_queries(&mut query));
        let mut mutation = GraphqlRequest::new("mutation { logout(refreshToken: \"x\") }");
        assert!(!only_queries(&mut mutation));
        let mut mixed =
            GraphqlRequest::new("query A { me { id } } mutation B { logout(refreshToken: \"x\") }")
                .operation_name("A");
        assert!(!only_queries(&mut mixed), "a GET must not carry a mutation, selected or not");
        let mut subscription = GraphqlRequest::new("subscription { myOrderUpdates { status } }");
        assert!(!only_queries(&mut subscription));
    }

    #[test]
    fn browsers_get_the_playground() {
        assert!(wants_html(&headers(&[(header::ACCEPT, "text/html,application/xhtml+xml,*/*;q=0.8")])));
        assert!(!wants_html(&headers(&[(header::ACCEPT, "application/json")])));
        assert!(!wants_html(&headers(&[])));
    }
}
