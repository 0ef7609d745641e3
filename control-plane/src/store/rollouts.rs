//! Rollouts, their step records and the tasks their steps create, and the lease that
//! says which replica drives a rollout.
//!
//! A replica claims a rollout whose lease is free or expired; the claim raises
//! `lease_epoch`. Every write of a driver names the owner and epoch it holds and writes
//! nothing (returns `false`) when another replica claimed the rollout since: two drivers
//! never both move one rollout on. A step's tasks are created once: the write that
//! creates them first looks, under the deployment's row lock, for tasks of that step.

use std::collections::BTreeMap;

use sqlx::{Any, Transaction};

use super::deployments::{TaskRow, TASK_COLUMNS};
use super::environments::{decode_enum, decode_json, encode_json};
use super::error::database;
use super::{Backend, Store, StoreError};
use crate::domain::{
    Deployment, DeploymentState, Rollout, RolloutPhase, RolloutRequest, RolloutState,
    RolloutStepRecord, StepState, Task,
};

macro_rules! rollout_columns {
    () => {
        "deployment_id, environment, strategy_json, steps_json, payloads_json, previous_json, \
         state, phase, rollback_json, next_step, requested, requested_by, weights_json, \
         message, lease_owner, lease_expires_at_ms, lease_epoch, created_at_ms, \
         updated_at_ms, finished_at_ms"
    };
}

/// A task a rollout step creates, with the slot it acts on.
#[derive(Debug, Clone)]
pub struct StepTask {
    /// The task (its `deployment_id` is the rollout's).
    pub task: Task,
    /// The slot; `None`: the stable containers.
    pub slot: Option<String>,
}

/// A task of a rollout step, with what its agent reported.
#[derive(Debug, Clone)]
pub struct StepTaskResult {
    /// The task.
    pub task: Task,
    /// The outcome's JSON, once it succeeded.
    pub output_json: Option<String>,
}

impl Store {
    /// Stores a deployment that runs as `rollout`, with no tasks yet, in `tx` (the
    /// deployment first: see [`Store::create_deployment`] for its conflicts).
    pub(super) async fn insert_rollout(
        &self,
        tx: &mut Transaction<'static, Any>,
        rollout: &Rollout,
    ) -> Result<(), StoreError> {
        const OP: &str = "creating a rollout";
        sqlx::query(concat!(
            "INSERT INTO rollouts (",
            rollout_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20)"
        ))
        .bind(rollout.deployment_id.as_str())
        .bind(rollout.environment.as_str())
        .bind(encode_json("rollout strategy", &rollout.strategy)?)
        .bind(encode_json("rollout steps", &rollout.steps)?)
        .bind(encode_json("rollout payloads", &rollout.payloads)?)
        .bind(encode_json("rollout previous payloads", &rollout.previous)?)
        .bind(rollout.state.as_str())
        .bind(rollout.phase.as_str())
        .bind(encode_json("rollback steps", &rollout.rollback)?)
        .bind(i64::try_from(rollout.next_step).unwrap_or(i64::MAX))
        .bind(rollout.requested.as_ref().map(|(r, _)| r.as_str()))
        .bind(rollout.requested.as_ref().map(|(_, by)| by.as_str()))
        .bind(encode_json("rollout weights", &rollout.weights)?)
        .bind(rollout.message.as_deref())
        .bind(rollout.lease_owner.as_deref())
        .bind(rollout.lease_expires_at_ms)
        .bind(rollout.lease_epoch)
        .bind(rollout.created_at_ms)
        .bind(rollout.updated_at_ms)
        .bind(rollout.finished_at_ms)
        .execute(&mut **tx)
        .await
        .map_err(database(OP))?;
        Ok(())
    }

    /// The rollout of a deployment, if it runs as one.
    pub async fn get_rollout(&self, deployment_id: &str) -> Result<Option<Rollout>, StoreError> {
        sqlx::query_as::<_, RolloutRow>(concat!(
            "SELECT ",
            rollout_columns!(),
            " FROM rollouts WHERE deployment_id = $1"
        ))
        .bind(deployment_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a rollout"))?
        .map(RolloutRow::into_rollout)
        .transpose()
    }

    /// Claims up to `limit` rollouts not over whose lease is free or expired, for
    /// `owner` until `now_ms + lease_ms`, raising their epoch; returns them as claimed.
    pub async fn claim_rollouts(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Rollout>, StoreError> {
        const OP: &str = "claiming rollouts";
        let due = "SELECT deployment_id FROM rollouts WHERE state IN ('running', 'paused') \
                   AND (lease_owner IS NULL OR lease_expires_at_ms <= $1) LIMIT 1";
        if !self.any_due(due, now_ms, OP).await? {
            return Ok(Vec::new());
        }
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let mut tx = self.begin_write(OP).await?;
        let due = sqlx::query_scalar::<_, String>(&format!(
            "SELECT deployment_id FROM rollouts WHERE state IN ('running', 'paused') \
             AND (lease_owner IS NULL OR lease_expires_at_ms <= $1) \
             ORDER BY created_at_ms LIMIT $2{lock}"
        ))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(database(OP))?;
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            let row = sqlx::query_as::<_, RolloutRow>(concat!(
                "UPDATE rollouts SET lease_owner = $1, lease_expires_at_ms = $2, ",
                "lease_epoch = lease_epoch + 1 WHERE deployment_id = $3 RETURNING ",
                rollout_columns!()
            ))
            .bind(owner)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(database(OP))?;
            if let Some(row) = row {
                claimed.push(row.into_rollout()?);
            }
        }
        tx.commit().await.map_err(database(OP))?;
        Ok(claimed)
    }

    /// Extends the lease `owner` holds under `epoch`; false when it holds it no more.
    pub async fn renew_rollout_lease(
        &self,
        deployment_id: &str,
        owner: &str,
        epoch: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE rollouts SET lease_expires_at_ms = $1 \
             WHERE deployment_id = $2 AND lease_owner = $3 AND lease_epoch = $4",
        )
        .bind(until_ms)
        .bind(deployment_id)
        .bind(owner)
        .bind(epoch)
        .execute(self.writer())
        .await
        .map_err(database("renewing a rollout lease"))?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Gives a lease up (the replica stops); another replica may claim the rollout at
    /// once.
    pub async fn release_rollout_lease(
        &self,
        deployment_id: &str,
        owner: &str,
        epoch: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rollouts SET lease_owner = NULL, lease_expires_at_ms = NULL \
             WHERE deployment_id = $1 AND lease_owner = $2 AND lease_epoch = $3",
        )
        .bind(deployment_id)
        .bind(owner)
        .bind(epoch)
        .execute(self.writer())
        .await
        .map_err(database("releasing a rollout lease"))?;
        Ok(())
    }

    /// Writes the driver's view of the rollout (state, phase, rollback, next step,
    /// request, weights, message) when `rollout.lease_owner` still holds it under
    /// `rollout.lease_epoch`; false (nothing written) when it does not.
    pub async fn save_rollout(&self, rollout: &Rollout, now_ms: i64) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE rollouts SET state = $1, phase = $2, rollback_json = $3, next_step = $4, \
             requested = $5, requested_by = $6, weights_json = $7, message = $8, \
             updated_at_ms = $9 \
             WHERE deployment_id = $10 AND lease_owner = $11 AND lease_epoch = $12",
        )
        .bind(rollout.state.as_str())
        .bind(rollout.phase.as_str())
        .bind(encode_json("rollback steps", &rollout.rollback)?)
        .bind(i64::try_from(rollout.next_step).unwrap_or(i64::MAX))
        .bind(rollout.requested.as_ref().map(|(r, _)| r.as_str()))
        .bind(rollout.requested.as_ref().map(|(_, by)| by.as_str()))
        .bind(encode_json("rollout weights", &rollout.weights)?)
        .bind(rollout.message.as_deref())
        .bind(now_ms)
        .bind(rollout.deployment_id.as_str())
        .bind(rollout.lease_owner.as_deref())
        .bind(rollout.lease_epoch)
        .execute(self.writer())
        .await
        .map_err(database("saving a rollout"))?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Records an operator's request for a rollout that is not over; `NotFound` when the
    /// deployment runs no rollout, `Conflict` (entity `rollout state`) when it is over.
    pub async fn request_rollout(
        &self,
        deployment_id: &str,
        request: RolloutRequest,
        by: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        const OP: &str = "asking a rollout";
        let mut tx = self.begin_write(OP).await?;
        let state =
            sqlx::query_scalar::<_, String>("SELECT state FROM rollouts WHERE deployment_id = $1")
                .bind(deployment_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(database(OP))?;
        let Some(state) = state else {
            return Err(StoreError::NotFound {
                entity: "rollout",
                key: deployment_id.to_owned(),
            });
        };
        let state: RolloutState =
            decode_enum("rollout state", &format!("rollout {deployment_id}"), &state)?;
        if state.is_terminal() {
            return Err(StoreError::Conflict {
                entity: "rollout state",
                key: deployment_id.to_owned(),
            });
        }
        sqlx::query(
            "UPDATE rollouts SET requested = $1, requested_by = $2, updated_at_ms = $3 \
             WHERE deployment_id = $4",
        )
        .bind(request.as_str())
        .bind(by)
        .bind(now_ms)
        .bind(deployment_id)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        tx.commit().await.map_err(database(OP))?;
        Ok(())
    }

    /// Ends a rollout and its deployment in one transaction, under the driver's lease:
    /// the rollout takes `state`, the deployment `deployment_state` with `message`, both
    /// finished at `now_ms`, and the lease is given up. False (nothing written) when the
    /// lease is lost.
    pub async fn finish_rollout(
        &self,
        rollout: &Rollout,
        state: RolloutState,
        deployment_state: DeploymentState,
        message: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "ending a rollout";
        let mut tx = self.begin_write(OP).await?;
        let updated = sqlx::query(
            "UPDATE rollouts SET state = $1, message = COALESCE($2, message), \
             finished_at_ms = $3, updated_at_ms = $3, requested = NULL, requested_by = NULL, \
             weights_json = $4, lease_owner = NULL, lease_expires_at_ms = NULL \
             WHERE deployment_id = $5 AND lease_owner = $6 AND lease_epoch = $7",
        )
        .bind(state.as_str())
        .bind(message)
        .bind(now_ms)
        .bind(encode_json("rollout weights", &rollout.weights)?)
        .bind(rollout.deployment_id.as_str())
        .bind(rollout.lease_owner.as_deref())
        .bind(rollout.lease_epoch)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?
        .rows_affected();
        if updated != 1 {
            tx.rollback().await.map_err(database(OP))?;
            return Ok(false);
        }
        sqlx::query(
            "UPDATE deployments SET state = $1, message = COALESCE($2, message), \
             finished_at_ms = $3 WHERE id = $4 AND state IN ('pending', 'running')",
        )
        .bind(deployment_state.as_str())
        .bind(message)
        .bind(now_ms)
        .bind(rollout.deployment_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        tx.commit().await.map_err(database(OP))?;
        Ok(true)
    }

    /// Records the start of step `record.seq` once (a driver that takes the rollout
    /// over finds the record of the step it resumes and keeps it), and returns the
    /// record as stored.
    pub async fn start_rollout_step(
        &self,
        record: &RolloutStepRecord,
    ) -> Result<RolloutStepRecord, StoreError> {
        const OP: &str = "recording a rollout step";
        let mut tx = self.begin_write(OP).await?;
        let existing = self
            .rollout_step_in(&mut tx, &record.deployment_id, record.seq)
            .await?;
        if let Some(existing) = existing {
            tx.rollback().await.map_err(database(OP))?;
            return Ok(existing);
        }
        sqlx::query(
            "INSERT INTO rollout_steps (deployment_id, seq, phase, step_json, state, message, \
             detail_json, started_at_ms, finished_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(record.deployment_id.as_str())
        .bind(record.seq)
        .bind(record.phase.as_str())
        .bind(encode_json("rollout step", &record.step)?)
        .bind(record.state.as_str())
        .bind(record.message.as_deref())
        .bind(
            record
                .detail
                .as_ref()
                .map(|d| encode_json("rollout step detail", d))
                .transpose()?,
        )
        .bind(record.started_at_ms)
        .bind(record.finished_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?;
        tx.commit().await.map_err(database(OP))?;
        Ok(record.clone())
    }

    /// Finishes step `seq` with `state`, `message` and `detail`.
    pub async fn finish_rollout_step(
        &self,
        deployment_id: &str,
        seq: i64,
        state: StepState,
        message: Option<&str>,
        detail: Option<&serde_json::Value>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rollout_steps SET state = $1, message = $2, detail_json = $3, \
             finished_at_ms = $4 WHERE deployment_id = $5 AND seq = $6",
        )
        .bind(state.as_str())
        .bind(message)
        .bind(
            detail
                .map(|d| encode_json("rollout step detail", d))
                .transpose()?,
        )
        .bind(now_ms)
        .bind(deployment_id)
        .bind(seq)
        .execute(self.writer())
        .await
        .map_err(database("finishing a rollout step"))?;
        Ok(())
    }

    /// Every step record of a rollout, in order.
    pub async fn rollout_steps(
        &self,
        deployment_id: &str,
    ) -> Result<Vec<RolloutStepRecord>, StoreError> {
        sqlx::query_as::<_, StepRow>(
            "SELECT deployment_id, seq, phase, step_json, state, message, detail_json, \
             started_at_ms, finished_at_ms FROM rollout_steps WHERE deployment_id = $1 \
             ORDER BY seq",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading rollout steps"))?
        .into_iter()
        .map(StepRow::into_record)
        .collect()
    }

    async fn rollout_step_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        deployment_id: &str,
        seq: i64,
    ) -> Result<Option<RolloutStepRecord>, StoreError> {
        sqlx::query_as::<_, StepRow>(
            "SELECT deployment_id, seq, phase, step_json, state, message, detail_json, \
             started_at_ms, finished_at_ms FROM rollout_steps \
             WHERE deployment_id = $1 AND seq = $2",
        )
        .bind(deployment_id)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await
        .map_err(database("reading a rollout step"))?
        .map(StepRow::into_record)
        .transpose()
    }

    /// Creates the tasks of step `seq` of the rollout of `deployment` unless that step
    /// has tasks already (then nothing is written); returns whether it created them.
    /// The tasks take the deployment's generation; the replica holding an agent's
    /// session dispatches them the moment this commits.
    pub async fn add_rollout_tasks(
        &self,
        deployment: &Deployment,
        seq: i64,
        tasks: &[StepTask],
    ) -> Result<bool, StoreError> {
        const OP: &str = "creating a rollout step's tasks";
        let mut tx = self.begin_write(OP).await?;
        // The deployment's row lock orders this write against task results (see the
        // module docs of deployments).
        sqlx::query("UPDATE deployments SET state = state WHERE id = $1")
            .bind(deployment.id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
        let existing = sqlx::query_scalar::<_, String>(
            "SELECT id FROM tasks WHERE deployment_id = $1 AND rollout_seq = $2 LIMIT 1",
        )
        .bind(deployment.id.as_str())
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await
        .map_err(database(OP))?;
        if existing.is_some() {
            tx.rollback().await.map_err(database(OP))?;
            return Ok(false);
        }
        for StepTask { task, slot } in tasks {
            sqlx::query(
                "INSERT INTO tasks (id, deployment_id, target, agent_id, kind, epoch, \
                 generation, state, payload_json, message, deadline_at_ms, created_at_ms, \
                 finished_at_ms, slot, rollout_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(task.id.as_str())
            .bind(deployment.id.as_str())
            .bind(task.target.as_str())
            .bind(task.agent_id.as_str())
            .bind(task.kind.as_str())
            .bind(task.epoch)
            .bind(deployment.generation)
            .bind(task.state.as_str())
            .bind(task.payload_json.as_str())
            .bind(task.message.as_deref())
            .bind(task.deadline_at_ms)
            .bind(task.created_at_ms)
            .bind(task.finished_at_ms)
            .bind(slot.as_deref())
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(super::error::unique(OP, "task", &task.id))?;
        }
        super::notify::notify_tasks(&mut tx, self.backend, &deployment.id, OP).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(true)
    }

    /// The tasks of step `seq` of a rollout, with their outcomes, oldest first.
    pub async fn rollout_step_tasks(
        &self,
        deployment_id: &str,
        seq: i64,
    ) -> Result<Vec<StepTaskResult>, StoreError> {
        let rows = sqlx::query_as::<_, TaskWithOutput>(&format!(
            "SELECT {TASK_COLUMNS}, output_json FROM tasks \
             WHERE deployment_id = $1 AND rollout_seq = $2 ORDER BY created_at_ms, id"
        ))
        .bind(deployment_id)
        .bind(seq)
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading a rollout step's tasks"))?;
        rows.into_iter()
            .map(|row| {
                Ok(StepTaskResult {
                    output_json: row.output_json,
                    task: row.task.into_task()?,
                })
            })
            .collect()
    }

    /// The outcome of the newest succeeded task that deployed `slot` (`None`: the stable
    /// containers) of `target`, in `deployment_id` only when given.
    pub async fn latest_deploy_output(
        &self,
        target: &str,
        slot: Option<&str>,
        deployment_id: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let outputs = sqlx::query_scalar::<_, Option<String>>(
            "SELECT output_json FROM tasks WHERE target = $1 AND state = 'succeeded' \
             AND kind = 'deploy' AND COALESCE(slot, '') = $2 \
             AND ($3 = '' OR deployment_id = $3) \
             ORDER BY generation DESC, created_at_ms DESC, id DESC LIMIT 1",
        )
        .bind(target)
        .bind(slot.unwrap_or(""))
        .bind(deployment_id.unwrap_or(""))
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a deploy outcome"))?;
        Ok(outputs.flatten())
    }
}

#[derive(sqlx::FromRow)]
struct TaskWithOutput {
    #[sqlx(flatten)]
    task: TaskRow,
    output_json: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RolloutRow {
    deployment_id: String,
    environment: String,
    strategy_json: String,
    steps_json: String,
    payloads_json: String,
    previous_json: String,
    state: String,
    phase: String,
    rollback_json: Option<String>,
    next_step: i64,
    requested: Option<String>,
    requested_by: Option<String>,
    weights_json: Option<String>,
    message: Option<String>,
    lease_owner: Option<String>,
    lease_expires_at_ms: Option<i64>,
    lease_epoch: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    finished_at_ms: Option<i64>,
}

impl RolloutRow {
    fn into_rollout(self) -> Result<Rollout, StoreError> {
        let row = format!("rollout {}", self.deployment_id);
        let requested = match (self.requested, self.requested_by) {
            (Some(request), by) => Some((
                decode_enum::<RolloutRequest>("rollout request", &row, &request)?,
                by.unwrap_or_default(),
            )),
            (None, _) => None,
        };
        Ok(Rollout {
            strategy: decode_json("rollout strategy", &row, &self.strategy_json)?,
            steps: decode_json("rollout steps", &row, &self.steps_json)?,
            payloads: decode_json::<BTreeMap<String, String>>(
                "rollout payloads",
                &row,
                &self.payloads_json,
            )?,
            previous: decode_json("rollout previous payloads", &row, &self.previous_json)?,
            state: decode_enum("rollout state", &row, &self.state)?,
            phase: decode_enum::<RolloutPhase>("rollout phase", &row, &self.phase)?,
            rollback: match &self.rollback_json {
                Some(json) => decode_json("rollback steps", &row, json)?,
                None => Vec::new(),
            },
            next_step: usize::try_from(self.next_step).unwrap_or(usize::MAX),
            requested,
            weights: match &self.weights_json {
                Some(json) => decode_json("rollout weights", &row, json)?,
                None => Vec::new(),
            },
            message: self.message,
            lease_owner: self.lease_owner,
            lease_expires_at_ms: self.lease_expires_at_ms,
            lease_epoch: self.lease_epoch,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            finished_at_ms: self.finished_at_ms,
            deployment_id: self.deployment_id,
            environment: self.environment,
        })
    }
}

#[derive(sqlx::FromRow)]
struct StepRow {
    deployment_id: String,
    seq: i64,
    phase: String,
    step_json: String,
    state: String,
    message: Option<String>,
    detail_json: Option<String>,
    started_at_ms: i64,
    finished_at_ms: Option<i64>,
}

impl StepRow {
    fn into_record(self) -> Result<RolloutStepRecord, StoreError> {
        let row = format!("rollout step {}#{}", self.deployment_id, self.seq);
        Ok(RolloutStepRecord {
            phase: decode_enum("rollout step phase", &row, &self.phase)?,
            step: decode_json("rollout step", &row, &self.step_json)?,
            state: decode_enum("rollout step state", &row, &self.state)?,
            detail: self
                .detail_json
                .as_deref()
                .map(|json| decode_json("rollout step detail", &row, json))
                .transpose()?,
            message: self.message,
            seq: self.seq,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
            deployment_id: self.deployment_id,
        })
    }
}
