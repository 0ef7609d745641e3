//! Dispatch: tasks to agents under lease epochs, their progress and results, task
//! deadlines and cancellations, and each agent's desired state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use stella_proto::v1;

use super::{now_ms, App};
use crate::domain::{references, DeploySpec, Deployment, Task, TaskKind, TaskState, VariableKind};
use crate::error::{AppError, ErrorChain, ErrorKind};
use crate::store::{ResultOutcome, TaskResultRecord};

/// Registry credentials (user, password) by host, as [`App::registry_access`] gives
/// them; `None` for a registry without any.
type RegistryCredentials = HashMap<String, Option<(String, String)>>;

/// How often a task waiting for an unreachable agent says so again in its log.
const WAITING_REMINDER: Duration = Duration::from_secs(60);
/// How long after a cancellation replicas keep telling their agents to stop the task
/// (an agent that connects later is not sent the task at all).
const CANCEL_PROPAGATION: Duration = Duration::from_secs(60);

/// Which of an agent's tasks a dispatch claims.
#[derive(Clone, Copy)]
enum Claim {
    /// Pending and assigned: a new session, which holds nothing yet.
    NotFinished,
    /// Pending only: an open session, whose agent holds the assigned ones.
    Pending,
}

impl App {
    /// Sends an agent every task of its that is not finished, when it opens a session:
    /// tasks in flight are re-assigned under a new epoch (the agent's journal answers
    /// those it finished, and those it still runs keep running).
    pub async fn dispatch_to(&self, agent_id: &str) {
        self.dispatch(agent_id, Claim::NotFinished).await;
    }

    /// Sends an agent whose session is open the tasks not sent yet (after a new
    /// deployment, and from the pending sweep). The tasks it holds already keep their
    /// epoch: re-assigning them on every new deployment made the results the agent was
    /// sending stale, so under a steady stream of deployments a finished task could wait
    /// long for its result to be taken.
    pub async fn dispatch_new_to(&self, agent_id: &str) {
        self.dispatch(agent_id, Claim::Pending).await;
    }

    async fn dispatch(&self, agent_id: &str, claim: Claim) {
        if !self.sessions.is_open(agent_id) {
            return;
        }
        let claimed = match claim {
            Claim::NotFinished => self.store.claim_tasks_for_agent(agent_id, now_ms()).await,
            Claim::Pending => {
                self.store
                    .claim_pending_tasks_for_agent(agent_id, now_ms())
                    .await
            }
        };
        let tasks = match claimed {
            Ok(tasks) => tasks,
            Err(error) => {
                tracing::warn!(agent_id, error = %ErrorChain(&error), "claiming tasks failed");
                return;
            }
        };
        self.send_assignments(tasks).await;
    }

    /// Hands a new deployment's tasks to the agents whose sessions this replica holds,
    /// claiming them in one transaction and logging the assignments in another, however
    /// many agents there are (agents on other replicas are told by those). Claiming in
    /// chunks while sending the previous chunk was tried: the first results then reach
    /// the one SQLite writer between the chunks' claims, and the last frame left later.
    pub(super) async fn dispatch_deployment(&self, deployment_id: &str, agent_ids: &[&str]) {
        let open: Vec<&str> = agent_ids
            .iter()
            .copied()
            .filter(|agent| self.sessions.is_open(agent))
            .collect();
        if open.is_empty() {
            return;
        }
        match self
            .store
            .claim_pending_tasks_of_deployment(deployment_id, &open, now_ms())
            .await
        {
            Ok(tasks) => self.send_assignments(tasks).await,
            Err(error) => {
                tracing::warn!(deployment_id, error = %ErrorChain(&error), "claiming a deployment's tasks failed");
            }
        }
    }

    /// Writes claimed tasks to their agents' streams, then logs each assignment (one
    /// write per deployment).
    async fn send_assignments(&self, tasks: Vec<Task>) {
        let mut lines: BTreeMap<String, Vec<(String, i64, String)>> = BTreeMap::new();
        // Registry credentials by host, read once per batch: a fan-out's tasks pull from
        // the same registries.
        let mut registries = RegistryCredentials::new();
        for task in tasks {
            let payload = match self.wire_payload(&task, &mut registries).await {
                Ok(payload) => payload,
                Err(error) => {
                    self.fail_undeliverable(&task, &error).await;
                    continue;
                }
            };
            let assignment = v1::ServerMessage {
                body: Some(v1::server_message::Body::TaskAssignment(
                    v1::TaskAssignment {
                        task_id: task.id.clone(),
                        epoch: u64::try_from(task.epoch).unwrap_or(0),
                        kind: task.kind.as_str().to_owned(),
                        payload_json: payload.into_bytes(),
                        deadline_unix_ms: task.deadline_at_ms,
                    },
                )),
            };
            if self.sessions.send(&task.agent_id, assignment).await {
                let now = now_ms();
                if task.epoch == 1 {
                    // First assignment: from the API accepting the deployment to the
                    // task being on the agent's stream.
                    self.metrics
                        .delivery
                        .observe_dispatch_latency(now.saturating_sub(task.created_at_ms));
                }
                tracing::info!(task_id = %task.id, deployment_id = %task.deployment_id, target = %task.target, epoch = task.epoch, "task assigned");
                lines.entry(task.deployment_id.clone()).or_default().push((
                    task.id.clone(),
                    now,
                    format!(
                        "{}: assigned to its agent (epoch {})",
                        task.target, task.epoch
                    ),
                ));
            }
        }
        for (deployment_id, lines) in lines {
            if let Err(error) = self.store.append_logs(&deployment_id, &lines).await {
                tracing::warn!(deployment_id, error = %ErrorChain(&error), "cannot store log lines");
            }
        }
    }

    /// A task whose payload cannot be built (a secret it references was deleted, a
    /// registry password does not unseal) fails at once with the reason, instead of
    /// waiting for its deadline.
    async fn fail_undeliverable(&self, task: &Task, error: &AppError) {
        tracing::warn!(task_id = %task.id, %error, "cannot build the task payload; failing the task");
        let message = format!("cannot be sent to its agent: {error}");
        match self
            .store
            .complete_task(&task.id, task.epoch, TaskState::Failed, &message, now_ms())
            .await
        {
            Ok(Some(_)) => {
                self.log(
                    &task.deployment_id,
                    &task.id,
                    &format!("{}: failed: {message}", task.target),
                )
                .await;
                self.after_task_finished(&task.deployment_id).await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(task_id = %task.id, error = %ErrorChain(&error), "cannot fail an undeliverable task");
            }
        }
    }

    /// Dispatches pending tasks to the agents whose sessions this replica holds.
    pub async fn dispatch_pending(&self) -> Result<(), AppError> {
        for agent_id in self.store.agents_with_pending_tasks(now_ms()).await? {
            if self.sessions.is_open(&agent_id) {
                self.dispatch_new_to(&agent_id).await;
            }
        }
        Ok(())
    }

    /// The payload as sent: the stored one plus its deployment's generation, the
    /// credentials of the registries it pulls from, and the values of the secrets its
    /// settings reference. None of these is stored with the task or logged.
    async fn wire_payload(
        &self,
        task: &Task,
        registries: &mut RegistryCredentials,
    ) -> Result<String, AppError> {
        if task.kind == TaskKind::Retire {
            // `{deployment_id, target, slot}`: nothing to add.
            return Ok(task.payload_json.clone());
        }
        let spec: DeploySpec = serde_json::from_str(&task.payload_json)
            .map_err(|e| AppError::internal("decoding a stored deploy payload", &e))?;
        let mut value = serde_json::to_value(&spec)
            .map_err(|e| AppError::internal("encoding a deploy payload", &e))?;
        value["generation"] = serde_json::Value::from(task.generation);
        let mut auth = Vec::new();
        for host in spec.registries() {
            let credentials = match registries.get(&host) {
                Some(credentials) => credentials.clone(),
                None => {
                    let credentials = self.registry_access(&host).await?.credentials;
                    registries.insert(host.clone(), credentials.clone());
                    credentials
                }
            };
            if let Some((username, password)) = credentials {
                auth.push(serde_json::json!({"registry": host, "username": username, "password": password}));
            }
        }
        if !auth.is_empty() {
            value["registry_auth"] = serde_json::Value::Array(auth);
        }
        let secrets = self.secret_values(&spec).await?;
        if !secrets.is_empty() {
            value["secrets"] = serde_json::to_value(secrets)
                .map_err(|e| AppError::internal("encoding secrets", &e))?;
        }
        Ok(value.to_string())
    }

    /// The values of the secrets the spec's settings reference, unsealed.
    pub(super) async fn secret_values(
        &self,
        spec: &DeploySpec,
    ) -> Result<BTreeMap<String, String>, AppError> {
        let mut wanted = BTreeSet::new();
        for value in spec.target.settings.values() {
            // Stored settings passed this check when the deployment was planned.
            for reference in references(value).unwrap_or_default() {
                if reference.kind == VariableKind::Secret {
                    wanted.insert(reference.name);
                }
            }
        }
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let stored = self.store.list_variables(&spec.environment).await?;
        let mut values = BTreeMap::new();
        for name in wanted {
            let Some(secret) = stored
                .iter()
                .find(|v| v.kind == VariableKind::Secret && v.name == name)
            else {
                return Err(AppError::new(
                    ErrorKind::FailedPrecondition,
                    "unresolved_reference",
                    format!(
                        "the secret `{name}` was deleted from `{}` after the deployment was planned",
                        spec.environment
                    ),
                ));
            };
            let value = self
                .secrets
                .open(&secret.stored_value)
                .map_err(|e| AppError::internal("unsealing a secret", &e))?;
            values.insert(name, value);
        }
        Ok(values)
    }

    /// The desired state of an agent's targets, as a message. Each payload carries the
    /// values of the secrets its settings reference (as a task does), for the drift
    /// checks that need one (an SSH target's key); the agent keeps them in memory only.
    /// A secret that cannot be had now is left out, logged: the agent then cannot check
    /// that target until it can, but every other target keeps its desired state.
    pub async fn desired_state_for(&self, agent_id: &str) -> Result<v1::ServerMessage, AppError> {
        let payloads = self.store.desired_payloads_for_agent(agent_id).await?;
        let mut targets = Vec::with_capacity(payloads.len());
        for desired in payloads {
            let (deploy_json, generation) = desired.deployed.unwrap_or_default();
            let deploy_json = self.with_secret_values(&desired.target, deploy_json).await;
            targets.push(v1::DesiredTarget {
                target: desired.target,
                deploy_json: deploy_json.into_bytes(),
                generation: u64::try_from(generation).unwrap_or(0),
            });
        }
        Ok(v1::ServerMessage {
            body: Some(v1::server_message::Body::DesiredState(v1::DesiredState {
                targets,
            })),
        })
    }

    /// A stored deploy payload with the values of the secrets its settings reference
    /// added; as stored when there are none or they cannot be had.
    async fn with_secret_values(&self, target: &str, deploy_json: String) -> String {
        if !deploy_json.contains("${secret.") {
            return deploy_json;
        }
        let Ok(spec) = serde_json::from_str::<DeploySpec>(&deploy_json) else {
            return deploy_json;
        };
        let secrets = match self.secret_values(&spec).await {
            Ok(secrets) if !secrets.is_empty() => secrets,
            Ok(_) => return deploy_json,
            Err(error) => {
                tracing::warn!(target, %error, "desired state sent without the secrets its settings reference");
                return deploy_json;
            }
        };
        match serde_json::from_str::<serde_json::Value>(&deploy_json) {
            Ok(mut value) => {
                value["secrets"] = serde_json::Value::from_iter(
                    secrets
                        .into_iter()
                        .map(|(name, secret)| (name, serde_json::Value::String(secret))),
                );
                value.to_string()
            }
            Err(_) => deploy_json,
        }
    }

    /// Sends an agent its desired state, if its session is on this replica (otherwise it
    /// gets it when it next connects).
    pub(super) async fn push_desired_state(&self, agent_id: &str) {
        if !self.sessions.is_open(agent_id) {
            return;
        }
        match self.desired_state_for(agent_id).await {
            Ok(message) => {
                self.sessions.send(agent_id, message).await;
            }
            Err(error) => tracing::warn!(agent_id, %error, "cannot send desired state"),
        }
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

    /// A progress line from an agent; a numbered line already stored is not stored again.
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
        let line = i64::try_from(update.line).ok().filter(|line| *line > 0);
        self.store
            .append_log(
                &task.deployment_id,
                &task.id,
                line,
                at,
                &format!("{}: {}", task.target, update.message),
            )
            .await?;
        Ok(())
    }

    /// A task result from an agent: stored (idempotently, fenced by epoch, through the
    /// group-committing result writer, which also checks that the task is the agent's),
    /// then acknowledged; a success updates the agent's desired state.
    pub async fn record_task_result(
        &self,
        agent_id: &str,
        result: &v1::TaskResult,
    ) -> Result<(), AppError> {
        let state = match v1::TaskState::try_from(result.state) {
            Ok(v1::TaskState::Succeeded) => TaskState::Succeeded,
            Ok(v1::TaskState::Failed) => TaskState::Failed,
            Ok(v1::TaskState::Cancelled) => TaskState::Cancelled,
            _ => {
                return Err(AppError::invalid(format!(
                    "task result with state {}",
                    result.state
                )));
            }
        };
        let epoch = i64::try_from(result.epoch).unwrap_or(-1);
        // The outcome's JSON is kept for rollouts (endpoints of a slot); a payload that is
        // not JSON is not kept, and the result is stored all the same.
        let output = std::str::from_utf8(&result.output_json)
            .ok()
            .filter(|text| serde_json::from_str::<serde_json::Value>(text).is_ok());
        let stored = self
            .store_task_result(TaskResultRecord {
                agent_id: agent_id.to_owned(),
                task_id: result.task_id.clone(),
                epoch,
                state,
                message: result.message.clone(),
                output_json: output.map(str::to_owned),
            })
            .await?;
        // Acknowledge whether it was new or a duplicate: either way it is stored.
        let acknowledge = match &stored.outcome {
            ResultOutcome::Stored(_) => true,
            ResultOutcome::Finished { epoch: finished } => *finished <= epoch,
            ResultOutcome::OtherEpoch => false,
            ResultOutcome::Unknown => return Err(AppError::not_found("task", &result.task_id)),
            ResultOutcome::NotYours => {
                return Err(AppError::new(
                    ErrorKind::PermissionDenied,
                    "not_your_task",
                    "task belongs to another agent",
                ))
            }
        };
        if acknowledge {
            let ack = v1::ServerMessage {
                body: Some(v1::server_message::Body::TaskAck(v1::TaskAck {
                    task_id: result.task_id.clone(),
                    epoch: result.epoch,
                })),
            };
            self.sessions.send(agent_id, ack).await;
        }
        let ResultOutcome::Stored(updated) = stored.outcome else {
            tracing::debug!(task_id = %result.task_id, epoch, "duplicate or stale task result ignored");
            return Ok(());
        };
        // Its log line was stored with it.
        tracing::info!(task_id = %updated.id, deployment_id = %updated.deployment_id, state = %state, "task finished");
        if stored.finished_deployment {
            self.after_task_finished(&updated.deployment_id).await;
        }
        if state == TaskState::Succeeded {
            self.push_desired_state(agent_id).await;
        }
        Ok(())
    }

    /// Logs and counts a deployment that a finished task finished.
    pub(super) async fn after_task_finished(&self, deployment_id: &str) {
        let deployment = match self.store.get_deployment(deployment_id).await {
            Ok(deployment) => deployment,
            Err(error) => {
                tracing::warn!(deployment_id, error = %ErrorChain(&error), "cannot read a deployment");
                return;
            }
        };
        if deployment.state.is_terminal() {
            let line = match &deployment.message {
                Some(message) if deployment.state != crate::domain::DeploymentState::Succeeded => {
                    format!("deployment {}: {message}", deployment.state)
                }
                _ => format!("deployment {}", deployment.state),
            };
            self.log(&deployment.id, "", &line).await;
            tracing::info!(deployment_id = %deployment.id, state = %deployment.state, "deployment finished");
            self.count_finished(&deployment);
            self.promotion_deployment_finished(&deployment).await;
        }
    }

    /// Counts a finished deployment by kind and outcome, with its duration.
    pub(super) fn count_finished(&self, deployment: &Deployment) {
        if let Some(finished_at_ms) = deployment.finished_at_ms {
            self.metrics.delivery.deployment_finished(
                deployment.kind.as_str(),
                deployment.state.as_str(),
                finished_at_ms.saturating_sub(deployment.created_at_ms),
            );
        }
    }

    /// Fails tasks whose deadline passed, naming why their agent did not finish them.
    pub async fn expire_tasks(&self) -> Result<(), AppError> {
        let now = now_ms();
        // Read agents only when something expires (the common tick finds nothing).
        let due = self.store.agents_with_expired_tasks(now).await?;
        if due.is_empty() {
            return Ok(());
        }
        let mut reasons = HashMap::new();
        for agent_id in due {
            if reasons.contains_key(&agent_id) {
                continue;
            }
            let reason = match self.store.get_agent(&agent_id).await {
                Ok(agent) => self.waiting_for(&agent, now).unwrap_or_else(|| {
                    format!(
                        "agent `{}` is connected but did not finish in time",
                        agent.name
                    )
                }),
                Err(_) => format!("agent {agent_id} no longer exists"),
            };
            reasons.insert(agent_id, reason);
        }
        let expired = self
            .store
            .expire_tasks(now, |agent_id| {
                reasons
                    .get(agent_id)
                    .cloned()
                    .unwrap_or_else(|| "its agent did not finish in time".to_owned())
            })
            .await?;
        let mut deployments = BTreeSet::new();
        for task in expired {
            tracing::warn!(task_id = %task.id, target = %task.target, "task deadline passed");
            self.log(
                &task.deployment_id,
                &task.id,
                &format!(
                    "{}: failed: {}",
                    task.target,
                    task.message.as_deref().unwrap_or("deadline passed")
                ),
            )
            .await;
            self.send_cancel(&task, "the task's deadline passed").await;
            deployments.insert(task.deployment_id);
        }
        for deployment_id in deployments {
            self.after_task_finished(&deployment_id).await;
        }
        Ok(())
    }

    /// Says in the log of each task waiting for an agent that cannot take it why it
    /// waits, once a minute per task (per replica).
    pub async fn report_waiting_tasks(&self) -> Result<(), AppError> {
        let now = now_ms();
        let reminder_ms = i64::try_from(WAITING_REMINDER.as_millis()).unwrap_or(60_000);
        let open = self
            .store
            .open_tasks_created_before(now - reminder_ms)
            .await?;
        let open_ids: std::collections::HashSet<&str> =
            open.iter().map(|t| t.id.as_str()).collect();
        self.waiting_reminders
            .lock()
            .retain(|task_id, _| open_ids.contains(task_id.as_str()));
        let mut agents = HashMap::new();
        for task in &open {
            let due = self
                .waiting_reminders
                .lock()
                .get(&task.id)
                .is_none_or(|at| now - *at >= reminder_ms);
            if !due {
                continue;
            }
            if !agents.contains_key(&task.agent_id) {
                let agent = self.store.get_agent(&task.agent_id).await.ok();
                agents.insert(task.agent_id.clone(), agent);
            }
            let Some(Some(agent)) = agents.get(&task.agent_id) else {
                continue;
            };
            if let Some(waiting) = self.waiting_for(agent, now) {
                self.log(
                    &task.deployment_id,
                    &task.id,
                    &format!("{}: {waiting}", task.target),
                )
                .await;
                self.waiting_reminders.lock().insert(task.id.clone(), now);
            }
        }
        Ok(())
    }

    /// Tells the agents whose sessions this replica holds to stop the tasks cancelled
    /// lately (on any replica).
    pub async fn propagate_cancellations(&self) -> Result<(), AppError> {
        let now = now_ms();
        let window = i64::try_from(CANCEL_PROPAGATION.as_millis()).unwrap_or(60_000);
        let cancelled = self.store.cancelled_tasks_since(now - window).await?;
        self.cancels_sent
            .lock()
            .retain(|_, at| now - *at < window.saturating_mul(2));
        for task in cancelled {
            if !self.sessions.is_open(&task.agent_id) {
                continue;
            }
            if self.cancels_sent.lock().contains_key(&task.id) {
                continue;
            }
            let reason = task
                .message
                .clone()
                .unwrap_or_else(|| "cancelled".to_owned());
            self.send_cancel(&task, &reason).await;
        }
        Ok(())
    }

    /// Tells a task's agent to stop it (a dispatch notice from the replica that
    /// cancelled it or failed it by its deadline), once, if its session is here.
    pub async fn stop_notified(&self, task_id: &str) {
        if self.cancels_sent.lock().contains_key(task_id) {
            return;
        }
        let task = match self.store.get_task(task_id).await {
            Ok(task) => task,
            Err(error) => {
                tracing::warn!(task_id, error = %ErrorChain(&error), "cannot read a task to stop");
                return;
            }
        };
        if !task.state.is_terminal() {
            return;
        }
        let reason = task
            .message
            .clone()
            .unwrap_or_else(|| "cancelled".to_owned());
        self.send_cancel(&task, &reason).await;
    }

    /// Tells a task's agent to stop it, if its session is on this replica.
    pub(super) async fn send_cancel(&self, task: &Task, reason: &str) {
        if !self.sessions.is_open(&task.agent_id) {
            return;
        }
        let message = v1::ServerMessage {
            body: Some(v1::server_message::Body::CancelTask(v1::CancelTask {
                task_id: task.id.clone(),
                reason: reason.to_owned(),
            })),
        };
        if self.sessions.send(&task.agent_id, message).await {
            self.cancels_sent.lock().insert(task.id.clone(), now_ms());
            tracing::info!(task_id = %task.id, agent_id = %task.agent_id, "cancel sent to the agent");
        }
    }
}
