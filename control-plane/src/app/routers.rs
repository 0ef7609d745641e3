//! Routers (RFC 0005): the objects, and routes applied and read through the agent that
//! drives each. Applying a route or reading it is a question on the agent's stream
//! (`RouteUpdate`) answered on it (`RouteResult`), exactly as a target check is (see
//! `checks`): asked of the agent session this replica holds, correlated by request id
//! in memory, waited for a bounded time. Nothing about a route is stored here: the
//! router itself is where a route lives, and `current` reads it from there.

use std::collections::BTreeMap;
use std::time::Duration;

use stella_proto::v1;
use stella_routers::{Backend, RouteName};

use super::{conflict_as, invalid, not_found_as, now_ms, validate_name, App};
use crate::domain::{AgentState, Router, RouterKind};
use crate::error::{AppError, ErrorKind};

/// How long the server waits for an agent's answer (an nginx apply allows its commands
/// `timeout_seconds`, 30 by default, but takes well under a second on a quiet host).
const ROUTE_WAIT: Duration = Duration::from_secs(30);

/// A route as the router reports it, after an apply or on a read.
#[derive(Debug, Clone)]
pub struct AppliedRoute {
    /// The backends the router has.
    pub backends: Vec<Backend>,
    /// How an apply reached the router (`reload`, `not_running`, `runtime`); `None`
    /// for a read.
    pub method: Option<String>,
    /// How long the request took, the round trip to the agent included.
    pub duration_ms: i64,
}

/// Why an agent could not apply or read a route, as its `RouteResult` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteFailure {
    /// The route, the backends or the settings are not valid.
    Invalid,
    /// The router refused the configuration (e.g. `nginx -t`) and serves the previous.
    Rejected,
    /// The agent does not drive this kind.
    Unsupported,
    /// Some runtime commands ran (HAProxy): applying again finishes the change.
    PartlyApplied,
    /// Anything else: unreachable router, failed command, read-back mismatch.
    Failed,
}

impl RouteFailure {
    fn from_wire(kind: &str) -> Self {
        match kind {
            "invalid" => RouteFailure::Invalid,
            "rejected" => RouteFailure::Rejected,
            "unsupported" => RouteFailure::Unsupported,
            "partly_applied" => RouteFailure::PartlyApplied,
            _ => RouteFailure::Failed,
        }
    }

    /// The error the API answers with.
    fn into_error(self, router: &str, message: &str) -> AppError {
        let message = format!("router `{router}`: {message}");
        match self {
            RouteFailure::Invalid => {
                AppError::new(ErrorKind::InvalidArgument, "route_invalid", message)
            }
            RouteFailure::Rejected => {
                AppError::new(ErrorKind::FailedPrecondition, "route_rejected", message)
            }
            RouteFailure::Unsupported => AppError::new(
                ErrorKind::FailedPrecondition,
                "agent_cannot_drive_kind",
                message,
            ),
            RouteFailure::PartlyApplied => {
                AppError::new(ErrorKind::Unavailable, "route_partly_applied", message)
            }
            RouteFailure::Failed => AppError::new(ErrorKind::Unavailable, "router_failed", message),
        }
    }
}

impl App {
    /// Creates a router, checking its name, kind, settings and agent (which must exist,
    /// not be revoked and, once it said hello, advertise `router:KIND`). The name is
    /// unique in the tenant: the store's key refuses a second one (409 `router_exists`).
    pub async fn create_router(
        &self,
        name: &str,
        kind: &str,
        agent: &str,
        settings: BTreeMap<String, String>,
    ) -> Result<Router, AppError> {
        validate_name("router", name)?;
        let kind: RouterKind = kind.parse().map_err(invalid)?;
        kind.validate_settings(&settings).map_err(invalid)?;
        let agent = self.store.find_agent(agent).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::InvalidArgument,
                "unknown_agent",
                format!("unknown agent `{agent}`"),
            )
        })?;
        if agent.revoked_at_ms.is_some() {
            return Err(AppError::new(
                ErrorKind::InvalidArgument,
                "agent_revoked",
                format!("agent `{}` is revoked", agent.name),
            ));
        }
        let capability = kind.capability();
        if agent.host.is_some() && !agent.capabilities.contains(&capability) {
            let routers: Vec<&str> = agent
                .capabilities
                .iter()
                .filter_map(|c| c.strip_prefix(crate::domain::ROUTER_CAPABILITY_PREFIX))
                .collect();
            return Err(AppError::new(
                ErrorKind::InvalidArgument,
                "agent_cannot_drive_kind",
                format!(
                    "agent `{}` cannot drive {kind} routers (it advertises no `{capability}`; routers it drives: {})",
                    agent.name,
                    if routers.is_empty() {
                        "none".to_owned()
                    } else {
                        routers.join(", ")
                    }
                ),
            ));
        }
        let now = now_ms();
        let router = Router {
            name: name.to_owned(),
            kind,
            agent_id: agent.id,
            settings,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store.create_router(&router).await.map_err(|e| {
            conflict_as(
                e,
                "router_exists",
                format!("router `{name}` already exists"),
            )
        })?;
        tracing::info!(router = %name, kind = %kind, agent_id = %router.agent_id, "router created");
        Ok(router)
    }

    /// Every router, by name.
    pub async fn routers(&self) -> Result<Vec<Router>, AppError> {
        Ok(self.store.list_routers().await?)
    }

    /// The router with this name; 404 `unknown_router` if there is none.
    pub async fn router(&self, name: &str) -> Result<Router, AppError> {
        self.store.get_router(name).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_router",
                format!("unknown router `{name}`"),
            )
        })
    }

    /// Deletes a router. Its routes stay as they are on the router itself.
    pub async fn delete_router(&self, name: &str) -> Result<(), AppError> {
        self.store.delete_router(name).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_router",
                format!("unknown router `{name}`"),
            )
        })?;
        tracing::info!(router = %name, "router deleted");
        Ok(())
    }

    /// Makes `backends` the backends of `route` on `router`, through its agent, and
    /// returns what the router reports after the change.
    pub async fn apply_route(
        &self,
        router: &Router,
        route: &RouteName,
        backends: &[Backend],
    ) -> Result<AppliedRoute, AppError> {
        let backends_json = serde_json::to_vec(backends)
            .map_err(|e| AppError::internal("encoding route backends", &e))?;
        let applied = self.ask_route(router, route, backends_json, false).await?;
        tracing::info!(router = %router.name, route = %route, backends = backends.len(), method = ?applied.method, "route applied");
        Ok(applied)
    }

    /// The backends of `route` as `router` has them now, read through its agent.
    pub async fn current_route(
        &self,
        router: &Router,
        route: &RouteName,
    ) -> Result<AppliedRoute, AppError> {
        self.ask_route(router, route, Vec::new(), true).await
    }

    async fn ask_route(
        &self,
        router: &Router,
        route: &RouteName,
        backends_json: Vec<u8>,
        read_only: bool,
    ) -> Result<AppliedRoute, AppError> {
        let agent = self.store.get_agent(&router.agent_id).await?;
        if !self.sessions.is_open(&agent.id) {
            let connected =
                agent.state(now_ms(), self.config.heartbeat_interval_ms()) == AgentState::Connected;
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "agent_unavailable",
                if connected {
                    format!(
                        "agent `{}` is connected to another replica of this server; ask that one (or again: a load balancer may route there)",
                        agent.name
                    )
                } else {
                    format!(
                        "agent `{}` is not connected, so it cannot drive router `{}`",
                        agent.name, router.name
                    )
                },
            ));
        }
        let settings = router
            .kind
            .settings_json(&router.settings)
            .map_err(invalid)?;
        let started = std::time::Instant::now();
        let answer = self
            .routes
            .ask(&self.sessions, &agent.id, ROUTE_WAIT, |request_id| {
                v1::ServerMessage {
                    body: Some(v1::server_message::Body::RouteUpdate(v1::RouteUpdate {
                        request_id,
                        router_kind: router.kind.as_str().to_owned(),
                        settings_json: settings.to_string().into_bytes(),
                        route: route.to_string(),
                        backends_json,
                        read_only,
                    })),
                }
            })
            .await;
        let Some(result) = answer else {
            return Err(AppError::new(
                ErrorKind::Unavailable,
                "route_unanswered",
                format!(
                    "agent `{}` did not answer for route `{route}` of router `{}` within {} s",
                    agent.name,
                    router.name,
                    ROUTE_WAIT.as_secs()
                ),
            ));
        };
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if !result.ok {
            tracing::warn!(router = %router.name, route = %route, agent_id = %agent.id, error_kind = %result.error_kind, error = %result.message, "route request failed on the agent");
            return Err(RouteFailure::from_wire(&result.error_kind)
                .into_error(&router.name, &result.message));
        }
        let backends: Vec<Backend> =
            serde_json::from_slice(&result.backends_json).map_err(|e| {
                AppError::new(
                    ErrorKind::Unavailable,
                    "router_failed",
                    format!(
                        "agent `{}` answered for router `{}` with backends that do not read: {e}",
                        agent.name, router.name
                    ),
                )
            })?;
        Ok(AppliedRoute {
            backends,
            method: (!result.method.is_empty()).then_some(result.method),
            duration_ms,
        })
    }

    /// An agent's answer to a route request; ignored unless that agent was asked.
    pub(crate) fn complete_route(&self, agent_id: &str, result: v1::RouteResult) {
        let id = result.request_id.clone();
        self.routes.complete(agent_id, &id, result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_fitting_statuses() {
        let status = |kind: &str| {
            RouteFailure::from_wire(kind)
                .into_error("edge", "m")
                .kind
                .http_status()
                .as_u16()
        };
        assert_eq!(status("invalid"), 400);
        assert_eq!(status("rejected"), 422);
        assert_eq!(status("unsupported"), 422);
        assert_eq!(status("partly_applied"), 503);
        assert_eq!(status("failed"), 503);
        assert_eq!(status("something new"), 503);
    }
}
