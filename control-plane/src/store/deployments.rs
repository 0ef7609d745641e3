//! Deployments, their tasks and their log lines.
//!
//! A deployment's state follows its tasks: `pending` until a task is claimed, `running`
//! while some task is unfinished, then `succeeded` if every task succeeded, else `failed`
//! with the first failure as its message.
//!
//! Lock order, for PostgreSQL where concurrent writers do not queue on one lock as they
//! do on SQLite: every transaction that changes tasks first locks their deployment's row
//! (a no-op `UPDATE`), deployments in id order. Two transactions finishing tasks of one
//! deployment therefore run one after the other, and the later one sees the earlier one's
//! task when it decides whether the deployment is done.

use sqlx::{Any, Transaction};

use super::environments::{decode_enum, not_found_environment};
use super::error::{database, unique};
use super::{Store, StoreError};
use crate::domain::{Deployment, DeploymentKind, DeploymentState, Task, TaskKind, TaskState};

/// Every `tasks` column, in [`TaskRow`] order, as one literal.
macro_rules! task_columns {
    () => {
        "id, deployment_id, target, agent_id, kind, epoch, generation, state, payload_json, \
         message, deadline_at_ms, created_at_ms, finished_at_ms"
    };
}

/// Every `tasks` column, in [`TaskRow`] order, for queries built elsewhere.
pub(super) const TASK_COLUMNS: &str = task_columns!();

// After the macros above, which it uses.
mod claims;
mod results;
pub use results::{ResultOutcome, StoredResult, TaskResultRecord};

/// `SELECT <every task column> FROM tasks <tail>`, as one literal.
macro_rules! select_tasks {
    ($tail:literal) => {
        concat!("SELECT ", task_columns!(), " FROM tasks ", $tail)
    };
}

/// `SELECT <every deployment column> FROM deployments <tail>`, as one literal.
macro_rules! select_deployments {
    ($tail:literal) => {
        concat!(
            "SELECT id, kind, environment, release_name, release_version, decision_id, ",
            "generation, state, message, created_by, created_at_ms, finished_at_ms ",
            "FROM deployments ",
            $tail
        )
    };
}

/// The message of tasks failed by [`Store::expire_tasks`].
const DEADLINE_PASSED: &str = "deadline passed";

impl Store {
    /// Stores a deployment and all its tasks in one transaction, under a new generation
    /// (greater than every earlier deployment's), which it returns; the `generation` of
    /// `deployment` and `tasks` is ignored. `NotFound` if its environment or its release
    /// (key `name@version`) does not exist; `Conflict` with entity `active deployment`
    /// (key: the environment) if the environment has a pending or running deployment —
    /// a unique index decides, so of concurrent calls exactly one wins; `Conflict` if a
    /// task id is taken. Each task is stored under `deployment.id`.
    pub async fn create_deployment(
        &self,
        deployment: &Deployment,
        tasks: &[Task],
    ) -> Result<i64, StoreError> {
        const OP: &str = "creating a deployment";
        let mut tx = self.begin_write(OP).await?;
        let generation = self.insert_deployment(&mut tx, deployment, tasks).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(generation)
    }

    /// Inserts a deployment and its tasks in `tx` (see [`Store::create_deployment`]);
    /// returns the generation it was given.
    pub(super) async fn insert_deployment(
        &self,
        tx: &mut Transaction<'static, Any>,
        deployment: &Deployment,
        tasks: &[Task],
    ) -> Result<i64, StoreError> {
        const OP: &str = "creating a deployment";
        let environment =
            sqlx::query_scalar::<_, String>("SELECT name FROM environments WHERE name = $1")
                .bind(deployment.environment.as_str())
                .fetch_optional(&mut **tx)
                .await
                .map_err(database(OP))?;
        if environment.is_none() {
            return Err(not_found_environment(&deployment.environment));
        }
        let release = sqlx::query_scalar::<_, String>(
            "SELECT name FROM releases WHERE name = $1 AND version = $2",
        )
        .bind(deployment.release.as_str())
        .bind(deployment.version.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(database(OP))?;
        if release.is_none() {
            return Err(StoreError::NotFound {
                entity: "release",
                key: format!("{}@{}", deployment.release, deployment.version),
            });
        }

        let taken = sqlx::query_scalar::<_, String>("SELECT id FROM deployments WHERE id = $1")
            .bind(deployment.id.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(database(OP))?;
        if taken.is_some() {
            return Err(StoreError::Conflict {
                entity: "deployment",
                key: deployment.id.clone(),
            });
        }
        // SQLite: a counter row, under the write lock held since BEGIN IMMEDIATE.
        // PostgreSQL: a sequence, so replicas do not queue on one counter row. Neither
        // hands a generation out twice, even after history is deleted.
        let next_generation = match self.backend {
            super::Backend::Sqlite => {
                "UPDATE counters SET value = value + 1 \
                 WHERE name = 'deployment_generation' RETURNING value"
            }
            super::Backend::Postgres => "SELECT nextval('deployment_generation_seq')",
        };
        let generation = sqlx::query_scalar::<_, i64>(next_generation)
            .fetch_one(&mut **tx)
            .await
            .map_err(database(OP))?;
        sqlx::query(
            "INSERT INTO deployments (id, kind, environment, release_name, release_version, \
             decision_id, generation, state, message, created_by, created_at_ms, \
             finished_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(deployment.id.as_str())
        .bind(deployment.kind.as_str())
        .bind(deployment.environment.as_str())
        .bind(deployment.release.as_str())
        .bind(deployment.version.as_str())
        .bind(deployment.decision_id.as_str())
        .bind(generation)
        .bind(deployment.state.as_str())
        .bind(deployment.message.as_deref())
        .bind(deployment.created_by.as_str())
        .bind(deployment.created_at_ms)
        .bind(deployment.finished_at_ms)
        .execute(&mut **tx)
        .await
        // The id is free (checked above, under the write lock or this transaction's
        // snapshot) and the generation new: a unique violation here is the
        // one-active-deployment-per-environment index.
        .map_err(unique(OP, "active deployment", &deployment.environment))?;

        for task in tasks {
            debug_assert_eq!(task.deployment_id, deployment.id, "task {}", task.id);
            sqlx::query(
                "INSERT INTO tasks (id, deployment_id, target, agent_id, kind, epoch, generation, \
                 state, payload_json, message, deadline_at_ms, created_at_ms, finished_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(task.id.as_str())
            .bind(deployment.id.as_str())
            .bind(task.target.as_str())
            .bind(task.agent_id.as_str())
            .bind(task.kind.as_str())
            .bind(task.epoch)
            .bind(generation)
            .bind(task.state.as_str())
            .bind(task.payload_json.as_str())
            .bind(task.message.as_deref())
            .bind(task.deadline_at_ms)
            .bind(task.created_at_ms)
            .bind(task.finished_at_ms)
            .execute(&mut **tx)
            .await
            .map_err(unique(OP, "task", &task.id))?;
        }
        // The replica holding an agent's session dispatches the moment this commits.
        super::notify::notify_tasks(tx, self.backend, &deployment.id, OP).await?;
        Ok(generation)
    }

    /// The deployment with this id; `NotFound` if there is none.
    pub async fn get_deployment(&self, id: &str) -> Result<Deployment, StoreError> {
        sqlx::query_as::<_, DeploymentRow>(select_deployments!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a deployment"))?
            .ok_or_else(|| StoreError::NotFound {
                entity: "deployment",
                key: id.to_owned(),
            })?
            .into_deployment()
    }

    /// The deployment whose id is `id_or_prefix`, or the only one whose id starts with it
    /// (at least 8 characters). `NotFound` if none matches; `Conflict` (entity
    /// `deployment id prefix`) if several do.
    pub async fn find_deployment(&self, id_or_prefix: &str) -> Result<Deployment, StoreError> {
        const OP: &str = "reading a deployment";
        match self.get_deployment(id_or_prefix).await {
            Err(StoreError::NotFound { .. }) if super::is_id_prefix(id_or_prefix) => {}
            other => return other,
        }
        let rows = sqlx::query_as::<_, DeploymentRow>(select_deployments!(
            "WHERE id LIKE $1 ORDER BY id LIMIT 2"
        ))
        .bind(format!("{}%", id_or_prefix.to_ascii_lowercase()))
        .fetch_all(&self.pool)
        .await
        .map_err(database(OP))?;
        super::only_match(rows, "deployment", "deployment id prefix", id_or_prefix)?
            .into_deployment()
    }

    /// Cancels a deployment that is not finished: in one transaction its unfinished tasks
    /// become `cancelled` with `message`, and the deployment `cancelled` with `message`,
    /// finished at `now_ms`. Returns the tasks it cancelled (their agents should stop
    /// them). `NotFound` if there is no such deployment; `Conflict` (entity `finished
    /// deployment`, key: its state) if it already finished.
    pub async fn cancel_deployment(
        &self,
        id: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<Vec<Task>, StoreError> {
        const OP: &str = "cancelling a deployment";
        let mut tx = self.begin_write(OP).await?;
        lock_deployment(&mut tx, id, OP).await?;
        let state = sqlx::query_scalar::<_, String>("SELECT state FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(database(OP))?
            .ok_or_else(|| StoreError::NotFound {
                entity: "deployment",
                key: id.to_owned(),
            })?;
        if !matches!(state.as_str(), "pending" | "running") {
            return Err(StoreError::Conflict {
                entity: "finished deployment",
                key: state,
            });
        }
        let rows = sqlx::query_as::<_, TaskRow>(concat!(
            "UPDATE tasks SET state = 'cancelled', message = $1, finished_at_ms = $2 ",
            "WHERE deployment_id = $3 AND state IN ('pending', 'assigned') RETURNING ",
            task_columns!()
        ))
        .bind(message)
        .bind(now_ms)
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(database(OP))?;
        sqlx::query(
            "UPDATE deployments SET state = 'cancelled', message = $1, finished_at_ms = $2 \
             WHERE id = $3",
        )
        .bind(message)
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        let stopped: Vec<_> = rows
            .iter()
            .map(|r| (r.agent_id.as_str(), r.id.as_str()))
            .collect();
        super::notify::notify_stop(&mut tx, self.backend, stopped, OP).await?;
        tx.commit().await.map_err(database(OP))?;
        rows.into_iter().map(TaskRow::into_task).collect()
    }

    /// Tasks cancelled after `since_ms`, oldest first: each replica tells the agents whose
    /// sessions it holds to stop theirs.
    pub async fn cancelled_tasks_since(&self, since_ms: i64) -> Result<Vec<Task>, StoreError> {
        sqlx::query_as::<_, TaskRow>(select_tasks!(
            "WHERE state = 'cancelled' AND finished_at_ms > $1 ORDER BY finished_at_ms"
        ))
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing cancelled tasks"))?
        .into_iter()
        .map(TaskRow::into_task)
        .collect()
    }

    /// Unfinished (pending or assigned) tasks created before `before_ms`, oldest first.
    pub async fn open_tasks_created_before(&self, before_ms: i64) -> Result<Vec<Task>, StoreError> {
        sqlx::query_as::<_, TaskRow>(select_tasks!(
            "WHERE state IN ('pending', 'assigned') AND created_at_ms < $1 \
             ORDER BY created_at_ms, id"
        ))
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing unfinished tasks"))?
        .into_iter()
        .map(TaskRow::into_task)
        .collect()
    }

    /// The latest `limit` deployments, of every environment or of one, newest first.
    pub async fn list_deployments(
        &self,
        environment: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Deployment>, StoreError> {
        const OP: &str = "listing deployments";
        let limit = limit.max(0);
        let rows = match environment {
            Some(environment) => {
                sqlx::query_as::<_, DeploymentRow>(select_deployments!(
                    "WHERE environment = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
                ))
                .bind(environment)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as::<_, DeploymentRow>(select_deployments!(
                    "ORDER BY created_at_ms DESC, id DESC LIMIT $1"
                ))
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(database(OP))?;
        rows.into_iter()
            .map(DeploymentRow::into_deployment)
            .collect()
    }

    /// The newest deployment of the environment that is `pending` or `running`, if any.
    pub async fn active_deployment(
        &self,
        environment: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        sqlx::query_as::<_, DeploymentRow>(select_deployments!(
            "WHERE environment = $1 AND state IN ('pending', 'running') \
             ORDER BY created_at_ms DESC, id DESC LIMIT 1"
        ))
        .bind(environment)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading the active deployment"))?
        .map(DeploymentRow::into_deployment)
        .transpose()
    }

    /// Succeeded deployments of an environment, newest (by finished_at_ms) first.
    pub async fn succeeded_deployments(
        &self,
        environment: &str,
        limit: i64,
    ) -> Result<Vec<Deployment>, StoreError> {
        sqlx::query_as::<_, DeploymentRow>(select_deployments!(
            "WHERE environment = $1 AND state = 'succeeded' \
             ORDER BY finished_at_ms DESC, created_at_ms DESC, id DESC LIMIT $2"
        ))
        .bind(environment)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing succeeded deployments"))?
        .into_iter()
        .map(DeploymentRow::into_deployment)
        .collect()
    }

    /// The newest succeeded deployment of `version` (of any release) to the environment.
    pub async fn succeeded_deployment_of_version(
        &self,
        environment: &str,
        version: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        sqlx::query_as::<_, DeploymentRow>(select_deployments!(
            "WHERE environment = $1 AND release_version = $2 AND state = 'succeeded' \
             ORDER BY generation DESC LIMIT 1"
        ))
        .bind(environment)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a succeeded deployment"))?
        .map(DeploymentRow::into_deployment)
        .transpose()
    }

    /// The newest succeeded deployment of `release@version` in `environment`.
    pub async fn succeeded_deployment_of_release(
        &self,
        environment: &str,
        release: &str,
        version: &str,
    ) -> Result<Option<Deployment>, StoreError> {
        sqlx::query_as::<_, DeploymentRow>(select_deployments!(
            "WHERE environment = $1 AND release_name = $2 AND release_version = $3 \
             AND state = 'succeeded' ORDER BY generation DESC LIMIT 1"
        ))
        .bind(environment)
        .bind(release)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a succeeded deployment"))?
        .map(DeploymentRow::into_deployment)
        .transpose()
    }

    /// The tasks of a deployment, ordered by target (none if there is no such deployment).
    pub async fn tasks_of_deployment(&self, deployment_id: &str) -> Result<Vec<Task>, StoreError> {
        sqlx::query_as::<_, TaskRow>(select_tasks!(
            "WHERE deployment_id = $1 ORDER BY target, id"
        ))
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing the tasks of a deployment"))?
        .into_iter()
        .map(TaskRow::into_task)
        .collect()
    }

    /// The task with this id; `NotFound` if there is none.
    pub async fn get_task(&self, task_id: &str) -> Result<Task, StoreError> {
        sqlx::query_as::<_, TaskRow>(select_tasks!("WHERE id = $1"))
            .bind(task_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(database("reading a task"))?
            .ok_or_else(|| StoreError::NotFound {
                entity: "task",
                key: task_id.to_owned(),
            })?
            .into_task()
    }

    /// Agents with unfinished tasks whose deadline has passed (`deadline_at_ms <= now_ms`).
    pub async fn agents_with_expired_tasks(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT agent_id FROM tasks \
             WHERE state IN ('pending', 'assigned') AND deadline_at_ms <= $1",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing agents with expired tasks"))
    }

    /// Agents that have tasks never sent yet (`pending`). Every replica polls this for
    /// the agents whose sessions it holds: a deployment created on one replica reaches
    /// an agent connected to another.
    pub async fn agents_with_pending_tasks(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT agent_id FROM tasks WHERE state = 'pending' AND deadline_at_ms > $1",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing agents with pending tasks"))
    }

    /// Records a task's result if `epoch` equals the stored epoch and the task is not
    /// terminal, and returns the updated task; `None` when the result is stale or a
    /// duplicate, or the task unknown (so a repeated report is harmless). `state` is meant
    /// to be terminal; an empty `message` is stored as none.
    ///
    /// In the same transaction: when every task of the deployment is terminal, the
    /// deployment becomes `succeeded` (all succeeded) or `failed` (message: the first
    /// failed task's `target: message`), finished at `now_ms`; otherwise `running`.
    pub async fn complete_task(
        &self,
        task_id: &str,
        epoch: i64,
        state: TaskState,
        message: &str,
        now_ms: i64,
    ) -> Result<Option<Task>, StoreError> {
        self.complete_task_with_output(task_id, epoch, state, message, None, now_ms)
            .await
    }

    /// [`Store::complete_task`], keeping what the agent reported with the result
    /// (`output_json`, the deploy outcome a rollout reads endpoints from).
    ///
    /// A deployment that runs as a rollout is not settled here: its driver settles it
    /// when the rollout ends.
    pub async fn complete_task_with_output(
        &self,
        task_id: &str,
        epoch: i64,
        state: TaskState,
        message: &str,
        output_json: Option<&str>,
        now_ms: i64,
    ) -> Result<Option<Task>, StoreError> {
        const OP: &str = "completing a task";
        let mut tx = self.begin_write(OP).await?;
        let deployment_id =
            sqlx::query_scalar::<_, String>("SELECT deployment_id FROM tasks WHERE id = $1")
                .bind(task_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(database(OP))?;
        let Some(deployment_id) = deployment_id else {
            tx.rollback().await.map_err(database(OP))?;
            return Ok(None);
        };
        lock_deployment(&mut tx, &deployment_id, OP).await?;
        let finished_at_ms = state.is_terminal().then_some(now_ms);
        let row = sqlx::query_as::<_, TaskRow>(concat!(
            "UPDATE tasks SET state = $1, message = $2, finished_at_ms = $3, ",
            "output_json = COALESCE($6, output_json) ",
            "WHERE id = $4 AND epoch = $5 AND state IN ('pending', 'assigned') RETURNING ",
            task_columns!()
        ))
        .bind(state.as_str())
        .bind((!message.is_empty()).then_some(message))
        .bind(finished_at_ms)
        .bind(task_id)
        .bind(epoch)
        .bind(output_json)
        .fetch_optional(&mut *tx)
        .await
        .map_err(database(OP))?;
        let Some(row) = row else {
            tx.rollback().await.map_err(database(OP))?;
            return Ok(None);
        };
        let task = row.into_task()?;
        settle_deployment(&mut tx, &deployment_id, now_ms, OP).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(Some(task))
    }

    /// Fails every unfinished task whose deadline has passed (`deadline_at_ms <= now_ms`)
    /// with the message `reason(agent_id)` (why its agent did not finish it), settles
    /// their deployments as [`Store::complete_task`] does, and returns those tasks,
    /// oldest first.
    pub async fn expire_tasks(
        &self,
        now_ms: i64,
        reason: impl Fn(&str) -> String,
    ) -> Result<Vec<Task>, StoreError> {
        const OP: &str = "expiring tasks";
        let mut tx = self.begin_write(OP).await?;
        let deployment_ids = sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT deployment_id FROM tasks \
             WHERE state IN ('pending', 'assigned') AND deadline_at_ms <= $1 ORDER BY deployment_id",
        )
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(database(OP))?;

        let mut expired = Vec::new();
        for deployment_id in &deployment_ids {
            lock_deployment(&mut tx, deployment_id, OP).await?;
            let agents = sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT agent_id FROM tasks WHERE deployment_id = $1 \
                 AND state IN ('pending', 'assigned') AND deadline_at_ms <= $2 ORDER BY agent_id",
            )
            .bind(deployment_id.as_str())
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await
            .map_err(database(OP))?;
            let mut rows = Vec::new();
            for agent_id in agents {
                let message = format!("{DEADLINE_PASSED}: {}", reason(&agent_id));
                rows.extend(
                    sqlx::query_as::<_, TaskRow>(concat!(
                        "UPDATE tasks SET state = 'failed', message = $1, finished_at_ms = $2 ",
                        "WHERE deployment_id = $3 AND agent_id = $4 ",
                        "AND state IN ('pending', 'assigned') AND deadline_at_ms <= $2 RETURNING ",
                        task_columns!()
                    ))
                    .bind(message)
                    .bind(now_ms)
                    .bind(deployment_id.as_str())
                    .bind(agent_id.as_str())
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(database(OP))?,
                );
            }
            if rows.is_empty() {
                continue;
            }
            settle_deployment(&mut tx, deployment_id, now_ms, OP).await?;
            let stopped: Vec<_> = rows
                .iter()
                .map(|r| (r.agent_id.as_str(), r.id.as_str()))
                .collect();
            super::notify::notify_stop(&mut tx, self.backend, stopped, OP).await?;
            for row in rows {
                expired.push(row.into_task()?);
            }
        }
        tx.commit().await.map_err(database(OP))?;
        expired.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(expired)
    }

    /// Every target of `agent_id`, ordered by name, with the payload and generation of
    /// its succeeded task of the highest generation, if it has one. The agent's desired
    /// state: the targets listed are all it drives.
    pub async fn desired_payloads_for_agent(
        &self,
        agent_id: &str,
    ) -> Result<Vec<DesiredPayload>, StoreError> {
        let rows = sqlx::query_as::<_, (String, Option<String>, Option<i64>)>(
            "SELECT t.name, k.payload_json, k.generation FROM targets t \
             LEFT JOIN tasks k ON k.id = (SELECT l.id FROM tasks l \
             WHERE l.target = t.name AND l.state = 'succeeded' \
             AND l.kind = 'deploy' AND l.slot IS NULL \
             ORDER BY l.generation DESC, l.id DESC LIMIT 1) \
             WHERE t.agent_id = $1 ORDER BY t.name",
        )
        .bind(agent_id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading the desired state of an agent"))?;
        Ok(rows
            .into_iter()
            .map(|(target, payload_json, generation)| DesiredPayload {
                target,
                deployed: payload_json.zip(generation),
            })
            .collect())
    }

    /// The succeeded task of a target with the highest generation: its payload is what
    /// should run there.
    pub async fn latest_succeeded_task(&self, target: &str) -> Result<Option<Task>, StoreError> {
        sqlx::query_as::<_, TaskRow>(select_tasks!(
            "WHERE target = $1 AND state = 'succeeded' AND kind = 'deploy' AND slot IS NULL \
             ORDER BY generation DESC, id DESC LIMIT 1"
        ))
        .bind(target)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading the latest succeeded task"))?
        .map(TaskRow::into_task)
        .transpose()
    }
}

/// A target of an agent and what it should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPayload {
    /// The target's name.
    pub target: String,
    /// The payload and generation of its latest succeeded task; `None` if it has none.
    pub deployed: Option<(String, i64)>,
}

/// Locks a deployment's row until the transaction ends (see the module docs).
async fn lock_deployment(
    tx: &mut Transaction<'static, Any>,
    deployment_id: &str,
    op: &'static str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE deployments SET state = state WHERE id = $1")
        .bind(deployment_id)
        .execute(&mut **tx)
        .await
        .map_err(database(op))?;
    Ok(())
}

/// Moves a deployment on after some of its tasks finished: `succeeded` or `failed` when
/// every task is terminal, else `running`. A finished deployment is left as it is.
/// Returns whether this call finished it.
async fn settle_deployment(
    tx: &mut Transaction<'static, Any>,
    deployment_id: &str,
    now_ms: i64,
    op: &'static str,
) -> Result<bool, StoreError> {
    let rollout = sqlx::query_scalar::<_, String>(
        "SELECT deployment_id FROM rollouts WHERE deployment_id = $1",
    )
    .bind(deployment_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(database(op))?;
    if rollout.is_some() {
        // Its driver decides when it is done (after the last step, or a rollback).
        sqlx::query("UPDATE deployments SET state = 'running' WHERE id = $1 AND state = 'pending'")
            .bind(deployment_id)
            .execute(&mut **tx)
            .await
            .map_err(database(op))?;
        return Ok(false);
    }
    // Two index lookups (tasks by deployment and state), not a read of every task: this
    // runs after each result, so a fan-out to N targets would read N² rows.
    let open = sqlx::query_scalar::<_, String>(
        "SELECT id FROM tasks WHERE deployment_id = $1 AND state IN ('pending', 'assigned') \
         LIMIT 1",
    )
    .bind(deployment_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(database(op))?;
    if open.is_some() {
        sqlx::query("UPDATE deployments SET state = 'running' WHERE id = $1 AND state = 'pending'")
            .bind(deployment_id)
            .execute(&mut **tx)
            .await
            .map_err(database(op))?;
        return Ok(false);
    }
    // The first failure is the one that finished first (a failure with no finish time
    // before any other; ties: created first, then by id).
    let first_failure = sqlx::query_as::<_, (String, Option<String>)>(
        "SELECT target, message FROM tasks \
         WHERE deployment_id = $1 AND state IN ('failed', 'cancelled') \
         ORDER BY finished_at_ms IS NOT NULL, finished_at_ms, created_at_ms, id LIMIT 1",
    )
    .bind(deployment_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(database(op))?;
    let (state, message) = match first_failure {
        None => (DeploymentState::Succeeded, None),
        Some((target, message)) => (
            DeploymentState::Failed,
            Some(format!(
                "{target}: {}",
                message.as_deref().unwrap_or("failed")
            )),
        ),
    };
    // A succeeded deployment keeps whatever message it was created with.
    let finished = sqlx::query(
        "UPDATE deployments SET state = $1, message = COALESCE($2, message), finished_at_ms = $3 \
         WHERE id = $4 AND state IN ('pending', 'running')",
    )
    .bind(state.as_str())
    .bind(message)
    .bind(now_ms)
    .bind(deployment_id)
    .execute(&mut **tx)
    .await
    .map_err(database(op))?
    .rows_affected();
    Ok(finished > 0)
}

/// A `deployments` row as stored.
#[derive(sqlx::FromRow)]
struct DeploymentRow {
    id: String,
    kind: String,
    environment: String,
    release_name: String,
    release_version: String,
    decision_id: String,
    generation: i64,
    state: String,
    message: Option<String>,
    created_by: String,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
}

impl DeploymentRow {
    fn into_deployment(self) -> Result<Deployment, StoreError> {
        let row = format!("deployment {}", self.id);
        let kind: DeploymentKind = decode_enum("deployment kind", &row, &self.kind)?;
        let state: DeploymentState = decode_enum("deployment state", &row, &self.state)?;
        Ok(Deployment {
            id: self.id,
            kind,
            environment: self.environment,
            release: self.release_name,
            version: self.release_version,
            decision_id: self.decision_id,
            generation: self.generation,
            state,
            message: self.message,
            created_by: self.created_by,
            created_at_ms: self.created_at_ms,
            finished_at_ms: self.finished_at_ms,
        })
    }
}

/// A `tasks` row as stored.
#[derive(sqlx::FromRow)]
pub(super) struct TaskRow {
    id: String,
    deployment_id: String,
    target: String,
    agent_id: String,
    kind: String,
    epoch: i64,
    generation: i64,
    state: String,
    payload_json: String,
    message: Option<String>,
    deadline_at_ms: i64,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
}

impl TaskRow {
    pub(super) fn into_task(self) -> Result<Task, StoreError> {
        let row = format!("task {}", self.id);
        let state: TaskState = decode_enum("task state", &row, &self.state)?;
        let kind: TaskKind = decode_enum("task kind", &row, &self.kind)?;
        Ok(Task {
            id: self.id,
            deployment_id: self.deployment_id,
            target: self.target,
            agent_id: self.agent_id,
            kind,
            epoch: self.epoch,
            generation: self.generation,
            state,
            payload_json: self.payload_json,
            message: self.message,
            deadline_at_ms: self.deadline_at_ms,
            created_at_ms: self.created_at_ms,
            finished_at_ms: self.finished_at_ms,
        })
    }
}
