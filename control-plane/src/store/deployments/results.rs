//! Task results stored in batches: one write transaction for every result queued while
//! the previous batch was written (the app's result writer group-commits them), where a
//! transaction per result made a fan-out's results queue for the one SQLite writer.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{lock_deployment, settle_deployment, TaskRow};
use crate::domain::{Task, TaskState};
use crate::store::error::database;
use crate::store::logs::LOG_APPEND_LOCK;
use crate::store::{Backend, Store, StoreError};

/// One task result as an agent reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResultRecord {
    /// The agent that reported it: only the task's own agent may.
    pub agent_id: String,
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
    /// What became of the result.
    pub outcome: ResultOutcome,
    /// Whether this result finished its deployment; true for at most one result per
    /// deployment.
    pub finished_deployment: bool,
}

/// What became of one task result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultOutcome {
    /// Stored; the task as it is now.
    Stored(Task),
    /// Not stored: the task was finished already, under lease `epoch`.
    Finished {
        /// The epoch the task finished under.
        epoch: i64,
    },
    /// Not stored: the task is open under another lease epoch (the result is stale).
    OtherEpoch,
    /// Not stored: no such task.
    Unknown,
    /// Not stored: the task is another agent's.
    NotYours,
}

/// Rows per statement: far below SQLite's and PostgreSQL's bind limits.
const CHUNK: usize = 500;

impl Store {
    /// Stores `results` in one write transaction, as [`Store::complete_task_with_output`]
    /// does each: a result is kept only for an open task of the reporting agent, under
    /// the epoch it was assigned with; each kept result appends the log line `log_line(task)`; each deployment a
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
                outcome: ResultOutcome::Unknown,
                finished_deployment: false,
            })
            .collect();
        if results.is_empty() {
            return Ok(stored);
        }
        let mut tx = self.begin_write(OP).await?;
        // Every task named, in one read per chunk (a statement per result cost a round
        // trip to the database's thread each).
        let mut tasks: HashMap<String, (String, String, String, i64)> = HashMap::new();
        for chunk in results.chunks(CHUNK) {
            let list: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, deployment_id, agent_id, state, epoch FROM tasks WHERE id IN ({})",
                list.join(", ")
            );
            let mut query = sqlx::query_as::<_, (String, String, String, String, i64)>(&sql);
            for result in chunk {
                query = query.bind(result.task_id.as_str());
            }
            for (id, deployment, agent, state, epoch) in
                query.fetch_all(&mut *tx).await.map_err(database(OP))?
            {
                tasks.insert(id, (deployment, agent, state, epoch));
            }
        }
        // The deployment of each result that may be stored: the task exists, is the
        // reporting agent's, and is open under the result's epoch.
        let mut deployment_of = Vec::with_capacity(results.len());
        for (index, result) in results.iter().enumerate() {
            let deployment_id = match tasks.get(&result.task_id) {
                None => None,
                Some((_, agent_id, _, _)) if *agent_id != result.agent_id => {
                    stored[index].outcome = ResultOutcome::NotYours;
                    None
                }
                Some((_, _, state, epoch)) if !matches!(state.as_str(), "pending" | "assigned") => {
                    stored[index].outcome = ResultOutcome::Finished { epoch: *epoch };
                    None
                }
                Some((_, _, _, epoch)) if *epoch != result.epoch => {
                    stored[index].outcome = ResultOutcome::OtherEpoch;
                    None
                }
                Some((deployment_id, ..)) => Some(deployment_id.clone()),
            };
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
        let mut lines: Vec<(String, String, String)> = Vec::new();
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
                // A duplicate earlier in this batch finished it.
                let epoch = result.epoch;
                stored[index].outcome = ResultOutcome::Finished { epoch };
                continue;
            };
            let task = row.into_task()?;
            lines.push((deployment_id.clone(), task.id.clone(), log_line(&task)));
            last_kept.insert(deployment_id.clone(), index);
            stored[index].outcome = ResultOutcome::Stored(task);
        }
        // Every kept result's log line, one statement per chunk, in the results' order.
        for chunk in lines.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${}, NULL, $1, ${})", 3 * i + 2, 3 * i + 3, 3 * i + 4))
                .collect();
            let sql = format!(
                "INSERT INTO logs (deployment_id, task_id, line, at_ms, message) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(now_ms);
            for (deployment_id, task_id, line) in chunk {
                query = query
                    .bind(deployment_id.as_str())
                    .bind(task_id.as_str())
                    .bind(line.as_str());
            }
            query.execute(&mut *tx).await.map_err(database(OP))?;
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
