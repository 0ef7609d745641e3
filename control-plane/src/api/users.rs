//! `/api/v1/users`: users, roles and API tokens (admin only).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
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
}

impl From<User> for UserView {
    fn from(user: User) -> Self {
        UserView {
            id: user.id,
            name: user.name,
            roles: user.roles.iter().map(ToString::to_string).collect(),
            created_at: rfc3339(user.created_at_ms),
        }
    }
}

/// Body of user creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
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

/// Creates a user with roles and a first token.
#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = CreateUserRequest,
    responses((status = 201, body = UserWithToken), (status = 400, body = ErrorEnvelope),
              (status = 403, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateUserRequest>,
) -> ApiResult<(http::StatusCode, Json<UserWithToken>)> {
    caller.require(Permission::Administer)?;
    let roles = body
        .roles
        .iter()
        .map(|role| {
            role.parse::<Role>().map_err(|_| {
                AppError::invalid(format!(
                    "unknown role `{role}`: use viewer, operator, approver or admin"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
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
#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>, caller: Caller) -> ApiResult<Json<Vec<UserView>>> {
    caller.require(Permission::Administer)?;
    let users = app.store.list_users().await?;
    Ok(Json(users.into_iter().map(UserView::from).collect()))
}

/// Issues another API token for a user.
#[utoipa::path(post, path = "/api/v1/users/{name}/tokens", tag = "users",
    params(("name" = String, Path, description = "user name")),
    responses((status = 201, body = TokenView), (status = 404, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(http::StatusCode, Json<TokenView>)> {
    caller.require(Permission::Administer)?;
    let user = app.store.find_user(&name).await?;
    let token = app.issue_token(&user).await?;
    tracing::info!(user = %user.name, by = %caller.0.name, "api token issued");
    Ok((http::StatusCode::CREATED, Json(TokenView { token })))
}

/// The calling user.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "users",
    responses((status = 200, body = UserView), (status = 401, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn whoami(caller: Caller) -> Json<UserView> {
    Json(caller.0.into())
}
