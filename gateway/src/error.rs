//! The one place errors become GraphQL errors.
//!
//! Everything that can go wrong in a resolver is a [`GatewayError`]; downstream failures are mapped
//! into it here (gRPC codes from catalog, problem+json statuses from identity and ordering, transport
//! errors), and [`GatewayError::describe`] alone decides what the client sees (`extensions.code`
//! and friends); the schema's error extension applies it to every error a resolver returns. Internal errors are logged with the trace id; the client sees
//! `INTERNAL` and that trace id, never the cause.

use std::fmt;

use async_graphql::ErrorExtensionValues;
use platform::problem::Problem;
use tonic::Code;

/// Which service behind the gateway an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Identity,
    Ordering,
    Catalog,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Ordering => "ordering",
            Self::Catalog => "catalog",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `extensions.code` values of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthenticated,
    Forbidden,
    NotFound,
    BadUserInput,
    /// The resource is not in a state that allows the change (an invalid order transition, a
    /// lapsed hold, a concurrent change that won): re-read it and decide again.
    Conflict,
    SoldOut,
    PaymentDeclined,
    RateLimited,
    /// Apollo's automatic persisted queries: the hash is not known (yet); send the query with it.
    PersistedQueryNotFound,
    /// Trusted documents are enforced and this document is not one of them.
    PersistedQueryNotAllowed,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::BadUserInput => "BAD_USER_INPUT",
            Self::Conflict => "CONFLICT",
            Self::SoldOut => "SOLD_OUT",
            Self::PaymentDeclined => "PAYMENT_DECLINED",
            Self::RateLimited => "RATE_LIMITED",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::PersistedQueryNotAllowed => "PERSISTED_QUERY_NOT_ALLOWED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Internal => "INTERNAL",
        }
    }
}

/// Why a GraphQL operation (or one field of it) failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{message}")]
    BadUserInput { field: Option<String>, message: String },
    /// A change the resource's current state does not allow.
    #[error("{0}")]
    Conflict(String),
    #[error("not enough seats left")]
    SoldOut,
    #[error("{0}")]
    PaymentDeclined(String),
    #[error("too many requests, try again in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A WebSocket connection asked for more live subscriptions than it may hold.
    #[error("at most {max} subscriptions may be open on one connection")]
    TooManySubscriptions { max: usize },
    /// Too many WebSockets open from one client address.
    #[error("{message}")]
    TooManySockets { message: String },
    /// The message is the one Apollo clients look for before sending the full query.
    #[error("PersistedQueryNotFound")]
    PersistedQueryNotFound,
    #[error("this operation is not one of the gateway's trusted documents")]
    PersistedQueryNotAllowed,
    #[error("{0} is unavailable, try again later")]
    Unavailable(Service),
    /// Something that should not happen; the cause is logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl GatewayError {
    pub fn unauthenticated() -> Self {
        Self::Unauthenticated("sign in to do this".to_owned())
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::BadUserInput { field: Some(field.to_owned()), message: message.into() }
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::BadUserInput { .. } => ErrorCode::BadUserInput,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::SoldOut => ErrorCode::SoldOut,
            Self::PaymentDeclined(_) => ErrorCode::PaymentDeclined,
            Self::RateLimited { .. } | Self::TooManySubscriptions { .. } | Self::TooManySockets { .. } => {
                ErrorCode::RateLimited
            }
            Self::PersistedQueryNotFound => ErrorCode::PersistedQueryNotFound,
            Self::PersistedQueryNotAllowed => ErrorCode::PersistedQueryNotAllowed,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message and `extensions` the client sees; logs the cause of internal errors.
    pub fn describe(&self) -> (String, ErrorExtensionValues) {
        let code = self.code();
        metrics::counter!("graphql_errors_total", "code" => code.as_str()).increment(1);
        let mut extensions = ErrorExtensionValues::default();
        extensions.set("code", code.as_str());
        match self {
            Self::Internal(cause) => {
                let trace_id = current_trace_id();
                tracing::error!(error = format!("{cause:#}"), trace.id = %trace_id, "internal error");
                extensions.set("traceId", trace_id);
            }
            Self::BadUserInput { field: Some(field), .. } => extensions.set("field", field.as_str()),
            Self::RateLimited { retry_after_secs } => extensions.set("retryAfter", *retry_after_secs),
            Self::Unavailable(service) => {
                tracing::warn!(service = service.name(), "downstream unavailable");
                extensions.set("service", service.name());
            }
            _ => {}
        }
        (self.to_string(), extensions)
    }

    /// The GraphQL error the client sees, for places that need an `async_graphql::Error` directly.
    /// Resolvers just return `Result<_, GatewayError>`: the error extension describes those.
    pub fn into_graphql(self) -> async_graphql::Error {
        let (message, extensions) = self.describe();
        let mut error = async_graphql::Error::new(message);
        error.extensions = Some(extensions);
        error
    }

    /// A catalog gRPC error. Catalog puts the offending field first in INVALID_ARGUMENT messages
    /// (`"title: must not be empty"`).
    pub fn from_status(status: &tonic::Status) -> Self {
        match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange => {
                let message = status.message();
                match message.split_once(": ") {
                    Some((field, rest)) if is_field_name(field) => Self::invalid(&camel_case(field), rest),
                    _ => Self::BadUserInput { field: None, message: message.to_owned() },
                }
            }
            Code::NotFound => Self::NotFound("concert"),
            Code::Unauthenticated => Self::Unauthenticated(status.message().to_owned()),
            Code::PermissionDenied => Self::Forbidden("you may not do this".to_owned()),
            Code::ResourceExhausted => Self::SoldOut,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Self::Unavailable(Service::Catalog)
            }
            _ => {
                Self::internal(anyhow::anyhow!("catalog answered {:?}: {}", status.code(), status.message()))
            }
        }
    }

    /// A problem+json answer from identity or ordering. `what` names the resource for 404s.
    pub fn from_problem(service: Service, what: &'static str, problem: &Problem) -> Self {
        let detail = problem.detail.clone().unwrap_or_else(|| problem.title.clone());
        let kind = problem.kind.rsplit('/').next().unwrap_or_default();
        let first_field =
            problem.errors.iter().next().map(|(field, message)| (graphql_field(field), message));
        match (problem.status, kind) {
            (422, "idempotency-key-reused") => Self::invalid("idempotencyKey", detail),
            (400 | 422, _) => match first_field {
                Some((field, message)) => Self::invalid(&field, message.clone()),
                None => Self::BadUserInput { field: None, message: detail },
            },
            (401, _) => Self::Unauthenticated(detail),
            (402, _) => Self::PaymentDeclined(detail),
            (403, _) => Self::Forbidden(detail),
            (404, "concert-not-found") => Self::NotFound("concert"),
            (404, _) => Self::NotFound(what),
            (409, "sold-out") => Self::SoldOut,
            // The buyer holds as many unpaid orders or seats as one buyer may: pay or cancel first.
            (409, "pending-limit") => {
                Self::BadUserInput { field: first_field.map(|(field, _)| field), message: detail }
            }
            // The same idempotency key is being processed right now: a moment later it will not be.
            (409, "request-in-progress") => Self::Unavailable(service),
            // The order is not in a state that allows the change (confirming a cancelled or expired
            // order, cancelling twice, a concurrent change that won): nothing is wrong with the
            // input, the state moved on.
            (409, "invalid-transition" | "hold-lapsed") => Self::Conflict(detail),
            // Email taken: the client asked for something that cannot be done as asked.
            (409, _) => Self::BadUserInput { field: first_field.map(|(field, _)| field), message: detail },
            (429, _) => Self::RateLimited { retry_after_secs: problem.retry_after.unwrap_or(1) },
            // Ordering answered, and says catalog is what is down.
            (503, "catalog-unavailable") => Self::Unavailable(Service::Catalog),
            (502..=504, _) => Self::Unavailable(service),
            _ => Self::internal(anyhow::anyhow!("{service} answered {problem}")),
        }
    }

    /// Whether a 503 answer is the service saying that one of *its* dependencies is down (a
    /// problem whose type is `…/problems/<dependency>-unavailable`, e.g. ordering's
    /// `catalog-unavailable`), rather than that it is unwell itself (plain `unavailable`, or a body
    /// that is not a problem at all, as from a proxy in front of it).
    pub fn is_dependency_outage(status: u16, body: &[u8]) -> bool {
        status == 503
            && serde_json::from_slice::<Problem>(body).is_ok_and(|problem| {
                let kind = problem.kind.rsplit('/').next().unwrap_or_default();
                kind.len() > "-unavailable".len() && kind.ends_with("-unavailable")
            })
    }

    /// A non-2xx HTTP answer whose body may or may not be a problem document.
    pub fn from_http(service: Service, what: &'static str, status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<Problem>(body) {
            Ok(problem) => Self::from_problem(service, what, &Problem { status, ..problem }),
            Err(_) => {
                let problem = Problem::new(
                    axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
                );
                Self::from_problem(service, what, &problem)
            }
        }
    }

    /// A request to identity or ordering that got no HTTP answer.
    pub fn from_transport(service: Service, error: &reqwest::Error) -> Self {
        if error.is_connect() || error.is_timeout() || error.is_request() {
            Self::Unavailable(service)
        } else {
            Self::internal(anyhow::anyhow!("calling {service}: {error}"))
        }
    }
}

/// The trace id of the current span, from its W3C `traceparent` (empty without one).
pub fn current_trace_id() -> String {
    platform::trace_context::current_headers()
        .get("traceparent")
        .and_then(|traceparent| traceparent.split('-').nth(1).map(str::to_owned))
        .unwrap_or_default()
}

fn is_field_name(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The GraphQL spelling of a field a downstream service named: `price_cents` → `priceCents`,
/// `Idempotency-Key` (a header) → `idempotencyKey`.
fn graphql_field(field: &str) -> String {
    if field.eq_ignore_ascii_case("idempotency-key") {
        "idempotencyKey".to_owned()
    } else {
        camel_case(field)
    }
}

/// `price_cents` → `priceCents`: gRPC speaks in proto field names, clients in GraphQL ones.
fn camel_case(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn extensions(error: GatewayError) -> (String, serde_json::Value) {
        let error = error.into_graphql();
        let server = error.into_server_error(async_graphql::Pos::default());
        let json = serde_json::to_value(&server).unwrap();
        (json["message"].as_str().unwrap_or_default().to_owned(), json["extensions"].clone())
    }

    #[test]
    fn grpc_codes_map_to_contract_codes() {
        let cases = [
            (Code::NotFound, ErrorCode::NotFound),
            (Code::Unauthenticated, ErrorCode::Unauthenticated),
            (Code::PermissionDenied, ErrorCode::Forbidden),
            (Code::ResourceExhausted, ErrorCode::SoldOut),
            (Code::InvalidArgument, ErrorCode::BadUserInput),
            (Code::FailedPrecondition, ErrorCode::BadUserInput),
            (Code::Unavailable, ErrorCode::Unavailable),
            (Code::DeadlineExceeded, ErrorCode::Unavailable),
            (Code::Internal, ErrorCode::Internal),
            (Code::Unknown, ErrorCode::Internal),
        ];
        for (code, expected) in cases {
            assert_eq!(
                GatewayError::from_status(&tonic::Status::new(code, "x")).code(),
                expected,
                "{code:?}"
            );
        }
    }

    #[test]
    fn invalid_argument_names_the_field_in_graphql_spelling() {
        let error = GatewayError::from_status(&tonic::Status::invalid_argument("price_cents: must be >= 0"));
        let (message, extensions) = extensions(error);
        assert_eq!(extensions["code"], "BAD_USER_INPUT");
        assert_eq!(extensions["field"], "priceCents");
        assert_eq!(message, "must be >= 0");
    }

    #[test]
    fn problem_statuses_map_to_contract_codes() {
        let cases = [
            (StatusCode::BAD_REQUEST, ErrorCode::BadUserInput),
            (StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated),
            (StatusCode::PAYMENT_REQUIRED, ErrorCode::PaymentDeclined),
            (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            (StatusCode::CONFLICT, ErrorCode::BadUserInput),
            (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::BadUserInput),
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable),
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        ];
        for (status, expected) in cases {
            let problem = Problem::new(status, "x");
            assert_eq!(
                GatewayError::from_problem(Service::Ordering, "order", &problem).code(),
                expected,
                "{status}"
            );
        }
    }

    #[test]
    fn an_order_whose_state_moved_on_is_a_conflict() {
        for kind in ["invalid-transition", "hold-lapsed"] {
            let problem =
                Problem::conflict("an order that is Cancelled cannot become Cancelled").with_type(kind);
            let (message, extensions) =
                extensions(GatewayError::from_problem(Service::Ordering, "order", &problem));
            assert_eq!(extensions["code"], "CONFLICT", "{kind}");
            assert_eq!(message, "an order that is Cancelled cannot become Cancelled");
        }
        let taken = Problem::conflict("an account with this email already exists");
        assert_eq!(
            GatewayError::from_problem(Service::Identity, "user", &taken).code(),
            ErrorCode::BadUserInput
        );
    }

    #[test]
    fn a_sold_out_conflict_is_sold_out() {
        let problem = Problem::conflict("only 1 seat left").with_type("sold-out");
        let error = GatewayError::from_problem(Service::Ordering, "order", &problem);
        assert_eq!(error.code(), ErrorCode::SoldOut);
    }

    #[test]
    fn a_pending_limit_is_bad_user_input_naming_the_limit() {
        let problem =
            Problem::conflict("at most 5 orders may wait for payment at once").with_type("pending-limit");
        let (message, orders) = extensions(GatewayError::from_problem(Service::Ordering, "order", &problem));
        assert_eq!(orders["code"], "BAD_USER_INPUT");
        assert!(message.contains("at most 5 orders"), "{message}");
        let seats = Problem::conflict("at most 10 seats")
            .with_type("pending-limit")
            .with_field_error("quantity", "at most 10 seats");
        let (_, seats) = extensions(GatewayError::from_problem(Service::Ordering, "order", &seats));
        assert_eq!(
            (seats["code"].as_str(), seats["field"].as_str()),
            (Some("BAD_USER_INPUT"), Some("quantity"))
        );
    }

    #[test]
    fn validation_problems_keep_the_field() {
        let body = serde_json::to_vec(&Problem::invalid_field("quantity", "must be 1 to 10")).unwrap();
        let (message, extensions) =
            extensions(GatewayError::from_http(Service::Ordering, "order", 400, &body));
        assert_eq!(extensions["code"], "BAD_USER_INPUT");
        assert_eq!(extensions["field"], "quantity");
        assert_eq!(message, "must be 1 to 10");
    }

    #[test]
    fn ordering_problems_name_graphql_fields() {
        let header = Problem::invalid_field("Idempotency-Key", "this header is required");
        let (_, missing) = extensions(GatewayError::from_problem(Service::Ordering, "order", &header));
        assert_eq!(missing["field"], "idempotencyKey");
        let reused =
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "used before").with_type("idempotency-key-reused");
        let (_, reused) = extensions(GatewayError::from_problem(Service::Ordering, "order", &reused));
        assert_eq!(
            (reused["code"].as_str(), reused["field"].as_str()),
            (Some("BAD_USER_INPUT"), Some("idempotencyKey"))
        );
        let concert = Problem::not_found("no such concert").with_type("concert-not-found");
        let error = GatewayError::from_problem(Service::Ordering, "order", &concert);
        assert_eq!(error.to_string(), "concert not found");
    }

    #[test]
    fn throttling_carries_retry_after() {
        let body = serde_json::to_vec(&Problem::too_many_requests(30)).unwrap();
        let (_, extensions) = extensions(GatewayError::from_http(Service::Identity, "user", 429, &body));
        assert_eq!(extensions["code"], "RATE_LIMITED");
        assert_eq!(extensions["retryAfter"], 30);
    }

    #[test]
    fn a_dependency_outage_is_told_apart_from_the_service_being_unwell() {
        let catalog_down =
            serde_json::to_vec(&Problem::unavailable("x").with_type("catalog-unavailable")).unwrap();
        assert!(GatewayError::is_dependency_outage(503, &catalog_down));
        let (_, extensions) =
            extensions(GatewayError::from_http(Service::Ordering, "order", 503, &catalog_down));
        assert_eq!(
            (extensions["code"].as_str(), extensions["service"].as_str()),
            (Some("UNAVAILABLE"), Some("catalog"))
        );
        let payments_down =
            serde_json::to_vec(&Problem::unavailable("x").with_type("payment-provider-unavailable")).unwrap();
        assert!(GatewayError::is_dependency_outage(503, &payments_down));

        let unwell = serde_json::to_vec(&Problem::unavailable("the database is unavailable")).unwrap();
        assert!(!GatewayError::is_dependency_outage(503, &unwell));
        assert!(!GatewayError::is_dependency_outage(503, b"<html>503 Service Unavailable</html>"));
        assert!(!GatewayError::is_dependency_outage(502, &catalog_down), "only a 503 is that answer");
    }

    #[test]
    fn a_body_that_is_not_a_problem_still_maps_by_status() {
        let error = GatewayError::from_http(Service::Ordering, "order", 503, b"<html>bad gateway</html>");
        assert_eq!(error.code(), ErrorCode::Unavailable);
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let error = GatewayError::internal(anyhow::anyhow!("password=hunter2 in a stack trace"));
        let (message, extensions) = extensions(error);
        assert_eq!(message, "internal error");
        assert_eq!(extensions["code"], "INTERNAL");
        assert!(!extensions.to_string().contains("hunter2"));
    }

    #[test]
    fn unavailable_names_the_service() {
        let (_, extensions) = extensions(GatewayError::Unavailable(Service::Catalog));
        assert_eq!(extensions["code"], "UNAVAILABLE");
        assert_eq!(extensions["service"], "catalog");
    }
}
