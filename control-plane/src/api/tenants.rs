//! `/api/v1/tenants` and `/api/v1/users/{name}/bindings`: tenants, and users' roles in
//! them. Managing either needs the admin role in the `default` tenant (a server
//! admin); an admin of another tenant manages that tenant's objects, not who gets in.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::envelope::{ApiError, ApiJson, ApiQuery, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use crate::app::{now_ms, App};
use crate::domain::{Role, RoleBinding, Tenant, TenantId};
use crate::error::AppError;
use crate::tenants::Tenants;

/// A tenant as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    /// Name.
    pub name: String,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Who created it.
    pub created_by: String,
}

impl From<Tenant> for TenantView {
    fn from(tenant: Tenant) -> Self {
        TenantView {
            name: tenant.name.to_string(),
            created_at: rfc3339(tenant.created_at_ms),
            created_by: tenant.created_by,
        }
    }
}

/// Body of tenant creation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// 1 to 48 lowercase letters, digits or `-`, starting with a letter or digit.
    pub name: String,
}

/// A role binding as the API shows it and takes it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BindingView {
    /// The tenant.
    pub tenant: String,
    /// `viewer`, `operator`, `approver` or `admin`.
    pub role: String,
    /// The environment the role is narrowed to; absent for the whole tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

impl From<RoleBinding> for BindingView {
    fn from(binding: RoleBinding) -> Self {
        BindingView {
            tenant: binding.tenant.to_string(),
            role: binding.role.to_string(),
            environment: binding.environment,
        }
    }
}

impl BindingView {
    fn parse(&self) -> Result<RoleBinding, AppError> {
        let tenant: TenantId = self
            .tenant
            .parse()
            .map_err(|e: crate::domain::Invalid| AppError::invalid(e.0))?;
        let role: Role = self.role.parse().map_err(|_| {
            AppError::invalid(format!(
                "unknown role `{}`: use viewer, operator, approver or admin",
                self.role
            ))
        })?;
        if let Some(environment) = &self.environment {
            crate::app::validate_name("environment", environment)?;
        }
        Ok(RoleBinding {
            tenant,
            role,
            environment: self.environment.clone(),
        })
    }
}

/// Lists tenants.
///
/// A server admin (admin in `default`) sees every tenant; anyone else the tenants they
/// hold a role in, `default` always.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", operation_id = "listTenants",
    responses((status = 200, description = "The tenants", body = Vec<TenantView>)),
    security(("bearer" = [])))]
pub async fn list(
    State(app): State<Arc<App>>,
    State(tenants): State<Arc<Tenants>>,
    caller: Caller,
) -> ApiResult<Json<Vec<TenantView>>> {
    let all = tenants.list().await?;
    if caller.require_server(Permission::Administer).is_ok() {
        return Ok(Json(all.into_iter().map(TenantView::from).collect()));
    }
    let bindings = app.store.role_bindings(&caller.0.id).await?;
    Ok(Json(
        all.into_iter()
            .filter(|t| t.name.is_default() || bindings.iter().any(|b| b.tenant == t.name))
            .map(TenantView::from)
            .collect(),
    ))
}

/// Creates a tenant.
///
/// An empty space with a database of its own; nobody holds a role in it until one is
/// bound (`POST /api/v1/users/{name}/bindings`). Needs a server admin.
#[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", operation_id = "createTenant",
    request_body = CreateTenantRequest,
    responses(
        (status = 201, description = "The tenant", body = TenantView),
        (status = 400, description = "Not a tenant name (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is not a server admin (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "The name is taken (`tenant_exists`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(tenants): State<Arc<Tenants>>,
    caller: Caller,
    body: Result<ApiJson<CreateTenantRequest>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<TenantView>)> {
    caller.require_server(Permission::Administer)?;
    let ApiJson(body) = body?;
    let name: TenantId = body
        .name
        .parse()
        .map_err(|e: crate::domain::Invalid| AppError::invalid(e.0))?;
    let tenant = tenants.create(&name, &caller.0.name).await?;
    Ok((http::StatusCode::CREATED, Json(tenant.into())))
}

/// Deletes a tenant.
///
/// Only an empty one: no environment and no agent left (`409 tenant_not_empty`
/// otherwise); its database is removed and every binding to it goes. `default`
/// cannot be deleted. Needs a server admin.
#[utoipa::path(delete, path = "/api/v1/tenants/{name}", tag = "tenants", operation_id = "deleteTenant",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is not a server admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such tenant (`tenant_not_found`)", body = ErrorEnvelope),
        (status = 409, description = "It still has environments or agents (`tenant_not_empty`)", body = ErrorEnvelope),
        (status = 422, description = "`default` (`tenant_default`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(tenants): State<Arc<Tenants>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<http::StatusCode> {
    caller.require_server(Permission::Administer)?;
    let name: TenantId = name.parse().map_err(|_| {
        AppError::new(
            crate::error::ErrorKind::NotFound,
            "tenant_not_found",
            format!(
                "tenant `{}` not found",
                name.chars().take(80).collect::<String>()
            ),
        )
    })?;
    tenants.delete(&name).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// A user's role bindings.
///
/// Every tenant role the user holds (its roles in `default` without an environment are
/// the user's own `roles`). Needs a server admin.
#[utoipa::path(get, path = "/api/v1/users/{name}/bindings", tag = "tenants", operation_id = "listBindings",
    params(("name" = String, Path, description = "user name")),
    responses(
        (status = 200, description = "The bindings", body = Vec<BindingView>),
        (status = 403, description = "The caller is not a server admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such user (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_bindings(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<BindingView>>> {
    caller.require_server(Permission::Administer)?;
    let user = app.store.find_user(&name).await?;
    let bindings = app.store.role_bindings(&user.id).await?;
    Ok(Json(bindings.into_iter().map(BindingView::from).collect()))
}

/// Binds a role.
///
/// Gives the user a role in a tenant, or only for one environment of it (an approver
/// for `prod` only). Binding a role held already changes nothing. Needs a server admin.
#[utoipa::path(post, path = "/api/v1/users/{name}/bindings", tag = "tenants", operation_id = "bindRole",
    params(("name" = String, Path, description = "user name")),
    request_body = BindingView,
    responses(
        (status = 201, description = "The binding", body = BindingView),
        (status = 400, description = "Not a tenant, role or environment name (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is not a server admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such user or tenant (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn bind(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<ApiJson<BindingView>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<BindingView>)> {
    caller.require_server(Permission::Administer)?;
    let ApiJson(body) = body?;
    let binding = body.parse()?;
    let user = app.store.find_user(&name).await?;
    app.store
        .put_role_binding(&user.id, &binding, now_ms())
        .await?;
    tracing::info!(user = %user.name, tenant = %binding.tenant, role = %binding.role, environment = ?binding.environment, "role bound");
    Ok((http::StatusCode::CREATED, Json(binding.into())))
}

/// Unbinds a role.
///
/// Takes a binding away; the query names it as the binding's fields. Needs a server
/// admin.
#[utoipa::path(delete, path = "/api/v1/users/{name}/bindings", tag = "tenants", operation_id = "unbindRole",
    params(("name" = String, Path, description = "user name"), BindingView),
    responses(
        (status = 204, description = "Unbound"),
        (status = 403, description = "The caller is not a server admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such user or binding (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn unbind(
    State(app): State<Arc<App>>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<ApiQuery<BindingView>, ApiError>,
) -> ApiResult<http::StatusCode> {
    caller.require_server(Permission::Administer)?;
    let ApiQuery(query) = query?;
    let binding = query.parse()?;
    let user = app.store.find_user(&name).await?;
    app.store.delete_role_binding(&user.id, &binding).await?;
    tracing::info!(user = %user.name, tenant = %binding.tenant, role = %binding.role, "role unbound");
    Ok(http::StatusCode::NO_CONTENT)
}
