//! Drift findings reported by agents.

use super::environments::decode_enum;
use super::error::database;
use super::{Store, StoreError};
use crate::domain::{DriftKind, DriftRecord};

/// `SELECT <every drift column> FROM drift <tail>`, as one literal.
macro_rules! select_drift {
    ($tail:literal) => {
        concat!(
            "SELECT target, component, kind, detail, environment, agent_id, first_seen_at_ms, ",
            "last_seen_at_ms, resolved_at_ms FROM drift ",
            $tail
        )
    };
}

impl Store {
    /// Records a finding: inserts it open, or refreshes the stored finding with the same
    /// (target, component, kind): detail, environment, agent and last seen time are
    /// replaced and it is open again. A finding reopened after being resolved starts
    /// over (first seen now); one still open keeps its first-seen time.
    /// `record.resolved_at_ms` is ignored.
    ///
    /// Returns whether this call opened the finding (new, or reopened): `false` when it
    /// was open already. Of writers racing on one finding, one opens it and the others
    /// refresh it.
    pub async fn upsert_drift(&self, record: &DriftRecord) -> Result<bool, StoreError> {
        const OP: &str = "recording drift";
        if self.refresh_open_drift(record).await? {
            return Ok(false);
        }
        // Not open: insert it, or reopen it, but only if it is still not open (on
        // PostgreSQL the conflicting row is locked and the condition re-checked).
        let opened = sqlx::query(
            "INSERT INTO drift (target, component, kind, detail, environment, agent_id, \
             first_seen_at_ms, last_seen_at_ms, resolved_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL) \
             ON CONFLICT (target, component, kind) DO UPDATE SET \
             detail = excluded.detail, environment = excluded.environment, \
             agent_id = excluded.agent_id, last_seen_at_ms = excluded.last_seen_at_ms, \
             first_seen_at_ms = excluded.first_seen_at_ms, resolved_at_ms = NULL \
             WHERE drift.resolved_at_ms IS NOT NULL",
        )
        .bind(record.target.as_str())
        .bind(record.component.as_str())
        .bind(record.kind.as_str())
        .bind(record.detail.as_str())
        .bind(record.environment.as_str())
        .bind(record.agent_id.as_str())
        .bind(record.first_seen_at_ms)
        .bind(record.last_seen_at_ms)
        .execute(self.writer())
        .await
        .map_err(database(OP))?
        .rows_affected();
        if opened == 1 {
            return Ok(true);
        }
        // Another writer opened it in between: refresh what it opened.
        self.refresh_open_drift(record).await?;
        Ok(false)
    }

    /// Refreshes the open finding of `record`'s (target, component, kind); whether one
    /// was open.
    async fn refresh_open_drift(&self, record: &DriftRecord) -> Result<bool, StoreError> {
        let refreshed = sqlx::query(
            "UPDATE drift SET detail = $1, environment = $2, agent_id = $3, \
             last_seen_at_ms = $4 WHERE target = $5 AND component = $6 AND kind = $7 \
             AND resolved_at_ms IS NULL",
        )
        .bind(record.detail.as_str())
        .bind(record.environment.as_str())
        .bind(record.agent_id.as_str())
        .bind(record.last_seen_at_ms)
        .bind(record.target.as_str())
        .bind(record.component.as_str())
        .bind(record.kind.as_str())
        .execute(self.writer())
        .await
        .map_err(database("recording drift"))?
        .rows_affected();
        Ok(refreshed > 0)
    }

    /// Marks every open finding of the target resolved at `now_ms`; returns them,
    /// resolved, in (component, kind) order.
    pub async fn resolve_drift(
        &self,
        target: &str,
        now_ms: i64,
    ) -> Result<Vec<DriftRecord>, StoreError> {
        let rows = sqlx::query_as::<_, DriftRow>(
            "UPDATE drift SET resolved_at_ms = $1 WHERE target = $2 AND resolved_at_ms IS NULL \
             RETURNING target, component, kind, detail, environment, agent_id, \
             first_seen_at_ms, last_seen_at_ms, resolved_at_ms",
        )
        .bind(now_ms)
        .bind(target)
        .fetch_all(self.writer())
        .await
        .map_err(database("resolving drift"))?;
        let mut resolved = rows
            .into_iter()
            .map(DriftRow::into_record)
            .collect::<Result<Vec<_>, _>>()?;
        resolved
            .sort_by(|a, b| (&a.component, a.kind.as_str()).cmp(&(&b.component, b.kind.as_str())));
        Ok(resolved)
    }

    /// Marks the one open finding (target, component, kind) resolved at `now_ms`; returns
    /// how many (0 when it is not open).
    pub async fn resolve_drift_finding(
        &self,
        target: &str,
        component: &str,
        kind: DriftKind,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE drift SET resolved_at_ms = $1 \
             WHERE target = $2 AND component = $3 AND kind = $4 AND resolved_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(target)
        .bind(component)
        .bind(kind.as_str())
        .execute(self.writer())
        .await
        .map_err(database("resolving a drift finding"))?
        .rows_affected())
    }

    /// Open findings (and resolved ones if asked), of every environment or of one, the
    /// most recently seen first.
    pub async fn list_drift(
        &self,
        environment: Option<&str>,
        include_resolved: bool,
    ) -> Result<Vec<DriftRecord>, StoreError> {
        const OP: &str = "listing drift";
        let include_resolved = i64::from(include_resolved);
        let rows = match environment {
            Some(environment) => {
                sqlx::query_as::<_, DriftRow>(select_drift!(
                    "WHERE environment = $1 AND ($2 = 1 OR resolved_at_ms IS NULL) \
                     ORDER BY last_seen_at_ms DESC, target, component, kind"
                ))
                .bind(environment)
                .bind(include_resolved)
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query_as::<_, DriftRow>(select_drift!(
                    "WHERE $1 = 1 OR resolved_at_ms IS NULL \
                     ORDER BY last_seen_at_ms DESC, target, component, kind"
                ))
                .bind(include_resolved)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(database(OP))?;
        rows.into_iter().map(DriftRow::into_record).collect()
    }
}

/// A `drift` row as stored.
#[derive(sqlx::FromRow)]
struct DriftRow {
    target: String,
    component: String,
    kind: String,
    detail: String,
    environment: String,
    agent_id: String,
    first_seen_at_ms: i64,
    last_seen_at_ms: i64,
    resolved_at_ms: Option<i64>,
}

impl DriftRow {
    fn into_record(self) -> Result<DriftRecord, StoreError> {
        let kind: DriftKind = decode_enum(
            "drift kind",
            &format!(
                "drift of target {} component {:?}",
                self.target, self.component
            ),
            &self.kind,
        )?;
        Ok(DriftRecord {
            target: self.target,
            component: self.component,
            kind,
            detail: self.detail,
            environment: self.environment,
            agent_id: self.agent_id,
            first_seen_at_ms: self.first_seen_at_ms,
            last_seen_at_ms: self.last_seen_at_ms,
            resolved_at_ms: self.resolved_at_ms,
        })
    }
}
