//! The audit log: a hash chain of entries and the signed checkpoints of its head.
//!
//! An entry's `seq` is the primary key, so the database decides which of two writers
//! racing for the same link wins: the loser gets [`StoreError::Conflict`], re-reads the
//! head and links its whole batch after it. Nothing here checks the chain; that is
//! `stella_decision::audit::verify_chain`, run by whoever reads it.

use stella_decision::audit::{AuditEntry, Checkpoint};

use super::error::{database, unique};
use super::{Store, StoreError};

/// Most entries [`Store::append_audit_entries`] takes at once (nine bound values each;
/// SQLite allows 32,766 per statement).
pub const MAX_APPEND_BATCH: usize = 256;

/// Every `audit_log` column, in [`EntryRow`]'s order.
macro_rules! entry_columns {
    () => {
        "seq, at_ms, actor, action, object, request_digest, outcome, prev_hash, hash"
    };
}
impl Store {
    /// Appends entries at their seqs, all or none, in one statement: `Conflict` when
    /// another writer holds any of those seqs. At most [`MAX_APPEND_BATCH`] at once.
    pub async fn append_audit_entries(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if entries.len() > MAX_APPEND_BATCH {
            return Err(StoreError::Corrupt {
                what: "audit batch",
                detail: format!(
                    "{} entries in one append, at most {MAX_APPEND_BATCH}",
                    entries.len()
                ),
            });
        }
        // One multi-row INSERT: a statement is atomic, so a seq taken by another
        // replica refuses the whole batch (a unique violation) and no entry is linked
        // after a head that is not ours.
        let mut sql = String::from(
            "INSERT INTO audit_log (seq, at_ms, actor, action, object, request_digest, \
             outcome, prev_hash, hash) VALUES ",
        );
        for n in 0..entries.len() {
            let base = n * 9;
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for column in 1..=9 {
                if column > 1 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", base + column));
            }
            sql.push(')');
        }
        let mut query = sqlx::query(&sql);
        for entry in entries {
            query = query
                .bind(entry.seq)
                .bind(entry.at_ms)
                .bind(entry.actor.as_str())
                .bind(entry.action.as_str())
                .bind(entry.object.as_str())
                .bind(entry.request_digest.as_str())
                .bind(entry.outcome.as_str())
                .bind(entry.prev_hash.as_str())
                .bind(entry.hash.as_str());
        }
        let key = first.seq.to_string();
        query.execute(self.writer()).await.map_err(unique(
            "appending to the audit log",
            "audit entry",
            &key,
        ))?;
        Ok(())
    }

    /// The entry with the highest seq, if any.
    pub async fn audit_head(&self) -> Result<Option<AuditEntry>, StoreError> {
        let row = sqlx::query_as::<_, EntryRow>(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit_log ORDER BY seq DESC LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await
        .map_err(database("reading the audit log's head"))?;
        Ok(row.map(EntryRow::into_entry))
    }

    /// At most `limit` entries with a seq above `after`, in seq order.
    pub async fn list_audit_entries(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query_as::<_, EntryRow>(concat!(
            "SELECT ",
            entry_columns!(),
            " FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing the audit log"))?;
        Ok(rows.into_iter().map(EntryRow::into_entry).collect())
    }

    /// Stores a checkpoint; `Conflict` when one is stored at its seq already.
    pub async fn add_audit_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, at_ms, key_id, signature) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(checkpoint.seq)
        .bind(checkpoint.hash.as_str())
        .bind(checkpoint.at_ms)
        .bind(checkpoint.key_id.as_str())
        .bind(checkpoint.signature.as_str())
        .execute(self.writer())
        .await
        .map_err(database("storing an audit checkpoint"))?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::Conflict {
                entity: "audit checkpoint",
                key: checkpoint.seq.to_string(),
            });
        }
        Ok(())
    }

    /// At most `limit` checkpoints at a seq above `after`, in seq order.
    pub async fn list_audit_checkpoints(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query_as::<_, (i64, String, i64, String, String)>(
            "SELECT seq, hash, at_ms, key_id, signature FROM audit_checkpoints \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(database("listing audit checkpoints"))?;
        Ok(rows
            .into_iter()
            .map(|(seq, hash, at_ms, key_id, signature)| Checkpoint {
                seq,
                hash,
                at_ms,
                key_id,
                signature,
            })
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct EntryRow {
    seq: i64,
    at_ms: i64,
    actor: String,
    action: String,
    object: String,
    request_digest: String,
    outcome: String,
    prev_hash: String,
    hash: String,
}

impl EntryRow {
    /// The entry as stored: its hash is not recomputed, so a verifier sees an edit.
    fn into_entry(self) -> AuditEntry {
        AuditEntry {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: self.actor,
            action: self.action,
            object: self.object,
            request_digest: self.request_digest,
            outcome: self.outcome,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}
