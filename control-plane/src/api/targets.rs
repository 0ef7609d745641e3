//! `/api/v1/targets`: deployment targets, each driven by one agent.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::App;
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
