//! The error envelope, JSON bodies and caller authentication for the REST API.
//!
//! Every error leaves as `{"error":{"code":"snake_case","message":"…","traceId":"…"}}`
//! with the status [`ErrorKind::http_status`] gives; the trace id is also sent as the
//! `x-trace-id` header of every response.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::domain::{Role, User};
use crate::error::{AppError, ErrorKind};

tokio::task_local! {
    /// The trace id of the request being served.
    pub static TRACE_ID: String;
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Stable snake_case code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Id to find this request in the server's logs.
    pub trace_id: String,
}

/// An [`AppError`] on its way to becoming an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        ApiError(error)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let trace_id = TRACE_ID.try_with(Clone::clone).unwrap_or_default();
        let status = self.0.kind.http_status();
        let body = ErrorEnvelope {
            error: ErrorBody {
                code: self.0.code.to_owned(),
                message: self.0.message,
                trace_id,
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body whose rejections use the error envelope (400 for malformed
/// JSON or a body that does not match the schema).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                use axum::extract::rejection::JsonRejection;
                let code = match &rejection {
                    JsonRejection::JsonSyntaxError(_) => "malformed_json",
                    JsonRejection::JsonDataError(_) => "invalid_body",
                    JsonRejection::MissingJsonContentType(_) => "unsupported_media_type",
                    _ => "invalid_body",
                };
                Err(ApiError(AppError::new(
                    ErrorKind::InvalidArgument,
                    code,
                    rejection.body_text(),
                )))
            }
        }
    }
}

/// An optional JSON body: absent when the request has no `content-type`.
impl<T, S> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if !req.headers().contains_key(http::header::CONTENT_TYPE) {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// What a role lets a caller do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Read anything.
    Read,
    /// Create and change releases, environments, targets; promote and roll back.
    Operate,
    /// Approve or reject promotions.
    Approve,
    /// Users, agents, join tokens, registries.
    Administer,
}

/// Whether a role grants a permission. `admin` grants everything; the others are
/// disjoint apart from reading, so that approving and operating can be separated.
pub fn role_allows(role: Role, permission: Permission) -> bool {
    matches!(
        (role, permission),
        (Role::Admin, _)
            | (_, Permission::Read)
            | (Role::Operator, Permission::Operate)
            | (Role::Approver, Permission::Approve)
    )
}

/// The authenticated user of a request (`Authorization: Bearer <token>`).
#[derive(Debug, Clone)]
pub struct Caller(pub User);

impl Caller {
    /// 403 unless one of the caller's roles grants `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self
            .0
            .roles
            .iter()
            .any(|role| role_allows(*role, permission))
        {
            Ok(())
        } else {
            Err(ApiError(AppError::new(
                ErrorKind::PermissionDenied,
                "forbidden",
                format!(
                    "user `{}` may not do this ({permission:?} permission needed)",
                    self.0.name
                ),
            )))
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let unauthenticated = |message: &str| {
            ApiError(AppError::new(
                ErrorKind::Unauthenticated,
                "unauthenticated",
                message,
            ))
        };
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("missing bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| unauthenticated("authorization must be `Bearer <token>`"))?;
        match app.authenticate(token).await? {
            Some(user) => Ok(Caller(user)),
            None => Err(unauthenticated("unknown or revoked token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separation_of_duties_between_operator_and_approver() {
        assert!(role_allows(Role::Operator, Permission::Operate));
        assert!(!role_allows(Role::Operator, Permission::Approve));
        assert!(role_allows(Role::Approver, Permission::Approve));
        assert!(!role_allows(Role::Approver, Permission::Operate));
        assert!(!role_allows(Role::Viewer, Permission::Operate));
        assert!(role_allows(Role::Viewer, Permission::Read));
        assert!(role_allows(Role::Admin, Permission::Administer));
        assert!(!role_allows(Role::Operator, Permission::Administer));
    }
}
