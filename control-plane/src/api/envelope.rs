//! The error envelope, JSON bodies and query strings, and caller authentication for
//! the REST API.
//!
//! Every error leaves as `{"error":{"code":"snake_case","message":"…","traceId":"…"}}`
//! with the status [`ErrorKind::http_status`] gives; the trace id is also sent as the
//! `x-trace-id` header of every response and logged with the request. Responses that
//! axum makes itself (its rejections, the router's 404 and 405) are turned into the
//! envelope by [`ensure_envelope`], so no error leaves in another shape.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::app::App;
use crate::config::ServerConfig;
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
    /// Stable snake_case code, e.g. `not_found`; what scripts should match on.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Id to find this request in the server's logs; also the `x-trace-id` header.
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

/// Marks a response whose body is the envelope already, or an error body another
/// contract fixes (the TaskRunner `PlanErrorResponse`), which is left as it is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Enveloped;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let trace_id = TRACE_ID.try_with(Clone::clone).unwrap_or_default();
        let status = self.0.kind.http_status();
        let mut response = (status, axum::Json(envelope(&self.0, trace_id))).into_response();
        response.extensions_mut().insert(Enveloped);
        response
    }
}

fn envelope(error: &AppError, trace_id: String) -> ErrorEnvelope {
    ErrorEnvelope {
        error: ErrorBody {
            code: error.code.to_owned(),
            message: error.message.clone(),
            trace_id,
        },
    }
}

/// The envelope of `error` as JSON bytes, for a response written outside axum (the
/// listener's refusal at the connection cap).
pub fn envelope_json(error: &AppError, trace_id: &str) -> Vec<u8> {
    serde_json::to_vec(&envelope(error, trace_id.to_owned())).unwrap_or_default()
}

/// Turns an error response that is not the envelope yet (axum's own: a rejection's
/// text, an empty 404 or 405) into the envelope, keeping its status and headers (such
/// as `allow`) and using its text as the message. Must run inside [`TRACE_ID`].
pub async fn ensure_envelope(response: Response) -> Response {
    let status = response.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || response.extensions().get::<Enveloped>().is_some() {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's rejection texts are one short line; more would not be a message.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let (kind, code) = ErrorKind::for_http_status(status);
    let mut enveloped = ApiError(AppError::new(kind, code, message)).into_response();
    *enveloped.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != http::header::CONTENT_TYPE && name != http::header::CONTENT_LENGTH {
            enveloped.headers_mut().append(name, value.clone());
        }
    }
    enveloped
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body whose refusals use the error envelope: 415 unless the
/// content type is JSON, 413 over `api_max_body_bytes`, 408 when it does not arrive
/// within `api_body_read_timeout_ms`, 400 for malformed JSON (`malformed_json`) or a
/// body that does not match the schema, unknown fields included (`invalid_body`).
///
/// A handler that needs a role takes it as `Result<ApiJson<T>, ApiError>` and looks at
/// it only after [`Caller::require`]: a caller without the role is refused (403) before
/// its body is judged, so refusals do not teach it the schema.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T>
where
    Arc<App>: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = &<Arc<App> as axum::extract::FromRef<S>>::from_ref(state);
        require_json(req.headers())?;
        let limit = app.config.api_max_body_bytes;
        let bytes = read_body(req, limit, "api_max_body_bytes", &app.config).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON document taken as the bytes sent, for what is stored by content (scan reports
/// and VEX documents): refused like [`ApiJson`] (415, 408) but up to
/// `api_max_scan_bytes` (413 above it) and not parsed here.
#[derive(Debug)]
pub struct ApiDocument(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiDocument
where
    Arc<App>: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let app = &<Arc<App> as axum::extract::FromRef<S>>::from_ref(state);
        require_json(req.headers())?;
        let limit = app.config.api_max_scan_bytes;
        read_body(req, limit, "api_max_scan_bytes", &app.config)
            .await
            .map(ApiDocument)
    }
}

/// An optional JSON body: absent when the request has neither a `content-type` nor a
/// body.
impl<T: DeserializeOwned, S: Send + Sync> axum::extract::OptionalFromRequest<S> for ApiJson<T>
where
    Arc<App>: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let headers = req.headers();
        let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
            || declared_length(headers).is_some_and(|length| length > 0);
        if !headers.contains_key(http::header::CONTENT_TYPE) && !has_body {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// 415 unless the content type is `application/json` or `application/*+json`.
fn require_json(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        return Ok(());
    }
    let given = if content_type.is_empty() {
        "none".to_owned()
    } else {
        format!("`{content_type}`")
    };
    Err(ApiError(AppError::new(
        ErrorKind::UnsupportedMediaType,
        "unsupported_media_type",
        format!(
            "the body must be JSON (`content-type: application/json`); content type given: {given}"
        ),
    )))
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the whole body within `limit` bytes (the setting `limit_key`) and the
/// configured time.
async fn read_body(
    request: Request,
    limit: usize,
    limit_key: &str,
    config: &ServerConfig,
) -> Result<Bytes, ApiError> {
    let (parts, body) = request.into_parts();
    read_limited(&parts.headers, body, limit, limit_key, config).await
}

/// Reads a whole body within `limit` bytes (the setting `limit_key`) and
/// `api_body_read_timeout_ms`: 413 (before reading, when `content-length` says so),
/// 408, or 400 when it breaks off.
pub(crate) async fn read_limited(
    headers: &http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
    limit_key: &str,
    config: &ServerConfig,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError(AppError::new(
            ErrorKind::PayloadTooLarge,
            "payload_too_large",
            format!("the request body is larger than {limit} bytes (`{limit_key}`)"),
        ))
    };
    // Refused before reading: the client is not made to send what would be dropped.
    if declared_length(headers).is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| {
                ApiError(AppError::new(
                    ErrorKind::InvalidArgument,
                    "invalid_body",
                    format!("cannot read the request body: {error}"),
                ))
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    };
    let timeout = Duration::from_millis(config.api_body_read_timeout_ms);
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError(AppError::new(
                ErrorKind::RequestTimeout,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    config.api_body_read_timeout_ms
                ),
            )))
        })
}

/// Deserializes a body, naming where it went wrong (`roles[0]: …`, `unknown field
/// `colour``, `line 1 column 7`).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    use axum::extract::rejection::JsonRejection;
    axum::Json::<T>::from_bytes(bytes)
        .map(|axum::Json(value)| value)
        .map_err(|rejection| {
            let detail = std::error::Error::source(&rejection)
                .map_or_else(|| rejection.body_text(), ToString::to_string);
            let (code, what) = match rejection {
                JsonRejection::JsonSyntaxError(_) => ("malformed_json", "malformed JSON"),
                _ => ("invalid_body", "invalid request body"),
            };
            ApiError(AppError::new(
                ErrorKind::InvalidArgument,
                code,
                format!("{what}: {detail}"),
            ))
        })
}

/// A query string whose refusal is the envelope (400 `invalid_query`), not axum's
/// `text/plain`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                let detail = std::error::Error::source(&rejection)
                    .map_or_else(|| rejection.body_text(), ToString::to_string);
                ApiError(AppError::new(
                    ErrorKind::InvalidArgument,
                    "invalid_query",
                    format!("invalid query string: {detail}"),
                ))
            })
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

impl Permission {
    /// The least role that grants it (`admin` grants every one).
    pub fn role(self) -> Role {
        match self {
            Permission::Read => Role::Viewer,
            Permission::Operate => Role::Operator,
            Permission::Approve => Role::Approver,
            Permission::Administer => Role::Admin,
        }
    }
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

/// The authenticated user of a request (`Authorization: Bearer <token>`: an API token
/// or an OAuth2 access token), and the credential it used. An OAuth2 client is a user
/// named `client:<id>` holding the roles its token's `stella.*` scopes grant, so a
/// scope that does not cover a call is refused like a missing role (403).
///
/// The user's roles are those it holds in the request's tenant (the third field):
/// `X-StellaOps-Tenant`, else `default`. In `default` they are the user's own roles
/// plus its bindings there; in any other tenant its bindings there, and a caller with
/// none is refused (`403 tenant_forbidden`, the same answer for a tenant that does not
/// exist). Bindings narrowed to an environment count only through
/// [`Caller::require_in`].
#[derive(Debug, Clone)]
pub struct Caller(
    pub User,
    pub crate::auth::Credential,
    pub super::tenancy::Tenancy,
);

impl Caller {
    /// Who called, and with what.
    pub fn principal(&self) -> crate::auth::Principal {
        crate::auth::Principal {
            user: self.0.clone(),
            credential: self.1.clone(),
        }
    }
}

impl Caller {
    /// 403 unless one of the caller's roles in the tenant, or one narrowed to
    /// `environment`, grants `permission`.
    pub fn require_in(&self, permission: Permission, environment: &str) -> Result<(), ApiError> {
        let narrowed = self
            .2
            .narrowed
            .iter()
            .any(|(role, env)| env == environment && role_allows(*role, permission));
        if narrowed {
            return Ok(());
        }
        self.require(permission)
    }

    /// 403 unless the request acts in `default` and the caller's roles there grant
    /// `permission`: for what is the server's rather than a tenant's (users, tokens,
    /// clients, tenants and who may enter them).
    pub fn require_server(&self, permission: Permission) -> Result<(), ApiError> {
        if !self.2.tenant.is_default() {
            return Err(ApiError(AppError::new(
                ErrorKind::PermissionDenied,
                "forbidden",
                format!(
                    "users, tokens, clients and tenants are managed in the default tenant, not in `{}`",
                    self.2.tenant
                ),
            )));
        }
        self.require(permission)
    }

    /// The request's tenant.
    pub fn tenant(&self) -> &crate::domain::TenantId {
        &self.2.tenant
    }

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
            let roles: Vec<String> = self.0.roles.iter().map(ToString::to_string).collect();
            let message = match &self.1 {
                crate::auth::Credential::AccessToken { scopes, .. } => format!(
                    "this needs the scope stella.{}; the access token has `{}`",
                    permission.role(),
                    crate::domain::format_scopes(scopes)
                ),
                crate::auth::Credential::ApiToken(_) | crate::auth::Credential::Session => format!(
                    "this needs the {} role; you are {}",
                    permission.role(),
                    if roles.is_empty() {
                        "none".to_owned()
                    } else {
                        roles.join(" and ")
                    }
                ),
            };
            Err(ApiError(AppError::new(
                ErrorKind::PermissionDenied,
                "forbidden",
                message,
            )))
        }
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<App>: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let app = &<Arc<App> as axum::extract::FromRef<S>>::from_ref(state);
        let unauthenticated = |message: &str| {
            ApiError(AppError::new(
                ErrorKind::Unauthenticated,
                "unauthenticated",
                message,
            ))
        };
        let refused = |failure: crate::auth::AuthFailure| {
            super::auth::count_failure(app, parts, failure.reason);
            unauthenticated(&failure.message)
        };
        let Some(header) = parts.headers.get(http::header::AUTHORIZATION) else {
            return Err(refused(crate::auth::AuthFailure::new(
                "missing_token",
                "missing bearer token",
            )));
        };
        let Some(token) = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
        else {
            return Err(refused(crate::auth::AuthFailure::new(
                "malformed_token",
                "authorization must be `Bearer <token>`",
            )));
        };
        match app.authenticate(token).await? {
            Ok(principal) => {
                if let Some(actor) = parts.extensions.get::<super::audit::AuditActor>() {
                    actor.record(&principal.user.name);
                }
                let (user, tenancy) = super::tenancy::resolve(
                    app,
                    &parts.headers,
                    &principal.credential,
                    principal.user,
                )
                .await?;
                if let Some(actor) = parts.extensions.get::<super::audit::AuditActor>() {
                    actor.record_tenant(&tenancy.tenant);
                }
                let caller = Caller(user, principal.credential, tenancy);
                parts.extensions.insert(caller.clone());
                Ok(caller)
            }
            Err(failure) => Err(refused(failure)),
        }
    }
}

/// For `Option<Option<T>>` body fields with `#[serde(default)]`: absent is `None`
/// (keep), `null` is `Some(None)` (clear), a value is `Some(Some(value))`.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
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
