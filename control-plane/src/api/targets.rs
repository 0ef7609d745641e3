//! `/api/v1/targets`: deployment targets, each driven by one agent.

use std::collections::BTreeMap;

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::deployments::DeploymentView;
use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::{App, TargetChange};
use crate::domain::Target;

/// A target.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetView {
    /// Name.
    pub name: String,
    /// Environment.
    pub environment: String,
    /// Kind.
    pub kind: String,
    /// Agent id.
    pub agent_id: String,
    /// Agent name.
    pub agent: String,
    /// Settings.
    pub settings: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: String,
}

impl TargetView {
    async fn load(app: &App, target: Target) -> ApiResult<Self> {
        let agent = app
            .store
            .get_agent(&target.agent_id)
            .await
            .map(|a| a.name)
            .unwrap_or_default();
        Ok(TargetView {
            name: target.name,
            environment: target.environment,
            kind: target.kind.to_string(),
            agent_id: target.agent_id,
            agent,
            settings: target.settings,
            created_at: rfc3339(target.created_at_ms),
        })
    }
}

/// Body of target creation.
#[derive(Debug, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct CreateTarget {
    /// Unique name.
    pub name: String,
    /// Environment.
    pub environment: String,
    /// `docker`, `compose`, `ssh`, `winrm`, `ecs`, `nomad`.
    pub kind: String,
    /// Agent name or id.
    pub agent: String,
    /// Kind-specific settings; unknown keys are refused.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Have the agent check the target live before it is stored (reach the engine,
    /// host or service the settings name); a failed check stores nothing (422
    /// `target_check_failed`).
    #[serde(default)]
    pub check: bool,
}

/// Creates a target.
///
/// A target of a kind (`docker`, `compose`, `ssh`, `winrm`, `ecs`, `nomad`) in an
/// environment, driven by an agent that can drive that kind; unknown kinds and
/// settings are refused. Needs the operator role.
#[utoipa::path(post, path = "/api/v1/targets", tag = "targets", operation_id = "createTarget",
    request_body = CreateTarget,
    responses(
        (status = 201, description = "The new target", body = TargetView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "The name is taken (`target_exists`)", body = ErrorEnvelope),
        (status = 422, description = "With `check`: the agent cannot drive the target (`target_check_failed`) or is not connected (`agent_unavailable`)", body = ErrorEnvelope),
        (status = 503, description = "With `check`: the agent did not answer in time (`check_unanswered`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_target(
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<CreateTarget>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<TargetView>)> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let target = app
        .create_target(
            &body.name,
            &body.environment,
            &body.kind,
            &body.agent,
            body.settings,
            body.check,
        )
        .await?;
    Ok((
        http::StatusCode::CREATED,
        Json(TargetView::load(&app, target).await?),
    ))
}

/// Filter by environment.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvironmentFilter {
    /// Environment name.
    pub environment: Option<String>,
}

/// Lists targets.
///
/// Every target, or those of one environment. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/targets", tag = "targets", operation_id = "listTargets",
    params(EnvironmentFilter),
    responses(
        (status = 200, description = "The targets", body = Vec<TargetView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_targets(
    Scoped(app): Scoped,
    caller: Caller,
    filter: Result<ApiQuery<EnvironmentFilter>, ApiError>,
) -> ApiResult<Json<Vec<TargetView>>> {
    caller.require(Permission::Read)?;
    let ApiQuery(filter) = filter?;
    let mut views = Vec::new();
    for target in app
        .store
        .list_targets(filter.environment.as_deref())
        .await?
    {
        views.push(TargetView::load(&app, target).await?);
    }
    Ok(Json(views))
}

/// Shows a target.
///
/// Its environment, kind, agent and settings. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/targets/{name}", tag = "targets", operation_id = "getTarget",
    params(("name" = String, Path, description = "target name")),
    responses(
        (status = 200, description = "The target", body = TargetView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such target (`unknown_target`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_target(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TargetView>> {
    caller.require(Permission::Read)?;
    let target = app.target(&name).await?;
    Ok(Json(TargetView::load(&app, target).await?))
}

/// Body of a target change; absent fields change nothing.
#[derive(Debug, Default, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct UpdateTarget {
    /// The agent (name or id) that drives it from now on.
    #[serde(default)]
    pub agent: Option<String>,
    /// Settings to add or replace; unknown keys are refused.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Settings to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// Changes a target.
///
/// Its agent or settings (name, environment and kind stay). Refused (`target_busy`)
/// while a deployment has an unfinished task on it. What runs there changes with the
/// next deployment. Needs the operator role.
#[utoipa::path(patch, path = "/api/v1/targets/{name}", tag = "targets", operation_id = "updateTarget",
    request_body = UpdateTarget,
    params(("name" = String, Path, description = "target name")),
    responses(
        (status = 200, description = "The changed target", body = TargetView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such target (`unknown_target`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment runs on it (`target_busy`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn update_target(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<ApiJson<UpdateTarget>, ApiError>,
) -> ApiResult<Json<TargetView>> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let change = TargetChange {
        agent: body.agent,
        set: body.set,
        unset: body.unset,
    };
    let target = app.update_target(&name, change).await?;
    Ok(Json(TargetView::load(&app, target).await?))
}

/// Deletes a target.
///
/// What runs there keeps running; Stella stops checking it for drift and resolves its
/// open findings; its deployment history stays. Refused (`target_busy`) while a
/// deployment has an unfinished task on it. Needs the operator role.
#[utoipa::path(delete, path = "/api/v1/targets/{name}", tag = "targets", operation_id = "deleteTarget",
    params(("name" = String, Path, description = "target name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such target (`unknown_target`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment runs on it (`target_busy`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_target(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Operate)?;
    app.delete_target(&name).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// What the agent of a target said when asked to check it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetCheckView {
    /// Target name.
    pub target: String,
    /// The agent that checked it.
    pub agent_id: String,
    /// Whether the agent can drive the target as configured.
    pub ok: bool,
    /// What the agent found, or why it cannot drive the target.
    pub message: String,
    /// When the answer came.
    pub checked_at: String,
    /// How long the check took, in milliseconds.
    pub duration_ms: i64,
}

/// Checks a target live.
///
/// Asks the target's agent whether it can reach and drive the target as configured
/// (the Docker engine answers, the SSH host key matches and the key is accepted, the
/// Compose file reads, …), changing nothing. A target the agent cannot drive is a 200
/// with `ok: false` and the reason. Needs the operator role (the agent gets the
/// values of the secrets the settings reference).
#[utoipa::path(post, path = "/api/v1/targets/{name}/check", tag = "targets", operation_id = "checkTarget",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 200, description = "The agent's answer", body = TargetCheckView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such target (`unknown_target`)", body = ErrorEnvelope),
        (status = 422, description = "The agent is not connected to this server (`agent_unavailable`)", body = ErrorEnvelope),
        (status = 503, description = "The agent did not answer in time (`check_unanswered`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn check_target(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TargetCheckView>> {
    caller.require(Permission::Operate)?;
    let target = app.target(&name).await?;
    let checked = app.check_target(&target).await?;
    Ok(Json(TargetCheckView {
        target: target.name,
        agent_id: target.agent_id,
        ok: checked.ok,
        message: checked.message,
        checked_at: rfc3339(checked.checked_at_ms),
        duration_ms: checked.duration_ms,
    }))
}

/// Remediates a target.
///
/// Redeploys to the target what was last deployed to it successfully (the release its
/// sticker names), as a new deployment of kind `remediation`: what an environment with
/// `drift_mode: remediate` does by itself when drift is found. Needs the operator role.
#[utoipa::path(post, path = "/api/v1/targets/{name}/remediate", tag = "targets", operation_id = "remediateTarget",
    params(("name" = String, Path, description = "Target name")),
    responses(
        (status = 201, description = "The remediation deployment", body = DeploymentView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such target (`unknown_target`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment to its environment is in progress (`deployment_in_progress`)", body = ErrorEnvelope),
        (status = 422, description = "Nothing was deployed to it yet (`nothing_deployed`), or its agent is revoked (`agent_revoked`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn remediate_target(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(http::StatusCode, Json<DeploymentView>)> {
    caller.require(Permission::Operate)?;
    let deployment = app.remediate_target(&name, &caller.0.name).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(DeploymentView::new(deployment, Vec::new())),
    ))
}
