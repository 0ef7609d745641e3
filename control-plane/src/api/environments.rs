//! `/api/v1/environments`: environments, their promotion order, drift mode and
//! deployment timeout.

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
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
    /// Seconds a deployment's tasks may take here; `null`: the server's default.
    pub deployment_timeout_seconds: Option<u64>,
    /// Distinct approvals a promotion needs here (0: none).
    pub approvals: u32,
    /// How long an approval counts, in seconds; `null`: until the deployment starts.
    pub approval_ttl_seconds: Option<u64>,
    /// Freeze windows, `CRON/DURATION[@TZ]`.
    pub freeze: Vec<String>,
    /// The freeze window active now, and when it ends.
    pub frozen: Option<FrozenView>,
    /// Unsuppressed findings at or above it block: `none`, `low`, `medium`, `high`,
    /// `critical`.
    pub block_severity: String,
    /// Whether an image without a scan report may pass.
    pub allow_unscanned: bool,
    /// The Rego policy's id (`sha256:` of its source), if any.
    pub policy: Option<String>,
    /// The promotion workflow's id (`sha256:` of the task-pack manifest), if the
    /// environment names one; `null`: the built-in workflow.
    pub workflow: Option<String>,
    /// How a release reaches the targets when not all at once: the strategy (`strategy`:
    /// `rolling`, `blue-green`, `canary`, `a-b`) and its parameters; `null`: all at once.
    #[schema(value_type = Option<Object>)]
    pub rollout: Option<serde_json::Value>,
    /// The security verdict of what runs here, as last evaluated.
    pub verdict: Option<VerdictView>,
}

/// An active freeze window.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FrozenView {
    /// The window.
    pub window: String,
    /// When it started.
    pub since: String,
    /// When promotions are allowed again.
    pub until: String,
}

/// The security verdict of the release running in an environment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VerdictView {
    /// `release@version`.
    pub release: String,
    /// `passing` or `blocking`.
    pub state: String,
    /// Why it blocks; when it passes, the gate's summary (images, findings, threshold).
    pub reasons: Vec<String>,
    /// When it was evaluated.
    pub at: String,
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
        let windows: Vec<stella_decision::freeze::FreezeWindow> = env
            .gates
            .freeze
            .iter()
            .filter_map(|spec| spec.parse().ok())
            .collect();
        let frozen =
            stella_decision::freeze::active_freeze(&windows, crate::app::now_ms()).map(|active| {
                FrozenView {
                    window: active.window,
                    since: rfc3339(active.started_at_ms),
                    until: rfc3339(active.ends_at_ms),
                }
            });
        let verdict = app
            .store
            .get_verdict(&env.name)
            .await?
            .map(|v| VerdictView {
                release: format!("{}@{}", v.release, v.version),
                state: if v.passed { "passing" } else { "blocking" }.to_owned(),
                reasons: v.reasons,
                at: rfc3339(v.at_ms),
            });
        Ok(EnvironmentView {
            name: env.name,
            after: env.after,
            drift: env.drift_mode.to_string(),
            created_at: rfc3339(env.created_at_ms),
            current,
            targets,
            deployment_timeout_seconds: env.deployment_timeout_seconds,
            approvals: env.gates.approvals_required,
            approval_ttl_seconds: env.gates.approval_ttl_seconds,
            freeze: env.gates.freeze,
            frozen,
            block_severity: env.gates.block_severity,
            allow_unscanned: env.gates.allow_unscanned,
            policy: env.gates.policy_id,
            workflow: env.gates.workflow_id,
            rollout: env
                .gates
                .rollout
                .as_ref()
                .and_then(|strategy| serde_json::to_value(strategy).ok()),
            verdict,
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
    /// Seconds a deployment's tasks may take here (1 to 604800); absent: the server's
    /// `task_deadline_seconds`.
    #[serde(default)]
    pub deployment_timeout_seconds: Option<u64>,
    /// Distinct approvals a promotion needs (0 to 20; default 0).
    #[serde(default)]
    pub approvals: Option<u32>,
    /// Seconds an approval counts (1 to 7776000); absent: until the deployment starts.
    #[serde(default)]
    pub approval_ttl_seconds: Option<u64>,
    /// Freeze windows, `CRON/DURATION[@TZ]` (e.g. `0 18 * * FRI/64h@Europe/Berlin`).
    #[serde(default)]
    pub freeze: Option<Vec<String>>,
    /// `none`, `low`, `medium`, `high` or `critical` (default).
    #[serde(default)]
    pub block_severity: Option<String>,
    /// Let images without a scan report pass (default false).
    #[serde(default)]
    pub allow_unscanned: Option<bool>,
    /// A Rego module (v1) whose `deny` set must be empty.
    #[serde(default)]
    pub policy: Option<String>,
    /// A task pack (YAML or JSON manifest) that carries out every promotion allowed
    /// here: it declares the input `promotion` and has exactly one `builtin:promotion`
    /// step (docs/governance.md).
    #[serde(default)]
    pub workflow: Option<String>,
    /// The rollout strategy, as the flags of `stella env update` without `--`:
    /// `{"strategy": "canary", "steps": "5,25,50,100", "pause": "2m", "router": "edge"}`
    /// (docs/rollouts.md); absent: all at once.
    #[serde(default)]
    pub rollout: Option<std::collections::BTreeMap<String, String>>,
}

/// Body of an environment change; absent fields keep their value, `null` clears it.
#[derive(Debug, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironment {
    /// New predecessor; `null` (or an empty string) clears it.
    #[serde(default, deserialize_with = "super::envelope::present")]
    #[schema(value_type = Option<String>)]
    pub after: Option<Option<String>>,
    /// `report` or `remediate`.
    #[serde(default)]
    pub drift: Option<String>,
    /// Seconds a deployment's tasks may take here (1 to 604800); `null`: back to the
    /// server's `task_deadline_seconds`.
    #[serde(default, deserialize_with = "super::envelope::present")]
    #[schema(value_type = Option<u64>)]
    pub deployment_timeout_seconds: Option<Option<u64>>,
    /// Distinct approvals a promotion needs (0 to 20).
    #[serde(default)]
    pub approvals: Option<u32>,
    /// Seconds an approval counts; `null`: until the deployment starts.
    #[serde(default, deserialize_with = "super::envelope::present")]
    #[schema(value_type = Option<u64>)]
    pub approval_ttl_seconds: Option<Option<u64>>,
    /// Freeze windows, replacing the ones there (`[]` removes every one).
    #[serde(default)]
    pub freeze: Option<Vec<String>>,
    /// `none`, `low`, `medium`, `high` or `critical`.
    #[serde(default)]
    pub block_severity: Option<String>,
    /// Let images without a scan report pass.
    #[serde(default)]
    pub allow_unscanned: Option<bool>,
    /// A Rego module (v1); `null` removes the policy.
    #[serde(default, deserialize_with = "super::envelope::present")]
    #[schema(value_type = Option<String>)]
    pub policy: Option<Option<String>>,
    /// A task-pack manifest, the promotion workflow; `null` goes back to the built-in
    /// one.
    #[serde(default, deserialize_with = "super::envelope::present")]
    #[schema(value_type = Option<String>)]
    pub workflow: Option<Option<String>>,
    /// The rollout strategy, as the flags of `stella env update` without `--`
    /// (docs/rollouts.md); `null` goes back to all at once.
    #[serde(default, deserialize_with = "super::envelope::present")]
    #[schema(value_type = Option<Object>)]
    pub rollout: Option<Option<std::collections::BTreeMap<String, String>>>,
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
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<CreateEnvironment>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<EnvironmentView>)> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let settings = EnvironmentChange {
        after: Some(body.after.filter(|a| !a.is_empty())),
        drift_mode: drift_mode(body.drift.as_deref())?,
        deployment_timeout_seconds: Some(body.deployment_timeout_seconds),
        approvals_required: body.approvals,
        approval_ttl_seconds: Some(body.approval_ttl_seconds),
        freeze: body.freeze,
        block_severity: body.block_severity,
        allow_unscanned: body.allow_unscanned,
        policy: body.policy.map(Some),
        workflow: body.workflow.map(Some),
        rollout: body.rollout.map(Some),
    };
    let env = app.create_environment(&body.name, settings).await?;
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
    Scoped(app): Scoped,
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
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<EnvironmentView>> {
    caller.require(Permission::Read)?;
    let env = app.environment(&name).await?;
    Ok(Json(EnvironmentView::load(&app, env).await?))
}

/// Changes an environment.
///
/// Fields left out keep their value; `after: null` (or `""`) removes the predecessor,
/// `deployment_timeout_seconds: null` restores the server's default. A predecessor that
/// would close a cycle is refused (`promotion_cycle`). Needs the operator role.
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
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<ApiJson<UpdateEnvironment>, ApiError>,
) -> ApiResult<Json<EnvironmentView>> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let change = EnvironmentChange {
        after: body.after.map(|after| after.filter(|a| !a.is_empty())),
        drift_mode: drift_mode(body.drift.as_deref())?,
        deployment_timeout_seconds: body.deployment_timeout_seconds,
        approvals_required: body.approvals,
        approval_ttl_seconds: body.approval_ttl_seconds,
        freeze: body.freeze,
        block_severity: body.block_severity,
        allow_unscanned: body.allow_unscanned,
        policy: body.policy,
        workflow: body.workflow,
        rollout: body.rollout,
    };
    let env = app.update_environment(&name, change).await?;
    Ok(Json(EnvironmentView::load(&app, env).await?))
}

/// Query of environment deletion.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteEnvironment {
    /// Also delete its deployments, logs and drift findings.
    #[serde(default)]
    pub with_history: bool,
}

/// Deletes an environment.
///
/// With its variables and secrets. Refused (`environment_in_use`) while a target
/// belongs to it, another environment comes after it, or it has deployment history —
/// unless `with_history=true`, which deletes the history too. Needs the operator role.
#[utoipa::path(delete, path = "/api/v1/environments/{name}", tag = "environments", operation_id = "deleteEnvironment",
    params(("name" = String, Path, description = "environment name"), DeleteEnvironment),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
        (status = 409, description = "Something depends on it (`environment_in_use`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_environment(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<ApiQuery<DeleteEnvironment>, ApiError>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Operate)?;
    let ApiQuery(query) = query?;
    app.delete_environment(&name, query.with_history).await?;
    Ok(http::StatusCode::NO_CONTENT)
}
