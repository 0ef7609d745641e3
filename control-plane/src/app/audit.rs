//! The audit log's writer: appends entries to the hash chain and signs checkpoints of
//! what this replica appended.
//!
//! Each replica keeps the chain's head in memory, so an append is one `INSERT` at
//! `head + 1`. The seq is the table's primary key: when another replica took that seq
//! first, the insert is refused, the head is read again and the entry is linked after
//! it. Appends on one replica queue on the cached head's lock, which is held across
//! the insert so that they never race each other.
//!
//! A checkpoint signs the newest entry *this replica* appended (taken from memory, never
//! re-read from the database), so a server never signs a chain someone else may have
//! rewritten. It is signed by [`run_audit_checkpointer`] every
//! `audit_checkpoint_interval_ms` when entries were appended since the last one, as soon
//! as `audit_checkpoint_every_entries` were, and once more when the server stops.
//!
//! Auditing never fails the request it records: a failed append is logged and counted
//! (`stella_audit_appends_total{outcome="failed"}`).

use std::sync::Arc;
use std::time::Duration;

use stella_decision::audit::{AuditEntry, Checkpoint};
use tokio_util::sync::CancellationToken;

use super::{now_ms, App};
use crate::error::ErrorChain;
use crate::metrics::Metrics;
use crate::store::StoreError;

/// Attempts at one append while other replicas keep taking the next seq.
const APPEND_ATTEMPTS: usize = 32;

/// Longest an append may take, waiting for the appends queued before it included.
/// Appends queue on one lock, so without a bound a database that stopped answering
/// would hold every mutating call for the sum of their store timeouts.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// This replica's side of the audit chain.
#[derive(Debug, Default)]
pub struct AuditLog {
    /// The chain's head as this replica last knew it: `None` until it is read from the
    /// store (and again after a lost race or a failed write), `Some(None)` for an empty
    /// chain.
    head: tokio::sync::Mutex<Option<Option<AuditEntry>>>,
    /// What this replica appended since its last checkpoint.
    unsigned: parking_lot::Mutex<Unsigned>,
    /// Wakes the checkpointer when `audit_checkpoint_every_entries` are unsigned.
    full: tokio::sync::Notify,
}

/// Why an entry could not be appended.
#[derive(Debug, thiserror::Error)]
enum AppendError {
    #[error("cannot write the audit log")]
    Store(#[from] StoreError),
    #[error("appending took longer than {APPEND_TIMEOUT:?}")]
    TimedOut,
}

#[derive(Debug, Default)]
struct Unsigned {
    /// The newest entry this replica appended that no checkpoint covers yet.
    newest: Option<AuditEntry>,
    /// How many it appended since its last checkpoint.
    count: u64,
}

impl App {
    /// Appends one entry to the audit log: who (`actor`) did what (`action`, e.g.
    /// `POST /api/v1/promotions/{id}/approve`) to what (`object`), with the digest of
    /// the request and its outcome. Never fails: a failed append is logged and counted.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        request_digest: &str,
        outcome: &str,
    ) {
        let append = self.append_audit(actor, action, object, request_digest, outcome);
        let result = tokio::time::timeout(APPEND_TIMEOUT, append)
            .await
            .unwrap_or(Err(AppendError::TimedOut));
        match result {
            Ok(_) => Metrics::count(&self.metrics.audit_appends, "ok"),
            Err(error) => {
                Metrics::count(&self.metrics.audit_appends, "failed");
                // The object and actor are enough to find the request; the digest is
                // not logged, nor anything of the request's body.
                tracing::error!(
                    error = %ErrorChain(&error),
                    %actor,
                    %action,
                    %outcome,
                    "an audited request could not be appended to the audit log"
                );
            }
        }
    }

    /// Appends an entry after the head; returns it.
    async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        request_digest: &str,
        outcome: &str,
    ) -> Result<AuditEntry, AppendError> {
        let mut head = self.audit_log.head.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            // Taken out: after a lost race or an error it stays unknown and is read again.
            let prev = match head.take() {
                Some(prev) => prev,
                None => self.store.audit_head().await?,
            };
            let entry = AuditEntry::new(
                prev.as_ref(),
                now_ms(),
                actor,
                action,
                object,
                request_digest,
                outcome,
            );
            match self.store.append_audit_entry(&entry).await {
                Ok(()) => {
                    *head = Some(Some(entry.clone()));
                    drop(head);
                    self.note_unsigned(entry.clone());
                    return Ok(entry);
                }
                Err(StoreError::Conflict { .. }) if attempts < APPEND_ATTEMPTS => {
                    tracing::debug!(seq = entry.seq, "audit seq taken by another replica");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn note_unsigned(&self, entry: AuditEntry) {
        let mut unsigned = self.audit_log.unsigned.lock();
        unsigned.count += 1;
        unsigned.newest = Some(entry);
        if unsigned.count >= self.config.audit_checkpoint_every_entries {
            self.audit_log.full.notify_one();
        }
    }

    /// Signs a checkpoint of the newest entry this replica appended, if it appended any
    /// since its last checkpoint; returns its seq. A failure is logged, counted, and
    /// tried again at the next checkpoint.
    pub async fn checkpoint_audit(&self) -> Option<i64> {
        self.checkpoint_audit_after(1).await
    }

    /// Like [`App::checkpoint_audit`], when at least `min_entries` are unsigned.
    async fn checkpoint_audit_after(&self, min_entries: u64) -> Option<i64> {
        let (entry, count) = {
            let mut unsigned = self.audit_log.unsigned.lock();
            if unsigned.count < min_entries {
                return None;
            }
            let entry = unsigned.newest.take()?;
            (entry, std::mem::take(&mut unsigned.count))
        };
        let checkpoint = Checkpoint::sign(&self.signer, &entry, now_ms());
        match self.store.add_audit_checkpoint(&checkpoint).await {
            // One is stored at that seq already: this replica's own (seqs it appended are
            // its alone), or a forgery that verification refuses anyway.
            Ok(()) | Err(StoreError::Conflict { .. }) => {
                Metrics::count(&self.metrics.audit_checkpoints, "ok");
                tracing::debug!(seq = entry.seq, entries = count, "audit checkpoint signed");
                Some(entry.seq)
            }
            Err(error) => {
                Metrics::count(&self.metrics.audit_checkpoints, "failed");
                tracing::error!(
                    error = %ErrorChain(&error),
                    seq = entry.seq,
                    "an audit checkpoint could not be stored; trying again at the next one"
                );
                let mut unsigned = self.audit_log.unsigned.lock();
                unsigned.count += count;
                // A newer entry covers this one: a checkpoint pins everything before it.
                if unsigned.newest.is_none() {
                    unsigned.newest = Some(entry);
                }
                None
            }
        }
    }
}

/// Signs audit checkpoints until `shutdown`: every `audit_checkpoint_interval_ms` when
/// entries were appended since the last one, and as soon as
/// `audit_checkpoint_every_entries` were. The last one is signed when the server stops,
/// after the API has drained (see `RunningServer::stop`).
pub async fn run_audit_checkpointer(app: Arc<App>, shutdown: CancellationToken) {
    let interval = Duration::from_millis(app.config.audit_checkpoint_interval_ms);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = app.config.audit_checkpoint_every_entries;
    loop {
        // A wake-up by count may be stale (its entries signed at a tick since): it
        // signs only if that many are still unsigned.
        let min_entries = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => 1,
            () = app.audit_log.full.notified() => every,
        };
        app.checkpoint_audit_after(min_entries).await;
    }
}
