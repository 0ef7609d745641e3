//! `/api/v1/routers`: routers (RFC 0005), each driven by one agent, and the routes
//! applied through them.

use std::collections::BTreeMap;

use axum::extract::Path;
use axum::Json;
use serde::{Deserialize, Serialize};
use stella_routers::{AbMatch, Backend, MatchValue, RouteName};
use utoipa::ToSchema;

use super::envelope::{ApiError, ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::{App, AppliedRoute};
use crate::domain::Router;
use crate::error::AppError;

/// A router.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouterView {
    /// Name, unique in the tenant.
    pub name: String,
    /// `nginx`, `haproxy`, `traefik`, `alb`.
    pub kind: String,
    /// Agent id.
    pub agent_id: String,
    /// Agent name.
    pub agent: String,
    /// Settings, as given.
    pub settings: BTreeMap<String, String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
}

impl RouterView {
    async fn load(app: &App, router: Router) -> Self {
        let agent = app
            .store
            .get_agent(&router.agent_id)
            .await
            .map(|a| a.name)
            .unwrap_or_default();
        RouterView {
            name: router.name,
            kind: router.kind.to_string(),
            agent_id: router.agent_id,
            agent,
            settings: router.settings,
            created_at: rfc3339(router.created_at_ms),
            updated_at: rfc3339(router.updated_at_ms),
        }
    }
}

/// Body of router creation.
#[derive(Debug, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct CreateRouter {
    /// Name, unique in the tenant.
    pub name: String,
    /// `nginx`, `haproxy`, `traefik`, `alb`.
    pub kind: String,
    /// The agent (name or id) that drives it; it must advertise `router:KIND`.
    pub agent: String,
    /// Kind-specific settings (nginx: `routes_dir`, `nginx_bin`, `conf_path`, `prefix`,
    /// `error_log`, `pid_file`, `timeout_seconds`; haproxy: `admin_socket`,
    /// `command_timeout_ms`; traefik: `dynamic_file`, `rule`, `entry_points`, `version`,
    /// `scheme`; alb: `listener_arn`, `region`, `target_group.SLOT`,
    /// `stickiness_seconds`, `ab_header_rule_arn`, `ab_cookie_rule_arn`); unknown keys
    /// are refused.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// Creates a router.
///
/// A router of a kind, driven by an agent that advertises the capability
/// `router:KIND`; unknown kinds, unknown or bad settings, and an agent that cannot
/// drive the kind are refused. Needs the operator role.
#[utoipa::path(post, path = "/api/v1/routers", tag = "routers", operation_id = "createRouter",
    request_body = CreateRouter,
    responses(
        (status = 201, description = "The new router", body = RouterView),
        (status = 400, description = "Unknown kind, bad settings, unknown or revoked agent, or an agent that cannot drive the kind (`invalid_argument`, `unknown_agent`, `agent_revoked`, `agent_cannot_drive_kind`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 409, description = "The name is taken (`router_exists`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_router(
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<ApiJson<CreateRouter>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<RouterView>)> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let router = app
        .create_router(&body.name, &body.kind, &body.agent, body.settings)
        .await?;
    Ok((
        http::StatusCode::CREATED,
        Json(RouterView::load(&app, router).await),
    ))
}

/// Lists routers.
///
/// Every router of the tenant, by name. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/routers", tag = "routers", operation_id = "listRouters",
    responses(
        (status = 200, description = "The routers", body = Vec<RouterView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list_routers(Scoped(app): Scoped, caller: Caller) -> ApiResult<Json<Vec<RouterView>>> {
    caller.require(Permission::Read)?;
    let mut views = Vec::new();
    for router in app.routers().await? {
        views.push(RouterView::load(&app, router).await);
    }
    Ok(Json(views))
}

/// Shows a router.
///
/// Its kind, agent and settings. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/routers/{name}", tag = "routers", operation_id = "getRouter",
    params(("name" = String, Path, description = "Router name")),
    responses(
        (status = 200, description = "The router", body = RouterView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such router (`unknown_router`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_router(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<RouterView>> {
    caller.require(Permission::Read)?;
    let router = app.router(&name).await?;
    Ok(Json(RouterView::load(&app, router).await))
}

/// Deletes a router.
///
/// The routes it carries stay on the router itself (nginx keeps its files, HAProxy its
/// servers); Stella no longer drives it. Needs the operator role.
#[utoipa::path(delete, path = "/api/v1/routers/{name}", tag = "routers", operation_id = "deleteRouter",
    params(("name" = String, Path, description = "Router name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such router (`unknown_router`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete_router(
    Scoped(app): Scoped,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Operate)?;
    app.delete_router(&name).await?;
    Ok(http::StatusCode::NO_CONTENT)
}

/// One header or cookie test of an A/B rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchValueBody {
    /// Header name (`[A-Za-z0-9-]`) or cookie name (`[A-Za-z0-9_]`).
    pub name: String,
    /// The exact value that selects the A/B set (`[A-Za-z0-9._~-]`, 1–128).
    pub value: String,
}

/// An A/B rule: a request whose header or cookie matches goes to the backends carrying
/// the rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchBody {
    /// The header test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<MatchValueBody>,
    /// The cookie test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<MatchValueBody>,
}

/// One backend of a route.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendBody {
    /// `host:port` (`[v6]:port`); HAProxy takes IP addresses only.
    pub address: String,
    /// Share of its set's traffic, 0–256; 0 keeps the backend known and sends it no new
    /// request.
    pub weight: u16,
    /// The slot it belongs to (`stable`, `canary`, …); HAProxy does not keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// With a rule, the backend is in the route's A/B set.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub r#match: Option<MatchBody>,
}

impl BackendBody {
    fn from_backend(backend: Backend) -> Self {
        let value = |v: MatchValue| MatchValueBody {
            name: v.name,
            value: v.value,
        };
        BackendBody {
            address: backend.address.to_string(),
            weight: backend.weight.get(),
            slot: backend.slot,
            r#match: backend.r#match.map(|m| MatchBody {
                header: m.header.map(value),
                cookie: m.cookie.map(value),
            }),
        }
    }

    fn into_backend(self) -> Result<Backend, AppError> {
        let mut backend = Backend::new(&self.address, self.weight)
            .map_err(|e| AppError::invalid(format!("backend {}: {e}", self.address)))?;
        if let Some(slot) = &self.slot {
            backend = backend.in_slot(slot);
        }
        if let Some(rule) = self.r#match {
            let value = |v: MatchValueBody| MatchValue {
                name: v.name,
                value: v.value,
            };
            backend = backend.matching(AbMatch {
                header: rule.header.map(value),
                cookie: rule.cookie.map(value),
            });
        }
        Ok(backend)
    }
}

/// Body of a route update.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyRoute {
    /// The route's backends, all at once: backends without a `match` form the default
    /// set (at least one), backends with the one A/B rule the A/B set.
    pub backends: Vec<BackendBody>,
}

/// A route as the router reports it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouteView {
    /// Router name.
    pub router: String,
    /// Route name.
    pub route: String,
    /// The backends the router has (after the change, for an apply); empty when the
    /// route is not there.
    pub backends: Vec<BackendBody>,
    /// How an apply reached the router: `reload` (nginx), `not_running` (nginx not
    /// running: the file waits for its start), `runtime` (HAProxy). Absent for a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// How long the request took, the round trip to the agent included, in ms.
    pub duration_ms: i64,
}

impl RouteView {
    fn new(router: String, route: &RouteName, applied: AppliedRoute) -> Self {
        RouteView {
            router,
            route: route.to_string(),
            backends: applied
                .backends
                .into_iter()
                .map(BackendBody::from_backend)
                .collect(),
            method: applied.method,
            duration_ms: applied.duration_ms,
        }
    }
}

fn route_name(route: &str) -> Result<RouteName, AppError> {
    RouteName::new(route).map_err(|e| AppError::invalid(e.to_string()))
}

/// Applies a route.
///
/// Sends the route's backends to the router's agent, which applies them (nginx: a route
/// file, `nginx -t`, a graceful reload; HAProxy: the Runtime API) and reads them back.
/// A refused configuration (e.g. `nginx -t` failed) is a 422 with the router's message,
/// and the router keeps serving what it served before. Needs the operator role.
#[utoipa::path(put, path = "/api/v1/routers/{name}/routes/{route}", tag = "routers", operation_id = "applyRoute",
    request_body = ApplyRoute,
    params(
        ("name" = String, Path, description = "Router name"),
        ("route" = String, Path, description = "Route name: lowercase letters and digits joined by single hyphens"),
    ),
    responses(
        (status = 200, description = "What the router reports after the change", body = RouteView),
        (status = 400, description = "Bad route name or backends (`invalid_argument`, `route_invalid`)", body = ErrorEnvelope),
        (status = 403, description = "The caller is neither operator nor admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such router (`unknown_router`)", body = ErrorEnvelope),
        (status = 422, description = "The router refused the configuration (`route_rejected`), the agent is not connected to this server (`agent_unavailable`) or cannot drive the kind (`agent_cannot_drive_kind`)", body = ErrorEnvelope),
        (status = 503, description = "The router failed (`router_failed`, `route_partly_applied`) or the agent did not answer within 30 s (`route_unanswered`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn apply_route(
    Scoped(app): Scoped,
    caller: Caller,
    Path((name, route)): Path<(String, String)>,
    body: Result<ApiJson<ApplyRoute>, ApiError>,
) -> ApiResult<Json<RouteView>> {
    caller.require(Permission::Operate)?;
    let ApiJson(body) = body?;
    let route = route_name(&route)?;
    if body.backends.is_empty() {
        return Err(AppError::invalid(
            "a route needs at least one backend (to take a route away, delete it on the router)",
        )
        .into());
    }
    let backends = body
        .backends
        .into_iter()
        .map(BackendBody::into_backend)
        .collect::<Result<Vec<_>, _>>()?;
    let router = app.router(&name).await?;
    let applied = app.apply_route(&router, &route, &backends).await?;
    Ok(Json(RouteView::new(router.name, &route, applied)))
}

/// Shows a route.
///
/// Asks the router's agent for the route as the router has it now (`current`): nginx's
/// route file, HAProxy's servers. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/routers/{name}/routes/{route}", tag = "routers", operation_id = "getRoute",
    params(
        ("name" = String, Path, description = "Router name"),
        ("route" = String, Path, description = "Route name"),
    ),
    responses(
        (status = 200, description = "The route's backends as the router has them", body = RouteView),
        (status = 400, description = "Bad route name (`invalid_argument`)", body = ErrorEnvelope),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such router (`unknown_router`)", body = ErrorEnvelope),
        (status = 422, description = "The agent is not connected to this server (`agent_unavailable`)", body = ErrorEnvelope),
        (status = 503, description = "The router failed (`router_failed`) or the agent did not answer within 30 s (`route_unanswered`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show_route(
    Scoped(app): Scoped,
    caller: Caller,
    Path((name, route)): Path<(String, String)>,
) -> ApiResult<Json<RouteView>> {
    caller.require(Permission::Read)?;
    let route = route_name(&route)?;
    let router = app.router(&name).await?;
    let current = app.current_route(&router, &route).await?;
    Ok(Json(RouteView::new(router.name, &route, current)))
}
