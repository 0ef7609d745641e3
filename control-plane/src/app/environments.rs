//! Environments: create, change and delete; promotion order, drift mode, deployment
//! timeout; variables and sealed secrets.

use std::collections::BTreeMap;

use stella_decision::rollout::Strategy;

use super::{conflict_as, invalid, not_found_as, now_ms, validate_name, App};
use crate::domain::{validate_variable_name, DriftMode, Environment, User, Variable, VariableKind};
use crate::error::{AppError, ErrorKind};
use crate::store::StoreError;

/// The longest deployment timeout an environment may set.
const MAX_DEPLOYMENT_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;
/// The longest variable or secret value.
const MAX_VARIABLE_BYTES: usize = 64 * 1024;

/// Settings of an environment, for creating or changing one: `None` keeps what is there
/// (at creation: the default).
#[derive(Debug, Clone, Default)]
pub struct EnvironmentChange {
    /// New predecessor; `Some(None)` clears it.
    pub after: Option<Option<String>>,
    /// New drift mode.
    pub drift_mode: Option<DriftMode>,
    /// New deployment timeout; `Some(None)`: back to the server's default.
    pub deployment_timeout_seconds: Option<Option<u64>>,
    /// Distinct approvals needed.
    pub approvals_required: Option<u32>,
    /// How long an approval counts; `Some(None)`: until the deployment starts.
    pub approval_ttl_seconds: Option<Option<u64>>,
    /// Freeze windows (`CRON/DURATION[@TZ]`), replacing the ones there.
    pub freeze: Option<Vec<String>>,
    /// Block severity: `none`, `low`, `medium`, `high`, `critical`.
    pub block_severity: Option<String>,
    /// Whether an unscanned image may pass.
    pub allow_unscanned: Option<bool>,
    /// A Rego policy's source; `Some(None)` removes the policy.
    pub policy: Option<Option<String>>,
    /// A task-pack manifest, the promotion workflow; `Some(None)` goes back to the
    /// built-in one.
    pub workflow: Option<Option<String>>,
    /// The rollout strategy as CLI-shaped settings (`strategy`, `steps`, `router`, …:
    /// the flags of `stella env update` without `--`); `Some(None)` goes back to
    /// all-at-once.
    pub rollout: Option<Option<BTreeMap<String, String>>>,
}

/// The most approvals an environment may require.
const MAX_APPROVALS: u32 = 20;
/// The longest approval lifetime: 90 days.
const MAX_APPROVAL_TTL_SECONDS: u64 = 90 * 24 * 3600;
/// The largest policy source.
const MAX_POLICY_BYTES: usize = 256 * 1024;

/// A variable or secret as shown: secrets without their value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableView {
    /// Variable or secret.
    pub kind: VariableKind,
    /// Its name.
    pub name: String,
    /// The value of a variable; `None` for a secret.
    pub value: Option<String>,
    /// Who set it last.
    pub updated_by: String,
    /// When it was set last.
    pub updated_at_ms: i64,
}

impl App {
    /// The environment with this name; 404 `unknown_environment` if there is none.
    pub async fn environment(&self, name: &str) -> Result<Environment, AppError> {
        self.store.get_environment(name).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_environment",
                format!("unknown environment `{name}`"),
            )
        })
    }

    /// Creates an environment.
    pub async fn create_environment(
        &self,
        name: &str,
        settings: EnvironmentChange,
    ) -> Result<Environment, AppError> {
        validate_name("environment", name)?;
        let mut env = Environment {
            name: name.to_owned(),
            after: None,
            drift_mode: DriftMode::default(),
            deployment_timeout_seconds: None,
            gates: crate::domain::Gates::default(),
            created_at_ms: now_ms(),
        };
        self.apply_change(&mut env, settings).await?;
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
        self: &std::sync::Arc<Self>,
        name: &str,
        change: EnvironmentChange,
    ) -> Result<Environment, AppError> {
        let mut env = self.environment(name).await?;
        self.apply_change(&mut env, change).await?;
        self.store.update_environment(&env).await?;
        tracing::info!(environment = %name, "environment changed");
        // A changed gate configuration changes the plan of every waiting promotion.
        self.reevaluate_waiting(name).await;
        Ok(env)
    }

    /// Checks a change and applies it to `env`: `after` must name another existing
    /// environment and must not close a cycle; the timeout must be 1 s to 7 days.
    async fn apply_change(
        &self,
        env: &mut Environment,
        change: EnvironmentChange,
    ) -> Result<(), AppError> {
        if let Some(after) = change.after {
            if let Some(after) = &after {
                self.check_promotion_order(&env.name, after).await?;
            }
            env.after = after;
        }
        if let Some(mode) = change.drift_mode {
            env.drift_mode = mode;
        }
        if let Some(timeout) = change.deployment_timeout_seconds {
            if let Some(seconds) = timeout {
                if seconds == 0 || seconds > MAX_DEPLOYMENT_TIMEOUT_SECONDS {
                    return Err(AppError::invalid(
                        "deployment timeout must be between 1 second and 7 days",
                    ));
                }
            }
            env.deployment_timeout_seconds = timeout;
        }
        if let Some(approvals) = change.approvals_required {
            if approvals > MAX_APPROVALS {
                return Err(AppError::invalid(format!(
                    "--approvals must be between 0 and {MAX_APPROVALS}"
                )));
            }
            env.gates.approvals_required = approvals;
        }
        if let Some(ttl) = change.approval_ttl_seconds {
            if let Some(seconds) = ttl {
                if seconds == 0 || seconds > MAX_APPROVAL_TTL_SECONDS {
                    return Err(AppError::invalid(
                        "--approval-ttl must be between 1 second and 90 days",
                    ));
                }
            }
            env.gates.approval_ttl_seconds = ttl;
        }
        if let Some(windows) = change.freeze {
            let mut specs = Vec::with_capacity(windows.len());
            for spec in windows {
                let spec = spec.trim().to_owned();
                spec.parse::<stella_decision::freeze::FreezeWindow>()
                    .map_err(|e| AppError::invalid(e.0))?;
                if !specs.contains(&spec) {
                    specs.push(spec);
                }
            }
            env.gates.freeze = specs;
        }
        if let Some(severity) = change.block_severity {
            let severity = severity.trim().to_ascii_lowercase();
            stella_decision::scan::parse_block_severity(&severity)
                .map_err(|e| AppError::invalid(e.0))?;
            env.gates.block_severity = severity;
        }
        if let Some(allow) = change.allow_unscanned {
            env.gates.allow_unscanned = allow;
        }
        if let Some(policy) = change.policy {
            env.gates.policy_id = match policy {
                None => None,
                Some(source) => Some(self.store_policy(&env.name, &source).await?),
            };
        }
        if let Some(rollout) = change.rollout {
            env.gates.rollout = match rollout {
                None => None,
                Some(settings) => self.check_rollout(&settings).await?,
            };
        }
        if let Some(workflow) = change.workflow {
            env.gates.workflow_id = match workflow {
                None => None,
                Some(manifest) => Some(self.store_workflow(&env.name, &manifest).await?),
            };
        }
        Ok(())
    }

    /// Reads a rollout strategy from its settings: `None` for all-at-once. Refused: a
    /// setting the strategy does not take or a bad value (naming the flag), checks this
    /// server does not know, a router that does not exist.
    async fn check_rollout(
        &self,
        settings: &BTreeMap<String, String>,
    ) -> Result<Option<Strategy>, AppError> {
        let strategy = Strategy::from_settings(settings).map_err(|e| AppError::invalid(e.0))?;
        let analysis = match &strategy {
            Strategy::Rolling { analysis, .. }
            | Strategy::BlueGreen { analysis, .. }
            | Strategy::Canary { analysis, .. } => analysis.as_ref(),
            Strategy::AllAtOnce | Strategy::AB { .. } => None,
        };
        if let Some(analysis) = analysis {
            super::rollouts::analysis::parse_checks(&analysis.checks).map_err(AppError::invalid)?;
        }
        if let Some(router) = strategy.router() {
            if let Err(error) = self.router(router).await {
                return Err(AppError::new(
                    ErrorKind::InvalidArgument,
                    "unknown_router",
                    format!("--router {router}: {}", error.message),
                ));
            }
        }
        Ok((strategy != Strategy::AllAtOnce).then_some(strategy))
    }

    /// Checks a Rego policy and stores its source by content; returns its id (the
    /// policy's version).
    async fn store_policy(&self, environment: &str, source: &str) -> Result<String, AppError> {
        if source.len() > MAX_POLICY_BYTES {
            return Err(AppError::invalid(format!(
                "the policy is {} bytes; at most {MAX_POLICY_BYTES} are accepted",
                source.len()
            )));
        }
        let policy = stella_decision::policy::Policy::compile(source).map_err(|e| {
            AppError::new(
                ErrorKind::InvalidArgument,
                "invalid_policy",
                format!("the policy is refused: {e}"),
            )
        })?;
        let id = policy.sha256().to_owned();
        self.store
            .put_document(&crate::domain::Document {
                id: id.clone(),
                kind: "rego".to_owned(),
                content: source.to_owned(),
                created_by: format!("environment:{environment}"),
                created_at_ms: now_ms(),
            })
            .await?;
        Ok(id)
    }

    /// Refuses `name --after after` when `after` does not exist or when following the
    /// `after` chain from it leads back to `name`.
    async fn check_promotion_order(&self, name: &str, after: &str) -> Result<(), AppError> {
        if after == name {
            return Err(AppError::new(
                ErrorKind::InvalidArgument,
                "promotion_cycle",
                format!("`{name}` cannot come after itself"),
            ));
        }
        let mut chain = vec![name.to_owned()];
        let mut next = Some(after.to_owned());
        while let Some(current) = next {
            if chain.contains(&current) {
                chain.push(current);
                return Err(AppError::new(
                    ErrorKind::InvalidArgument,
                    "promotion_cycle",
                    format!(
                        "`{name}` after `{after}` would make a cycle: {}",
                        chain.join(" → ")
                    ),
                ));
            }
            let env = self.store.get_environment(&current).await.map_err(|e| {
                not_found_as(
                    e,
                    ErrorKind::InvalidArgument,
                    "unknown_environment",
                    format!("--after names an unknown environment `{current}`"),
                )
            })?;
            chain.push(current);
            next = env.after;
        }
        Ok(())
    }

    /// Deletes an environment. Refused while targets belong to it, another environment
    /// comes after it, or (unless `with_history`) it has deployment history; with
    /// `with_history` the history goes with it.
    pub async fn delete_environment(&self, name: &str, with_history: bool) -> Result<(), AppError> {
        self.store
            .delete_environment(name, with_history)
            .await
            .map_err(|error| match error {
                StoreError::NotFound { .. } => AppError::new(
                    ErrorKind::NotFound,
                    "unknown_environment",
                    format!("unknown environment `{name}`"),
                ),
                StoreError::Conflict { entity, key } => {
                    let why = match entity {
                        "target" => format!("target `{key}` belongs to it: delete or move its targets first"),
                        "environment" => format!("`{key}` comes after it: change `{key}`'s --after first"),
                        _ => format!("it has deployment history (latest: {key}): pass --with-history to delete the history too"),
                    };
                    AppError::new(
                        ErrorKind::Conflict,
                        "environment_in_use",
                        format!("cannot delete environment `{name}`: {why}"),
                    )
                }
                other => other.into(),
            })?;
        tracing::info!(environment = %name, with_history, "environment deleted");
        Ok(())
    }

    /// Sets a variable (stored as is) or a secret (sealed before it is stored; the value
    /// is never returned, logged or recorded in a plan).
    pub async fn set_variable(
        self: &std::sync::Arc<Self>,
        environment: &str,
        kind: VariableKind,
        name: &str,
        value: &str,
        by: &User,
    ) -> Result<VariableView, AppError> {
        let env = self.environment(environment).await?;
        validate_variable_name(name).map_err(invalid)?;
        if value.len() > MAX_VARIABLE_BYTES {
            return Err(AppError::invalid(format!(
                "{kind} `{name}` is longer than {MAX_VARIABLE_BYTES} bytes"
            )));
        }
        let stored_value = match kind {
            VariableKind::Var => value.to_owned(),
            VariableKind::Secret => self.secrets.seal(value),
        };
        let variable = Variable {
            environment: env.name,
            kind,
            name: name.to_owned(),
            stored_value,
            updated_by: by.name.clone(),
            updated_at_ms: now_ms(),
        };
        self.store.set_variable(&variable).await?;
        tracing::info!(environment, %kind, name, user = %by.name, "variable set");
        self.reevaluate_waiting(environment).await;
        Ok(view(variable))
    }

    /// The variables and secrets of an environment (secrets without values).
    pub async fn list_variables(&self, environment: &str) -> Result<Vec<VariableView>, AppError> {
        let env = self.environment(environment).await?;
        Ok(self
            .store
            .list_variables(&env.name)
            .await?
            .into_iter()
            .map(view)
            .collect())
    }

    /// Deletes a variable or secret. Deployments planned with it keep their plan; one
    /// not yet sent that needs a deleted secret fails when it is sent.
    pub async fn delete_variable(
        self: &std::sync::Arc<Self>,
        environment: &str,
        kind: VariableKind,
        name: &str,
    ) -> Result<(), AppError> {
        let env = self.environment(environment).await?;
        self.store
            .delete_variable(&env.name, kind, name)
            .await
            .map_err(|e| {
                not_found_as(
                    e,
                    ErrorKind::NotFound,
                    "unknown_variable",
                    format!("`{environment}` has no {kind} `{name}`"),
                )
            })?;
        tracing::info!(environment, %kind, name, "variable deleted");
        self.reevaluate_waiting(environment).await;
        Ok(())
    }
}

fn view(variable: Variable) -> VariableView {
    VariableView {
        kind: variable.kind,
        value: (variable.kind == VariableKind::Var).then_some(variable.stored_value),
        name: variable.name,
        updated_by: variable.updated_by,
        updated_at_ms: variable.updated_at_ms,
    }
}
