//! Deployment logs: appended by agents' progress and the server, followed by cursor.

use super::error::database;
use super::{Store, StoreError};
use crate::domain::LogLine;

/// The first key of the advisory locks that order a deployment's log appends on
/// PostgreSQL (see [`Store::append_log`]): "STLG".
pub(super) const LOG_APPEND_LOCK: i32 = 0x5354_4c47;

impl Store {
    /// Appends a line to a deployment's log (`task_id` empty for server lines).
    /// `line` is the agent's number of a progress line within its task: a line whose
    /// (task, line) is stored already is not stored again (lines are re-sent after a
    /// reconnect). `NotFound` if there is no such deployment.
    ///
    /// Lines of one deployment commit in `seq` order, so a follower of
    /// [`Store::logs_after`] never skips one. On PostgreSQL `seq` is drawn from a
    /// sequence when the row is inserted, but concurrent inserts (other tasks' agents,
    /// other replicas) commit in whatever order they finish: a follower that read up to
    /// 10 would never see a 9 committing after that. So appenders to one deployment take
    /// a transaction-scoped advisory lock on it before drawing: the next draws only once
    /// the previous line has committed. An advisory lock rather than the deployment's
    /// row lock because task claims and results hold that row across their own work,
    /// and progress lines (the busiest writes) should not queue behind them; rather than
    /// a per-deployment counter because `seq` stays what it was (one global sequence,
    /// the follow cursors clients hold stay valid) and no migration is needed. The cost
    /// is that lines of one deployment are written one at a time (other deployments are
    /// not affected, but for a rare hash collision). SQLite has one writer: lines commit
    /// in the order they are numbered already.
    pub async fn append_log(
        &self,
        deployment_id: &str,
        task_id: &str,
        line: Option<i64>,
        at_ms: i64,
        message: &str,
    ) -> Result<(), StoreError> {
        const OP: &str = "appending a log line";
        // One statement either way. On PostgreSQL the lock is taken by the subquery,
        // before the row (and its `seq`) is formed, and held until the statement's
        // transaction has committed; the two-key form keeps its key space apart from
        // one-key locks (sqlx's migrator), its first key naming this use.
        let sql = match self.backend {
            super::Backend::Sqlite => {
                "INSERT INTO logs (deployment_id, task_id, line, at_ms, message) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
            }
            super::Backend::Postgres => {
                "INSERT INTO logs (deployment_id, task_id, line, at_ms, message) \
                 SELECT $1, $2, $3, $4, $5 \
                 FROM (SELECT pg_advisory_xact_lock($6, hashtext($1))) AS in_seq_order \
                 ON CONFLICT DO NOTHING"
            }
        };
        let mut query = sqlx::query(sql)
            .bind(deployment_id)
            .bind(task_id)
            .bind(line)
            .bind(at_ms)
            .bind(message);
        if self.backend == super::Backend::Postgres {
            query = query.bind(LOG_APPEND_LOCK);
        }
        query
            .execute(self.writer())
            .await
            .map_err(|source| match &source {
                sqlx::Error::Database(e) if e.is_foreign_key_violation() => StoreError::NotFound {
                    entity: "deployment",
                    key: deployment_id.to_owned(),
                },
                _ => StoreError::Database { op: OP, source },
            })?;
        Ok(())
    }

    /// Appends server lines (`(task_id, at_ms, message)`, in order) to one deployment's
    /// log in one transaction, in `seq` order as [`Store::append_log`] keeps it (on
    /// PostgreSQL under the same advisory lock, taken once).
    pub async fn append_logs(
        &self,
        deployment_id: &str,
        lines: &[(String, i64, String)],
    ) -> Result<(), StoreError> {
        const OP: &str = "appending log lines";
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write(OP).await?;
        if self.backend == super::Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(LOG_APPEND_LOCK)
                .bind(deployment_id)
                .execute(&mut *tx)
                .await
                .map_err(database(OP))?;
        }
        for (task_id, at_ms, message) in lines {
            sqlx::query(
                "INSERT INTO logs (deployment_id, task_id, line, at_ms, message) \
                 VALUES ($1, $2, NULL, $3, $4)",
            )
            .bind(deployment_id)
            .bind(task_id.as_str())
            .bind(*at_ms)
            .bind(message.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|source| match &source {
                sqlx::Error::Database(e) if e.is_foreign_key_violation() => StoreError::NotFound {
                    entity: "deployment",
                    key: deployment_id.to_owned(),
                },
                _ => StoreError::Database { op: OP, source },
            })?;
        }
        tx.commit().await.map_err(database(OP))?;
        Ok(())
    }

    /// Up to `limit` log lines of a deployment with `seq > after_seq`, in `seq` order.
    /// Follow a log by passing the last `seq` seen.
    pub async fn logs_after(
        &self,
        deployment_id: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<LogLine>, StoreError> {
        let rows = sqlx::query_as::<_, (i64, String, String, i64, String)>(
            "SELECT seq, deployment_id, task_id, at_ms, message FROM logs \
             WHERE deployment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(deployment_id)
        .bind(after_seq)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading log lines"))?;
        Ok(rows
            .into_iter()
            .map(|(seq, deployment_id, task_id, at_ms, message)| LogLine {
                seq,
                deployment_id,
                task_id,
                at_ms,
                message,
            })
            .collect())
    }
}
