//! `/api/v1/agents`, join tokens and gateway discovery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::envelope::{ApiError, ApiJson, ApiResult, Caller, ErrorEnvelope, Permission};
use super::rfc3339;
use super::tenancy::Scoped;
use crate::app::{now_ms, App};
use crate::domain::Agent;

/// An agent as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// Server-chosen id (in the certificate's SPIFFE URI).
    pub id: String,
    /// Operator-facing name.
    pub name: String,
    /// `enrolled`, `connected`, `unreachable` or `revoked`.
    pub state: String,
    /// Labels from enrolment and the agent's hello.
    pub labels: BTreeMap<String, String>,
    /// Target kinds the agent can drive.
    pub capabilities: Vec<String>,
    /// Facts about the agent's host, once it said hello.
    pub host: Option<HostFactsView>,
    /// Agent software version.
    pub agent_version: Option<String>,
    /// SPIFFE URI of the agent's identity.
    pub spiffe_id: String,
    /// When it enrolled (RFC 3339, UTC).
    pub enrolled_at: String,
    /// Last hello or heartbeat written to the store (RFC 3339, UTC).
    pub last_seen_at: Option<String>,
    /// Expiry of its current certificate.
    pub certificate_not_after: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
}

/// Host facts reported by an agent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HostFactsView {
    /// Host name.
    pub hostname: String,
    /// Operating system name.
    pub os_name: String,
    /// Operating system version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Memory in bytes.
    pub memory_total_bytes: u64,
    /// Boot time, RFC 3339.
    pub boot_time: String,
}

impl AgentView {
    fn new(agent: Agent, app: &App) -> Self {
        let state = agent
            .state(now_ms(), app.config.heartbeat_interval_ms())
            .as_str();
        AgentView {
            spiffe_id: format!("spiffe://{}/agent/{}", app.trust_domain(), agent.id),
            id: agent.id,
            name: agent.name,
            state: state.to_owned(),
            labels: agent.labels,
            capabilities: agent.capabilities,
            host: agent.host.map(|host| HostFactsView {
                hostname: host.hostname,
                os_name: host.os_name,
                os_version: host.os_version,
                kernel_version: host.kernel_version,
                arch: host.arch,
                cpu_count: host.cpu_count,
                memory_total_bytes: host.memory_total_bytes,
                boot_time: rfc3339(host.boot_time_unix_seconds.saturating_mul(1000)),
            }),
            agent_version: agent.agent_version,
            enrolled_at: rfc3339(agent.enrolled_at_ms),
            last_seen_at: agent.last_seen_at_ms.map(rfc3339),
            certificate_not_after: rfc3339(agent.cert_not_after_ms),
            revoked_at: agent.revoked_at_ms.map(rfc3339),
            revoke_reason: agent.revoke_reason,
        }
    }
}

/// Lists agents.
///
/// Every enrolled agent with its state (`enrolled`, `connected`, `unreachable`,
/// `revoked`, derived from its last heartbeat), capabilities, labels, host facts and
/// certificate expiry. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", operation_id = "listAgents",
    responses(
        (status = 200, description = "Every agent", body = Vec<AgentView>),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn list(Scoped(app): Scoped, caller: Caller) -> ApiResult<Json<Vec<AgentView>>> {
    caller.require(Permission::Read)?;
    let agents = app.store.list_agents().await?;
    Ok(Json(
        agents
            .into_iter()
            .map(|a| AgentView::new(a, &app))
            .collect(),
    ))
}

/// Shows one agent.
///
/// The agent named by its id or its name, as in `listAgents`. Needs the viewer role.
#[utoipa::path(get, path = "/api/v1/agents/{agent}", tag = "agents", operation_id = "getAgent",
    params(("agent" = String, Path, description = "agent id or name")),
    responses(
        (status = 200, description = "The agent", body = AgentView),
        (status = 403, description = "The caller has no role that reads (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such agent (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn show(
    Scoped(app): Scoped,
    caller: Caller,
    Path(agent): Path<String>,
) -> ApiResult<Json<AgentView>> {
    caller.require(Permission::Read)?;
    let agent = app.store.find_agent(&agent).await?;
    Ok(Json(AgentView::new(agent, &app)))
}

/// Body of a revocation.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Why; kept with the agent.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Revokes an agent.
///
/// The revocation is stored first; then the agent's stream is closed and its
/// certificate refused on every replica from its next call on. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/agents/{agent}/revoke", tag = "agents", operation_id = "revokeAgent",
    params(("agent" = String, Path, description = "agent id or name")),
    request_body = RevokeRequest,
    responses(
        (status = 200, description = "The revoked agent", body = AgentView),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such agent (`not_found`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn revoke(
    Scoped(app): Scoped,
    caller: Caller,
    Path(agent): Path<String>,
    body: Result<Option<ApiJson<RevokeRequest>>, ApiError>,
) -> ApiResult<Json<AgentView>> {
    caller.require(Permission::Administer)?;
    let body = body?;
    let reason = body
        .and_then(|ApiJson(body)| body.reason)
        .unwrap_or_else(|| format!("revoked by {}", caller.0.name));
    let agent = app.revoke_agent(&agent, &reason).await?;
    Ok(Json(AgentView::new(agent, &app)))
}

/// Body of a join token request.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
// Unknown fields are refused: a misspelt one would otherwise be dropped silently.
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Lifetime in seconds (default 1800, at most 7 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// A new join token; shown once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    /// The token for `stella agent run --join-token`.
    pub token: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
}

/// Creates a join token.
///
/// A one-time token for `stella agent run --join-token`; it carries the CA's
/// fingerprint so the new agent can pin it, and expires after `ttl_seconds` (default
/// 30 minutes). Shown once: only its hash is stored. Needs the admin role.
#[utoipa::path(post, path = "/api/v1/agents/join-tokens", tag = "agents", operation_id = "createJoinToken",
    request_body = JoinTokenRequest,
    responses(
        (status = 201, description = "The new token", body = JoinTokenView),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn create_join_token(
    Scoped(app): Scoped,
    caller: Caller,
    body: Result<Option<ApiJson<JoinTokenRequest>>, ApiError>,
) -> ApiResult<(http::StatusCode, Json<JoinTokenView>)> {
    caller.require(Permission::Administer)?;
    let body = body?;
    let ttl = body
        .and_then(|ApiJson(body)| body.ttl_seconds)
        .map(Duration::from_secs);
    let issued = app.create_join_token(&caller.0, ttl).await?;
    Ok((
        http::StatusCode::CREATED,
        Json(JoinTokenView {
            token: issued.token,
            expires_at: rfc3339(issued.expires_at_ms),
        }),
    ))
}

/// Where agents find the gateway. Unauthenticated: agents pin the CA by the
/// fingerprint in their join token, so this answer needs no trust.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GatewayInfo {
    /// The agent gateway URL.
    pub grpc_url: String,
    /// SHA-256 of the CA certificate, hex.
    pub ca_fingerprint: String,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// curl's `--pinnedpubkey` value (`sha256//<base64>`) of the API's TLS key, which the
    /// agent install command pins; absent when the API serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_pin: Option<String>,
}

/// Gateway discovery for agents.
///
/// Where agents find the mTLS gRPC gateway, with the CA's fingerprint and the trust
/// domain. Needs no token: agents pin the CA by the fingerprint in their join token,
/// so this answer needs no trust.
#[utoipa::path(get, path = "/api/v1/gateway", tag = "agents", operation_id = "getGatewayInfo",
    responses((status = 200, description = "The gateway's address and identity", body = GatewayInfo)))]
pub async fn gateway(State(app): State<Arc<App>>, headers: HeaderMap) -> Json<GatewayInfo> {
    let grpc_url = match &app.config.grpc_advertise_url {
        Some(url) => url.clone(),
        None => {
            let host = headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .map(|authority| authority.host().to_owned())
                .unwrap_or_else(|| "localhost".to_owned());
            format!("https://{host}:{}", app.grpc_port())
        }
    };
    Json(GatewayInfo {
        grpc_url,
        ca_fingerprint: app.pki.ca.fingerprint().to_string(),
        trust_domain: app.trust_domain().to_owned(),
        api_key_pin: app.api_tls.as_ref().and_then(|tls| tls.public_key_pin()),
    })
}

/// Deletes a revoked agent.
///
/// Frees its name for a new enrolment; its certificate stays refused. Refused while it
/// is not revoked (`agent_not_revoked`) or a target names it (`agent_in_use`). Needs the
/// admin role.
#[utoipa::path(delete, path = "/api/v1/agents/{agent}", tag = "agents", operation_id = "deleteAgent",
    params(("agent" = String, Path, description = "agent id or name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The caller is not an admin (`forbidden`)", body = ErrorEnvelope),
        (status = 404, description = "No such agent (`unknown_agent`)", body = ErrorEnvelope),
        (status = 409, description = "Not revoked, or a target names it (`agent_not_revoked`, `agent_in_use`)", body = ErrorEnvelope),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    Scoped(app): Scoped,
    caller: Caller,
    Path(agent): Path<String>,
) -> ApiResult<http::StatusCode> {
    caller.require(Permission::Administer)?;
    app.delete_agent(&agent).await?;
    Ok(http::StatusCode::NO_CONTENT)
}
