//! The one place where failures become HTTP statuses and gRPC codes.
//!
//! Application code returns [`AppError`]; `api` renders it as the error envelope
//! `{"error":{"code","message","traceId"}}` and `gateway` as a `tonic::Status`.

use crate::store::StoreError;

/// The kind of a failure, independent of the protocol that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or a value is out of range.
    InvalidArgument,
    /// The request body is not in a media type the endpoint accepts (JSON).
    UnsupportedMediaType,
    /// The request body is larger than the server accepts.
    PayloadTooLarge,
    /// The client did not send the request (its body) in time.
    RequestTimeout,
    /// The endpoint exists but not with this method.
    MethodNotAllowed,
    /// No or unknown credentials.
    Unauthenticated,
    /// Known caller, not allowed.
    PermissionDenied,
    /// The named thing does not exist.
    NotFound,
    /// The thing exists already or conflicts with stored state.
    Conflict,
    /// The request is valid but the current state does not allow it.
    FailedPrecondition,
    /// The caller made too many requests of a rate-limited kind; retry later.
    TooManyRequests,
    /// A dependency (the store) is not reachable right now.
    Unavailable,
    /// A bug or an unexpected failure; details are logged, not returned.
    Internal,
}

impl ErrorKind {
    /// The HTTP status for this kind.
    pub fn http_status(self) -> http::StatusCode {
        use http::StatusCode;
        match self {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The kind and code for an error status that did not come from an [`AppError`]
    /// (axum's own rejections, the router's 404 and 405), so that it can still leave
    /// as the envelope.
    pub fn for_http_status(status: http::StatusCode) -> (ErrorKind, &'static str) {
        use http::StatusCode;
        match status {
            StatusCode::UNAUTHORIZED => (ErrorKind::Unauthenticated, "unauthenticated"),
            StatusCode::FORBIDDEN => (ErrorKind::PermissionDenied, "forbidden"),
            StatusCode::NOT_FOUND => (ErrorKind::NotFound, "not_found"),
            StatusCode::METHOD_NOT_ALLOWED => (ErrorKind::MethodNotAllowed, "method_not_allowed"),
            StatusCode::REQUEST_TIMEOUT => (ErrorKind::RequestTimeout, "request_timeout"),
            StatusCode::CONFLICT => (ErrorKind::Conflict, "conflict"),
            StatusCode::PAYLOAD_TOO_LARGE => (ErrorKind::PayloadTooLarge, "payload_too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (ErrorKind::UnsupportedMediaType, "unsupported_media_type")
            }
            StatusCode::UNPROCESSABLE_ENTITY => {
                (ErrorKind::FailedPrecondition, "failed_precondition")
            }
            StatusCode::SERVICE_UNAVAILABLE => (ErrorKind::Unavailable, "unavailable"),
            StatusCode::TOO_MANY_REQUESTS => (ErrorKind::TooManyRequests, "rate_limited"),
            status if status.is_client_error() => (ErrorKind::InvalidArgument, "invalid_request"),
            _ => (ErrorKind::Internal, "internal"),
        }
    }

    /// The gRPC code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::InvalidArgument | ErrorKind::UnsupportedMediaType => Code::InvalidArgument,
            ErrorKind::PayloadTooLarge => Code::ResourceExhausted,
            ErrorKind::RequestTimeout => Code::DeadlineExceeded,
            ErrorKind::MethodNotAllowed => Code::Unimplemented,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Conflict => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::TooManyRequests => Code::ResourceExhausted,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

/// A failure to report to a caller: a kind, a stable snake_case code and a message
/// fit for the caller (never a secret, never an internal detail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    /// How it maps to protocols.
    pub kind: ErrorKind,
    /// Stable machine-readable code, e.g. `join_token_used`.
    pub code: &'static str,
    /// Human-readable, lowercase, no trailing period.
    pub message: String,
}

impl AppError {
    /// A new error.
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        AppError {
            kind,
            code,
            message: message.into(),
        }
    }

    /// `invalid_argument` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        AppError::new(ErrorKind::InvalidArgument, "invalid_argument", message)
    }

    /// `not_found` for an entity and key.
    pub fn not_found(entity: &str, key: &str) -> Self {
        AppError::new(
            ErrorKind::NotFound,
            "not_found",
            format!("{entity} `{key}` not found"),
        )
    }

    /// An internal error; the cause is logged here, once, with its whole chain.
    pub fn internal(context: &str, cause: &(dyn std::error::Error + 'static)) -> Self {
        tracing::error!(error = %ErrorChain(cause), "{context}");
        AppError::new(ErrorKind::Internal, "internal", "internal error")
    }

    /// As a `tonic::Status`.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.kind.grpc_code(), self.message.clone())
    }
}

impl From<AppError> for tonic::Status {
    fn from(error: AppError) -> Self {
        error.to_status()
    }
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::NotFound { entity, key } => AppError::not_found(entity, key),
            StoreError::Conflict { entity, key } => AppError::new(
                ErrorKind::Conflict,
                "conflict",
                format!("{entity} `{key}` already exists"),
            ),
            StoreError::Database { source, .. } if is_storage_full(source) => {
                tracing::error!(error = %ErrorChain(&error), "the database's storage is full");
                AppError::new(
                    ErrorKind::Unavailable,
                    "storage_full",
                    "the database's storage is full: nothing was stored; retry once space is freed",
                )
            }
            StoreError::Database { source, .. } if is_unreachable(source) => {
                tracing::error!(error = %ErrorChain(&error), "the database is unreachable");
                AppError::new(
                    ErrorKind::Unavailable,
                    "store_unavailable",
                    "the database does not answer; retry later",
                )
            }
            _ => AppError::internal("store operation failed", &error),
        }
    }
}

/// Whether the database could not be reached (no connection within the pool's acquire
/// timeout, or the connection failed) or is going down or coming up (PostgreSQL's
/// connection exceptions, class `08`, and `admin_shutdown`, `crash_shutdown`,
/// `cannot_connect_now`): an outage, not a bug.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Whether the database refused a write for want of space: SQLite's `SQLITE_FULL` (13),
/// PostgreSQL's `disk_full` (53100). Not a bug but the operator's to fix, and nothing
/// was stored: the client may retry once space is freed.
fn is_storage_full(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(database) => {
            matches!(database.code().as_deref(), Some("13" | "53100"))
        }
        _ => false,
    }
}

/// Displays an error with its sources, `a: b: c`.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_error_statuses_keep_their_status() {
        for code in [400, 401, 403, 404, 405, 408, 409, 413, 415, 422, 500, 503] {
            let status = http::StatusCode::from_u16(code).expect("a status");
            let (kind, _) = ErrorKind::for_http_status(status);
            assert_eq!(kind.http_status(), status);
        }
    }

    /// A driver error with a given code, as SQLite and PostgreSQL report them.
    #[derive(Debug)]
    struct Coded(&'static str);

    impl std::fmt::Display for Coded {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "database error {}", self.0)
        }
    }

    impl std::error::Error for Coded {}

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            "database or disk is full"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn from_driver(source: sqlx::Error) -> AppError {
        AppError::from(StoreError::Database {
            op: "creating an environment",
            source,
        })
    }

    #[test]
    fn a_full_disk_is_503_storage_full_and_an_outage_503_store_unavailable() {
        for code in ["13", "53100"] {
            let error = from_driver(sqlx::Error::Database(Box::new(Coded(code))));
            assert_eq!(error.kind, ErrorKind::Unavailable, "{code}");
            assert_eq!(error.code, "storage_full", "{code}");
        }
        for error in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::Database(Box::new(Coded("57P01"))),
            sqlx::Error::Database(Box::new(Coded("08006"))),
        ] {
            let error = from_driver(error);
            assert_eq!(
                (error.kind, error.code),
                (ErrorKind::Unavailable, "store_unavailable")
            );
        }
        let other = from_driver(sqlx::Error::Database(Box::new(Coded("19"))));
        assert_eq!(other.kind, ErrorKind::Internal);
    }
}
