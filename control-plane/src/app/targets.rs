//! Targets: where an environment deploys, and the agent that drives each.

use std::collections::BTreeMap;

use super::{conflict_as, invalid, not_found_as, now_ms, validate_name, App};
use crate::domain::{Target, TargetKind};
use crate::error::{AppError, ErrorKind};

impl App {
    /// Creates a target, checking kind, settings, environment and agent.
    pub async fn create_target(
        &self,
        name: &str,
        environment: &str,
        kind: &str,
        agent: &str,
        settings: BTreeMap<String, String>,
    ) -> Result<Target, AppError> {
        validate_name("target", name)?;
        let kind: TargetKind = kind.parse().map_err(invalid)?;
        kind.validate_settings(&settings).map_err(invalid)?;
        let env = self.store.get_environment(environment).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::InvalidArgument,
                "unknown_environment",
                format!("unknown environment `{environment}`"),
            )
        })?;
        let agent = self.store.find_agent(agent).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::InvalidArgument,
                "unknown_agent",
                format!("unknown agent `{agent}`"),
            )
        })?;
        if agent.revoked_at_ms.is_some() {
            return Err(AppError::invalid(format!(
                "agent `{}` is revoked",
                agent.name
            )));
        }
        // An agent that said hello told us what it can drive.
        if agent.host.is_some() && !agent.capabilities.iter().any(|c| c == kind.as_str()) {
            return Err(AppError::new(
                ErrorKind::InvalidArgument,
                "agent_cannot_drive_kind",
                format!(
                    "agent `{}` cannot drive {kind} targets (it can drive: {})",
                    agent.name,
                    if agent.capabilities.is_empty() {
                        "nothing".to_owned()
                    } else {
                        agent.capabilities.join(", ")
                    }
                ),
            ));
        }
        let target = Target {
            name: name.to_owned(),
            environment: env.name,
            kind,
            agent_id: agent.id,
            settings,
            created_at_ms: now_ms(),
        };
        self.store.create_target(&target).await.map_err(|e| {
            conflict_as(
                e,
                "target_exists",
                format!("target `{name}` already exists"),
            )
        })?;
        tracing::info!(target = %name, environment = %target.environment, kind = %kind, "target created");
        Ok(target)
    }
}
