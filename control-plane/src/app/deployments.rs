//! Promotions, rollbacks and the deployments they create: one stored task per target
//! before anything is sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{not_found_as, now_ms, App};
use crate::domain::{
    format_utc_ms, substitute_variables, Agent, AgentState, DeploySpec, Deployment, DeploymentKind,
    DeploymentState, Environment, Invalid, Release, Target, Task, TaskKind, TaskState, User,
    VariableKind,
};
use crate::error::{AppError, ErrorKind};
use crate::store::StoreError;

/// What a deployment plans for its targets' settings.
#[derive(Debug, Default)]
pub(super) struct PlannedSettings {
    /// Settings per target, variables substituted, secrets still referenced.
    pub(super) settings: BTreeMap<String, BTreeMap<String, String>>,
    /// Secrets referenced, with the time each was last set (its version).
    pub(super) secret_versions: BTreeMap<String, i64>,
}

/// RFC 8785 canonical JSON of a value whose numbers are integers: sorted keys, no
/// white space (serde_json's map is ordered and prints integers canonically).
pub fn canonical_json(value: &serde_json::Value) -> String {
    value.to_string()
}

/// `sha256:<hex>` of bytes.
pub fn sha256_id(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl App {
    /// Creates a deployment of `release` to `env` (all its targets, or one) and
    /// dispatches it. Refused up front when a target's agent is revoked, a setting
    /// references a variable or secret the environment lacks, or the environment has a
    /// deployment in progress (decided by the store, so concurrent requests cannot both
    /// win).
    pub(super) async fn deploy(
        self: &Arc<Self>,
        release: &Release,
        env: &Environment,
        kind: DeploymentKind,
        requested_by: &str,
        only_target: Option<&Target>,
    ) -> Result<Deployment, AppError> {
        let targets = match only_target {
            Some(target) => vec![target.clone()],
            None => self.store.list_targets(Some(&env.name)).await?,
        };
        if targets.is_empty() {
            return Err(no_targets(env));
        }
        let now = now_ms();
        let plan = self.plan_settings(env, &targets).await?;
        let decision = serde_json::json!({
            "kind": kind.as_str(),
            "release": release.name,
            "version": release.version,
            "components": release.components.iter().map(|c| (c.name.clone(), c.image.clone())).collect::<BTreeMap<_, _>>(),
            "environment": env.name,
            "targets": targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            "settings": plan.settings,
            "secrets": plan.secret_versions,
            "gates": [],
            "outcome": "allowed",
            "requested_by": requested_by,
            "requested_at_ms": now,
        });
        let decision_id = sha256_id(canonical_json(&decision).as_bytes());
        let (mut deployment, tasks) = self
            .plan_deployment(
                release,
                env,
                kind,
                requested_by,
                &targets,
                &plan.settings,
                &decision_id,
                now,
            )
            .await?;
        deployment.generation = match self.store.create_deployment(&deployment, &tasks).await {
            Ok(generation) => generation,
            Err(StoreError::Conflict {
                entity: "active deployment",
                ..
            }) => return Err(self.deployment_in_progress(&env.name).await),
            Err(other) => return Err(other.into()),
        };
        self.deployment_created(&deployment, &tasks, release, env, now)
            .await;
        Ok(deployment)
    }

    /// The deployment of `release` to `targets` with their planned settings, and one task
    /// per target, not yet stored. Refused when a target's agent is revoked or a target
    /// selects no component.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn plan_deployment(
        &self,
        release: &Release,
        env: &Environment,
        kind: DeploymentKind,
        requested_by: &str,
        targets: &[Target],
        settings: &BTreeMap<String, BTreeMap<String, String>>,
        decision_id: &str,
        now: i64,
    ) -> Result<(Deployment, Vec<Task>), AppError> {
        let agents = self.agents_of(targets).await?;
        for target in targets {
            if let Some(agent) = agents.get(&target.agent_id) {
                if agent.revoked_at_ms.is_some() {
                    return Err(AppError::new(
                        ErrorKind::FailedPrecondition,
                        "agent_revoked",
                        format!(
                            "target `{}` is driven by agent `{}`, which is revoked: move the target to another agent (stella target update {} --agent …)",
                            target.name, agent.name, target.name
                        ),
                    ));
                }
            }
        }
        let deployment = Deployment {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            environment: env.name.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            decision_id: decision_id.to_owned(),
            generation: 0,
            state: DeploymentState::Pending,
            message: None,
            created_by: requested_by.to_owned(),
            created_at_ms: now,
            finished_at_ms: None,
        };
        let timeout_seconds = env
            .deployment_timeout_seconds
            .unwrap_or(self.config.task_deadline_seconds);
        let deadline = now.saturating_add(
            i64::try_from(timeout_seconds)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
        );
        let mut tasks = Vec::with_capacity(targets.len());
        for target in targets {
            let mut planned = target.clone();
            if let Some(settings) = settings.get(&target.name) {
                planned.settings = settings.clone();
            }
            let spec = DeploySpec::new(&deployment, release, &planned);
            if spec.components.is_empty() {
                return Err(AppError::invalid(format!(
                    "target `{}` selects no component of {}@{}",
                    target.name, release.name, release.version
                )));
            }
            let payload_json = serde_json::to_string(&spec)
                .map_err(|e| AppError::internal("encoding a deploy payload", &e))?;
            tasks.push(Task {
                id: uuid::Uuid::now_v7().to_string(),
                deployment_id: deployment.id.clone(),
                target: target.name.clone(),
                agent_id: target.agent_id.clone(),
                kind: TaskKind::Deploy,
                epoch: 0,
                generation: 0,
                state: TaskState::Pending,
                payload_json,
                message: None,
                deadline_at_ms: deadline,
                created_at_ms: now,
                finished_at_ms: None,
            });
        }
        Ok((deployment, tasks))
    }

    /// What follows a stored deployment: its first log lines, and dispatch.
    pub(super) async fn deployment_created(
        &self,
        deployment: &Deployment,
        tasks: &[Task],
        release: &Release,
        env: &Environment,
        now: i64,
    ) {
        let kind = deployment.kind;
        let requested_by = &deployment.created_by;
        let timeout_seconds = env
            .deployment_timeout_seconds
            .unwrap_or(self.config.task_deadline_seconds);
        self.log(
            &deployment.id,
            "",
            &format!(
                "{} of {}@{} to {} ({} target{}) requested by {requested_by}; timeout {}",
                kind,
                release.name,
                release.version,
                env.name,
                tasks.len(),
                if tasks.len() == 1 { "" } else { "s" },
                humantime::format_duration(std::time::Duration::from_secs(timeout_seconds)),
            ),
        )
        .await;
        tracing::info!(deployment_id = %deployment.id, release = %release.name, version = %release.version, environment = %env.name, %kind, generation = deployment.generation, "deployment created");
        let agents = match self
            .agents_by_id(tasks.iter().map(|t| t.agent_id.as_str()))
            .await
        {
            Ok(agents) => agents,
            Err(error) => {
                tracing::warn!(deployment_id = %deployment.id, %error, "cannot read the agents of a deployment");
                HashMap::new()
            }
        };
        for task in tasks {
            if let Some(waiting) = agents
                .get(&task.agent_id)
                .and_then(|agent| self.waiting_for(agent, now))
            {
                self.log(
                    &deployment.id,
                    &task.id,
                    &format!("{}: {waiting}", task.target),
                )
                .await;
            }
        }
        let mut agent_ids: Vec<&str> = tasks.iter().map(|t| t.agent_id.as_str()).collect();
        agent_ids.sort_unstable();
        agent_ids.dedup();
        self.dispatch_deployment(&deployment.id, &agent_ids).await;
    }

    /// The 409 for a promotion that meets a deployment in progress, naming it.
    pub(super) async fn deployment_in_progress(&self, environment: &str) -> AppError {
        let detail = match self.store.active_deployment(environment).await {
            Ok(Some(active)) => format!(
                ": deployment {} ({}@{}, {}) is still {}; wait for it or cancel it (stella deployment cancel {})",
                active.id, active.release, active.version, active.kind, active.state, active.id
            ),
            _ => String::new(),
        };
        AppError::new(
            ErrorKind::Conflict,
            "deployment_in_progress",
            format!("`{environment}` has a deployment in progress{detail}"),
        )
    }

    /// The agents of these targets, by id.
    pub(super) async fn agents_of(
        &self,
        targets: &[Target],
    ) -> Result<HashMap<String, Agent>, AppError> {
        self.agents_by_id(targets.iter().map(|t| t.agent_id.as_str()))
            .await
    }

    /// The agents with these ids, by id. An id with no agent is left out: a target names
    /// an existing agent (foreign key); if it vanished, its task waits and expires like
    /// one for an unreachable agent.
    pub(super) async fn agents_by_id<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, Agent>, AppError> {
        /// Above this many agents one read of them all beats one read per agent (a
        /// fan-out to 10,000 targets spent seconds in point reads).
        const READ_ALL_ABOVE: usize = 32;
        let wanted: std::collections::BTreeSet<&str> = ids.into_iter().collect();
        if wanted.len() > READ_ALL_ABOVE {
            return Ok(self
                .store
                .list_agents()
                .await?
                .into_iter()
                .filter(|agent| wanted.contains(agent.id.as_str()))
                .map(|agent| (agent.id.clone(), agent))
                .collect());
        }
        let mut agents = HashMap::new();
        for id in wanted {
            match self.store.get_agent(id).await {
                Ok(agent) => {
                    agents.insert(agent.id.clone(), agent);
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Ok(agents)
    }

    /// Each target's settings with the environment's variables substituted, and the
    /// versions (last change times) of the secrets they reference.
    pub(super) async fn plan_settings(
        &self,
        env: &Environment,
        targets: &[Target],
    ) -> Result<PlannedSettings, AppError> {
        let variables = self.store.list_variables(&env.name).await?;
        let values: BTreeMap<String, String> = variables
            .iter()
            .filter(|v| v.kind == VariableKind::Var)
            .map(|v| (v.name.clone(), v.stored_value.clone()))
            .collect();
        let secrets: BTreeMap<String, i64> = variables
            .iter()
            .filter(|v| v.kind == VariableKind::Secret)
            .map(|v| (v.name.clone(), v.updated_at_ms))
            .collect();
        let secret_names: BTreeSet<String> = secrets.keys().cloned().collect();
        let mut planned = PlannedSettings::default();
        for target in targets {
            let (settings, used) = substitute_variables(&target.settings, &values, &secret_names)
                .map_err(|Invalid(e)| {
                AppError::new(
                    ErrorKind::FailedPrecondition,
                    "unresolved_reference",
                    format!("target `{}`: {e}", target.name),
                )
            })?;
            for name in used {
                if let Some(version) = secrets.get(&name) {
                    planned.secret_versions.insert(name, *version);
                }
            }
            planned.settings.insert(target.name.clone(), settings);
        }
        Ok(planned)
    }

    /// "waiting for agent …" when the agent cannot take a task now, else `None`.
    pub(super) fn waiting_for(&self, agent: &Agent, now: i64) -> Option<String> {
        let state = agent.state(now, self.config.heartbeat_interval_ms());
        let since = match state {
            AgentState::Connected => return None,
            AgentState::Enrolled => "it has never connected".to_owned(),
            AgentState::Unreachable => format!(
                "unreachable since {}",
                agent
                    .last_seen_at_ms
                    .map_or_else(|| "?".to_owned(), format_utc_ms)
            ),
            AgentState::Disconnected => format!(
                "disconnected (stopped cleanly) since {}",
                agent
                    .disconnected_at_ms
                    .map_or_else(|| "?".to_owned(), format_utc_ms)
            ),
            AgentState::Revoked => "it is revoked".to_owned(),
        };
        Some(format!("waiting for agent `{}`: {since}", agent.name))
    }

    /// Appends a log line; a failure to store it is logged, not returned (the line is
    /// advisory, what it reports is stored already).
    pub(super) async fn log(&self, deployment_id: &str, task_id: &str, line: &str) {
        if let Err(error) = self
            .store
            .append_log(deployment_id, task_id, None, now_ms(), line)
            .await
        {
            tracing::warn!(deployment_id, error = %crate::error::ErrorChain(&error), "cannot store a deployment log line");
        }
    }

    /// A deployment by id or unique id prefix (at least 8 characters).
    pub async fn find_deployment(&self, id_or_prefix: &str) -> Result<Deployment, AppError> {
        self.store
            .find_deployment(id_or_prefix)
            .await
            .map_err(|error| {
                super::prefix_lookup_error(error, "deployment", "unknown_deployment", id_or_prefix)
            })
    }

    /// Cancels a deployment that has not finished: its unfinished tasks are cancelled
    /// in the store, then their agents are told to stop them (agents on other replicas
    /// are told by those replicas within a second). What a task already changed on its
    /// target stays; drift shows it.
    pub async fn cancel_deployment(
        &self,
        id_or_prefix: &str,
        requested_by: &User,
    ) -> Result<Deployment, AppError> {
        let deployment = self.find_deployment(id_or_prefix).await?;
        if let Some(rollout) = self.store.get_rollout(&deployment.id).await? {
            if !rollout.state.is_terminal() {
                // Stopping a rollout's tasks would leave the router and the slots as
                // they are; an abort undoes them.
                return self
                    .request_rollout(
                        &deployment.id,
                        crate::domain::RolloutRequest::Abort,
                        &requested_by.name,
                    )
                    .await;
            }
        }
        let message = format!("cancelled by {}", requested_by.name);
        let cancelled = self
            .store
            .cancel_deployment(&deployment.id, &message, now_ms())
            .await
            .map_err(|error| match error {
                StoreError::Conflict { key, .. } => AppError::new(
                    ErrorKind::Conflict,
                    "deployment_finished",
                    format!("deployment {} already finished: {key}", deployment.id),
                ),
                other => other.into(),
            })?;
        self.log(&deployment.id, "", &format!("deployment {message}"))
            .await;
        tracing::info!(deployment_id = %deployment.id, tasks = cancelled.len(), user = %requested_by.name, "deployment cancelled");
        for task in &cancelled {
            self.send_cancel(task, &message).await;
        }
        let deployment = self.store.get_deployment(&deployment.id).await?;
        self.count_finished(&deployment);
        self.promotion_deployment_finished(&deployment).await;
        Ok(deployment)
    }

    /// Redeploys the version deployed successfully before the current one (or `to`).
    pub async fn rollback(
        self: &Arc<Self>,
        environment: &str,
        to: Option<&str>,
        requested_by: &User,
    ) -> Result<Deployment, AppError> {
        let env = self.environment(environment).await?;
        let (release_name, target_version) = match to {
            Some(version) => {
                let Some(earlier) = self
                    .store
                    .succeeded_deployment_of_version(&env.name, version)
                    .await?
                else {
                    return Err(AppError::new(
                        ErrorKind::FailedPrecondition,
                        "not_deployed_here",
                        format!(
                            "version {version} never deployed successfully to `{}`: a rollback goes only to a version that ran there (promote it instead)",
                            env.name
                        ),
                    ));
                };
                (earlier.release, earlier.version)
            }
            None => {
                let history = self.store.succeeded_deployments(&env.name, 100).await?;
                let Some(current) = history.first() else {
                    return Err(AppError::new(
                        ErrorKind::FailedPrecondition,
                        "nothing_to_roll_back",
                        format!("nothing was deployed successfully to `{}` yet", env.name),
                    ));
                };
                history
                    .iter()
                    .find(|d| d.release != current.release || d.version != current.version)
                    .map(|d| (d.release.clone(), d.version.clone()))
                    .ok_or_else(|| {
                        AppError::new(
                            ErrorKind::FailedPrecondition,
                            "nothing_to_roll_back",
                            format!(
                                "`{}` has no earlier successful version than {}",
                                env.name, current.version
                            ),
                        )
                    })?
            }
        };
        let release = self
            .store
            .get_release(&release_name, &target_version)
            .await
            .map_err(|e| {
                not_found_as(
                    e,
                    ErrorKind::NotFound,
                    "unknown_release",
                    format!("unknown release {release_name}@{target_version}"),
                )
            })?;
        self.deploy(
            &release,
            &env,
            DeploymentKind::Rollback,
            &requested_by.name,
            None,
        )
        .await
    }
}

/// Refuses a deployment or plan for an environment without targets.
pub(super) fn no_targets(env: &Environment) -> AppError {
    AppError::new(
        ErrorKind::FailedPrecondition,
        "no_targets",
        format!(
            "environment `{}` has no targets: add one with `stella target create`",
            env.name
        ),
    )
}
