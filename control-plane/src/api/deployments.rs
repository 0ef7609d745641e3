//! `/api/v1/promotions` and `/api/v1/deployments`: promotion, deployments, their logs,
//! and rollback.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::App;
use crate::domain::{Deployment, Task};

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
    /// `pending`, `running`, `succeeded`, `failed`.
    pub state: String,
    /// Failure reason or summary.
    pub message: Option<String>,
    /// Requester.
    pub created_by: String,
    /// Creation time.
    pub created_at: String,
    /// Finish time.
    pub finished_at: Option<String>,
    /// One task per target (on `show`).
    #[serde(default)]
    pub tasks: Vec<TaskView>,
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
    /// `pending`, `assigned`, `succeeded`, `failed`.
    pub state: String,
    /// Lease epoch.
    pub epoch: i64,
    /// Agent message.
    pub message: Option<String>,
    /// Finish time.
    pub finished_at: Option<String>,
}

impl DeploymentView {
    fn new(deployment: Deployment, tasks: Vec<Task>) -> Self {
        DeploymentView {
            id: deployment.id,
            kind: deployment.kind.to_string(),
            environment: deployment.environment,
            release: deployment.release,
            version: deployment.version,
            decision_id: deployment.decision_id,
            state: deployment.state.to_string(),
            message: deployment.message,
            created_by: deployment.created_by,
            created_at: rfc3339(deployment.created_at_ms),
            finished_at: deployment.finished_at_ms.map(rfc3339),
            tasks: tasks
                .into_iter()
                .map(|t| TaskView {
                    id: t.id,
                    target: t.target,
                    agent_id: t.agent_id,
                    state: t.state.to_string(),
                    epoch: t.epoch,
                    message: t.message,
                    finished_at: t.finished_at_ms.map(rfc3339),
                })
                .collect(),
        }
    }
}

/// Body of a promotion.
#[derive(Debug, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// Release name.
    pub release: String,
    /// Version.
    pub version: String,
    /// Environment.
    pub environment: String,
}

/// A promotion and where it stands.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PromotionView {
    /// Promotion id (the deployment's, while promotions have no gates).
    pub id: String,
    /// `deploying`, `deployed`, `failed`.
    pub state: String,
    /// The signed decision's id.
    pub decision_id: String,
    /// The deployment carrying it out.
    pub deployment_id: String,
}

/// Promotes a release to an environment.
///
/// Records a content-addressed decision and a deployment with one task per target of
/// the environment; agents carry the tasks out. Needs the operator role.
#[utoipa::path(post, path = "/api/v1/promotions", tag = "promotions", operation_id = "promoteRelease",
    request_body = Promote,
    responses(
        (status = 201, description = "The promotion, deploying", body = PromotionView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such release or environment (`not_found`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment to this environment is in progress (`deployment_in_progress`)", body = ErrorEnvelope),
        (status = 422, description = "The environment has no targets (`no_targets`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn promote(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiJson(body): ApiJson<Promote>,
) -> ApiResult<(http::StatusCode, Json<PromotionView>)> {
    caller.require(Permission::Operate)?;
    let deployment = app
        .promote(&body.release, &body.version, &body.environment, &caller.0)
        .await?;
    Ok((
        http::StatusCode::CREATED,
        Json(PromotionView {
            id: deployment.id.clone(),
            state: "deploying".to_owned(),
            decision_id: deployment.decision_id,
            deployment_id: deployment.id,
        }),
    ))
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
    ),
    security(("bearer" = [])))]
pub async fn list_deployments(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<DeploymentFilter>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    caller.require(Permission::Read)?;
    let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
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
/// Its state and one task per target with the agent's outcome. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", operation_id = "getDeployment",
    params(("id" = String, Path, description = "deployment id")),
    responses(
        (status = 200, description = "The deployment with its tasks", body = DeploymentView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such deployment (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_deployment(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DeploymentView>> {
    caller.require(Permission::Read)?;
    let deployment = app.store.get_deployment(&id).await?;
    let tasks = app.store.tasks_of_deployment(&id).await?;
    Ok(Json(DeploymentView::new(deployment, tasks)))
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
    /// The line.
    pub message: String,
}

/// Log lines of a deployment.
///
/// At most 1000 lines after sequence number `after`; poll with the last `seq` seen
/// to follow. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/deployments/{id}/logs", tag = "deployments", operation_id = "getDeploymentLogs",
    params(("id" = String, Path, description = "deployment id"), LogQuery),
    responses(
        (status = 200, description = "The lines, oldest first", body = Vec<LogLineView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such deployment (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn deployment_logs(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> ApiResult<Json<Vec<LogLineView>>> {
    caller.require(Permission::Read)?;
    app.store.get_deployment(&id).await?;
    let lines = app
        .store
        .logs_after(&id, query.after.unwrap_or(0), 1000)
        .await?;
    Ok(Json(
        lines
            .into_iter()
            .map(|l| LogLineView {
                seq: l.seq,
                at: rfc3339(l.at_ms),
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
        (status = 404, description = "No such environment or version (`not_found`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment to this environment is in progress (`deployment_in_progress`)", body = ErrorEnvelope),
        (status = 422, description = "Nothing earlier was deployed there (`nothing_to_roll_back`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn rollback(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<ApiJson<Rollback>>,
) -> ApiResult<(http::StatusCode, Json<DeploymentView>)> {
    caller.require(Permission::Operate)?;
    let to = body.and_then(|ApiJson(b)| b.to_version);
    let deployment = app.rollback(&name, to.as_deref(), &caller.0).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(DeploymentView::new(deployment, Vec::new())),
    ))
}
