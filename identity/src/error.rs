//! The one error type of identity's HTTP boundary, and its mapping to problem+json.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use platform::auth::AuthError;
use platform::problem::Problem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Field name → what is wrong with it.
    #[error("invalid input")]
    Invalid(Vec<(&'static str, String)>),
    #[error("email is already registered")]
    EmailTaken,
    /// Wrong password and unknown email alike: the response must not tell them apart.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Unknown, spent, expired or revoked: the client must log in again.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    #[error("too many failed logins")]
    Throttled { retry_after: Duration },
    /// Every password-hashing slot stayed busy for too long.
    #[error("too busy to check passwords")]
    Busy,
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.into())
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        match error {
            Error::Invalid(fields) => {
                let mut fields = fields.into_iter();
                match fields.next() {
                    None => Problem::bad_request("invalid input"),
                    Some((field, message)) => fields
                        .fold(Problem::invalid_field(field, message), |p, (f, m)| p.with_field_error(f, m)),
                }
            }
            Error::EmailTaken => Problem::conflict("an account with this email already exists"),
            Error::InvalidCredentials => Problem::unauthorized("invalid credentials"),
            Error::InvalidRefreshToken => Problem::unauthorized("invalid refresh token"),
            Error::Throttled { retry_after } => {
                // Round up: a client that waits exactly Retry-After must not be refused again.
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Problem::too_many_requests(seconds)
            }
            Error::Busy => Problem::unavailable("the service is busy, try again shortly"),
            Error::Unauthenticated(error) => error.into(),
            Error::Internal(error) => {
                tracing::error!(error = %format!("{error:#}"), "request failed");
                Problem::internal()
            }
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::http::{StatusCode, header};

    use super::*;

    #[test]
    fn every_invalid_field_is_named() {
        let problem =
            Problem::from(Error::Invalid(vec![("email", "bad".into()), ("password", "short".into())]));
        assert_eq!(problem.status, 400);
        assert_eq!(problem.errors.len(), 2);
        assert_eq!(problem.errors["password"], "short");
    }

    #[test]
    fn throttling_rounds_retry_after_up() {
        let response = Error::Throttled { retry_after: Duration::from_millis(2_100) }.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn internal_errors_say_nothing_about_their_cause() {
        let problem = Problem::from(Error::Internal(anyhow::anyhow!("password column missing")));
        assert_eq!(problem.status, 500);
        assert!(!problem.to_string().contains("password column"));
    }
}
