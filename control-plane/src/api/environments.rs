//! `/api/v1/environments`: environments, their promotion order and drift mode.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::{App, EnvironmentChange};
use crate::domain::{DriftMode, Environment};
use crate::error::AppError;

/// An environment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentView {
    /// Name.
    pub name: String,
    /// Predecessor in the promotion order.
    pub after: Option<String>,
    /// `report` or `remediate`.
    pub drift: String,
    /// Creation time.
    pub created_at: String,
    /// The release and version deployed there last (successfully).
    pub current: Option<String>,
    /// Target names.
    pub targets: Vec<String>,
}

impl EnvironmentView {
    async fn load(app: &App, env: Environment) -> ApiResult<Self> {
        let current = app
            .store
            .succeeded_deployments(&env.name, 1)
            .await?
            .first()
            .map(|d| format!("{}@{}", d.release, d.version));
        let targets = app
            .store
            .list_targets(Some(&env.name))
            .await?
            .into_iter()
            .map(|t| t.name)
            .collect();
        Ok(EnvironmentView {
            name: env.name,
            after: env.after,
            drift: env.drift_mode.to_string(),
            created_at: rfc3339(env.created_at_ms),
            current,
            targets,
        })
    }
}

/// Body of environment creation.
#[derive(Debug, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// Unique name.
    pub name: String,
    /// The environment a release must pass first.
    #[serde(default)]
    pub after: Option<String>,
    /// `report` (default) or `remediate`.
    #[serde(default)]
    pub drift: Option<String>,
}

/// Body of an environment change; absent fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironment {
    /// New predecessor (empty string clears it).
    #[serde(default)]
    pub after: Option<String>,
    /// `report` or `remediate`.
    #[serde(default)]
    pub drift: Option<String>,
}

fn drift_mode(text: Option<&str>) -> Result<Option<DriftMode>, AppError> {
    text.map(|t| {
        t.parse()
            .map_err(|e: crate::domain::Invalid| AppError::invalid(e.0))
    })
    .transpose()
}

/// Creates an environment.
///
/// `after` names the environment a release must have been deployed to first (the
/// promotion order); `drift` is `report` (default) or `remediate`. Needs the operator
/// role.
#[utoipa::path(post, path = "/api/v1/environments", tag = "environments", operation_id = "createEnvironment",
    request_body = CreateEnvironment,
    responses(
        (status = 201, description = "The new environment", body = EnvironmentView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "The name is taken (`environment_exists`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_environment(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateEnvironment>,
) -> ApiResult<(http::StatusCode, Json<EnvironmentView>)> {
    caller.require(Permission::Operate)?;
    let mode = drift_mode(body.drift.as_deref())?.unwrap_or_default();
    let env = app.create_environment(&body.name, body.after, mode).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(EnvironmentView::load(&app, env).await?),
    ))
}

/// Lists environments.
///
/// Every environment with its predecessor, drift mode, the release deployed there
/// last and its targets. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/environments", tag = "environments", operation_id = "listEnvironments",
    responses(
        (status = 200, description = "Every environment", body = Vec<EnvironmentView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_environments(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> ApiResult<Json<Vec<EnvironmentView>>> {
    caller.require(Permission::Read)?;
    let mut views = Vec::new();
    for env in app.store.list_environments().await? {
        views.push(EnvironmentView::load(&app, env).await?);
    }
    Ok(Json(views))
}

/// Shows an environment.
///
/// Its predecessor, drift mode, the release deployed there last and its targets.
/// Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/environments/{name}", tag = "environments", operation_id = "getEnvironment",
    params(("name" = String, Path, description = "environment name")),
    responses(
        (status = 200, description = "The environment", body = EnvironmentView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_environment(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<EnvironmentView>> {
    caller.require(Permission::Read)?;
    let env = app.store.get_environment(&name).await?;
    Ok(Json(EnvironmentView::load(&app, env).await?))
}

/// Changes an environment.
///
/// Fields left out keep their value; `after: ""` removes the predecessor. Needs the
/// operator role.
#[utoipa::path(patch, path = "/api/v1/environments/{name}", tag = "environments", operation_id = "updateEnvironment",
    request_body = UpdateEnvironment,
    params(("name" = String, Path, description = "environment name")),
    responses(
        (status = 200, description = "The changed environment", body = EnvironmentView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn update_environment(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateEnvironment>,
) -> ApiResult<Json<EnvironmentView>> {
    caller.require(Permission::Operate)?;
    let change = EnvironmentChange {
        after: body
            .after
            .map(|a| if a.is_empty() { None } else { Some(a) }),
        drift_mode: drift_mode(body.drift.as_deref())?,
    };
    let env = app.update_environment(&name, change).await?;
    Ok(Json(EnvironmentView::load(&app, env).await?))
}
