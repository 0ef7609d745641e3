//! `/api/v1/registries`: OCI registries and their (sealed) credentials.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::App;
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
