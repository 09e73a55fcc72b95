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

use async_graphql::http::parse_query_string;
use async_graphql::parser::types::OperationType;
use async_graphql::{BatchRequest, Data, Request as GraphqlRequest};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use platform::auth::JwtVerifier;
use platform::health::HealthChecks;
use platform::http::HttpLimits;
use tokio_util::sync::CancellationToken;

use crate::auth::{ClientIp, Credentials};
use crate::config::{GraphqlLimits, SocketLimits};
use crate::documents::Documents;
use crate::error::GatewayError;
use crate::graphql_http::{self, Caching, MediaType, error_response};
use crate::playground;
use crate::response_cache;
use crate::schema::concerts::ConcertLoader;
use crate::schema::{Schemas, Services};
use crate::subscriptions::SubscriptionSlots;
use crate::websocket::{self, SocketRegistry};

/// What the handlers share.
pub struct HttpState {
    pub schemas: Schemas,
    /// Persisted (APQ) and trusted documents.
    pub documents: Documents,
    pub services: Arc<Services>,
    pub verifier: JwtVerifier,
    pub limits: GraphqlLimits,
    pub max_body_bytes: usize,
    pub playground_enabled: bool,
    /// Open WebSockets per client address and account.
    pub sockets: SocketRegistry,
    pub socket_limits: SocketLimits,
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
    let Some(media) = graphql_http::negotiate(&parts.headers) else {
        return graphql_http::not_acceptable();
    };
    if !is_json(&parts.headers) {
        let error =
            GatewayError::invalid("Content-Type", "GraphQL requests must be sent as application/json");
        return error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, error);
    }
    let Ok(bytes) = axum::body::to_bytes(body, state.max_body_bytes).await else {
        let error = GatewayError::BadUserInput { field: None, message: "request body is too large".into() };
        return error_response(StatusCode::PAYLOAD_TOO_LARGE, error);
    };
    let mut batch = match graphql_http::parse_body(&bytes) {
        Ok(batch) => batch,
        Err(error) => return error_response(StatusCode::BAD_REQUEST, error),
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
    // A batch with one refused document is refused whole, as a batch that does not parse is.
    for request in batch.iter_mut() {
        if let Err(error) = state.documents.resolve(request) {
            return document_refused(error);
        }
    }
    execute(&state, &parts.headers, client, batch, media, Caching::Unspecified).await
}

async fn graphql_get(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    if is_websocket_upgrade(&parts.headers) {
        return websocket(state, parts).await;
    }
    if wants_html(&parts.headers) {
        return if state.playground_enabled {
            playground::page()
        } else {
            let error =
                GatewayError::BadUserInput { field: None, message: "send GraphQL requests as POST".into() };
            error_response(StatusCode::NOT_FOUND, error)
        };
    }
    let Some(media) = graphql_http::negotiate(&parts.headers) else {
        return graphql_http::not_acceptable();
    };
    let client = client_ip(&parts);
    if let Err(error) = state.services.limiter.check_request(client.0) {
        return error_response(StatusCode::TOO_MANY_REQUESTS, error);
    }
    let query_string = parts.uri.query().unwrap_or_default();
    // A persisted query names its document in `extensions` instead.
    let has = |name: &str| query_string.split('&').any(|pair| pair.split('=').next() == Some(name));
    if !has("query") && !has("extensions") {
        let error = GatewayError::invalid("query", "a GraphQL request needs a query parameter");
        return error_response(StatusCode::BAD_REQUEST, error);
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
    let resolution = match state.documents.resolve(&mut request) {
        Ok(resolution) => resolution,
        Err(error) => return document_refused(error),
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
    // Shared caches may keep an anonymous answer that is the same for everyone: a document named
    // by hash (so the URL is short and stable) that reads only public fields.
    let public = resolution.persisted
        && !parts.headers.contains_key(header::AUTHORIZATION)
        && response_cache::is_public_query(&mut request);
    execute(&state, &parts.headers, client, BatchRequest::Single(request), media, Caching::Get { public })
        .await
}

/// The answer to a document the persisted-document stores refused. `PersistedQueryNotFound` is a
/// 200, whatever the media type: Apollo clients stop using persisted queries after a 400, instead
/// of sending the query with its hash.
fn document_refused(error: GatewayError) -> Response {
    match error {
        GatewayError::PersistedQueryNotFound => {
            let mut response = error_response(StatusCode::OK, error);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        error => error_response(StatusCode::BAD_REQUEST, error),
    }
}

async fn execute(
    state: &HttpState,
    headers: &HeaderMap,
    client: ClientIp,
    mut batch: BatchRequest,
    media: MediaType,
    caching: Caching,
) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).map(|value| value.to_str().unwrap_or("invalid"));
    let credentials = Credentials::from_authorization(&state.verifier, authorization).await;
    let anonymous = matches!(credentials, Credentials::Anonymous);
    let cache = &state.services.response_cache;
    let mut shared = None;
    if let BatchRequest::Single(request) = &mut batch
        && let Some(key) = cache.key(request, anonymous, media)
    {
        if let Some(answer) = cache.cached(&key).await {
            return graphql_http::with_caching(answer, caching).into_response();
        }
        shared = response_cache::is_public_query(request).then_some(key);
    }
    for request in batch.iter_mut() {
        request.data.insert(credentials.clone());
        request.data.insert(client);
        request.data.insert(ConcertLoader::new(state.services.catalog.clone()));
    }
    match batch {
        BatchRequest::Single(mut request) => {
            let schema = state.schemas.for_request(&mut request);
            let execute = async { graphql_http::answer(schema.execute(request).await.into(), media) };
            let answer = match shared {
                Some(key) => cache.get_or_execute(key, execute).await,
                None => execute.await,
            };
            graphql_http::with_caching(answer, caching).into_response()
        }
        batch @ BatchRequest::Batch(_) => {
            graphql_http::respond(state.schemas.main.execute_batch(batch).await, media)
        }
    }
}

async fn websocket(state: Arc<HttpState>, mut parts: Parts) -> Response {
    let client = client_ip(&parts);
    if let Err(error) = state.services.limiter.check_request(client.0) {
        return error_response(StatusCode::TOO_MANY_REQUESTS, error);
    }
    if !offers_protocol(&parts.headers, websocket::PROTOCOL) {
        let message = format!("WebSocket clients must offer the {} subprotocol", websocket::PROTOCOL);
        let error = GatewayError::invalid("Sec-WebSocket-Protocol", message);
        return error_response(StatusCode::BAD_REQUEST, error);
    }
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(slot) = state.sockets.admit_address(client.0, state.socket_limits.max_per_ip) else {
        let message = format!(
            "at most {} WebSocket connections may be open from one address",
            state.socket_limits.max_per_ip
        );
        return error_response(StatusCode::TOO_MANY_REQUESTS, GatewayError::TooManySockets { message });
    };
    let max = state.max_body_bytes;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .protocols([websocket::PROTOCOL])
        .on_upgrade(move |socket| websocket::serve(socket, state, client, slot))
}

impl HttpState {
    /// What every operation on one accepted WebSocket runs with.
    pub fn connection_data(&self, credentials: Credentials, client: ClientIp) -> Data {
        let mut data = Data::default();
        data.insert(credentials);
        data.insert(client);
        data.insert(ConcertLoader::new(self.services.catalog.clone()));
        data.insert(SubscriptionSlots::new(self.limits.max_subscriptions_per_connection));
        data
    }
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

/// Whether the client lists `protocol` in `Sec-WebSocket-Protocol`.
fn offers_protocol(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|offered| offered.trim().eq_ignore_ascii_case(protocol))
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
