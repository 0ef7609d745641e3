//! `/api/v1/users`: users, roles and API tokens (admin only).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiError, ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::App;
use crate::domain::{Role, User};
use crate::error::AppError;

/// A user as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `viewer`, `operator`, `approver`, `admin`.
    pub roles: Vec<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// `whoami` only: the request's tenant, whose roles `roles` lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `whoami` only: every role binding the user holds, in any tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<super::tenants::BindingView>,
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        UserView {
            id: user.id,
            name: user.name,
            roles: user.roles.iter().map(ToString::to_string).collect(),
            created_at: rfc3339(user.created_at_ms),
            tenant: None,
            bindings: Vec::new(),
        }
    }
}

/// Body of user creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Unique name.
    pub name: String,
    /// At least one of `viewer`, `operator`, `approver`, `admin`.
    pub roles: Vec<String>,
}

/// A user and a token, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserWithToken {
    /// The user.
    pub user: UserView,
    /// A new API token for it.
    pub token: String,
}

/// A new API token, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The bearer token.
    pub token: String,
}

/// Creates a user.
///
/// A user with one or more roles (`viewer`, `operator`, `approver`, `admin`) and its
/// first API token, shown once: only its hash is stored. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", operation_id = "createUser",
    request_body = CreateUserRequest,
    responses(
        (status = 201, description = "The user and its first token", body = UserWithToken),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "The name is taken (`user_exists`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: Result<ApiJson<CreateUserRequest>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<UserWithToken>)> {
    caller.require_server(Permission::Administer)?;
    let ApiJson(body) = body?;
    let roles = parse_roles(&body.roles)?;
    let (user, token) = app.create_user(&body.name, roles).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(UserWithToken {
            user: user.into(),
            token,
        }),
    ))
}

/// Lists users.
///
/// Every user with its roles; never a token. Needs the admin role.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", operation_id = "listUsers",
    responses(
        (status = 200, description = "Every user", body = Vec<UserView>),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Vec<UserView>>> {
    caller.require_server(Permission::Administer)?;
    let users = app.store.list_users().await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

/// Issues another API token for a user.
///
/// The user's earlier tokens stay valid. The token is shown once: only its hash is
/// stored. An optional body names it and sets its lifetime. Rate-limited per client IP
/// address like `POST /api/v1/tokens`. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/users/{name}/tokens", tag = "users", operation_id = "createUserToken",
    params(("name" = String, Path, description = "user name")),
    request_body(content = Option<super::tokens::CreateTokenRequest>),
    responses(
        (status = 201, description = "The new token", body = super::tokens::CreatedToken),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such user (`not_found`)", body = ErrorEnvelope),
        (status = 429, description = "Too many token requests from this address (`rate_limited`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_token(
    State(app): State<Arc<App>>,
    addr: Option<axum::Extension<super::listener::ClientAddr>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Option<ApiJson<super::tokens::CreateTokenRequest>>, ApiError>,
) -> Result<axum::response::Response, axum::response::Response> {
    use axum::response::IntoResponse;
    if let Some(refusal) =
        super::auth::limit_by_ip(&app, addr.map(|axum::Extension(a)| a), "token requests")
    {
        return Err(refusal);
    }
    let issue = async {
        caller.require_server(Permission::Administer)?;
        let user = app.store.find_user(&name).await?;
        let request = body?.map(|ApiJson(body)| body).unwrap_or_default();
        super::tokens::issue(&app, &user, request).await
    };
    issue.await.map_err(IntoResponse::into_response)
}

/// The calling user.
///
/// The user the bearer token belongs to, with its roles in the request's tenant and
/// every role binding it holds; any valid token may ask.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "users", operation_id = "whoami",
    responses((status = 200, description = "The caller", body = UserView)),
    security(("bearer" = [])))]
pub async fn whoami(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<UserView>> {
    let bindings = app.store.role_bindings(&caller.0.id).await?;
    let tenant = caller.tenant().to_string();
    let mut view = UserView::from(caller.0);
    view.tenant = Some(tenant);
    view.bindings = bindings
        .into_iter()
        .map(super::tenants::BindingView::from)
        .collect();
    Ok(Json(view))
}

fn parse_roles(roles: &[String]) -> Result<Vec<Role>, AppError> {
    roles
        .iter()
        .map(|role| {
            role.parse::<Role>().map_err(|_| {
                AppError::invalid(format!(
                    "unknown role `{role}`: use viewer, operator, approver or admin"
                ))
            })
        })
        .collect()
}

/// Body of a user change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// The user's roles from now on (replacing the old ones).
    pub roles: Vec<String>,
}

/// Changes a user's roles.
///
/// Refused (`last_admin`) when it would leave no admin. Needs the admin role.
#[utoipa::path(patch, path = "/api/v1/users/{name}", tag = "users", operation_id = "updateUser",
    params(("name" = String, Path, description = "user name")),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "The changed user", body = UserView),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such user (`unknown_user`)", body = ErrorEnvelope),
        (status = 409, description = "It would leave no admin (`last_admin`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn update(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<ApiJson<UpdateUserRequest>, ApiError>,
) -> ApiResult<Json<UserView>> {
    caller.require_server(Permission::Administer)?;
    let ApiJson(body) = body?;
    let user = app.set_user_roles(&name, parse_roles(&body.roles)?).await?;
    Ok(Json(user.into()))
}

/// Deletes a user.
///
/// Its API tokens stop working at once. Refused for the caller itself
/// (`cannot_delete_self`) and for the last admin (`last_admin`). Needs the admin role.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users", operation_id = "deleteUser",
    params(("name" = String, Path, description = "user name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such user (`unknown_user`)", body = ErrorEnvelope),
        (status = 409, description = "Yourself, or the last admin (`cannot_delete_self`, `last_admin`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<http::StatusCode> {
    caller.require_server(Permission::Administer)?;
    app.delete_user(&name, &caller.0).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// Body of a password change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// The console password from now on: at least 12 characters.
    pub password: String,
}

/// Sets a user's console password.
///
/// Stored as an argon2id hash; the user's console sessions go on until they end.
/// Needs a server admin.
#[utoipa::path(put, path = "/api/v1/users/{name}/password", tag = "users", operation_id = "setUserPassword",
    params(("name" = String, Path, description = "user name")),
    request_body = PasswordRequest,
    responses(
        (status = 204, description = "Set"),
        (status = 400, description = "Too short (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is not a server admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such user (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn set_password(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<ApiJson<PasswordRequest>, ApiError>,
) -> ApiResult<http::StatusCode> {
    caller.require_server(Permission::Administer)?;
    let ApiJson(body) = body?;
    let user = app.store.find_user(&name).await?;
    store_password(&app, &user, body.password).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// Sets the caller's own console password.
///
/// Any user, for itself (an OAuth2 client has none: `not_a_user`).
#[utoipa::path(put, path = "/api/v1/password", tag = "users", operation_id = "setOwnPassword",
    request_body = PasswordRequest,
    responses(
        (status = 204, description = "Set"),
        (status = 400, description = "Too short (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is an OAuth2 client (`not_a_user`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn set_own_password(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: Result<ApiJson<PasswordRequest>, ApiError>,
) -> ApiResult<http::StatusCode> {
    if let crate::auth::Credential::AccessToken { .. } = caller.1 {
        return Err(ApiError(AppError::new(
            crate::error::ErrorKind::PermissionDenied,
            "not_a_user",
            "an OAuth2 client has no console password",
        )));
    }
    let ApiJson(body) = body?;
    store_password(&app, &caller.0, body.password).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

pub(crate) async fn store_password(
    app: &App,
    user: &User,
    password: String,
) -> Result<(), AppError> {
    let hash =
        tokio::task::spawn_blocking(move || crate::console::session::hash_password(&password))
            .await
            .map_err(|e| AppError::internal("hashing a password", &e))??;
    app.store.set_password_hash(&user.id, Some(&hash)).await?;
    tracing::info!(user = %user.name, "console password changed");
    Ok(())
}
