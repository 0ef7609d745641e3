//! Claiming tasks for agents under lease epochs: all of an agent's open tasks when its
//! session opens, its pending ones while the session is open, and a new deployment's
//! pending tasks for every agent with a session here at once.

use super::{lock_deployment, TaskRow};
use crate::domain::Task;
use crate::store::error::database;
use crate::store::{Store, StoreError};

impl Store {
    /// Tasks of this agent that are pending or assigned (not terminal) and whose deadline
    /// has not passed (`deadline_at_ms > now_ms`): in one write transaction sets them
    /// `assigned` with `epoch + 1` and returns them (with the new epoch), oldest first.
    /// Their deployments move from `pending` to `running`.
    ///
    /// Claiming again re-assigns the same tasks under a new epoch, so results reported
    /// under the previous epoch are then discarded by [`Store::complete_task`].
    pub async fn claim_tasks_for_agent(
        &self,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Task>, StoreError> {
        self.claim_tasks(agent_id, now_ms, "('pending', 'assigned')")
            .await
    }

    /// Like [`Store::claim_tasks_for_agent`], but only the `pending` tasks: for a
    /// session that is open already, whose agent holds the `assigned` ones (claiming
    /// those again would bump their epochs under the agent's feet, and the results it
    /// is about to send would be discarded as stale).
    pub async fn claim_pending_tasks_for_agent(
        &self,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Task>, StoreError> {
        self.claim_tasks(agent_id, now_ms, "('pending')").await
    }

    /// `states` is an SQL list literal, one of the two above.
    async fn claim_tasks(
        &self,
        agent_id: &str,
        now_ms: i64,
        states: &'static str,
    ) -> Result<Vec<Task>, StoreError> {
        const OP: &str = "claiming tasks";
        // Read first: an agent with nothing to claim, the usual case when a session opens
        // (10,000 of them in a reconnect storm), takes no write lock. A task created
        // after this read is handed out by its deployment's dispatch or the pending sweep.
        let any = sqlx::query_scalar::<_, String>(&format!(
            "SELECT id FROM tasks WHERE agent_id = $1 \
             AND state IN {states} AND deadline_at_ms > $2 LIMIT 1"
        ))
        .bind(agent_id)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(database(OP))?;
        if any.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write(OP).await?;
        let deployment_ids = sqlx::query_scalar::<_, String>(&format!(
            "SELECT DISTINCT deployment_id FROM tasks WHERE agent_id = $1 \
             AND state IN {states} AND deadline_at_ms > $2 ORDER BY deployment_id"
        ))
        .bind(agent_id)
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await
        .map_err(database(OP))?;

        let mut claimed = Vec::new();
        for deployment_id in &deployment_ids {
            lock_deployment(&mut tx, deployment_id, OP).await?;
            let rows = sqlx::query_as::<_, TaskRow>(&format!(
                "UPDATE tasks SET state = 'assigned', epoch = epoch + 1 \
                 WHERE deployment_id = $1 AND agent_id = $2 \
                 AND state IN {states} AND deadline_at_ms > $3 RETURNING {}",
                task_columns!()
            ))
            .bind(deployment_id.as_str())
            .bind(agent_id)
            .bind(now_ms)
            .fetch_all(&mut *tx)
            .await
            .map_err(database(OP))?;
            if rows.is_empty() {
                continue;
            }
            sqlx::query(
                "UPDATE deployments SET state = 'running' WHERE id = $1 AND state = 'pending'",
            )
            .bind(deployment_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
            for row in rows {
                claimed.push(row.into_task()?);
            }
        }
        tx.commit().await.map_err(database(OP))?;
        claimed.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(claimed)
    }

    /// The `pending` tasks of one deployment whose agents are among `agent_ids` (the
    /// sessions this replica holds), claimed in one transaction: what a new deployment
    /// hands out at once. Claiming agent by agent cost a write transaction each, which a
    /// fan-out to thousands of agents paid thousands of times.
    pub async fn claim_pending_tasks_of_deployment(
        &self,
        deployment_id: &str,
        agent_ids: &[&str],
        now_ms: i64,
    ) -> Result<Vec<Task>, StoreError> {
        const OP: &str = "claiming a deployment's tasks";
        /// Agent ids per statement: far below SQLite's and PostgreSQL's bind limits.
        const CHUNK: usize = 500;
        if agent_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write(OP).await?;
        lock_deployment(&mut tx, deployment_id, OP).await?;
        let mut claimed = Vec::new();
        for chunk in agent_ids.chunks(CHUNK) {
            let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
            let sql = format!(
                "UPDATE tasks SET state = 'assigned', epoch = epoch + 1 \
                 WHERE deployment_id = $1 AND state = 'pending' AND deadline_at_ms > $2 \
                 AND agent_id IN ({}) RETURNING {}",
                list.join(", "),
                task_columns!()
            );
            let mut query = sqlx::query_as::<_, TaskRow>(&sql)
                .bind(deployment_id)
                .bind(now_ms);
            for agent in chunk {
                query = query.bind(*agent);
            }
            let rows = query.fetch_all(&mut *tx).await.map_err(database(OP))?;
            for row in rows {
                claimed.push(row.into_task()?);
            }
        }
        if !claimed.is_empty() {
            sqlx::query(
                "UPDATE deployments SET state = 'running' WHERE id = $1 AND state = 'pending'",
            )
            .bind(deployment_id)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
        }
        tx.commit().await.map_err(database(OP))?;
        claimed.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(claimed)
    }
}
