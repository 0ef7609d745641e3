//! Which tenant a request acts in, the caller's roles there, and the tenant's core
//! that handlers of tenant-owned objects act on ([`Scoped`]).

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;

use super::envelope::{ApiError, Caller};
use crate::app::App;
use crate::auth::Credential;
use crate::domain::{Role, TenantId, User};
use crate::error::{AppError, ErrorKind};
use crate::tenants::Tenants;

/// The header naming the request's tenant (the TaskRunner contract's name for it).
pub const TENANT_HEADER: &str = "x-stellaops-tenant";

/// The state of the API's router: the `default` tenant's core (users, tokens,
/// clients, server-wide endpoints) and every tenant's.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The `default` tenant's core.
    pub app: Arc<App>,
    /// Every tenant's core.
    pub tenants: Arc<Tenants>,
}

impl FromRef<ApiState> for Arc<App> {
    fn from_ref(state: &ApiState) -> Arc<App> {
        state.app.clone()
    }
}

impl FromRef<ApiState> for Arc<Tenants> {
    fn from_ref(state: &ApiState) -> Arc<Tenants> {
        state.tenants.clone()
    }
}

/// The caller's place in the request's tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenancy {
    /// The request's tenant.
    pub tenant: TenantId,
    /// Roles held only for one environment of it: (role, environment).
    pub narrowed: Vec<(Role, String)>,
}

/// The request's tenant from `X-StellaOps-Tenant` (`default` when absent); 400
/// `invalid_tenant` for a name that cannot be one.
pub fn requested_tenant(headers: &http::HeaderMap) -> Result<TenantId, ApiError> {
    let Some(value) = headers.get(TENANT_HEADER) else {
        return Ok(TenantId::default_tenant());
    };
    let text = value.to_str().unwrap_or("\u{fffd}");
    text.trim().parse::<TenantId>().map_err(|invalid| {
        ApiError(AppError::new(
            ErrorKind::InvalidArgument,
            "invalid_tenant",
            invalid.0,
        ))
    })
}

/// The caller's roles in the request's tenant: `user` comes back holding those that
/// cover the whole tenant, with the narrowed ones beside it.
pub async fn resolve(
    app: &Arc<App>,
    headers: &http::HeaderMap,
    credential: &Credential,
    mut user: User,
) -> Result<(User, Tenancy), ApiError> {
    // An OAuth2 client acts in its own tenant, with the roles its scopes grant; it
    // may name that tenant, and no other.
    if let Credential::AccessToken { tenant: own, .. } = credential {
        let tenant = match headers.get(TENANT_HEADER) {
            None => own.clone(),
            Some(_) => requested_tenant(headers)?,
        };
        if &tenant != own {
            return Err(forbidden(&tenant));
        }
        return Ok((
            user,
            Tenancy {
                tenant,
                narrowed: Vec::new(),
            },
        ));
    }
    let tenant = requested_tenant(headers)?;
    let bindings = app
        .store
        .role_bindings(&user.id)
        .await
        .map_err(AppError::from)?;
    let mut roles = if tenant.is_default() {
        user.roles.clone()
    } else {
        Vec::new()
    };
    let mut narrowed = Vec::new();
    let mut bound = tenant.is_default();
    for binding in bindings.into_iter().filter(|b| b.tenant == tenant) {
        bound = true;
        match binding.environment {
            None => roles.push(binding.role),
            Some(environment) => narrowed.push((binding.role, environment)),
        }
    }
    if !bound {
        return Err(forbidden(&tenant));
    }
    roles.sort();
    roles.dedup();
    user.roles = roles;
    Ok((user, Tenancy { tenant, narrowed }))
}

fn forbidden(tenant: &TenantId) -> ApiError {
    ApiError(AppError::new(
        ErrorKind::PermissionDenied,
        "tenant_forbidden",
        format!("you hold no role in tenant `{tenant}`"),
    ))
}

/// The core of the request's tenant, for handlers of tenant-owned objects. Extracting
/// it authenticates the caller (the [`Caller`] is kept for the handler's own
/// extraction).
#[derive(Clone, Debug)]
pub struct Scoped(pub Arc<App>);

impl FromRequestParts<ApiState> for Scoped {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let app = state.tenants.get(caller.tenant()).await?;
        Ok(Scoped(app))
    }
}
