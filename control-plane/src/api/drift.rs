//! `/api/v1/drift`: drift findings reported by agents.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::domain::DriftRecord;

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
#[into_params(parameter_in = Query)]
pub struct DriftFilter {
    /// Environment name.
    pub environment: Option<String>,
    /// Include resolved findings.
    pub all: Option<bool>,
}

/// Lists drift findings.
///
/// What agents found different from what was deployed (`image_changed`, `missing`,
/// `unexpected`, `config_changed`, `sticker_tampered`): open findings, or with
/// `all=true` resolved ones too. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/drift", tag = "drift", operation_id = "listDrift",
    params(DriftFilter),
    responses(
        (status = 200, description = "The findings", body = Vec<DriftView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such environment (`unknown_environment`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_drift(
    Scoped(app): Scoped,
    caller: Caller,
    filter: Result<ApiQuery<DriftFilter>, ApiError>,
) -> ApiResult<Json<Vec<DriftView>>> {
    caller.require(Permission::Read)?;
    let ApiQuery(filter) = filter?;
    if let Some(environment) = &filter.environment {
        app.environment(environment).await?;
    }
    let records = app
        .store
        .list_drift(filter.environment.as_deref(), filter.all.unwrap_or(false))
        .await?;
    Ok(Json(records.into_iter().map(Into::into).collect()))
}
