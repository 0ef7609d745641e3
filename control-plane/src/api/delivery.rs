//! Environments, targets, registries, releases, promotions, deployments, rollback
//! and drift.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::{App, ComponentRequest, EnvironmentChange};
use crate::domain::{
    Deployment, DriftMode, DriftRecord, Environment, Registry, Release, Target, Task,
};
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
#[utoipa::path(post, path = "/api/v1/environments", tag = "environments", request_body = CreateEnvironment,
    responses((status = 201, body = EnvironmentView), (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_environment(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateEnvironment>,
) -> ApiResult<(http::StatusCode, Json<EnvironmentView>)> {
    caller.require(Permission::Operate)?;
    let mode = drift_mode(body.drift.as_deref())?.unwrap_or_default();
    let settings = EnvironmentChange {
        after: body.after.map(Some),
        drift_mode: Some(mode),
        ..EnvironmentChange::default()
    };
    let env = app.create_environment(&body.name, settings).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(EnvironmentView::load(&app, env).await?),
    ))
}

/// Lists environments.
#[utoipa::path(get, path = "/api/v1/environments", tag = "environments",
    responses((status = 200, body = Vec<EnvironmentView>)), security(("bearer" = [])))]
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
#[utoipa::path(get, path = "/api/v1/environments/{name}", tag = "environments",
    params(("name" = String, Path)), responses((status = 200, body = EnvironmentView), (status = 404, body = ErrorEnvelope)),
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
#[utoipa::path(patch, path = "/api/v1/environments/{name}", tag = "environments", request_body = UpdateEnvironment,
    params(("name" = String, Path)), responses((status = 200, body = EnvironmentView), (status = 404, body = ErrorEnvelope)),
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
        ..EnvironmentChange::default()
    };
    let env = app.update_environment(&name, change).await?;
    Ok(Json(EnvironmentView::load(&app, env).await?))
}

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
}

/// Creates a target.
#[utoipa::path(post, path = "/api/v1/targets", tag = "targets", request_body = CreateTarget,
    responses((status = 201, body = TargetView), (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_target(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTarget>,
) -> ApiResult<(http::StatusCode, Json<TargetView>)> {
    caller.require(Permission::Operate)?;
    let target = app
        .create_target(
            &body.name,
            &body.environment,
            &body.kind,
            &body.agent,
            body.settings,
        )
        .await?;
    Ok((
        http::StatusCode::CREATED,
        Json(TargetView::load(&app, target).await?),
    ))
}

/// Filter by environment.
#[derive(Debug, Deserialize, IntoParams)]
pub struct EnvironmentFilter {
    /// Environment name.
    pub environment: Option<String>,
}

/// Lists targets.
#[utoipa::path(get, path = "/api/v1/targets", tag = "targets", params(EnvironmentFilter),
    responses((status = 200, body = Vec<TargetView>)), security(("bearer" = [])))]
pub async fn list_targets(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(filter): Query<EnvironmentFilter>,
) -> ApiResult<Json<Vec<TargetView>>> {
    caller.require(Permission::Read)?;
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
#[utoipa::path(get, path = "/api/v1/targets/{name}", tag = "targets", params(("name" = String, Path)),
    responses((status = 200, body = TargetView), (status = 404, body = ErrorEnvelope)), security(("bearer" = [])))]
pub async fn show_target(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TargetView>> {
    caller.require(Permission::Read)?;
    let target = app.store.get_target(&name).await?;
    Ok(Json(TargetView::load(&app, target).await?))
}

/// A registry (never with its password).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegistryView {
    /// Host and port.
    pub host: String,
    /// Plain HTTP allowed.
    pub insecure: bool,
    /// User name, if any.
    pub username: Option<String>,
    /// Whether a password is stored (sealed).
    pub has_password: bool,
    /// Last change.
    pub updated_at: String,
}

impl From<Registry> for RegistryView {
    fn from(registry: Registry) -> Self {
        RegistryView {
            host: registry.host,
            insecure: registry.insecure,
            username: registry.username,
            has_password: registry.password_sealed.is_some(),
            updated_at: rfc3339(registry.updated_at_ms),
        }
    }
}

/// Body of a registry addition.
#[derive(Deserialize, ToSchema)]
pub struct AddRegistry {
    /// `host[:port]`.
    pub host: String,
    /// Allow plain HTTP.
    #[serde(default)]
    pub insecure: bool,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password; stored sealed, never returned.
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for AddRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddRegistry")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// Adds or replaces a registry and its credentials.
#[utoipa::path(post, path = "/api/v1/registries", tag = "registries", request_body = AddRegistry,
    responses((status = 201, body = RegistryView), (status = 400, body = ErrorEnvelope), (status = 403, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn add_registry(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiJson(body): ApiJson<AddRegistry>,
) -> ApiResult<(http::StatusCode, Json<RegistryView>)> {
    caller.require(Permission::Administer)?;
    let registry = app
        .add_registry(&body.host, body.insecure, body.username, body.password)
        .await?;
    Ok((http::StatusCode::CREATED, Json(registry.into())))
}

/// Lists registries.
#[utoipa::path(get, path = "/api/v1/registries", tag = "registries",
    responses((status = 200, body = Vec<RegistryView>)), security(("bearer" = [])))]
pub async fn list_registries(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> ApiResult<Json<Vec<RegistryView>>> {
    caller.require(Permission::Read)?;
    Ok(Json(
        app.store
            .list_registries()
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// A release.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReleaseView {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Components.
    pub components: Vec<ComponentView>,
    /// Creator.
    pub created_by: String,
    /// Creation time.
    pub created_at: String,
}

/// A release component.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ComponentView {
    /// Name.
    pub name: String,
    /// The reference given at creation.
    pub source: String,
    /// `registry/repository@sha256:…`.
    pub image: String,
    /// `sha256:…`.
    pub digest: String,
}

impl From<Release> for ReleaseView {
    fn from(release: Release) -> Self {
        ReleaseView {
            name: release.name,
            version: release.version,
            components: release
                .components
                .into_iter()
                .map(|c| ComponentView {
                    name: c.name,
                    source: c.source,
                    image: c.image,
                    digest: c.digest.to_string(),
                })
                .collect(),
            created_by: release.created_by,
            created_at: rfc3339(release.created_at_ms),
        }
    }
}

/// Body of release creation.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRelease {
    /// Name.
    pub name: String,
    /// Version, unique per name.
    pub version: String,
    /// Component name → image reference (tag or digest).
    pub components: BTreeMap<String, String>,
}

/// Creates a release; tags are resolved to digests now. 201 when created, 200 when the
/// same digests already form this release, 409 when other digests do.
#[utoipa::path(post, path = "/api/v1/releases", tag = "releases", request_body = CreateRelease,
    responses((status = 201, body = ReleaseView), (status = 200, body = ReleaseView), (status = 400, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
    security(("bearer" = [])))]
pub async fn create_release(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRelease>,
) -> ApiResult<(http::StatusCode, Json<ReleaseView>)> {
    caller.require(Permission::Operate)?;
    let components = body
        .components
        .into_iter()
        .map(|(name, image)| ComponentRequest { name, image })
        .collect();
    let (release, created) = app
        .create_release(&body.name, &body.version, components, &caller.0)
        .await?;
    let status = if created {
        http::StatusCode::CREATED
    } else {
        http::StatusCode::OK
    };
    Ok((status, Json(release.into())))
}

/// Filter by release name.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ReleaseFilter {
    /// Release name.
    pub name: Option<String>,
}

/// Lists releases, newest first.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases", params(ReleaseFilter),
    responses((status = 200, body = Vec<ReleaseView>)), security(("bearer" = [])))]
pub async fn list_releases(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(filter): Query<ReleaseFilter>,
) -> ApiResult<Json<Vec<ReleaseView>>> {
    caller.require(Permission::Read)?;
    Ok(Json(
        app.store
            .list_releases(filter.name.as_deref())
            .await?
            .into_iter()
            .map(Into::into)
            .collect(),
    ))
}

/// Shows a release.
#[utoipa::path(get, path = "/api/v1/releases/{name}/{version}", tag = "releases",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ReleaseView), (status = 404, body = ErrorEnvelope)), security(("bearer" = [])))]
pub async fn show_release(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseView>> {
    caller.require(Permission::Read)?;
    Ok(Json(app.store.get_release(&name, &version).await?.into()))
}

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
#[utoipa::path(post, path = "/api/v1/promotions", tag = "promotions", request_body = Promote,
    responses((status = 201, body = PromotionView), (status = 404, body = ErrorEnvelope), (status = 409, body = ErrorEnvelope)),
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
pub struct DeploymentFilter {
    /// Environment name.
    pub environment: Option<String>,
    /// At most this many (default 50).
    pub limit: Option<i64>,
}

/// Lists deployments, newest first.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", params(DeploymentFilter),
    responses((status = 200, body = Vec<DeploymentView>)), security(("bearer" = [])))]
pub async fn list_deployments(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(filter): Query<DeploymentFilter>,
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

/// Shows a deployment with its tasks.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", params(("id" = String, Path)),
    responses((status = 200, body = DeploymentView), (status = 404, body = ErrorEnvelope)), security(("bearer" = [])))]
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

/// Log lines of a deployment; poll with `after` to follow.
#[utoipa::path(get, path = "/api/v1/deployments/{id}/logs", tag = "deployments", params(("id" = String, Path), LogQuery),
    responses((status = 200, body = Vec<LogLineView>), (status = 404, body = ErrorEnvelope)), security(("bearer" = [])))]
pub async fn deployment_logs(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
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
pub struct Rollback {
    /// Version to go back to (default: the one before the current).
    #[serde(default)]
    pub to_version: Option<String>,
}

/// Redeploys an earlier version as a new deployment.
#[utoipa::path(post, path = "/api/v1/environments/{name}/rollback", tag = "deployments", request_body = Rollback,
    params(("name" = String, Path)),
    responses((status = 201, body = DeploymentView), (status = 404, body = ErrorEnvelope), (status = 422, body = ErrorEnvelope)),
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

/// A drift finding.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DriftView {
    /// Target.
    pub target: String,
    /// Component.
    pub component: String,
    /// `image_changed`, `missing`, `unexpected`, `config_changed`, `sticker_tampered`.
    pub kind: String,
    /// Agent's detail.
    pub detail: String,
    /// Environment.
    pub environment: String,
    /// First seen.
    pub first_seen_at: String,
    /// Last seen.
    pub last_seen_at: String,
    /// When it cleared.
    pub resolved_at: Option<String>,
}

impl From<DriftRecord> for DriftView {
    fn from(record: DriftRecord) -> Self {
        DriftView {
            target: record.target,
            component: record.component,
            kind: record.kind.to_string(),
            detail: record.detail,
            environment: record.environment,
            first_seen_at: rfc3339(record.first_seen_at_ms),
            last_seen_at: rfc3339(record.last_seen_at_ms),
            resolved_at: record.resolved_at_ms.map(rfc3339),
        }
    }
}

/// Drift filter.
#[derive(Debug, Deserialize, IntoParams)]
pub struct DriftFilter {
    /// Environment name.
    pub environment: Option<String>,
    /// Include resolved findings.
    pub all: Option<bool>,
}

/// Open drift findings (with `all=true` also resolved ones).
#[utoipa::path(get, path = "/api/v1/drift", tag = "drift", params(DriftFilter),
    responses((status = 200, body = Vec<DriftView>)), security(("bearer" = [])))]
pub async fn list_drift(
    State(app): State<Arc<App>>,
    caller: Caller,
    Query(filter): Query<DriftFilter>,
) -> ApiResult<Json<Vec<DriftView>>> {
    caller.require(Permission::Read)?;
    let records = app
        .store
        .list_drift(filter.environment.as_deref(), filter.all.unwrap_or(false))
        .await?;
    Ok(Json(records.into_iter().map(Into::into).collect()))
}
