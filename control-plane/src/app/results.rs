//! The task result writer: results are group-committed ([`super::group_commit`]). A
//! session queues the result its agent sent and waits; a batch of at most [`MAX_BATCH`]
//! is stored in one write transaction ([`crate::store::Store::complete_tasks`]).
//! When 10,000 agents answer one fan-out, the results cost a few hundred transactions
//! on the one SQLite writer instead of 10,000.

use super::group_commit::{GroupCommit, Refused};
use super::App;
use crate::error::{AppError, ErrorChain, ErrorKind};
use crate::store::{StoredResult, TaskResultRecord};

/// Most results in one transaction: large enough that a fan-out's results take few
/// transactions, small enough that one transaction never holds the writer for long.
const MAX_BATCH: usize = 512;

/// Most results waiting for the writer; past it a result is refused at once (the agent
/// keeps it in its journal and sends it again on its next session), so a database that
/// stopped answering cannot grow the queue without bound.
const MAX_QUEUED: usize = 65_536;

/// This replica's queue of task results; cheap to clone.
#[derive(Debug, Clone)]
pub struct ResultWriter(GroupCommit<TaskResultRecord, StoredResult>);

impl Default for ResultWriter {
    fn default() -> Self {
        ResultWriter(GroupCommit::new(MAX_BATCH, MAX_QUEUED))
    }
}

impl App {
    /// Stores one task result through the group-committing writer; see the module
    /// documentation.
    pub(super) async fn store_task_result(
        &self,
        result: TaskResultRecord,
    ) -> Result<StoredResult, AppError> {
        let store = self.store.clone();
        let write = move |results: Vec<TaskResultRecord>| {
            let store = store.clone();
            async move {
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
                    Ok(stored) => stored.into_iter().map(Ok).collect(),
                    Err(error) => {
                        let message = ErrorChain(&error).to_string();
                        tracing::warn!(error = %message, results = results.len(), "cannot store task results");
                        results.iter().map(|_| Err(message.clone())).collect()
                    }
                }
            }
        };
        self.task_results
            .0
            .submit(result, write)
            .await
            .map_err(|refused| {
                AppError::new(
                    ErrorKind::Unavailable,
                    "result_not_stored",
                    match refused {
                        Refused::Full(most) => {
                            format!("{most} task results are waiting to be stored already")
                        }
                        Refused::Failed(error) => format!("cannot store the task result: {error}"),
                        Refused::Stopped => {
                            "the result writer stopped before storing the task result".to_owned()
                        }
                    },
                )
            })
    }
}
