//! Task results stored in batches: one write transaction for every result queued while
//! the previous batch was written (the app's result writer group-commits them), where a
//! transaction per result made a fan-out's results queue for the one SQLite writer.

use std::collections::{BTreeMap, BTreeSet};

use super::{lock_deployment, settle_deployment, TaskRow};
use crate::domain::{Task, TaskState};
use crate::store::error::database;
use crate::store::logs::LOG_APPEND_LOCK;
use crate::store::{Backend, Store, StoreError};

/// One task result as an agent reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResultRecord {
    /// The task.
    pub task_id: String,
    /// The lease epoch the agent ran it under.
    pub epoch: i64,
    /// How it ended (terminal).
    pub state: TaskState,
    /// The agent's message; empty for none.
    pub message: String,
    /// What the agent reported with it, when that is JSON.
    pub output_json: Option<String>,
}

/// What storing one result did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResult {
    /// The task as stored; `None` when the result was a duplicate or stale (another
    /// epoch, the task finished already, or no such task) and nothing changed.
    pub task: Option<Task>,
    /// Whether this result finished its deployment; true for at most one result per
    /// deployment.
    pub finished_deployment: bool,
}

impl Store {
    /// Stores `results` in one write transaction, as [`Store::complete_task_with_output`]
    /// does each: a result is kept only for an open task under the epoch it was assigned
    /// with; each kept result appends the log line `log_line(task)`; each deployment a
    /// result touched is then settled once. Deployments are locked in id order, so
    /// batches on several replicas cannot deadlock. The answer is in `results`' order.
    pub async fn complete_tasks(
        &self,
        results: &[TaskResultRecord],
        now_ms: i64,
        log_line: impl Fn(&Task) -> String,
    ) -> Result<Vec<StoredResult>, StoreError> {
        const OP: &str = "completing tasks";
        let mut stored: Vec<StoredResult> = results
            .iter()
            .map(|_| StoredResult {
                task: None,
                finished_deployment: false,
            })
            .collect();
        if results.is_empty() {
            return Ok(stored);
        }
        let mut tx = self.begin_write(OP).await?;
        let mut deployment_of = Vec::with_capacity(results.len());
        for result in results {
            let deployment_id =
                sqlx::query_scalar::<_, String>("SELECT deployment_id FROM tasks WHERE id = $1")
                    .bind(result.task_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(database(OP))?;
            deployment_of.push(deployment_id);
        }
        let deployments: BTreeSet<&str> =
            deployment_of.iter().flatten().map(String::as_str).collect();
        for deployment_id in &deployments {
            lock_deployment(&mut tx, deployment_id, OP).await?;
            if self.backend == Backend::Postgres {
                // Log lines of one deployment are appended in seq order (see logs.rs).
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(LOG_APPEND_LOCK)
                    .bind(*deployment_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(database(OP))?;
            }
        }
        // The last kept result of each deployment, which is told if it finished it.
        let mut last_kept: BTreeMap<String, usize> = BTreeMap::new();
        for (index, (result, deployment_id)) in results.iter().zip(&deployment_of).enumerate() {
            let Some(deployment_id) = deployment_id else {
                continue;
            };
            let finished_at_ms = result.state.is_terminal().then_some(now_ms);
            let row = sqlx::query_as::<_, TaskRow>(concat!(
                "UPDATE tasks SET state = $1, message = $2, finished_at_ms = $3, ",
                "output_json = COALESCE($6, output_json) ",
                "WHERE id = $4 AND epoch = $5 AND state IN ('pending', 'assigned') RETURNING ",
                task_columns!()
            ))
            .bind(result.state.as_str())
            .bind((!result.message.is_empty()).then_some(result.message.as_str()))
            .bind(finished_at_ms)
            .bind(result.task_id.as_str())
            .bind(result.epoch)
            .bind(result.output_json.as_deref())
            .fetch_optional(&mut *tx)
            .await
            .map_err(database(OP))?;
            let Some(row) = row else {
                continue;
            };
            let task = row.into_task()?;
            sqlx::query(
                "INSERT INTO logs (deployment_id, task_id, line, at_ms, message) \
                 VALUES ($1, $2, NULL, $3, $4)",
            )
            .bind(deployment_id.as_str())
            .bind(task.id.as_str())
            .bind(now_ms)
            .bind(log_line(&task))
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
            last_kept.insert(deployment_id.clone(), index);
            stored[index].task = Some(task);
        }
        for (deployment_id, index) in &last_kept {
            if settle_deployment(&mut tx, deployment_id, now_ms, OP).await? {
                stored[*index].finished_deployment = true;
            }
        }
        tx.commit().await.map_err(database(OP))?;
        Ok(stored)
    }
}
