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
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::FailedPrecondition => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::InvalidArgument => Code::InvalidArgument,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Conflict => Code::AlreadyExists,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
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
            _ => AppError::internal("store operation failed", &error),
        }
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
