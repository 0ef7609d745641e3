//! Live target checks: the agent that drives a target is asked whether it can reach and
//! drive it as configured (`stella target check`, `stella target create --check`). The
//! question goes over the agent's stream (`CheckTarget`) with the settings as a
//! deployment would get them — variables substituted, the referenced secrets' values
//! added — and the answer (`CheckResult`) comes back on it. Nothing is stored: a check
//! is asked of the agent session this replica holds, and waited for a bounded time.

use std::time::Duration;

use stella_proto::v1;

use super::{now_ms, App};
use crate::domain::{AgentState, DeploySpec, Target, TargetSpec};
use crate::error::{AppError, ErrorKind};

/// How long the server waits for an agent's answer (the agent gives the target 20 s).
const CHECK_WAIT: Duration = Duration::from_secs(25);

/// What an agent said of a target.
#[derive(Debug, Clone)]
pub struct TargetCheck {
    /// Whether the agent can drive the target as configured.
    pub ok: bool,
    /// What it found, or why it cannot.
    pub message: String,
    /// When the answer came.
    pub checked_at_ms: i64,
    /// How long the check took, the round trip included.
    pub duration_ms: i64,
}

impl App {
    /// Asks the agent of `target` (stored or not yet) to check it. Errors when the
    /// question cannot be asked or is not answered; a target the agent cannot drive is
    /// an `Ok` with `ok: false` and the agent's reason.
    pub async fn check_target(&self, target: &Target) -> Result<TargetCheck, AppError> {
        let agent = self.store.get_agent(&target.agent_id).await?;
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
                        "agent `{}` is not connected, so it cannot check target `{}`",
                        agent.name, target.name
                    )
                },
            ));
        }
        let env = self.store.get_environment(&target.environment).await?;
        let mut planned = self
            .plan_settings(&env, std::slice::from_ref(target))
            .await?;
        let settings = planned
            .settings
            .remove(&target.name)
            .unwrap_or_else(|| target.settings.clone());
        let spec = DeploySpec {
            deployment_id: String::new(),
            decision_id: String::new(),
            environment: target.environment.clone(),
            release: String::new(),
            version: String::new(),
            target: TargetSpec {
                name: target.name.clone(),
                kind: target.kind.as_str().to_owned(),
                settings,
            },
            components: Vec::new(),
            slot: None,
        };
        let mut payload = serde_json::to_value(&spec)
            .map_err(|e| AppError::internal("encoding a check payload", &e))?;
        let secrets = self.secret_values(&spec).await?;
        if !secrets.is_empty() {
            payload["secrets"] = serde_json::to_value(secrets)
                .map_err(|e| AppError::internal("encoding secrets", &e))?;
        }

        let started = std::time::Instant::now();
        let answer = self
            .checks
            .ask(&self.sessions, &agent.id, CHECK_WAIT, |check_id| {
                v1::ServerMessage {
                    body: Some(v1::server_message::Body::CheckTarget(v1::CheckTarget {
                        check_id,
                        payload_json: payload.to_string().into_bytes(),
                    })),
                }
            })
            .await;
        let Some((ok, message)) = answer else {
            return Err(AppError::new(
                ErrorKind::Unavailable,
                "check_unanswered",
                format!(
                    "agent `{}` did not answer the check of target `{}` within {} s",
                    agent.name,
                    target.name,
                    CHECK_WAIT.as_secs()
                ),
            ));
        };
        tracing::info!(target = %target.name, agent_id = %agent.id, ok, "target checked");
        Ok(TargetCheck {
            ok,
            message,
            checked_at_ms: now_ms(),
            duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// An agent's answer to a check; ignored unless that agent was asked.
    pub(crate) fn complete_check(&self, agent_id: &str, result: v1::CheckResult) {
        let id = result.check_id.clone();
        self.checks
            .complete(agent_id, &id, (result.ok, result.message));
    }
}
