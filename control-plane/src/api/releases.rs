//! `/api/v1/releases`: releases, their tags resolved to digests at creation.

use std::collections::BTreeMap;

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use super::webhooks::EventView;
use crate::app::ComponentRequest;
use crate::domain::{EventKind, Release};

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

/// A release with what is known about it since: whether each image was scanned, and
/// the security verdicts that turned against it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReleaseDetailView {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Components.
    pub components: Vec<ComponentDetailView>,
    /// Creator.
    pub created_by: String,
    /// Creation time.
    pub created_at: String,
    /// Its recent `verdict.changed` events, newest first.
    pub events: Vec<EventView>,
}

/// A release component and whether a scan report was imported for its digest.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ComponentDetailView {
    /// Name.
    pub name: String,
    /// The reference given at creation.
    pub source: String,
    /// `registry/repository@sha256:…`.
    pub image: String,
    /// `sha256:…`.
    pub digest: String,
    /// Whether a scan report was imported for the digest (`stella scan show DIGEST`).
    pub scanned: bool,
}

/// How many `verdict.changed` events `release show` lists.
const RELEASE_EVENTS: i64 = 20;

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
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<CreateRelease>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<ReleaseView>)> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
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
    Scoped(app): Scoped,
    caller: Caller,
    filter: Result<ApiQuery<ReleaseFilter>, ApiError>,
) -> ApiResult<Json<Vec<ReleaseView>>> {
    caller.require(Permission::Read)?;
    let ApiQuery(filter) = filter?;
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
/// Its components with the references given, the digests they resolved to and whether
/// each digest was scanned; and its recent `verdict.changed` events. Needs the viewer
/// role.
#[utoipa::path(get, path = "/api/v1/releases/{name}/{version}", tag = "releases", operation_id = "getRelease",
    params(("name" = String, Path, description = "release name"), ("version" = String, Path, description = "version")),
    responses(
        (status = 200, description = "The release", body = ReleaseDetailView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such release (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_release(
    Scoped(app): Scoped,
    caller: Caller,
    Path((name, version)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseDetailView>> {
    caller.require(Permission::Read)?;
    let release = app.store.get_release(&name, &version).await?;
    let mut components = Vec::with_capacity(release.components.len());
    for c in release.components {
        components.push(ComponentDetailView {
            scanned: app.is_scanned(c.digest.as_str()).await?,
            name: c.name,
            source: c.source,
            image: c.image,
            digest: c.digest.to_string(),
        });
    }
    let events = app
        .store
        .list_events(
            None,
            Some((&release.name, &release.version)),
            Some(EventKind::VerdictChanged.as_str()),
            RELEASE_EVENTS,
        )
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(ReleaseDetailView {
        name: release.name,
        version: release.version,
        components,
        created_by: release.created_by,
        created_at: rfc3339(release.created_at_ms),
        events,
    }))
}
