//! The task result writer: results are group-committed. A session queues the result its
//! agent sent and waits; one writer task at a time (spawned by the first caller that
//! finds none running) takes everything queued, at most [`MAX_BATCH`], stores it in one
//! write transaction ([`Store::complete_tasks`]) and answers every caller of that batch.
//! When 10,000 agents answer one fan-out, the results cost a few hundred transactions
//! on the one SQLite writer instead of 10,000.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::App;
use crate::error::{AppError, ErrorChain, ErrorKind};
use crate::store::{Store, StoredResult, TaskResultRecord};

/// Most results in one transaction: large enough that a fan-out's results take few
/// transactions, small enough that one transaction never holds the writer for long.
const MAX_BATCH: usize = 512;

/// Most results waiting for the writer; past it a result is refused at once (the agent
/// keeps it in its journal and sends it again on its next session), so a database that
/// stopped answering cannot grow the queue without bound.
const MAX_QUEUED: usize = 65_536;

/// This replica's queue of task results; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ResultWriter {
    queue: Arc<parking_lot::Mutex<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Queued>,
    writing: bool,
}

#[derive(Debug)]
struct Queued {
    result: TaskResultRecord,
    done: oneshot::Sender<Result<StoredResult, String>>,
}

impl App {
    /// Stores one task result through the group-committing writer; see the module
    /// documentation.
    pub(super) async fn store_task_result(
        &self,
        result: TaskResultRecord,
    ) -> Result<StoredResult, AppError> {
        let (done, stored) = oneshot::channel();
        let start_writer = {
            let mut queue = self.task_results.queue.lock();
            if queue.waiting.len() >= MAX_QUEUED {
                return Err(unavailable(format!(
                    "{MAX_QUEUED} task results are waiting to be stored already"
                )));
            }
            queue.waiting.push(Queued { result, done });
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            // A task of its own, so that a session that ends while it waits never drops
            // a batch half written.
            tokio::spawn(write_queued(self.store.clone(), self.task_results.clone()));
        }
        match stored.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(error)) => Err(unavailable(format!(
                "cannot store the task result: {error}"
            ))),
            Err(_) => Err(unavailable(
                "the result writer stopped before storing the task result".to_owned(),
            )),
        }
    }
}

fn unavailable(message: String) -> AppError {
    AppError::new(ErrorKind::Unavailable, "result_not_stored", message)
}

/// Writes batches until the queue is empty, then marks the writer stopped (under the
/// queue's lock, so a result queued meanwhile starts a new writer).
async fn write_queued(store: Store, writer: ResultWriter) {
    loop {
        let batch: Vec<Queued> = {
            let mut queue = writer.queue.lock();
            if queue.waiting.is_empty() {
                queue.writing = false;
                return;
            }
            let take = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..take).collect()
        };
        let (results, answers): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|q| (q.result, q.done)).unzip();
        let outcome = store
            .complete_tasks(&results, super::now_ms(), |task| {
                format!(
                    "{}: {}: {}",
                    task.target,
                    task.state,
                    task.message.as_deref().unwrap_or("")
                )
            })
            .await;
        match outcome {
            Ok(stored) => {
                for (answer, stored) in answers.into_iter().zip(stored) {
                    let _ = answer.send(Ok(stored));
                }
            }
            Err(error) => {
                let message = ErrorChain(&error).to_string();
                tracing::warn!(error = %message, results = results.len(), "cannot store task results");
                for answer in answers {
                    let _ = answer.send(Err(message.clone()));
                }
            }
        }
    }
}
