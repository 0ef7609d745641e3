//! Task-pack runs: the run rows, their step states, approvals, log lines and artifacts,
//! and the lease that says which replica drives a run.
//!
//! A replica claims a run whose lease is free or expired; the claim raises
//! `lease_epoch`. Every write of a driver ([`Store::apply_run_changes`]) names the
//! owner and epoch it holds and is refused (returns `false`) when the run was claimed
//! since, so a replica that lost a run cannot change it any more.

use base64::Engine as _;
use serde_json::{Map, Value};
use sqlx::{Any, Transaction};

use super::error::{database, unique};
use super::{Backend, Store, StoreError};
use crate::domain::{
    NewRun, NewRunLog, Run, RunApproval, RunArtifact, RunChanges, RunLogLine, RunStepRecord,
};

macro_rules! run_columns {
    () => {
        "tenant, id, plan_hash, plan_json, manifest, inputs_json, status, cancel_requested, \
         created_by, created_at_ms, updated_at_ms, finished_at_ms, lease_owner, \
         lease_expires_at_ms, lease_epoch"
    };
}

/// Statuses of a run still in progress.
const ACTIVE: &str = "('Running', 'Waiting')";

impl Store {
    /// Stores a new run with its first log line; `Conflict` when the tenant has a run
    /// with this id.
    pub async fn create_run(&self, run: &NewRun, first: NewRunLog) -> Result<Run, StoreError> {
        const OP: &str = "creating a run";
        let mut tx = self.begin_write(OP).await?;
        sqlx::query(
            "INSERT INTO runs (tenant, id, plan_hash, plan_json, manifest, inputs_json, status, \
             created_by, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 'Running', $7, $8, $8)",
        )
        .bind(run.tenant.as_str())
        .bind(run.id.as_str())
        .bind(run.plan_hash.as_str())
        .bind(run.plan_json.as_str())
        .bind(run.manifest.as_str())
        .bind(run.inputs_json.as_str())
        .bind(run.created_by.as_str())
        .bind(run.created_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(unique(OP, "run", &run.id))?;
        append_logs(
            &mut tx,
            &run.tenant,
            &run.id,
            &[first],
            run.created_at_ms,
            OP,
        )
        .await?;
        tx.commit().await.map_err(database(OP))?;
        self.get_run(&run.tenant, &run.id).await
    }

    /// One run; `NotFound` when the tenant has none with this id.
    pub async fn get_run(&self, tenant: &str, id: &str) -> Result<Run, StoreError> {
        sqlx::query_as::<_, RunRow>(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE tenant = $1 AND id = $2"
        ))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a run"))?
        .map(RunRow::into_run)
        .ok_or_else(|| StoreError::NotFound {
            entity: "run",
            key: id.to_owned(),
        })
    }

    /// The tenant's runs, newest first, at most `limit`.
    pub async fn list_runs(&self, tenant: &str, limit: i64) -> Result<Vec<Run>, StoreError> {
        let rows = sqlx::query_as::<_, RunRow>(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE tenant = $1 ORDER BY created_at_ms DESC, id DESC LIMIT $2"
        ))
        .bind(tenant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing runs"))?;
        Ok(rows.into_iter().map(RunRow::into_run).collect())
    }

    /// The step states of a run.
    pub async fn run_steps(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Vec<RunStepRecord>, StoreError> {
        let rows = sqlx::query_as::<_, StepRow>(
            "SELECT key, status, attempts, last_transition_ms, reason, outputs_json, epoch \
             FROM run_steps WHERE tenant = $1 AND run_id = $2 ORDER BY key",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading run steps"))?;
        rows.into_iter().map(StepRow::into_record).collect()
    }

    /// The approval decisions of a run.
    pub async fn run_approvals(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Vec<RunApproval>, StoreError> {
        let rows = sqlx::query_as::<_, (String, String, String, Option<String>, i64)>(
            "SELECT approval_id, decision, actor, summary, decided_at_ms FROM run_approvals \
             WHERE tenant = $1 AND run_id = $2 ORDER BY approval_id",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading run approvals"))?;
        Ok(rows
            .into_iter()
            .map(
                |(approval_id, decision, actor, summary, decided_at_ms)| RunApproval {
                    approval_id,
                    decision,
                    actor,
                    summary,
                    decided_at_ms,
                },
            )
            .collect())
    }

    /// Records an approval decision with its log line; `Conflict` when this approval of
    /// the run was decided already.
    pub async fn record_run_approval(
        &self,
        tenant: &str,
        id: &str,
        approval: &RunApproval,
        log: NewRunLog,
    ) -> Result<(), StoreError> {
        const OP: &str = "recording a run approval";
        let mut tx = self.begin_write(OP).await?;
        sqlx::query(
            "INSERT INTO run_approvals (tenant, run_id, approval_id, decision, actor, summary, \
             decided_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(tenant)
        .bind(id)
        .bind(approval.approval_id.as_str())
        .bind(approval.decision.as_str())
        .bind(approval.actor.as_str())
        .bind(approval.summary.as_deref())
        .bind(approval.decided_at_ms)
        .execute(&mut *tx)
        .await
        .map_err(unique(OP, "approval decision", &approval.approval_id))?;
        append_logs(&mut tx, tenant, id, &[log], approval.decided_at_ms, OP).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(())
    }

    /// Marks a run's cancellation as requested (once) and logs it; returns whether
    /// this call requested it (false: finished or already requested).
    pub async fn request_run_cancel(
        &self,
        tenant: &str,
        id: &str,
        log: NewRunLog,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "cancelling a run";
        let mut tx = self.begin_write(OP).await?;
        let changed = sqlx::query(&format!(
            "UPDATE runs SET cancel_requested = 1, updated_at_ms = $1 \
             WHERE tenant = $2 AND id = $3 AND cancel_requested = 0 AND status IN {ACTIVE}"
        ))
        .bind(now_ms)
        .bind(tenant)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await.map_err(database(OP))?;
            return Ok(false);
        }
        append_logs(&mut tx, tenant, id, &[log], now_ms, OP).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(true)
    }

    /// Claims up to `limit` runs in progress whose lease is free or expired (or held by
    /// `owner` under an older claim) for `owner` until `now_ms + lease_ms`, raising their
    /// epoch; returns them as claimed.
    pub async fn claim_runs(
        &self,
        owner: &str,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<Run>, StoreError> {
        const OP: &str = "claiming runs";
        let due = format!(
            "SELECT id FROM runs WHERE status IN {ACTIVE} \
             AND (lease_owner IS NULL OR lease_expires_at_ms <= $1) LIMIT 1"
        );
        if !self.any_due(&due, now_ms, OP).await? {
            return Ok(Vec::new());
        }
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        };
        let mut tx = self.begin_write(OP).await?;
        let due = sqlx::query_as::<_, (String, String)>(&format!(
            "SELECT tenant, id FROM runs WHERE status IN {ACTIVE} \
             AND (lease_owner IS NULL OR lease_expires_at_ms <= $1) \
             ORDER BY created_at_ms LIMIT $2{lock}"
        ))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(database(OP))?;
        let mut claimed = Vec::with_capacity(due.len());
        for (tenant, id) in due {
            let row = sqlx::query_as::<_, RunRow>(concat!(
                "UPDATE runs SET lease_owner = $1, lease_expires_at_ms = $2, ",
                "lease_epoch = lease_epoch + 1 WHERE tenant = $3 AND id = $4 RETURNING ",
                run_columns!()
            ))
            .bind(owner)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(tenant.as_str())
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(database(OP))?;
            claimed.extend(row.map(RunRow::into_run));
        }
        tx.commit().await.map_err(database(OP))?;
        Ok(claimed)
    }

    /// Extends the lease `owner` holds under `epoch`; false when it holds it no more.
    pub async fn renew_run_lease(
        &self,
        tenant: &str,
        id: &str,
        owner: &str,
        epoch: i64,
        expires_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE runs SET lease_expires_at_ms = $1 \
             WHERE tenant = $2 AND id = $3 AND lease_owner = $4 AND lease_epoch = $5",
        )
        .bind(expires_at_ms)
        .bind(tenant)
        .bind(id)
        .bind(owner)
        .bind(epoch)
        .execute(self.writer())
        .await
        .map_err(database("renewing a run lease"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives a lease up (the run finished, or the replica stops): another replica may
    /// claim the run at once.
    pub async fn release_run_lease(
        &self,
        tenant: &str,
        id: &str,
        owner: &str,
        epoch: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at_ms = NULL \
             WHERE tenant = $1 AND id = $2 AND lease_owner = $3 AND lease_epoch = $4",
        )
        .bind(tenant)
        .bind(id)
        .bind(owner)
        .bind(epoch)
        .execute(self.writer())
        .await
        .map_err(database("releasing a run lease"))?;
        Ok(())
    }

    /// Writes a driver's changes in one transaction if `owner` still holds the run's
    /// lease under `epoch`; returns false (writing nothing) when it does not.
    pub async fn apply_run_changes(
        &self,
        tenant: &str,
        id: &str,
        owner: &str,
        epoch: i64,
        changes: &RunChanges,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "writing run state";
        let mut tx = self.begin_write(OP).await?;
        // Locks the run row on PostgreSQL until the commit, so no claim slips between
        // the check and the writes.
        let held = sqlx::query(
            "UPDATE runs SET updated_at_ms = $1 \
             WHERE tenant = $2 AND id = $3 AND lease_owner = $4 AND lease_epoch = $5",
        )
        .bind(now_ms)
        .bind(tenant)
        .bind(id)
        .bind(owner)
        .bind(epoch)
        .execute(&mut *tx)
        .await
        .map_err(database(OP))?
        .rows_affected();
        if held != 1 {
            tx.rollback().await.map_err(database(OP))?;
            return Ok(false);
        }
        for step in &changes.steps {
            let outputs = step
                .outputs
                .as_ref()
                .map(|o| serde_json::to_string(o).unwrap_or_else(|_| "{}".to_owned()));
            sqlx::query(
                "INSERT INTO run_steps (tenant, run_id, key, status, attempts, \
                 last_transition_ms, reason, outputs_json, epoch) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (tenant, run_id, key) DO UPDATE SET status = excluded.status, \
                 attempts = excluded.attempts, last_transition_ms = excluded.last_transition_ms, \
                 reason = excluded.reason, \
                 outputs_json = COALESCE(excluded.outputs_json, run_steps.outputs_json), \
                 epoch = excluded.epoch",
            )
            .bind(tenant)
            .bind(id)
            .bind(step.key.as_str())
            .bind(step.status.as_str())
            .bind(step.attempts)
            .bind(step.at_ms)
            .bind(step.reason.as_deref())
            .bind(outputs)
            .bind(epoch)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
        }
        for artifact in &changes.artifacts {
            put_artifact(&mut tx, tenant, id, artifact, OP).await?;
        }
        if let Some(status) = &changes.status {
            let finished = matches!(status.as_str(), "Succeeded" | "Failed" | "Cancelled");
            sqlx::query(
                "UPDATE runs SET status = $1, finished_at_ms = $2 WHERE tenant = $3 AND id = $4",
            )
            .bind(status.as_str())
            .bind(finished.then_some(now_ms))
            .bind(tenant)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(database(OP))?;
        }
        append_logs(&mut tx, tenant, id, &changes.logs, now_ms, OP).await?;
        tx.commit().await.map_err(database(OP))?;
        Ok(true)
    }

    /// Log lines of a run numbered above `after` (all with `None`), at most `limit`.
    pub async fn run_logs_after(
        &self,
        tenant: &str,
        id: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<RunLogLine>, StoreError> {
        let rows = sqlx::query_as::<_, LogRow>(
            "SELECT seq, at_ms, level, event_type, message, step_id, metadata_json FROM run_logs \
             WHERE tenant = $1 AND run_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(tenant)
        .bind(id)
        .bind(after.unwrap_or(-1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("reading run logs"))?;
        Ok(rows.into_iter().map(LogRow::into_line).collect())
    }

    /// The artifacts of a run, by name, without file contents.
    pub async fn run_artifacts(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Vec<RunArtifact>, StoreError> {
        let rows = sqlx::query_as::<_, ArtifactRow>(
            "SELECT name, kind, source_path, stored_path, status, notes, captured_at_ms, \
             expression_json, CAST(NULL AS TEXT) AS content_base64 FROM run_artifacts \
             WHERE tenant = $1 AND run_id = $2 ORDER BY name",
        )
        .bind(tenant)
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing run artifacts"))?;
        rows.into_iter().map(ArtifactRow::into_artifact).collect()
    }

    /// One artifact with its content; `NotFound` when the run has none of this name.
    pub async fn run_artifact(
        &self,
        tenant: &str,
        id: &str,
        name: &str,
    ) -> Result<RunArtifact, StoreError> {
        sqlx::query_as::<_, ArtifactRow>(
            "SELECT name, kind, source_path, stored_path, status, notes, captured_at_ms, \
             expression_json, content_base64 FROM run_artifacts \
             WHERE tenant = $1 AND run_id = $2 AND name = $3",
        )
        .bind(tenant)
        .bind(id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading a run artifact"))?
        .ok_or_else(|| StoreError::NotFound {
            entity: "artifact",
            key: name.to_owned(),
        })?
        .into_artifact()
    }
}

/// Appends log lines numbered from the run's `log_seq`.
async fn append_logs(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    id: &str,
    logs: &[NewRunLog],
    now_ms: i64,
    op: &'static str,
) -> Result<(), StoreError> {
    if logs.is_empty() {
        return Ok(());
    }
    let count = i64::try_from(logs.len()).unwrap_or(i64::MAX);
    let first = sqlx::query_scalar::<_, i64>(
        "UPDATE runs SET log_seq = log_seq + $1 WHERE tenant = $2 AND id = $3 \
         RETURNING log_seq - $1",
    )
    .bind(count)
    .bind(tenant)
    .bind(id)
    .fetch_one(&mut **tx)
    .await
    .map_err(database(op))?;
    for (offset, log) in (0_i64..).zip(logs) {
        let metadata = (!log.metadata.is_empty()).then(|| {
            let map: Map<String, Value> = log
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            Value::Object(map).to_string()
        });
        sqlx::query(
            "INSERT INTO run_logs (tenant, run_id, seq, at_ms, level, event_type, message, \
             step_id, metadata_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(tenant)
        .bind(id)
        .bind(first + offset)
        .bind(now_ms)
        .bind(log.level)
        .bind(log.event_type)
        .bind(log.message.as_str())
        .bind(log.step_id.as_deref())
        .bind(metadata)
        .execute(&mut **tx)
        .await
        .map_err(database(op))?;
    }
    Ok(())
}

async fn put_artifact(
    tx: &mut Transaction<'static, Any>,
    tenant: &str,
    id: &str,
    artifact: &RunArtifact,
    op: &'static str,
) -> Result<(), StoreError> {
    let content = artifact
        .content
        .as_ref()
        .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
    sqlx::query(
        "INSERT INTO run_artifacts (tenant, run_id, name, kind, source_path, stored_path, status, \
         notes, captured_at_ms, expression_json, content_base64) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (tenant, run_id, name) DO UPDATE SET kind = excluded.kind, \
         source_path = excluded.source_path, stored_path = excluded.stored_path, \
         status = excluded.status, notes = excluded.notes, \
         captured_at_ms = excluded.captured_at_ms, expression_json = excluded.expression_json, \
         content_base64 = excluded.content_base64",
    )
    .bind(tenant)
    .bind(id)
    .bind(artifact.name.as_str())
    .bind(artifact.kind.as_str())
    .bind(artifact.source_path.as_deref())
    .bind(artifact.stored_path.as_deref())
    .bind(artifact.status.as_str())
    .bind(artifact.notes.as_deref())
    .bind(artifact.captured_at_ms)
    .bind(artifact.expression_json.as_deref())
    .bind(content)
    .execute(&mut **tx)
    .await
    .map_err(database(op))?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct RunRow {
    tenant: String,
    id: String,
    plan_hash: String,
    plan_json: String,
    manifest: String,
    inputs_json: String,
    status: String,
    cancel_requested: i64,
    created_by: String,
    created_at_ms: i64,
    updated_at_ms: i64,
    finished_at_ms: Option<i64>,
    lease_owner: Option<String>,
    lease_expires_at_ms: Option<i64>,
    lease_epoch: i64,
}

impl RunRow {
    fn into_run(self) -> Run {
        Run {
            tenant: self.tenant,
            id: self.id,
            plan_hash: self.plan_hash,
            plan_json: self.plan_json,
            manifest: self.manifest,
            inputs_json: self.inputs_json,
            status: self.status,
            cancel_requested: self.cancel_requested != 0,
            created_by: self.created_by,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            finished_at_ms: self.finished_at_ms,
            lease_owner: self.lease_owner,
            lease_expires_at_ms: self.lease_expires_at_ms,
            lease_epoch: self.lease_epoch,
        }
    }
}

#[derive(sqlx::FromRow)]
struct StepRow {
    key: String,
    status: String,
    attempts: i64,
    last_transition_ms: Option<i64>,
    reason: Option<String>,
    outputs_json: Option<String>,
    epoch: i64,
}

impl StepRow {
    fn into_record(self) -> Result<RunStepRecord, StoreError> {
        let outputs = match self.outputs_json {
            None => None,
            Some(text) => Some(
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                    what: "step outputs",
                    detail: format!("step {}: {e}", self.key),
                })?,
            ),
        };
        Ok(RunStepRecord {
            key: self.key,
            status: self.status,
            attempts: self.attempts,
            last_transition_ms: self.last_transition_ms,
            reason: self.reason,
            outputs,
            epoch: self.epoch,
        })
    }
}

#[derive(sqlx::FromRow)]
struct LogRow {
    seq: i64,
    at_ms: i64,
    level: String,
    event_type: String,
    message: String,
    step_id: Option<String>,
    metadata_json: Option<String>,
}

impl LogRow {
    fn into_line(self) -> RunLogLine {
        let metadata = self
            .metadata_json
            .and_then(|text| serde_json::from_str::<Map<String, Value>>(&text).ok());
        RunLogLine {
            seq: self.seq,
            at_ms: self.at_ms,
            level: self.level,
            event_type: self.event_type,
            message: self.message,
            step_id: self.step_id,
            metadata,
        }
    }
}

#[derive(sqlx::FromRow)]
struct ArtifactRow {
    name: String,
    kind: String,
    source_path: Option<String>,
    stored_path: Option<String>,
    status: String,
    notes: Option<String>,
    captured_at_ms: Option<i64>,
    expression_json: Option<String>,
    content_base64: Option<String>,
}

impl ArtifactRow {
    fn into_artifact(self) -> Result<RunArtifact, StoreError> {
        let content = match self.content_base64 {
            None => None,
            Some(text) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| StoreError::Corrupt {
                        what: "artifact content",
                        detail: format!("artifact {}: {e}", self.name),
                    })?,
            ),
        };
        Ok(RunArtifact {
            name: self.name,
            kind: self.kind,
            source_path: self.source_path,
            stored_path: self.stored_path,
            status: self.status,
            notes: self.notes,
            captured_at_ms: self.captured_at_ms,
            expression_json: self.expression_json,
            content,
        })
    }
}

impl Store {
    /// The digest of the newest scan report imported for the image reference `image`
    /// (as given to `scan import --image`), if any.
    pub async fn scanned_digest_of(&self, image: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "SELECT digest FROM scan_reports WHERE image = $1 \
             ORDER BY imported_at_ms DESC LIMIT 1",
        )
        .bind(image)
        .fetch_optional(&self.pool)
        .await
        .map_err(database("looking up a scanned image"))
    }
}
