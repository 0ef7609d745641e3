//! Targets: where an environment deploys, and the agent that drives each.

use std::collections::BTreeMap;

use super::{conflict_as, invalid, not_found_as, now_ms, validate_name, App};
use crate::domain::{Agent, Target, TargetKind};
use crate::error::{AppError, ErrorKind};
use crate::store::StoreError;

/// Changes to a target: `None` keeps what is there.
#[derive(Debug, Clone, Default)]
pub struct TargetChange {
    /// The agent (id or name) that drives it from now on.
    pub agent: Option<String>,
    /// Settings to set (added or replaced).
    pub set: BTreeMap<String, String>,
    /// Settings to remove.
    pub unset: Vec<String>,
}

impl App {
    /// Creates a target, checking kind, settings, environment and agent; with `check`,
    /// the agent must first confirm that it can drive the target as configured (see
    /// [`App::check_target`]), else nothing is stored (422 `target_check_failed`).
    pub async fn create_target(
        self: &std::sync::Arc<Self>,
        name: &str,
        environment: &str,
        kind: &str,
        agent: &str,
        settings: BTreeMap<String, String>,
        check: bool,
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
        let agent = self.agent_for_kind(agent, kind).await?;
        let target = Target {
            name: name.to_owned(),
            environment: env.name,
            kind,
            agent_id: agent.id,
            settings,
            created_at_ms: now_ms(),
        };
        if check {
            let checked = self.check_target(&target).await?;
            if !checked.ok {
                return Err(AppError::new(
                    ErrorKind::FailedPrecondition,
                    "target_check_failed",
                    format!(
                        "target `{name}` was not created: its agent cannot drive it: {}",
                        checked.message
                    ),
                ));
            }
        }
        self.store.create_target(&target).await.map_err(|e| {
            conflict_as(
                e,
                "target_exists",
                format!("target `{name}` already exists"),
            )
        })?;
        tracing::info!(target = %name, environment = %target.environment, kind = %kind, "target created");
        self.reevaluate_waiting(&target.environment).await;
        Ok(target)
    }

    /// Changes a target's agent or settings. Refused while a deployment has an unfinished
    /// task on it. What runs on the target changes with the next deployment; its agent
    /// (or both agents, when it moves) gets the new desired state at once.
    pub async fn update_target(
        self: &std::sync::Arc<Self>,
        name: &str,
        change: TargetChange,
    ) -> Result<Target, AppError> {
        let mut target = self.target(name).await?;
        let previous_agent = target.agent_id.clone();
        for key in &change.unset {
            if target.settings.remove(key).is_none() {
                return Err(AppError::invalid(format!(
                    "target `{name}` has no setting `{key}` to unset"
                )));
            }
        }
        target.settings.extend(change.set);
        target
            .kind
            .validate_settings(&target.settings)
            .map_err(invalid)?;
        if let Some(agent) = &change.agent {
            target.agent_id = self.agent_for_kind(agent, target.kind).await?.id;
        }
        self.store
            .update_target(&target)
            .await
            .map_err(|error| self.target_busy(name, "change", error))?;
        tracing::info!(target = %name, agent_id = %target.agent_id, "target changed");
        self.push_desired_state(&target.agent_id).await;
        if previous_agent != target.agent_id {
            self.push_desired_state(&previous_agent).await;
        }
        // Approvals are bound to the targets' settings: say at once what this voids.
        self.reevaluate_waiting(&target.environment).await;
        Ok(target)
    }

    /// Deletes a target. What runs there is left running; drift is no longer checked and
    /// its open findings are resolved. Refused while a deployment has an unfinished task
    /// on it.
    pub async fn delete_target(self: &std::sync::Arc<Self>, name: &str) -> Result<(), AppError> {
        let target = self.target(name).await?;
        self.store
            .delete_target(name, now_ms())
            .await
            .map_err(|error| self.target_busy(name, "delete", error))?;
        tracing::info!(target = %name, "target deleted");
        self.push_desired_state(&target.agent_id).await;
        self.reevaluate_waiting(&target.environment).await;
        Ok(())
    }

    /// The target with this name; 404 `unknown_target` if there is none.
    pub async fn target(&self, name: &str) -> Result<Target, AppError> {
        self.store.get_target(name).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_target",
                format!("unknown target `{name}`"),
            )
        })
    }

    fn target_busy(&self, name: &str, verb: &str, error: StoreError) -> AppError {
        match error {
            StoreError::Conflict { key, .. } => AppError::new(
                ErrorKind::Conflict,
                "target_busy",
                format!(
                    "cannot {verb} target `{name}`: deployment {key} has an unfinished task on it (wait for it or cancel it)"
                ),
            ),
            StoreError::NotFound {
                entity: "target", ..
            } => AppError::new(
                ErrorKind::NotFound,
                "unknown_target",
                format!("unknown target `{name}`"),
            ),
            other => other.into(),
        }
    }

    /// The agent `id_or_name`, if it exists, is not revoked, and (once it said hello)
    /// can drive `kind`.
    async fn agent_for_kind(&self, id_or_name: &str, kind: TargetKind) -> Result<Agent, AppError> {
        let agent = self.store.find_agent(id_or_name).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::InvalidArgument,
                "unknown_agent",
                format!("unknown agent `{id_or_name}`"),
            )
        })?;
        if agent.revoked_at_ms.is_some() {
            return Err(AppError::new(
                ErrorKind::InvalidArgument,
                "agent_revoked",
                format!("agent `{}` is revoked", agent.name),
            ));
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
        Ok(agent)
    }
}
