//! `/api/v1/deployments`: deployments, their logs, cancel, and rollback.

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::domain::{DeploySpec, Deployment, Task};

/// A deployment and its tasks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeploymentView {
    /// Id.
    pub id: String,
    /// `promotion`, `rollback`, `remediation`.
    pub kind: String,
    /// Environment.
    pub environment: String,
    /// Release.
    pub release: String,
    /// Version.
    pub version: String,
    /// The decision it carries out.
    pub decision_id: String,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// Grows with every deployment created; orders what targets should run.
    pub generation: i64,
    /// Failure reason or summary.
    pub message: Option<String>,
    /// Requester.
    pub created_by: String,
    /// Creation time.
    pub created_at: String,
    /// Finish time.
    pub finished_at: Option<String>,
    /// One task per target (on `show`); a rollout's tasks, step by step.
    #[serde(default)]
    pub tasks: Vec<TaskView>,
    /// The rollout, when the environment's strategy is not all-at-once (on `show`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
}

/// A progressive rollout: where it is and every step it ran.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    /// The strategy and its parameters.
    #[schema(value_type = Object)]
    pub strategy: serde_json::Value,
    /// `running`, `paused`, `succeeded`, `rolled_back` or `failed`.
    pub state: String,
    /// `forward` or `rollback`.
    pub phase: String,
    /// The step running or next (1-based over both phases), while not over.
    pub current_step: Option<i64>,
    /// The weights the router was last given.
    pub weights: Vec<WeightView>,
    /// Why it rolled back or failed, or who paused it.
    pub message: Option<String>,
    /// An operator's request not acted on yet.
    pub requested: Option<String>,
    /// The strategy's steps, then the rollback's, described.
    pub plan: Vec<String>,
    /// Every step started so far.
    pub steps: Vec<RolloutStepView>,
}

/// A slot's share of the traffic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WeightView {
    /// `stable`, `canary`, `green`, `blue` or `b`.
    pub slot: String,
    /// Percent.
    pub percent: u8,
}

/// One step of a rollout.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RolloutStepView {
    /// Its number.
    pub seq: i64,
    /// `forward` or `rollback`.
    pub phase: String,
    /// What it does.
    pub step: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// What happened.
    pub message: Option<String>,
    /// What it found or did (backends applied, endpoints reported).
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
    /// Start time.
    pub started_at: String,
    /// End time.
    pub finished_at: Option<String>,
}

impl RolloutView {
    fn new(detail: crate::app::RolloutDetail) -> Self {
        use crate::domain::describe_step;
        let rollout = detail.rollout;
        let current_step = (!rollout.state.is_terminal())
            .then(|| rollout.seq_of(rollout.phase, rollout.next_step));
        RolloutView {
            strategy: serde_json::to_value(&rollout.strategy).unwrap_or_default(),
            state: rollout.state.to_string(),
            phase: rollout.phase.to_string(),
            current_step,
            weights: rollout
                .weights
                .iter()
                .map(|(slot, percent)| WeightView {
                    slot: crate::domain::slot_name(*slot).to_owned(),
                    percent: *percent,
                })
                .collect(),
            message: rollout.message.clone(),
            requested: rollout.requested.as_ref().map(|(r, _)| r.to_string()),
            plan: rollout
                .steps
                .iter()
                .chain(rollout.rollback.iter())
                .map(describe_step)
                .collect(),
            steps: detail
                .records
                .into_iter()
                .map(|r| RolloutStepView {
                    seq: r.seq,
                    phase: r.phase.to_string(),
                    step: describe_step(&r.step),
                    state: r.state.to_string(),
                    message: r.message,
                    detail: r.detail,
                    started_at: rfc3339(r.started_at_ms),
                    finished_at: r.finished_at_ms.map(rfc3339),
                })
                .collect(),
        }
    }
}

/// A deployment task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    /// Id.
    pub id: String,
    /// Target.
    pub target: String,
    /// Agent id.
    pub agent_id: String,
    /// `deploy`, or `retire` (a rollout removing a slot).
    pub kind: String,
    /// The slot a rollout's task acts on; `null`: the target's own containers.
    pub slot: Option<String>,
    /// `pending`, `assigned`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// Lease epoch.
    pub epoch: i64,
    /// The components this target runs, pinned by digest (from the task's plan).
    #[serde(default)]
    pub components: Vec<TaskComponentView>,
    /// The target's settings as planned: variables substituted, secrets referenced as
    /// `${secret.NAME}` (their values are never shown).
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// Agent message.
    pub message: Option<String>,
    /// Finish time.
    pub finished_at: Option<String>,
}

/// A component a task deploys.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskComponentView {
    /// Component name.
    pub name: String,
    /// `registry/repository@sha256:…`.
    pub image: String,
}

impl DeploymentView {
    pub(super) fn new(deployment: Deployment, tasks: Vec<Task>) -> Self {
        DeploymentView {
            id: deployment.id,
            kind: deployment.kind.to_string(),
            environment: deployment.environment,
            release: deployment.release,
            version: deployment.version,
            decision_id: deployment.decision_id,
            state: deployment.state.to_string(),
            generation: deployment.generation,
            message: deployment.message,
            created_by: deployment.created_by,
            created_at: rfc3339(deployment.created_at_ms),
            finished_at: deployment.finished_at_ms.map(rfc3339),
            rollout: None,
            tasks: tasks
                .into_iter()
                .map(|t| {
                    // The stored plan; a payload this version cannot read shows no detail.
                    let spec = serde_json::from_str::<DeploySpec>(&t.payload_json).ok();
                    let slot = match &spec {
                        Some(spec) => spec.slot.clone(),
                        None => serde_json::from_str::<serde_json::Value>(&t.payload_json)
                            .ok()
                            .and_then(|v| v.get("slot")?.as_str().map(str::to_owned)),
                    };
                    TaskView {
                        kind: t.kind.to_string(),
                        slot,
                        components: spec
                            .as_ref()
                            .map(|spec| {
                                spec.components
                                    .iter()
                                    .map(|c| TaskComponentView {
                                        name: c.name.clone(),
                                        image: c.image.clone(),
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        settings: spec.map(|spec| spec.target.settings).unwrap_or_default(),
                        id: t.id,
                        target: t.target,
                        agent_id: t.agent_id,
                        state: t.state.to_string(),
                        epoch: t.epoch,
                        message: t.message,
                        finished_at: t.finished_at_ms.map(rfc3339),
                    }
                })
                .collect(),
        }
    }
}

/// Filter and page size of deployment lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeploymentFilter {
    /// Environment name.
    pub environment: Option<String>,
    /// At most this many (default 50).
    pub limit: Option<i64>,
}

/// Lists deployments.
///
/// The newest deployments first, of every environment or one, at most `limit`
/// (default 50, at most 1000). Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", operation_id = "listDeployments",
    params(DeploymentFilter),
    responses(
        (status = 200, description = "The deployments, without their tasks", body = Vec<DeploymentView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_deployments(
    Scoped(app): Scoped,
    caller: Caller,
    filter: Result<ApiQuery<DeploymentFilter>, ApiError>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    caller.require(Permission::Read)?;
    let ApiQuery(filter) = filter?;
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
    if let Some(environment) = &filter.environment {
        app.environment(environment).await?;
    }
    let deployments = app
        .store
        .list_deployments(filter.environment.as_deref(), limit)
        .await?;
    Ok(Json(
        deployments
            .into_iter()
            .map(|d| DeploymentView::new(d, Vec::new()))
            .collect(),
    ))
}

/// Shows a deployment.
///
/// Its state and one task per target with the agent's outcome, the components (by
/// digest) and the settings it planned. The id may be a unique prefix of at least 8
/// characters. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", operation_id = "getDeployment",
    params(("id" = String, Path, description = "deployment id, or a unique prefix of at least 8 characters")),
    responses(
        (status = 200, description = "The deployment with its tasks", body = DeploymentView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such deployment (`unknown_deployment`)", body = ErrorEnvelope),
        (status = 409, description = "The prefix matches several deployments (`ambiguous_id`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_deployment(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    caller.require(Permission::Read)?;
    let deployment = app.find_deployment(&id).await?;
    Ok(Json(full_view(&app, deployment).await?))
}

/// A deployment with its tasks and, if it runs as one, its rollout.
async fn full_view(app: &crate::app::App, deployment: Deployment) -> ApiResult<DeploymentView> {
    let tasks = app.store.tasks_of_deployment(&deployment.id).await?;
    let rollout = app.rollout_detail(&deployment.id).await?;
    let mut view = DeploymentView::new(deployment, tasks);
    view.rollout = rollout.map(RolloutView::new);
    Ok(view)
}

/// Moves a rollout on: `promote` ends the current pause, `pause` stops before the next
/// step, `resume` goes on after a pause, `abort` rolls back now.
///
/// The driver acts within a fraction of a second; the answer is the deployment as it is
/// when the request is recorded (its log says when the driver acted). The id may be a
/// unique prefix of at least 8 characters. Needs the operator role.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/{action}", tag = "deployments", operation_id = "moveRollout",
    params(
        ("id" = String, Path, description = "deployment id, or a unique prefix of at least 8 characters"),
        ("action" = String, Path, description = "`promote`, `pause`, `resume` or `abort`"),
    ),
    responses(
        (status = 202, description = "Recorded; the deployment with its rollout", body = DeploymentView),
        (status = 400, description = "Not one of the four actions (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such deployment (`unknown_deployment`)", body = ErrorEnvelope),
        (status = 409, description = "The rollout is over (`rollout_finished`), or the prefix is ambiguous (`ambiguous_id`)", body = ErrorEnvelope),
        (status = 422, description = "The deployment deploys every target at once (`not_a_rollout`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn move_rollout(
    Scoped(app): Scoped,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<(http::StatusCode, Json<DeploymentView>)> {
    caller.require(Permission::Operate)?;
    let request: crate::domain::RolloutRequest = action.parse().map_err(|_| {
        crate::error::AppError::invalid(format!(
            "`{action}` is not a rollout action: use promote, pause, resume or abort"
        ))
    })?;
    let deployment = app.request_rollout(&id, request, &caller.0.name).await?;
    Ok((
        http::StatusCode::ACCEPTED,
        Json(full_view(&app, deployment).await?),
    ))
}

/// Which log lines to return.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only lines after this sequence number (default 0: from the start).
    pub after: Option<i64>,
}

/// A log line.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogLineView {
    /// Sequence number (pass as `after` to follow).
    pub seq: i64,
    /// Time.
    pub at: String,
    /// Task id (empty for server lines).
    pub task_id: String,
    /// When, in unix milliseconds (as reported by the agent for its lines).
    pub at_ms: i64,
    /// The line.
    pub message: String,
}

/// Log lines of a deployment.
///
/// At most 1000 lines after sequence number `after`; poll with the last `seq` seen
/// to follow. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/deployments/{id}/logs", tag = "deployments", operation_id = "getDeploymentLogs",
    params(("id" = String, Path, description = "deployment id, or a unique prefix of at least 8 characters"), LogQuery),
    responses(
        (status = 200, description = "The lines, oldest first", body = Vec<LogLineView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such deployment (`unknown_deployment`)", body = ErrorEnvelope),
        (status = 409, description = "The prefix matches several deployments (`ambiguous_id`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn deployment_logs(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<ApiQuery<LogQuery>, ApiError>,
) -> ApiResult<Json<Vec<LogLineView>>> {
    caller.require(Permission::Read)?;
    let ApiQuery(query) = query?;
    let deployment = app.find_deployment(&id).await?;
    let lines = app
        .store
        .logs_after(&deployment.id, query.after.unwrap_or(0), 1000)
        .await?;
    Ok(Json(
        lines
            .into_iter()
            .map(|l| LogLineView {
                seq: l.seq,
                at: rfc3339(l.at_ms),
                at_ms: l.at_ms,
                task_id: l.task_id,
                message: l.message,
            })
            .collect(),
    ))
}

/// Body of a rollback.
#[derive(Debug, Default, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Version to go back to (default: the one before the current).
    #[serde(default)]
    pub to_version: Option<String>,
}

/// Rolls an environment back.
///
/// Redeploys, as a new deployment, the version deployed there before the current one,
/// or `to_version`. Needs the operator role.
#[utoipa::path(post, path = "/api/v1/environments/{name}/rollback", tag = "deployments", operation_id = "rollbackEnvironment",
    request_body = Rollback,
    params(("name" = String, Path, description = "environment name")),
    responses(
        (status = 201, description = "The rollback deployment", body = DeploymentView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment or release (`unknown_environment`, `unknown_release`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment to this environment is in progress (`deployment_in_progress`)", body = ErrorEnvelope),
        (status = 422, description = "Nothing earlier was deployed there, or `to_version` never succeeded there (`nothing_to_roll_back`, `not_deployed_here`), or a target's agent is revoked (`agent_revoked`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn rollback(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Option<ApiJson<Rollback>>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<DeploymentView>)> {
    caller.require(Permission::Operate)?;
    let body = body?;
    let to = body.and_then(|ApiJson(b)| b.to_version);
    let deployment = app.rollback(&name, to.as_deref(), &caller.0).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(DeploymentView::new(deployment, Vec::new())),
    ))
}

/// Cancels a deployment.
///
/// Its unfinished tasks are cancelled and their agents told to stop them; what a task
/// already changed on its target stays (drift shows it). A deployment that runs as a
/// rollout is aborted instead: its driver rolls back what the rollout changed (the
/// answer shows it still running). The id may be a unique prefix
/// of at least 8 characters. Needs the operator role.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/cancel", tag = "deployments", operation_id = "cancelDeployment",
    params(("id" = String, Path, description = "deployment id, or a unique prefix of at least 8 characters")),
    responses(
        (status = 200, description = "The cancelled deployment with its tasks", body = DeploymentView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such deployment (`unknown_deployment`)", body = ErrorEnvelope),
        (status = 409, description = "It already finished (`deployment_finished`), or the prefix is ambiguous (`ambiguous_id`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn cancel_deployment(
    Scoped(app): Scoped,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    caller.require(Permission::Operate)?;
    let deployment = app.cancel_deployment(&id, &caller.0).await?;
    Ok(Json(full_view(&app, deployment).await?))
}
