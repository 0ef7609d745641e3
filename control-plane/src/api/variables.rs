//! `/api/v1/environments/{env}/variables` and `/secrets`: the values target settings
//! reference as `${var.NAME}` and `${secret.NAME}`. Secret values go in, never out.

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiError, ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::VariableView as AppVariable;
use crate::domain::VariableKind;

/// A variable, or a secret without its value.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VariableView {
    /// `var` or `secret`.
    pub kind: String,
    /// Name, referenced as `${var.NAME}` or `${secret.NAME}`.
    pub name: String,
    /// The value of a variable; absent for a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Who set it last.
    pub updated_by: String,
    /// When it was set last.
    pub updated_at: String,
}

impl From<AppVariable> for VariableView {
    fn from(variable: AppVariable) -> Self {
        VariableView {
            kind: variable.kind.to_string(),
            name: variable.name,
            value: variable.value,
            updated_by: variable.updated_by,
            updated_at: rfc3339(variable.updated_at_ms),
        }
    }
}

/// Body of setting a variable or secret.
#[derive(Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct SetVariable {
    /// The value (at most 64 KiB).
    pub value: String,
}

// By hand: the value may be a secret.
impl std::fmt::Debug for SetVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetVariable").finish_non_exhaustive()
    }
}

/// Lists an environment's variables and secrets.
///
/// Variables with their values, secrets with their names and when they were set only.
/// Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/environments/{env}/variables", tag = "environments",
    operation_id = "listVariables",
    params(("env" = String, Path, description = "environment name")),
    responses(
        (status = 200, description = "By kind (`secret`, then `var`), then name", body = Vec<VariableView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_variables(
    Scoped(app): Scoped,
    caller: Caller,
    Path(env): Path<String>,
) -> ApiResult<Json<Vec<VariableView>>> {
    caller.require(Permission::Read)?;
    let variables = app.list_variables(&env).await?;
    Ok(Json(
        variables.into_iter().map(VariableView::from).collect(),
    ))
}

/// Sets a variable.
///
/// Creates or replaces the variable; deployments created from now on substitute it
/// for `${var.NAME}` in target settings and record it in their plan. Needs the
/// operator role.
#[utoipa::path(put, path = "/api/v1/environments/{env}/variables/{name}", tag = "environments",
    operation_id = "setVariable", request_body = SetVariable,
    params(("env" = String, Path, description = "environment name"), ("name" = String, Path, description = "variable name")),
    responses(
        (status = 200, description = "The variable", body = VariableView),
        (status = 400, description = "Invalid name or value too long (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn set_variable(
    Scoped(app): Scoped,
    caller: Caller,
    Path((env, name)): Path<(String, String)>,
    body: Result<ApiJson<SetVariable>, ApiError>,
) -> ApiResult<Json<VariableView>> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let set = app
        .set_variable(&env, VariableKind::Var, &name, &body.value, &caller.0)
        .await?;
    Ok(Json(set.into()))
}

/// Sets a secret.
///
/// Creates or replaces the secret, sealed before it is stored. Its value is never
/// returned, logged or recorded in a plan: deployments record its name and when it was
/// set, and the value travels only to the agent that applies `${secret.NAME}`. Needs
/// the operator role.
#[utoipa::path(put, path = "/api/v1/environments/{env}/secrets/{name}", tag = "environments",
    operation_id = "setSecret", request_body = SetVariable,
    params(("env" = String, Path, description = "environment name"), ("name" = String, Path, description = "secret name")),
    responses(
        (status = 200, description = "The secret, without its value", body = VariableView),
        (status = 400, description = "Invalid name or value too long (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn set_secret(
    Scoped(app): Scoped,
    caller: Caller,
    Path((env, name)): Path<(String, String)>,
    body: Result<ApiJson<SetVariable>, ApiError>,
) -> ApiResult<Json<VariableView>> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let set = app
        .set_variable(&env, VariableKind::Secret, &name, &body.value, &caller.0)
        .await?;
    Ok(Json(set.into()))
}

/// Deletes a variable.
///
/// Deployments already planned keep their plan. Needs the operator role.
#[utoipa::path(delete, path = "/api/v1/environments/{env}/variables/{name}", tag = "environments",
    operation_id = "deleteVariable",
    params(("env" = String, Path, description = "environment name"), ("name" = String, Path, description = "variable name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment or variable (`unknown_environment`, `unknown_variable`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_variable(
    Scoped(app): Scoped,
    caller: Caller,
    Path((env, name)): Path<(String, String)>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Operate)?;
    app.delete_variable(&env, VariableKind::Var, &name).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// Deletes a secret.
///
/// A deployment planned with it that has not been sent yet fails when it is sent.
/// Needs the operator role.
#[utoipa::path(delete, path = "/api/v1/environments/{env}/secrets/{name}", tag = "environments",
    operation_id = "deleteSecret",
    params(("env" = String, Path, description = "environment name"), ("name" = String, Path, description = "secret name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment or secret (`unknown_environment`, `unknown_variable`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_secret(
    Scoped(app): Scoped,
    caller: Caller,
    Path((env, name)): Path<(String, String)>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Operate)?;
    app.delete_variable(&env, VariableKind::Secret, &name)
        .await?;
    Ok(http::StatusCode::NO_CONTENT)
}
