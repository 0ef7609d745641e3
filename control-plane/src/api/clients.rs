//! `/api/v1/clients`: OAuth2 clients (service accounts) of the client credentials
//! grant (admin only).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiError, ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::App;
use crate::domain::{OAuthClient, Scope};
use crate::error::AppError;

/// A client as the API shows it (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClientView {
    /// `client_id` (the name it was created with).
    pub client_id: String,
    /// The scopes it may be granted.
    pub scopes: Vec<String>,
    /// The admin who created it.
    pub created_by: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// When it was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    /// The tenant its access tokens act in.
    pub tenant: String,
}

impl From<OAuthClient> for ClientView {
    fn from(client: OAuthClient) -> Self {
        ClientView {
            client_id: client.id,
            scopes: client.scopes.iter().map(ToString::to_string).collect(),
            created_by: client.created_by,
            created_at: rfc3339(client.created_at_ms),
            revoked_at: client.revoked_at_ms.map(rfc3339),
            tenant: client.tenant.to_string(),
        }
    }
}

/// Body of client creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClientRequest {
    /// The client id: 1 to 63 of `a-z 0-9 . _ -`.
    pub name: String,
    /// Scopes it may be granted: `stella.viewer`, `stella.operator`, `stella.approver`,
    /// `stella.admin`, `taskrunner.viewer`, `taskrunner.operator`, `taskrunner.admin`.
    pub scopes: Vec<String>,
    /// The tenant its access tokens act in (`default` when absent); it must exist.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A new client and its secret, shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedClient {
    /// The client.
    pub client: ClientView,
    /// Its secret; only its hash is stored.
    pub client_secret: String,
}

/// Creates an OAuth2 client.
///
/// A service account that gets short-lived access tokens from `POST /oauth/token`
/// (client credentials grant) with at most `scopes`. The secret is shown once. Needs
/// the admin role.
#[utoipa::path(post, path = "/api/v1/clients", tag = "clients", operation_id = "createClient",
    request_body = CreateClientRequest,
    responses(
        (status = 201, description = "The client and its secret", body = CreatedClient),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "The name is taken (`client_exists`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_client(
    State(app): State<Arc<App>>,
    caller: Caller,
    body: Result<ApiJson<CreateClientRequest>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<CreatedClient>)> {
    caller.require_server(Permission::Administer)?;
    let ApiJson(body) = body?;
    let scopes = body
        .scopes
        .iter()
        .map(|scope| {
            scope
                .parse::<Scope>()
                .map_err(|e| AppError::invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tenant: crate::domain::TenantId = match &body.tenant {
        None => crate::domain::TenantId::default_tenant(),
        Some(name) => name
            .parse()
            .map_err(|e: crate::domain::Invalid| AppError::invalid(e.0))?,
    };
    app.store.find_tenant(&tenant).await.map_err(|error| {
        if error.is_not_found() {
            AppError::new(
                crate::error::ErrorKind::NotFound,
                "tenant_not_found",
                format!("tenant `{tenant}` not found"),
            )
        } else {
            error.into()
        }
    })?;
    let (client, secret) = app
        .create_client(&caller.0, &body.name, scopes, tenant)
        .await?;
    Ok((
        http::StatusCode::CREATED,
        Json(CreatedClient {
            client: client.into(),
            client_secret: secret,
        }),
    ))
}

/// Lists OAuth2 clients.
///
/// Every client with its scopes, revoked ones included; never a secret. Needs the
/// admin role.
#[utoipa::path(get, path = "/api/v1/clients", tag = "clients", operation_id = "listClients",
    responses(
        (status = 200, description = "Every client", body = Vec<ClientView>),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_clients(
    State(app): State<Arc<App>>,
    caller: Caller,
) -> ApiResult<Json<Vec<ClientView>>> {
    caller.require_server(Permission::Administer)?;
    let clients = app.store.list_clients().await?;
    Ok(Json(clients.into_iter().map(ClientView::from).collect()))
}

/// Revokes an OAuth2 client.
///
/// It gets no more access tokens, and the ones it holds are refused on every replica
/// within seconds. Its name stays taken. Needs the admin role.
#[utoipa::path(delete, path = "/api/v1/clients/{id}", tag = "clients", operation_id = "revokeClient",
    params(("id" = String, Path, description = "client id")),
    responses(
        (status = 200, description = "The revoked client", body = ClientView),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such client (`unknown_client`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn revoke_client(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ClientView>> {
    caller.require_server(Permission::Administer)?;
    Ok(Json(app.revoke_client(&id).await?.into()))
}
