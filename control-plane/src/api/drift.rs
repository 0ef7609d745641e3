//! `/api/v1/drift`: drift findings reported by agents.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiResult, Caller, Permission};
use super::rfc3339;
use crate::app::App;
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
