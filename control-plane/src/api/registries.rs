//! `/api/v1/registries`: OCI registries and their (sealed) credentials.

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiError, ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::domain::Registry;

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
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
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

/// Adds or replaces a registry.
///
/// A registry host with its credentials, used to resolve tags when releases are
/// created and sent to agents to pull. The password is stored sealed and never
/// returned. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/registries", tag = "registries", operation_id = "addRegistry",
    request_body = AddRegistry,
    responses(
        (status = 201, description = "The registry, without its password", body = RegistryView),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn add_registry(
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<AddRegistry>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<RegistryView>)> {
    caller.require(Permission::Administer)?;
    let ApiJson(body) = body?;
    let registry = app
        .add_registry(&body.host, body.insecure, body.username, body.password)
        .await?;
    Ok((http::StatusCode::CREATED, Json(registry.into())))
}

/// Lists registries.
///
/// Every registry, with whether a password is stored but never the password. Needs
/// the viewer role.
#[utoipa::path(get, path = "/api/v1/registries", tag = "registries", operation_id = "listRegistries",
    responses(
        (status = 200, description = "Every registry", body = Vec<RegistryView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_registries(
    Scoped(app): Scoped,
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

/// Deletes a registry.
///
/// Its settings and credentials; images from it are pulled anonymously from then on.
/// Refused (`registry_in_use`) while an unfinished deployment pulls from it. Needs the
/// admin role.
#[utoipa::path(delete, path = "/api/v1/registries/{host}", tag = "registries", operation_id = "deleteRegistry",
    params(("host" = String, Path, description = "registry `host[:port]`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such registry (`unknown_registry`)", body = ErrorEnvelope),
        (status = 409, description = "A deployment pulls from it (`registry_in_use`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_registry(
    Scoped(app): Scoped,
    caller: Caller,
    Path(host): Path<String>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Administer)?;
    app.delete_registry(&host).await?;
    Ok(http::StatusCode::NO_CONTENT)
}
