//! Delivery operations: environments, targets, registries, releases, promotions,
//! deployments and their dispatch to agents, rollback, drift and remediation.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use stella_proto::v1;

use super::{now_ms, validate_name, App};
use crate::domain::{
    Component, DeploySpec, Deployment, DeploymentKind, DeploymentState, Digest, DriftKind,
    DriftMode, DriftRecord, Environment, ImageRef, Registry, Release, Target, TargetKind, Task,
    TaskState, User,
};
use crate::error::{AppError, ErrorKind};
use crate::registry::RegistryAccess;
use crate::store::StoreError;

/// Who remediation deployments are created by.
pub const DRIFT_ACTOR: &str = "stella:drift";

/// A release component as requested: name and image reference (tag or digest).
#[derive(Debug, Clone)]
pub struct ComponentRequest {
    /// Component name.
    pub name: String,
    /// Image reference.
    pub image: String,
}

/// Changes to an environment.
#[derive(Debug, Clone, Default)]
pub struct EnvironmentChange {
    /// New predecessor; `Some(None)` clears it.
    pub after: Option<Option<String>>,
    /// New drift mode.
    pub drift_mode: Option<DriftMode>,
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

/// A store error, with "not found" told in the words of the request.
fn not_found_as(
    error: StoreError,
    kind: ErrorKind,
    code: &'static str,
    message: String,
) -> AppError {
    match error {
        StoreError::NotFound { .. } => AppError::new(kind, code, message),
        other => other.into(),
    }
}

fn invalid(error: crate::domain::Invalid) -> AppError {
    AppError::invalid(error.0)
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
            super::conflict_as(
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
            super::conflict_as(
                e,
                "target_exists",
                format!("target `{name}` already exists"),
            )
        })?;
        tracing::info!(target = %name, environment = %target.environment, kind = %kind, "target created");
        Ok(target)
    }

    /// Adds or replaces a registry; the password is sealed before it is stored.
    pub async fn add_registry(
        &self,
        host: &str,
        insecure: bool,
        username: Option<String>,
        password: Option<String>,
    ) -> Result<Registry, AppError> {
        let probe = ImageRef::parse(&format!("{host}/probe")).map_err(|_| {
            AppError::invalid(format!("invalid registry host `{host}`: use HOST[:PORT]"))
        })?;
        if probe.registry != host {
            return Err(AppError::invalid(format!(
                "invalid registry host `{host}`: use HOST[:PORT]"
            )));
        }
        if username.is_some() != password.is_some() {
            return Err(AppError::invalid(
                "give both --username and a password, or neither",
            ));
        }
        let registry = Registry {
            host: host.to_owned(),
            insecure,
            username,
            password_sealed: password.map(|p| self.secrets.seal(&p)),
            updated_at_ms: now_ms(),
        };
        self.store.upsert_registry(&registry).await?;
        tracing::info!(registry = %host, insecure, authenticated = registry.username.is_some(), "registry saved");
        Ok(registry)
    }

    /// How to reach a registry: its stored settings, password unsealed.
    async fn registry_access(&self, host: &str) -> Result<RegistryAccess, AppError> {
        let Some(registry) = self.store.get_registry(host).await? else {
            return Ok(RegistryAccess {
                insecure: false,
                credentials: None,
            });
        };
        let credentials = match (&registry.username, &registry.password_sealed) {
            (Some(user), Some(sealed)) => {
                let password = self
                    .secrets
                    .open(sealed)
                    .map_err(|e| AppError::internal("unsealing a registry password", &e))?;
                Some((user.clone(), password))
            }
            _ => None,
        };
        Ok(RegistryAccess {
            insecure: registry.insecure,
            credentials,
        })
    }

    /// Creates an immutable release: every tag is resolved to a digest once, now.
    /// The same name and version with the same digests is returned as it is;
    /// with other digests it is refused.
    pub async fn create_release(
        &self,
        name: &str,
        version: &str,
        components: Vec<ComponentRequest>,
        created_by: &User,
    ) -> Result<(Release, bool), AppError> {
        validate_name("release", name)?;
        if version.is_empty()
            || version.len() > 128
            || !version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
        {
            return Err(AppError::invalid(format!(
                "invalid version `{version}`: use letters, digits, '.', '_', '-', '+'"
            )));
        }
        if components.is_empty() {
            return Err(AppError::invalid(
                "a release needs at least one --component NAME=IMAGE",
            ));
        }
        let mut parsed = Vec::with_capacity(components.len());
        for component in &components {
            validate_name("component", &component.name)?;
            let image = ImageRef::parse(&component.image).map_err(invalid)?;
            parsed.push((component, image));
        }
        parsed.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        if parsed.windows(2).any(|w| w[0].0.name == w[1].0.name) {
            return Err(AppError::invalid("component names must be unique"));
        }
        let mut resolved = Vec::with_capacity(parsed.len());
        for (component, image) in parsed {
            let access = self.registry_access(&image.registry).await?;
            let digest: Digest = self
                .registry
                .resolve(&image, &access)
                .await
                .map_err(|error| {
                    use crate::registry::RegistryError;
                    let kind = match &error {
                        RegistryError::NotFound { .. } => ErrorKind::InvalidArgument,
                        RegistryError::Unauthorized { .. } => ErrorKind::FailedPrecondition,
                        _ => ErrorKind::Unavailable,
                    };
                    AppError::new(
                        kind,
                        "image_unresolved",
                        format!("component `{}`: {error}", component.name),
                    )
                })?;
            resolved.push(Component {
                name: component.name.clone(),
                source: component.image.clone(),
                image: image.pinned(&digest),
                digest,
            });
        }
        let release = Release {
            name: name.to_owned(),
            version: version.to_owned(),
            components: resolved,
            created_by: created_by.name.clone(),
            created_at_ms: now_ms(),
        };
        match self.store.create_release(&release).await {
            Ok(()) => {
                tracing::info!(release = %name, version, "release created");
                Ok((release, true))
            }
            Err(StoreError::Conflict { .. }) => {
                let existing = self.store.get_release(name, version).await?;
                if existing.same_content(&release) {
                    Ok((existing, false))
                } else {
                    Err(AppError::new(
                        ErrorKind::Conflict,
                        "release_immutable",
                        format!("release {name}@{version} exists with other digests; releases are immutable: use a new version"),
                    ))
                }
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Promotes a release to an environment. Without gates the decision is to deploy:
    /// the decision record is content-addressed, and one task per target is stored
    /// before anything is sent.
    pub async fn promote(
        self: &Arc<Self>,
        release: &str,
        version: &str,
        environment: &str,
        requested_by: &User,
    ) -> Result<Deployment, AppError> {
        let release = self
            .store
            .get_release(release, version)
            .await
            .map_err(|e| {
                not_found_as(
                    e,
                    ErrorKind::NotFound,
                    "unknown_release",
                    format!("unknown release {release}@{version}"),
                )
            })?;
        let env = self.store.get_environment(environment).await.map_err(|e| {
            not_found_as(
                e,
                ErrorKind::NotFound,
                "unknown_environment",
                format!("unknown environment `{environment}`"),
            )
        })?;
        self.deploy(
            &release,
            &env,
            DeploymentKind::Promotion,
            &requested_by.name,
            None,
        )
        .await
    }

    /// Creates a deployment of `release` to `env` (all its targets, or one) and
    /// dispatches it.
    async fn deploy(
        self: &Arc<Self>,
        release: &Release,
        env: &Environment,
        kind: DeploymentKind,
        requested_by: &str,
        only_target: Option<&Target>,
    ) -> Result<Deployment, AppError> {
        if let Some(active) = self.store.active_deployment(&env.name).await? {
            return Err(AppError::new(
                ErrorKind::Conflict,
                "deployment_in_progress",
                format!(
                    "deployment {} to {} is still {}",
                    active.id, env.name, active.state
                ),
            ));
        }
        let targets = match only_target {
            Some(target) => vec![target.clone()],
            None => self.store.list_targets(Some(&env.name)).await?,
        };
        if targets.is_empty() {
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "no_targets",
                format!(
                    "environment `{}` has no targets: add one with `stella target create`",
                    env.name
                ),
            ));
        }
        let now = now_ms();
        let decision = serde_json::json!({
            "kind": kind.as_str(),
            "release": release.name,
            "version": release.version,
            "components": release.components.iter().map(|c| (c.name.clone(), c.image.clone())).collect::<BTreeMap<_, _>>(),
            "environment": env.name,
            "targets": targets.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
            "gates": [],
            "outcome": "allowed",
            "requested_by": requested_by,
            "requested_at_ms": now,
        });
        let decision_id = sha256_id(canonical_json(&decision).as_bytes());
        let deployment = Deployment {
            id: uuid::Uuid::now_v7().to_string(),
            kind,
            environment: env.name.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            decision_id,
            state: DeploymentState::Pending,
            message: None,
            created_by: requested_by.to_owned(),
            created_at_ms: now,
            finished_at_ms: None,
        };
        let deadline =
            now + i64::try_from(self.config.task_deadline_seconds).unwrap_or(3600) * 1000;
        let mut tasks = Vec::with_capacity(targets.len());
        for target in &targets {
            let spec = DeploySpec::new(&deployment, release, target);
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
                epoch: 0,
                state: TaskState::Pending,
                payload_json,
                message: None,
                deadline_at_ms: deadline,
                created_at_ms: now,
                finished_at_ms: None,
            });
        }
        self.store.create_deployment(&deployment, &tasks).await?;
        self.store
            .append_log(
                &deployment.id,
                "",
                now,
                &format!(
                    "{} of {}@{} to {} ({} target{}) requested by {requested_by}",
                    kind,
                    release.name,
                    release.version,
                    env.name,
                    tasks.len(),
                    if tasks.len() == 1 { "" } else { "s" }
                ),
            )
            .await?;
        tracing::info!(deployment_id = %deployment.id, release = %release.name, version = %release.version, environment = %env.name, %kind, "deployment created");
        let mut agents: Vec<&str> = tasks.iter().map(|t| t.agent_id.as_str()).collect();
        agents.sort_unstable();
        agents.dedup();
        for agent in agents {
            self.dispatch_to(agent).await;
        }
        Ok(deployment)
    }

    /// Redeploys the version deployed successfully before the current one (or `to`).
    pub async fn rollback(
        self: &Arc<Self>,
        environment: &str,
        to: Option<&str>,
        requested_by: &User,
    ) -> Result<Deployment, AppError> {
        let env = self.store.get_environment(environment).await?;
        let history = self.store.succeeded_deployments(&env.name, 100).await?;
        let Some(current) = history.first() else {
            return Err(AppError::new(
                ErrorKind::FailedPrecondition,
                "nothing_to_roll_back",
                format!("nothing was deployed successfully to `{}` yet", env.name),
            ));
        };
        let target_version = match to {
            Some(version) => version.to_owned(),
            None => history
                .iter()
                .find(|d| d.release != current.release || d.version != current.version)
                .map(|d| d.version.clone())
                .ok_or_else(|| {
                    AppError::new(
                        ErrorKind::FailedPrecondition,
                        "nothing_to_roll_back",
                        format!(
                            "`{}` has no earlier successful version than {}",
                            env.name, current.version
                        ),
                    )
                })?,
        };
        let release_name = history
            .iter()
            .find(|d| d.version == target_version)
            .map_or_else(|| current.release.clone(), |d| d.release.clone());
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

    /// Sends an agent the tasks waiting for it (after a new deployment, and whenever
    /// it opens a session: tasks in flight are re-assigned under a new epoch, and its
    /// journal answers those it finished).
    pub async fn dispatch_to(&self, agent_id: &str) {
        if !self.sessions.is_open(agent_id) {
            return;
        }
        let tasks = match self.store.claim_tasks_for_agent(agent_id, now_ms()).await {
            Ok(tasks) => tasks,
            Err(error) => {
                tracing::warn!(agent_id, error = %crate::error::ErrorChain(&error), "claiming tasks failed");
                return;
            }
        };
        for task in tasks {
            let payload = match self.payload_with_credentials(&task).await {
                Ok(payload) => payload,
                Err(error) => {
                    tracing::warn!(task_id = %task.id, %error, "cannot build the task payload");
                    continue;
                }
            };
            let assignment = v1::ServerMessage {
                body: Some(v1::server_message::Body::TaskAssignment(
                    v1::TaskAssignment {
                        task_id: task.id.clone(),
                        epoch: u64::try_from(task.epoch).unwrap_or(0),
                        kind: "deploy".to_owned(),
                        payload_json: payload.into_bytes(),
                        deadline_unix_ms: task.deadline_at_ms,
                    },
                )),
            };
            if self.sessions.send(agent_id, assignment).await {
                tracing::info!(task_id = %task.id, deployment_id = %task.deployment_id, target = %task.target, epoch = task.epoch, "task assigned");
                let _ = self
                    .store
                    .append_log(
                        &task.deployment_id,
                        &task.id,
                        now_ms(),
                        &format!(
                            "{}: assigned to its agent (epoch {})",
                            task.target, task.epoch
                        ),
                    )
                    .await;
            }
        }
    }

    /// Dispatches pending tasks to the agents whose sessions this replica holds.
    pub async fn dispatch_pending(&self) -> Result<(), AppError> {
        for agent_id in self.store.agents_with_pending_tasks(now_ms()).await? {
            if self.sessions.is_open(&agent_id) {
                self.dispatch_to(&agent_id).await;
            }
        }
        Ok(())
    }

    /// The stored payload plus the credentials of the registries it pulls from.
    async fn payload_with_credentials(&self, task: &Task) -> Result<String, AppError> {
        let spec: DeploySpec = serde_json::from_str(&task.payload_json)
            .map_err(|e| AppError::internal("decoding a stored deploy payload", &e))?;
        let mut value = serde_json::to_value(&spec)
            .map_err(|e| AppError::internal("encoding a deploy payload", &e))?;
        let mut auth = Vec::new();
        for host in spec.registries() {
            if let Some((username, password)) = self.registry_access(&host).await?.credentials {
                auth.push(serde_json::json!({"registry": host, "username": username, "password": password}));
            }
        }
        if !auth.is_empty() {
            value["registry_auth"] = serde_json::Value::Array(auth);
        }
        Ok(value.to_string())
    }

    /// The desired state of an agent's targets, as a message.
    pub async fn desired_state_for(&self, agent_id: &str) -> Result<v1::ServerMessage, AppError> {
        let payloads = self.store.desired_payloads_for_agent(agent_id).await?;
        Ok(v1::ServerMessage {
            body: Some(v1::server_message::Body::DesiredState(v1::DesiredState {
                targets: payloads
                    .into_iter()
                    .map(|(target, payload)| v1::DesiredTarget {
                        target,
                        deploy_json: payload.into_bytes(),
                    })
                    .collect(),
            })),
        })
    }

    /// A task, if it is the calling agent's: an agent speaks only of its own tasks.
    async fn agent_task(&self, agent_id: &str, task_id: &str) -> Result<Task, AppError> {
        let task = self.store.get_task(task_id).await?;
        if task.agent_id != agent_id {
            return Err(AppError::new(
                ErrorKind::PermissionDenied,
                "not_your_task",
                "task belongs to another agent",
            ));
        }
        Ok(task)
    }

    /// A progress line from an agent.
    pub async fn record_task_update(
        &self,
        agent_id: &str,
        update: &v1::TaskUpdate,
    ) -> Result<(), AppError> {
        let task = self.agent_task(agent_id, &update.task_id).await?;
        let at = if update.at_unix_ms > 0 {
            update.at_unix_ms
        } else {
            now_ms()
        };
        self.store
            .append_log(
                &task.deployment_id,
                &task.id,
                at,
                &format!("{}: {}", task.target, update.message),
            )
            .await?;
        Ok(())
    }

    /// A task result from an agent: stored (idempotently, fenced by epoch), then
    /// acknowledged; a deployment that succeeded updates its agents' desired state.
    pub async fn record_task_result(
        &self,
        agent_id: &str,
        result: &v1::TaskResult,
    ) -> Result<(), AppError> {
        let task = self.agent_task(agent_id, &result.task_id).await?;
        let state = match v1::TaskState::try_from(result.state) {
            Ok(v1::TaskState::Succeeded) => TaskState::Succeeded,
            Ok(v1::TaskState::Failed | v1::TaskState::Cancelled) => TaskState::Failed,
            _ => {
                return Err(AppError::invalid(format!(
                    "task result with state {}",
                    result.state
                )));
            }
        };
        let epoch = i64::try_from(result.epoch).unwrap_or(-1);
        let updated = self
            .store
            .complete_task(&task.id, epoch, state, &result.message, now_ms())
            .await?;
        // Acknowledge whether it was new or a duplicate: either way it is stored.
        let ack = v1::ServerMessage {
            body: Some(v1::server_message::Body::TaskAck(v1::TaskAck {
                task_id: task.id.clone(),
                epoch: result.epoch,
            })),
        };
        let stored_epoch = updated.as_ref().map_or(task.epoch, |t| t.epoch);
        if updated.is_some() || (task.state.is_terminal() && stored_epoch <= epoch) {
            self.sessions.send(agent_id, ack).await;
        }
        let Some(updated) = updated else {
            tracing::debug!(task_id = %task.id, epoch, "duplicate or stale task result ignored");
            return Ok(());
        };
        let line = match state {
            TaskState::Succeeded => format!("{}: succeeded: {}", updated.target, result.message),
            _ => format!("{}: failed: {}", updated.target, result.message),
        };
        self.store
            .append_log(&updated.deployment_id, &updated.id, now_ms(), &line)
            .await?;
        let deployment = self.store.get_deployment(&updated.deployment_id).await?;
        tracing::info!(task_id = %updated.id, deployment_id = %deployment.id, state = %state, deployment_state = %deployment.state, "task finished");
        if deployment.state.is_terminal() {
            self.store
                .append_log(
                    &deployment.id,
                    "",
                    now_ms(),
                    &format!("deployment {}", deployment.state),
                )
                .await?;
        }
        if state == TaskState::Succeeded {
            match self.desired_state_for(agent_id).await {
                Ok(message) => {
                    self.sessions.send(agent_id, message).await;
                }
                Err(error) => tracing::warn!(%error, "cannot send desired state"),
            }
        }
        Ok(())
    }

    /// A drift finding from an agent: stored; in a `remediate` environment the
    /// promoted digests are redeployed to the target.
    pub async fn record_drift(
        self: &Arc<Self>,
        agent_id: &str,
        report: &v1::DriftReport,
    ) -> Result<(), AppError> {
        let target = self.store.get_target(&report.target).await?;
        if target.agent_id != agent_id {
            return Err(AppError::new(
                ErrorKind::PermissionDenied,
                "not_your_target",
                "target belongs to another agent",
            ));
        }
        let now = now_ms();
        if report.kind == "resolved" {
            // With `resolved_kind`, one finding ended while others of the target may last;
            // without (as agents before it always send), the whole target is clean.
            if report.resolved_kind.is_empty() {
                let resolved = self.store.resolve_drift(&target.name, now).await?;
                if resolved > 0 {
                    tracing::info!(target = %target.name, "drift resolved");
                }
            } else {
                let kind: DriftKind = report.resolved_kind.parse().map_err(invalid)?;
                let resolved = self
                    .store
                    .resolve_drift_finding(&target.name, &report.component, kind, now)
                    .await?;
                if resolved > 0 {
                    tracing::info!(target = %target.name, component = %report.component, kind = %kind, "drift finding resolved");
                }
            }
            return Ok(());
        }
        let kind: DriftKind = report.kind.parse().map_err(invalid)?;
        let observed = if report.observed_at_unix_ms > 0 {
            report.observed_at_unix_ms
        } else {
            now
        };
        self.store
            .upsert_drift(&DriftRecord {
                target: target.name.clone(),
                component: report.component.clone(),
                kind,
                detail: report.detail.clone(),
                environment: target.environment.clone(),
                agent_id: agent_id.to_owned(),
                first_seen_at_ms: observed,
                last_seen_at_ms: observed,
                resolved_at_ms: None,
            })
            .await?;
        tracing::warn!(target = %target.name, component = %report.component, kind = %kind, detail = %report.detail, "drift reported");
        let env = self.store.get_environment(&target.environment).await?;
        if env.drift_mode == DriftMode::Remediate {
            self.remediate(&env, &target).await;
        }
        Ok(())
    }

    async fn remediate(self: &Arc<Self>, env: &Environment, target: &Target) {
        let desired = match self.store.latest_succeeded_task(&target.name).await {
            Ok(Some(task)) => task,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "remediation: cannot read the desired state");
                return;
            }
        };
        let spec: DeploySpec = match serde_json::from_str(&desired.payload_json) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(%error, "remediation: undecodable desired state");
                return;
            }
        };
        let release = match self.store.get_release(&spec.release, &spec.version).await {
            Ok(release) => release,
            Err(error) => {
                tracing::warn!(%error, "remediation: release gone");
                return;
            }
        };
        match self
            .deploy(
                &release,
                env,
                DeploymentKind::Remediation,
                DRIFT_ACTOR,
                Some(target),
            )
            .await
        {
            Ok(deployment) => {
                tracing::info!(deployment_id = %deployment.id, target = %target.name, "drift remediation started");
            }
            Err(error) if error.code == "deployment_in_progress" => {
                tracing::debug!(target = %target.name, "remediation waits for the running deployment");
            }
            Err(error) => {
                tracing::warn!(target = %target.name, %error, "drift remediation failed to start");
            }
        }
    }

    /// Fails tasks whose deadline passed.
    pub async fn expire_tasks(&self) -> Result<(), AppError> {
        for task in self.store.expire_tasks(now_ms()).await? {
            tracing::warn!(task_id = %task.id, target = %task.target, "task deadline passed");
            let _ = self
                .store
                .append_log(
                    &task.deployment_id,
                    &task.id,
                    now_ms(),
                    &format!("{}: failed: deadline passed", task.target),
                )
                .await;
        }
        Ok(())
    }
}
