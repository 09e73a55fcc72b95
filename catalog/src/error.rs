//! The catalog's one error type, and its mapping to gRPC status codes (the only place that maps).

use std::sync::Arc;

use platform::auth::AuthError;
use tonic::{Code, Status};

use crate::domain::{FieldError, HoldStatus};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("concert not found")]
    ConcertNotFound,
    #[error("no seats are held for this order")]
    HoldNotFound,
    #[error("not enough seats available")]
    SoldOut,
    #[error("order_id: already holds seats for another concert or quantity")]
    HoldMismatch,
    #[error("the hold is {}", .0.as_str())]
    HoldNotActive(HoldStatus),
    #[error("the hold has expired")]
    HoldLapsed,
    #[error(transparent)]
    Unauthenticated(AuthError),
    #[error("this operation needs the admin role")]
    Forbidden,
    /// A valid service token without the scope the call needs.
    #[error("this operation needs the {0} scope")]
    MissingScope(&'static str),
    /// Shared because one database failure can answer several coalesced requests.
    #[error(transparent)]
    Database(Arc<sqlx::Error>),
}

impl From<sqlx::Error> for CatalogError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(Arc::new(error))
    }
}

impl From<AuthError> for CatalogError {
    fn from(error: AuthError) -> Self {
        Self::Unauthenticated(error)
    }
}

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Self {
        let code = match &error {
            CatalogError::Invalid(_) => Code::InvalidArgument,
            CatalogError::ConcertNotFound | CatalogError::HoldNotFound => Code::NotFound,
            CatalogError::SoldOut => Code::ResourceExhausted,
            CatalogError::HoldMismatch => Code::AlreadyExists,
            CatalogError::HoldNotActive(_) | CatalogError::HoldLapsed => Code::FailedPrecondition,
            CatalogError::Unauthenticated(AuthError::KeysUnavailable(_)) => {
                tracing::error!(error = %error, "cannot verify access tokens");
                return Status::unavailable("cannot verify credentials right now");
            }
            CatalogError::Unauthenticated(_) => Code::Unauthenticated,
            CatalogError::Forbidden | CatalogError::MissingScope(_) => Code::PermissionDenied,
            CatalogError::Database(_) => {
                // Details stay in the log; callers learn only that it was not their fault.
                tracing::error!(error = %error, "database error");
                return Status::internal("internal error");
            }
        };
        Status::new(code, error.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_code() {
        let cases = [
            (CatalogError::Invalid(FieldError::new("title", "must not be empty")), Code::InvalidArgument),
            (CatalogError::ConcertNotFound, Code::NotFound),
            (CatalogError::SoldOut, Code::ResourceExhausted),
            (CatalogError::HoldMismatch, Code::AlreadyExists),
            (CatalogError::HoldNotActive(HoldStatus::Released), Code::FailedPrecondition),
            (CatalogError::Unauthenticated(AuthError::MissingToken), Code::Unauthenticated),
            (CatalogError::Forbidden, Code::PermissionDenied),
            (CatalogError::from(sqlx::Error::RowNotFound), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn validation_messages_start_with_the_field() {
        let status = Status::from(CatalogError::Invalid(FieldError::new("title", "must not be empty")));
        assert_eq!(status.message(), "title: must not be empty");
        assert_eq!(Status::from(CatalogError::from(sqlx::Error::PoolTimedOut)).message(), "internal error");
    }
}
