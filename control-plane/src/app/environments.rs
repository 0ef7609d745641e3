//! Environments: create and change; promotion order and drift mode.

use super::{conflict_as, not_found_as, now_ms, validate_name, App};
use crate::domain::{DriftMode, Environment};
use crate::error::{AppError, ErrorKind};

/// Changes to an environment.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentChange {
    /// New predecessor; `Some(None)` clears it.
    pub after: Option<Option<String>>,
    /// New drift mode.
    pub drift_mode: Option<DriftMode>,
}

impl App {
    /// Creates an environment.
    pub async fn create_environment(
        &self,
        name: &str,
        after: Option<String>,
        drift_mode: DriftMode,
    ) -> Result<Environment, AppError> {
        validate_name("environment", name)?;
        if let Some(after) = &after {
            self.store.get_environment(after).await.map_err(|e| {
                not_found_as(
                    e,
                    ErrorKind::InvalidArgument,
                    "unknown_environment",
                    format!("--after names an unknown environment `{after}`"),
                )
            })?;
        }
        let env = Environment {
            name: name.to_owned(),
            after,
            drift_mode,
            created_at_ms: now_ms(),
        };
        self.store.create_environment(&env).await.map_err(|e| {
            conflict_as(
                e,
                "environment_exists",
                format!("environment `{name}` already exists"),
            )
        })?;
        tracing::info!(environment = %name, "environment created");
        Ok(env)
    }

    /// Changes an environment's settings.
    pub async fn update_environment(
        &self,
        name: &str,
        change: EnvironmentChange,
    ) -> Result<Environment, AppError> {
        let mut env = self.store.get_environment(name).await?;
        if let Some(after) = change.after {
            if let Some(after) = &after {
                if after == name {
                    return Err(AppError::invalid("an environment cannot come after itself"));
                }
                self.store.get_environment(after).await?;
            }
            env.after = after;
        }
        if let Some(mode) = change.drift_mode {
            env.drift_mode = mode;
        }
        self.store.update_environment(&env).await?;
        Ok(env)
    }
}
