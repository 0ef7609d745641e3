//! The audit log's writer: appends entries to the hash chain and signs checkpoints of
//! what this replica appended.
//!
//! Appends are group-committed. A caller queues its entry and waits; one writer task
//! at a time (started by the first caller that finds none running) takes everything
//! queued, links it after the chain's head and inserts it in one statement, then
//! answers every caller of that batch. Under load a batch carries many entries, so the
//! chain costs one write per batch rather than one per request, and appends on one
//! replica never race each other.
//!
//! Each replica keeps the chain's head in memory, so a batch is one `INSERT` at
//! `head + 1 …`. The seq is the table's primary key: when another replica took one of
//! those seqs first, the whole batch is refused, the head is read again and the batch
//! is linked after it.
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
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{now_ms, App};
use crate::error::ErrorChain;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, MAX_APPEND_BATCH};

/// Attempts at one batch while other replicas keep taking the next seq.
const APPEND_ATTEMPTS: usize = 32;

/// Longest a caller waits for its entry to be stored. Past it the call goes on (and the
/// append is counted as failed) while the writer keeps the entry queued: a database
/// that stopped answering must not hold every mutating call for the sum of its store
/// timeouts.
const APPEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most entries waiting for the writer; past it an append is refused at once, so a
/// database that stopped answering cannot grow the queue without bound.
const MAX_QUEUED: usize = 65_536;

/// This replica's side of the audit chain; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Entries waiting for the writer, and whether a writer runs.
    queue: parking_lot::Mutex<Queue>,
    /// The chain's head as this replica last knew it: `None` until it is read from the
    /// store (and again after a lost race or a failed write), `Some(None)` for an empty
    /// chain. Only the writer touches it.
    head: parking_lot::Mutex<Option<Option<AuditEntry>>>,
    /// What this replica appended since its last checkpoint.
    unsigned: parking_lot::Mutex<Unsigned>,
    /// Wakes the checkpointer when `audit_checkpoint_every_entries` are unsigned.
    full: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Queued>,
    writing: bool,
}

/// One entry waiting for the writer, without its link (seq, hashes) yet.
#[derive(Debug)]
struct Queued {
    at_ms: i64,
    actor: String,
    action: String,
    object: String,
    request_digest: String,
    outcome: String,
    done: oneshot::Sender<Result<i64, String>>,
}

/// Why an entry could not be appended.
#[derive(Debug, thiserror::Error)]
enum AppendError {
    #[error("cannot write the audit log: {0}")]
    Store(String),
    #[error("the audit writer stopped before storing the entry")]
    WriterGone,
    #[error("{MAX_QUEUED} entries are waiting for the audit writer already")]
    QueueFull,
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
                    error = %error,
                    %actor,
                    %action,
                    %outcome,
                    "an audited request could not be appended to the audit log"
                );
            }
        }
    }

    /// Queues an entry for the writer and waits until it is stored; returns its seq.
    async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        object: &str,
        request_digest: &str,
        outcome: &str,
    ) -> Result<i64, AppendError> {
        let (done, stored) = oneshot::channel();
        let start_writer = {
            let mut queue = self.audit_log.inner.queue.lock();
            if queue.waiting.len() >= MAX_QUEUED {
                return Err(AppendError::QueueFull);
            }
            queue.waiting.push(Queued {
                at_ms: now_ms(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                object: object.to_owned(),
                request_digest: request_digest.to_owned(),
                outcome: outcome.to_owned(),
                done,
            });
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            // A task of its own, so that a caller that stops waiting (its request
            // dropped, or timed out) never drops a batch half written.
            tokio::spawn(write_queued(
                self.store.clone(),
                self.audit_log.clone(),
                self.config.audit_checkpoint_every_entries,
            ));
        }
        match stored.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(error)) => Err(AppendError::Store(error)),
            Err(_) => Err(AppendError::WriterGone),
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
            let mut unsigned = self.audit_log.inner.unsigned.lock();
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
                let mut unsigned = self.audit_log.inner.unsigned.lock();
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

/// The writer: stores batches of what is queued until the queue is empty.
async fn write_queued(store: Store, log: AuditLog, every_entries: u64) {
    loop {
        let batch: Vec<Queued> = {
            let mut queue = log.inner.queue.lock();
            if queue.waiting.is_empty() {
                queue.writing = false;
                return;
            }
            let take = queue.waiting.len().min(MAX_APPEND_BATCH);
            queue.waiting.drain(..take).collect()
        };
        match write_batch(&store, &log, &batch).await {
            Ok(entries) => {
                let newest = entries.last().cloned();
                for (queued, entry) in batch.into_iter().zip(&entries) {
                    // A caller that stopped waiting is no error: its entry is stored.
                    let _ = queued.done.send(Ok(entry.seq));
                }
                if let Some(newest) = newest {
                    log.note_unsigned(newest, entries.len() as u64, every_entries);
                }
            }
            Err(error) => {
                let message = ErrorChain(&error).to_string();
                for queued in batch {
                    let _ = queued.done.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Links `batch` after the head and stores it; after a lost race, reads the head again
/// and links it anew.
async fn write_batch(
    store: &Store,
    log: &AuditLog,
    batch: &[Queued],
) -> Result<Vec<AuditEntry>, StoreError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Taken out: after a lost race or an error it stays unknown and is read again.
        let known = log.inner.head.lock().take();
        let mut prev = match known {
            Some(prev) => prev,
            None => store.audit_head().await?,
        };
        let mut entries = Vec::with_capacity(batch.len());
        for q in batch {
            let entry = AuditEntry::new(
                prev.as_ref(),
                q.at_ms,
                q.actor.as_str(),
                q.action.as_str(),
                q.object.as_str(),
                q.request_digest.as_str(),
                q.outcome.as_str(),
            );
            prev = Some(entry.clone());
            entries.push(entry);
        }
        match store.append_audit_entries(&entries).await {
            Ok(()) => {
                *log.inner.head.lock() = Some(prev);
                return Ok(entries);
            }
            Err(StoreError::Conflict { .. }) if attempts < APPEND_ATTEMPTS => {
                tracing::debug!(
                    seq = entries.first().map(|e| e.seq),
                    "audit seq taken by another replica"
                );
            }
            Err(error) => return Err(error),
        }
    }
}

impl AuditLog {
    fn note_unsigned(&self, newest: AuditEntry, count: u64, every_entries: u64) {
        let mut unsigned = self.inner.unsigned.lock();
        unsigned.count += count;
        unsigned.newest = Some(newest);
        if unsigned.count >= every_entries {
            self.inner.full.notify_one();
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
            () = app.audit_log.inner.full.notified() => every,
        };
        app.checkpoint_audit_after(min_entries).await;
    }
}
