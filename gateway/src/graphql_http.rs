//! GraphQL over HTTP, as the GraphQL Foundation's specification has it: which media type the
//! client accepts, how a request body is read, and how a result becomes an HTTP response.
//!
//! - `Accept: application/graphql-response+json` gets that media type, and a request that never
//!   reached execution (it did not parse or validate, or its variables did not coerce) is a 400
//!   with no `data` entry.
//! - `application/json`, `*/*` or no `Accept` at all gets `application/json` and 200, as clients
//!   written before the specification expect.
//! - Anything else is 406.
//! - A body is read strictly: `query` a string, `variables` and `extensions` objects,
//!   `operationName` a string, each optional only as the specification allows; a wrong type is a
//!   400 naming the parameter.

use async_graphql::{BatchRequest, BatchResponse, Request, Response, Variables};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::GatewayError;

pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
pub const JSON: &str = "application/json";

/// Set by the schema on a response whose request never reached execution; read (and removed) here.
pub const REQUEST_ERROR_MARKER: HeaderName = HeaderName::from_static("x-ticketflow-request-error");

/// The media type of the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    GraphqlResponseJson,
    Json,
}

impl MediaType {
    fn content_type(self) -> HeaderValue {
        match self {
            Self::GraphqlResponseJson => {
                HeaderValue::from_static("application/graphql-response+json; charset=utf-8")
            }
            Self::Json => HeaderValue::from_static("application/json; charset=utf-8"),
        }
    }
}

/// The media type to answer with, from `Accept`; `None` when the client accepts neither.
pub fn negotiate(headers: &HeaderMap) -> Option<MediaType> {
    let accept: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    if accept.iter().all(|value| value.trim().is_empty()) {
        return Some(MediaType::Json);
    }
    let mut best: Option<(f32, MediaType)> = None;
    for range in accept.iter().flat_map(|value| value.split(',')) {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let media = match essence.as_str() {
            GRAPHQL_RESPONSE_JSON => MediaType::GraphqlResponseJson,
            JSON | "application/*" | "*/*" => MediaType::Json,
            _ => continue,
        };
        // At equal quality the specification's own type wins.
        let better = match best {
            None => true,
            Some((q, current)) => {
                quality > q || (quality == q && media == MediaType::GraphqlResponseJson && current != media)
            }
        };
        if quality > 0.0 && better {
            best = Some((quality, media));
        }
    }
    best.map(|(_, media)| media)
}

/// The answer to a client that accepts none of our media types.
pub fn not_acceptable() -> HttpResponse {
    let message = format!("GraphQL responses are sent as {GRAPHQL_RESPONSE_JSON} or {JSON}");
    error_response(StatusCode::NOT_ACCEPTABLE, GatewayError::invalid("Accept", message))
}

/// How an answer may be cached by HTTP caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    /// POST: as the schema says (nothing sets it today, so no header).
    Unspecified,
    /// GET: `public` answers (a persisted document of public fields, no `Authorization`) are
    /// `public, max-age=5` when they have no errors; every other GET answer is `no-store`.
    Get { public: bool },
}

/// How long shared caches may keep a public answer: short, since seat counts change.
const PUBLIC_MAX_AGE_SECONDS: u32 = 5;

/// One request as it comes over the wire.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<Map<String, Value>>,
    #[serde(default)]
    extensions: Option<Map<String, Value>>,
}

impl WireRequest {
    fn into_request(self) -> Result<Request, GatewayError> {
        // A persisted query (APQ, trusted documents) names its document by hash instead.
        let persisted = self.extensions.as_ref().is_some_and(|e| e.contains_key("persistedQuery"));
        let query = match self.query {
            Some(query) => query,
            None if persisted => String::new(),
            None => return Err(GatewayError::invalid("query", "a GraphQL request needs a query")),
        };
        let mut request = Request::new(query);
        if let Some(name) = self.operation_name {
            request = request.operation_name(name);
        }
        if let Some(variables) = self.variables {
            request = request.variables(Variables::from_json(Value::Object(variables)));
        }
        for (name, value) in self.extensions.unwrap_or_default() {
            let value = async_graphql::Value::from_json(value).unwrap_or(async_graphql::Value::Null);
            request.extensions.insert(name, value);
        }
        Ok(request)
    }
}

/// Reads a POST body: one request object, or a batch (a JSON array of them).
pub fn parse_body(bytes: &[u8]) -> Result<BatchRequest, GatewayError> {
    match bytes.iter().find(|byte| !byte.is_ascii_whitespace()) {
        Some(b'[') => {
            let requests: Vec<WireRequest> = strict(bytes)?;
            let requests = requests.into_iter().map(WireRequest::into_request).collect::<Result<_, _>>()?;
            Ok(BatchRequest::Batch(requests))
        }
        _ => Ok(BatchRequest::Single(strict::<WireRequest>(bytes)?.into_request()?)),
    }
}

/// Deserializes `bytes`; an error names the request parameter it is about.
fn strict<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, GatewayError> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes)).map_err(|error| {
        let path = error.path().to_string();
        let message = format!("not a GraphQL request: {}", error.inner());
        let parameter = ["query", "operationName", "variables", "extensions"]
            .into_iter()
            .find(|parameter| path == *parameter || path.ends_with(&format!(".{parameter}")));
        match parameter {
            Some(parameter) => GatewayError::invalid(parameter, message),
            None => GatewayError::BadUserInput { field: None, message },
        }
    })
}

/// A schema's answer as it goes over HTTP. Cheap to clone (the body is shared), so the response
/// cache can hand one to many clients.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether every response in it is free of errors (only such answers may be cached).
    pub ok: bool,
}

impl IntoResponse for Answer {
    fn into_response(self) -> HttpResponse {
        let mut http = (self.status, self.body).into_response();
        http.headers_mut().extend(self.headers);
        http
    }
}

/// The HTTP response for a schema's answer.
pub fn respond(batch: BatchResponse, media: MediaType) -> HttpResponse {
    answer(batch, media).into_response()
}

/// The schema's answer, shaped for `media`.
pub fn answer(batch: BatchResponse, media: MediaType) -> Answer {
    let ok = batch.is_ok();
    let (status, body, cache_control, mut headers) = match batch {
        BatchResponse::Single(mut response) => {
            let request_error = response.http_headers.remove(&REQUEST_ERROR_MARKER).is_some();
            let cache_control = response.is_ok().then(|| response.cache_control.value()).flatten();
            let headers = std::mem::take(&mut response.http_headers);
            let (status, body) = if request_error && media == MediaType::GraphqlResponseJson {
                (StatusCode::BAD_REQUEST, request_error_body(&response))
            } else {
                (StatusCode::OK, serde_json::to_vec(&response))
            };
            (status, body, cache_control, headers)
        }
        BatchResponse::Batch(mut responses) => {
            for response in &mut responses {
                response.http_headers.remove(&REQUEST_ERROR_MARKER);
            }
            (StatusCode::OK, serde_json::to_vec(&responses), None, HeaderMap::new())
        }
    };
    let body = match body {
        Ok(body) => Bytes::from(body),
        Err(error) => {
            // Logged with its cause by `describe`; the client sees only its code and trace id.
            let (message, extensions) = GatewayError::internal(error).describe();
            let body = serde_json::json!({ "errors": [{ "message": message, "extensions": extensions }] });
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, MediaType::Json.content_type());
            let body = Bytes::from(body.to_string());
            return Answer { status: StatusCode::INTERNAL_SERVER_ERROR, headers, body, ok: false };
        }
    };
    headers.insert(header::CONTENT_TYPE, media.content_type());
    if let Some(value) = cache_control.and_then(|value| HeaderValue::from_str(&value).ok()) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    Answer { status, headers, body, ok }
}

/// `answer` with the HTTP-cache headers `caching` asks for.
pub fn with_caching(mut answer: Answer, caching: Caching) -> Answer {
    if let Caching::Get { public } = caching {
        let value = if public && answer.ok && answer.status == StatusCode::OK {
            HeaderValue::from_str(&format!("public, max-age={PUBLIC_MAX_AGE_SECONDS}"))
                .unwrap_or(HeaderValue::from_static("no-store"))
        } else {
            HeaderValue::from_static("no-store")
        };
        answer.headers.insert(header::CACHE_CONTROL, value);
        // One URL answers differently per media type, and per user when a token is sent.
        answer.headers.insert(header::VARY, HeaderValue::from_static("Accept, Authorization"));
    }
    answer
}

/// A GraphQL-shaped error body (`{"errors": [...]}`) with an HTTP status, for requests refused
/// before they reach the schema.
pub fn error_response(status: StatusCode, error: GatewayError) -> HttpResponse {
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

/// A request error's body: its errors, and no `data` entry, since execution never started.
fn request_error_body(response: &Response) -> serde_json::Result<Vec<u8>> {
    let mut body = Map::new();
    body.insert("errors".to_owned(), serde_json::to_value(&response.errors)?);
    if !response.extensions.is_empty() {
        body.insert("extensions".to_owned(), serde_json::to_value(&response.extensions)?);
    }
    serde_json::to_vec(&body)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn accept(value: &'static str) -> HeaderMap {
        HeaderMap::from_iter([(header::ACCEPT, HeaderValue::from_static(value))])
    }

    #[test]
    fn accept_picks_the_media_type() {
        assert_eq!(negotiate(&HeaderMap::new()), Some(MediaType::Json));
        assert_eq!(negotiate(&accept("application/json")), Some(MediaType::Json));
        assert_eq!(negotiate(&accept("*/*")), Some(MediaType::Json));
        assert_eq!(negotiate(&accept(GRAPHQL_RESPONSE_JSON)), Some(MediaType::GraphqlResponseJson));
        assert_eq!(
            negotiate(&accept("application/graphql-response+json, application/json;q=0.9")),
            Some(MediaType::GraphqlResponseJson)
        );
        assert_eq!(
            negotiate(&accept("application/graphql-response+json;q=0.5, application/json")),
            Some(MediaType::Json)
        );
        assert_eq!(
            negotiate(&accept("application/json, application/graphql-response+json")),
            Some(MediaType::GraphqlResponseJson)
        );
        assert_eq!(negotiate(&accept("text/plain")), None);
        assert_eq!(negotiate(&accept("application/json;q=0")), None);
    }

    #[test]
    fn bodies_are_read_strictly() {
        assert!(matches!(parse_body(br#"{"query":"{ a }"}"#), Ok(BatchRequest::Single(_))));
        assert!(
            matches!(parse_body(br#" [{"query":"{ a }"},{"query":"{ b }"}]"#), Ok(BatchRequest::Batch(r)) if r.len() == 2)
        );
        assert!(
            parse_body(br#"{"query":"{ a }","variables":null,"operationName":null,"extensions":null}"#)
                .is_ok()
        );
        assert!(
            parse_body(br#"{"extensions":{"persistedQuery":{"version":1,"sha256Hash":"ab"}}}"#).is_ok(),
            "a persisted query needs no query"
        );
        for (body, parameter) in [
            (r#"{}"#, "query"),
            (r#"{"extensions":{}}"#, "query"),
            (r#"{"query":1}"#, "query"),
            (r#"{"query":"{ a }","variables":"x"}"#, "variables"),
            (r#"{"query":"{ a }","operationName":7}"#, "operationName"),
            (r#"{"query":"{ a }","extensions":[]}"#, "extensions"),
        ] {
            let error = parse_body(body.as_bytes()).unwrap_err();
            assert!(
                matches!(&error, GatewayError::BadUserInput { field: Some(field), .. } if field == parameter),
                "{body}: {error:?}"
            );
        }
        assert!(parse_body(b"query { a }").is_err());
    }
}
