//! `/api/v1/releases`: releases, their tags resolved to digests at creation.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::{App, ComponentRequest};
use crate::domain::Release;

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
