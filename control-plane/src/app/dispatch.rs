//! Dispatch: tasks to agents under lease epochs, their progress and results, task
//! deadlines, and each agent's desired state.

use stella_proto::v1;

use super::{now_ms, App};
use crate::domain::{DeploySpec, Task, TaskState};
use crate::error::{AppError, ErrorKind};

impl App {
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
