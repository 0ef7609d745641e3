//! `/api/v1/releases`: releases, their tags resolved to digests at creation.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
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
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    /// Name.
    pub name: String,
    /// Version, unique per name.
    pub version: String,
    /// Component name → image reference (tag or digest).
    pub components: BTreeMap<String, String>,
}

/// Creates a release.
///
/// Each component's image reference is resolved to a digest against its registry
/// now, once; the release holds digests only. 201 when created, 200 when the same
/// digests already form this release, 409 `release_immutable` when other digests do.
/// Needs the operator role.
#[utoipa::path(post, path = "/api/v1/releases", tag = "releases", operation_id = "createRelease",
    request_body = CreateRelease,
    responses(
        (status = 201, description = "The new release", body = ReleaseView),
        (status = 200, description = "The same release existed already", body = ReleaseView),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "This name and version hold other digests (`release_immutable`)", body = ErrorEnvelope),
        (status = 422, description = "The registry refused access to an image (`image_unresolved`)", body = ErrorEnvelope),
    ),
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
#[into_params(parameter_in = Query)]
pub struct ReleaseFilter {
    /// Release name.
    pub name: Option<String>,
}

/// Lists releases.
///
/// Every release, or the versions of one name, newest first. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/releases", tag = "releases", operation_id = "listReleases",
    params(ReleaseFilter),
    responses(
        (status = 200, description = "The releases", body = Vec<ReleaseView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_releases(
    State(app): State<Arc<App>>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<ReleaseFilter>,
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
///
/// Its components with the references given and the digests they resolved to.
/// Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/releases/{name}/{version}", tag = "releases", operation_id = "getRelease",
    params(("name" = String, Path, description = "release name"), ("version" = String, Path, description = "version")),
    responses(
        (status = 200, description = "The release", body = ReleaseView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such release (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_release(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseView>> {
    caller.require(Permission::Read)?;
    Ok(Json(app.store.get_release(&name, &version).await?.into()))
}
