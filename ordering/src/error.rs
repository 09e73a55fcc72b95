//! The one error type of ordering's HTTP boundary, and its mapping to problem+json.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use platform::problem::Problem;

use crate::domain::{IdempotencyKey, InvalidTransition, PendingLimitExceeded};
use crate::payments::PaymentError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// The same Idempotency-Key was used before with a different request body.
    #[error("idempotency key reused with a different request")]
    IdempotencyKeyReused,
    /// Another request with the same Idempotency-Key is still being processed.
    #[error("a request with this idempotency key is in progress")]
    RequestInProgress,
    /// Unknown, or another buyer's: the two are not told apart.
    #[error("order not found")]
    OrderNotFound,
    #[error("concert not found")]
    ConcertNotFound,
    #[error("not enough seats left")]
    SoldOut,
    /// The buyer already holds as much in unpaid orders as one buyer may.
    #[error(transparent)]
    PendingLimit(#[from] PendingLimitExceeded),
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// The seat hold expired (or was released) before the order could be confirmed.
    #[error("the seat hold has lapsed")]
    HoldLapsed,
    #[error("the payment was declined")]
    PaymentDeclined,
    #[error("the payment token is not valid")]
    InvalidPaymentToken,
    /// A dependency (catalog, the payment provider, the database pool) cannot answer now.
    #[error("{0} is unavailable")]
    Unavailable(Dependency),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What ordering depends on, for its 503s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// Ordering's own database: ordering itself cannot work.
    Database,
    Catalog,
    PaymentProvider,
    /// Identity, which issues the service token catalog's seat calls need.
    Identity,
}

impl Dependency {
    /// The problem `type` of a 503 caused by this dependency. Another service's outage gets its own
    /// type (`catalog-unavailable`), so that a caller (the gateway) can tell "ordering answered: its
    /// dependency is down" from "ordering is unwell" and not count the first against ordering's
    /// circuit breaker. Ordering's own database is plain `unavailable`: that is ordering unwell.
    pub fn problem_type(self) -> Option<&'static str> {
        match self {
            Self::Database => None,
            Self::Catalog => Some("catalog-unavailable"),
            Self::PaymentProvider => Some("payment-provider-unavailable"),
            Self::Identity => Some("identity-unavailable"),
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Database => "the database",
            Self::Catalog => "the catalog",
            Self::PaymentProvider => "the payment provider",
            Self::Identity => "the identity service",
        })
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match error {
            // The pool is exhausted or Postgres is unreachable: a retry later can succeed.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => Self::Unavailable(Dependency::Database),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<PaymentError> for Error {
    fn from(error: PaymentError) -> Self {
        match error {
            PaymentError::Declined => Self::PaymentDeclined,
            PaymentError::InvalidToken => Self::InvalidPaymentToken,
            PaymentError::Unavailable(reason) => {
                tracing::warn!(error = %reason, "payment provider unavailable");
                Self::Unavailable(Dependency::PaymentProvider)
            }
        }
    }
}

impl Error {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }

    /// Answers that are the outcome of the request itself, so an idempotent replay must repeat them.
    /// The others (unavailable, internal, in progress) say nothing happened: a retry may do better.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::ConcertNotFound | Self::SoldOut | Self::HoldLapsed)
    }

    pub fn problem(&self) -> Problem {
        match self {
            Self::Invalid { field, message } => Problem::invalid_field(field, message.clone()),
            Self::IdempotencyKeyReused => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("this {} was already used with a different request body", IdempotencyKey::HEADER),
            )
            .with_type("idempotency-key-reused"),
            Self::RequestInProgress => {
                let mut problem = Problem::conflict(format!(
                    "a request with this {} is still in progress; retry shortly",
                    IdempotencyKey::HEADER
                ))
                .with_type("request-in-progress");
                problem.retry_after = Some(1);
                problem
            }
            Self::OrderNotFound => Problem::not_found("no such order"),
            Self::ConcertNotFound => Problem::not_found("no such concert").with_type("concert-not-found"),
            Self::SoldOut => {
                Problem::conflict("not enough seats left for this concert").with_type("sold-out")
            }
            // A state of the buyer's account, not an answer about this request: the buyer pays for
            // or cancels an order, then retries (so it is not final and not stored for the key).
            Self::PendingLimit(limit) => {
                let problem = Problem::conflict(limit.to_string()).with_type("pending-limit");
                match limit {
                    PendingLimitExceeded::Orders { .. } => problem,
                    PendingLimitExceeded::Seats { .. } => {
                        problem.with_field_error("quantity", limit.to_string())
                    }
                }
            }
            Self::InvalidTransition(transition) => {
                Problem::conflict(transition.to_string()).with_type("invalid-transition")
            }
            Self::HoldLapsed => {
                Problem::conflict("the seat hold for this order has lapsed").with_type("hold-lapsed")
            }
            Self::PaymentDeclined => Problem::new(StatusCode::PAYMENT_REQUIRED, "the payment was declined")
                .with_type("payment-declined"),
            Self::InvalidPaymentToken => {
                Problem::invalid_field("paymentToken", "is not a valid payment token")
            }
            Self::Unavailable(dependency) => {
                let problem = Problem::unavailable(format!("{dependency} is unavailable, try again shortly"));
                match dependency.problem_type() {
                    Some(kind) => problem.with_type(kind),
                    None => problem,
                }
            }
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                Problem::internal()
            }
        }
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        error.problem()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        self.problem().into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;

    #[test]
    fn each_error_has_its_status() {
        let cases = [
            (Error::invalid("quantity", "must be between 1 and 10"), 400),
            (Error::IdempotencyKeyReused, 422),
            (Error::RequestInProgress, 409),
            (Error::OrderNotFound, 404),
            (Error::ConcertNotFound, 404),
            (Error::SoldOut, 409),
            (PendingLimitExceeded::Orders { max: 5 }.into(), 409),
            (InvalidTransition { from: OrderStatus::Confirmed, to: OrderStatus::Confirmed }.into(), 409),
            (Error::HoldLapsed, 409),
            (Error::PaymentDeclined, 402),
            (Error::InvalidPaymentToken, 400),
            (Error::Unavailable(Dependency::Catalog), 503),
            (Error::Unavailable(Dependency::Database), 503),
            (Error::Internal(anyhow::anyhow!("secret detail")), 500),
        ];
        for (error, status) in cases {
            let problem = error.problem();
            assert_eq!(problem.status, status, "{error}");
            assert!(!problem.detail.unwrap_or_default().contains("secret"));
        }
    }

    #[test]
    fn a_dependency_outage_names_the_dependency_in_its_type() {
        let catalog = Error::Unavailable(Dependency::Catalog).problem();
        assert_eq!(catalog.kind, "https://ticketflow.dev/problems/catalog-unavailable");
        let payments = Error::Unavailable(Dependency::PaymentProvider).problem();
        assert_eq!(payments.kind, "https://ticketflow.dev/problems/payment-provider-unavailable");
        // Without its database ordering itself is unwell: the generic type.
        let database = Error::Unavailable(Dependency::Database).problem();
        assert_eq!(database.kind, "https://ticketflow.dev/problems/unavailable");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let problem = Error::InvalidPaymentToken.problem();
        assert!(problem.errors.contains_key("paymentToken"));
    }
}
