//! Group commit: callers queue an item and wait; one writer task at a time (spawned by
//! the first caller that finds none running) takes everything queued, up to a batch's
//! size, writes it with one call (one transaction) and answers every caller of that
//! batch. On SQLite every write goes through one connection, and each statement is a
//! round trip to that connection's thread: many items in one transaction cost a few
//! round trips instead of a few per item.
//!
//! The writer is spawned as a task of its own, so that a caller that goes away while it
//! waits (a request cancelled, a session ended) never drops a batch half written.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;

/// Why a queued item was not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refused {
    /// The queue holds its most already (a database that stopped answering must not
    /// grow it without bound).
    Full(usize),
    /// The write failed; the message says why.
    Failed(String),
    /// The writer stopped before answering (the runtime is shutting down).
    Stopped,
}

/// A queue of items waiting for one writer; cheap to clone.
#[derive(Debug)]
pub(super) struct GroupCommit<I, O> {
    queue: Arc<parking_lot::Mutex<Queue<I, O>>>,
    max_batch: usize,
    max_queued: usize,
}

impl<I, O> Clone for GroupCommit<I, O> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
            max_batch: self.max_batch,
            max_queued: self.max_queued,
        }
    }
}

#[derive(Debug)]
struct Queue<I, O> {
    waiting: Vec<(I, oneshot::Sender<Result<O, String>>)>,
    writing: bool,
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// A queue whose batches hold at most `max_batch` items, refusing items past
    /// `max_queued` waiting.
    pub(super) fn new(max_batch: usize, max_queued: usize) -> Self {
        GroupCommit {
            queue: Arc::new(parking_lot::Mutex::new(Queue {
                waiting: Vec::new(),
                writing: false,
            })),
            max_batch: max_batch.max(1),
            max_queued,
        }
    }

    /// Queues `item` and waits for the batch it lands in to be written. `write` writes
    /// one batch and answers each of its items, in order; when no writer runs, the
    /// caller's `write` becomes the writer (every caller passes the same function).
    pub(super) async fn submit<W, F>(&self, item: I, write: W) -> Result<O, Refused>
    where
        W: Fn(Vec<I>) -> F + Send + 'static,
        F: Future<Output = Vec<Result<O, String>>> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let start_writer = {
            let mut queue = self.queue.lock();
            if queue.waiting.len() >= self.max_queued {
                return Err(Refused::Full(self.max_queued));
            }
            queue.waiting.push((item, done));
            !std::mem::replace(&mut queue.writing, true)
        };
        if start_writer {
            tokio::spawn(write_queued(self.clone(), write));
        }
        match answer.await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(error)) => Err(Refused::Failed(error)),
            Err(_) => Err(Refused::Stopped),
        }
    }
}

/// Writes batches until the queue is empty, then marks the writer stopped (under the
/// queue's lock, so an item queued meanwhile starts a new writer).
async fn write_queued<I, O, W, F>(queue: GroupCommit<I, O>, write: W)
where
    W: Fn(Vec<I>) -> F,
    F: Future<Output = Vec<Result<O, String>>>,
{
    loop {
        let batch: Vec<_> = {
            let mut waiting = queue.queue.lock();
            if waiting.waiting.is_empty() {
                waiting.writing = false;
                return;
            }
            let take = waiting.waiting.len().min(queue.max_batch);
            waiting.waiting.drain(..take).collect()
        };
        let (items, answers): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
        let count = items.len();
        let mut outputs = write(items).await.into_iter();
        for answer in answers {
            let output = outputs.next().unwrap_or_else(|| {
                Err(format!(
                    "the writer answered fewer items than the {count} of its batch"
                ))
            });
            let _ = answer.send(output);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_items_share_batches_and_each_gets_its_answer() {
        let queue: GroupCommit<u32, u32> = GroupCommit::new(8, 1_000);
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut callers = Vec::new();
        for n in 0..100u32 {
            let (queue, batches) = (queue.clone(), batches.clone());
            callers.push(tokio::spawn(async move {
                let write = move |items: Vec<u32>| {
                    let batches = batches.clone();
                    async move {
                        batches.lock().push(items.len());
                        // Long enough that the other callers queue meanwhile.
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        items
                            .into_iter()
                            .map(|i| {
                                if i == 13 {
                                    Err("unlucky".to_owned())
                                } else {
                                    Ok(i * 2)
                                }
                            })
                            .collect()
                    }
                };
                (n, queue.submit(n, write).await)
            }));
        }
        for caller in callers {
            let (n, answer) = caller.await.unwrap();
            if n == 13 {
                assert_eq!(answer, Err(Refused::Failed("unlucky".to_owned())));
            } else {
                assert_eq!(answer, Ok(n * 2));
            }
        }
        let batches = batches.lock();
        assert_eq!(batches.iter().sum::<usize>(), 100);
        assert!(batches.iter().all(|&size| (1..=8).contains(&size)));
        assert!(batches.len() < 100, "no batch held two items: {batches:?}");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let queue: GroupCommit<u32, u32> = GroupCommit::new(8, 0);
        let answer = queue
            .submit(1, |items: Vec<u32>| async move {
                items.into_iter().map(Ok).collect()
            })
            .await;
        assert_eq!(answer, Err(Refused::Full(0)));
    }

    #[tokio::test]
    async fn a_writer_answering_too_few_fails_the_rest() {
        let queue: GroupCommit<u32, u32> = GroupCommit::new(8, 10);
        let answer = queue
            .submit(1, |_: Vec<u32>| async move { Vec::new() })
            .await;
        assert!(matches!(answer, Err(Refused::Failed(m)) if m.contains("fewer items")));
    }
}
