//! Following a deployment until it is finished: its state and its log lines, polled,
//! handed to an [`Observer`] (a progress display, or the printer of `logs --follow`).
//!
//! One loop serves `promote --wait`, `rollback --wait` and `deployment logs --follow`,
//! so they agree on when a deployment is over: when it is terminal and every log line
//! written before that has been read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::client::{Client, ClientError};
use crate::commands::path;

/// How often the deployment is polled while nothing new arrives.
const POLL: Duration = Duration::from_millis(50);
/// How long to wait before asking again after the server could not be reached.
const RETRY: Duration = Duration::from_millis(500);

/// What a follower is told, in order: `deployment` at every poll, `line` for each new
/// log line, `finished` once.
pub trait Observer {
    /// The deployment as just read (with its tasks).
    fn deployment(&mut self, deployment: &Value);
    /// A new log line; `target` is its task's target (`None` for the server's own lines).
    fn line(&mut self, line: &Value, target: Option<&str>);
    /// The server could not be reached; the follower retries.
    fn retrying(&mut self, cause: &ClientError);
    /// The deployment is terminal and every line has been seen.
    fn finished(&mut self, deployment: &Value);
}

/// Whether a deployment state is final.
pub fn is_terminal(deployment: &Value) -> bool {
    matches!(deployment["state"].as_str(), Some("succeeded" | "failed"))
}

/// Task id → target name, from a deployment's tasks.
pub fn targets_by_task(deployment: &Value) -> HashMap<String, String> {
    deployment["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|task| {
            Some((
                task["id"].as_str()?.to_owned(),
                task["target"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Follows deployment `id` (an id or, where the server takes one, a unique prefix) until
/// it is finished, and returns it. The server being unreachable is retried for as long
/// as the client's timeout; any other error ends the follow.
pub async fn follow(
    client: &Client,
    id: &str,
    observer: &mut dyn Observer,
) -> Result<Value, ClientError> {
    let first = client.get(&format!("/deployments/{}", path(id))).await?;
    // The id the server answered with, in case `id` was a prefix.
    let id = first["id"]
        .as_str()
        .map_or_else(|| id.to_owned(), str::to_owned);
    let id = path(&id);
    observer.deployment(&first);
    let mut targets = targets_by_task(&first);
    let mut after = 0;
    let mut last_contact = Instant::now();
    loop {
        // State first: lines written before a terminal state are all read below.
        let polled = async {
            let deployment = client.get(&format!("/deployments/{id}")).await?;
            let batch = client
                .get(&format!("/deployments/{id}/logs?after={after}"))
                .await?;
            Ok::<_, ClientError>((deployment, batch))
        }
        .await;
        let (deployment, batch) = match polled {
            Ok(polled) => polled,
            Err(error) if error.is_transport() && last_contact.elapsed() < client.timeout() => {
                observer.retrying(&error);
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        last_contact = Instant::now();
        if targets.len() < deployment["tasks"].as_array().map_or(0, Vec::len) {
            targets = targets_by_task(&deployment);
        }
        observer.deployment(&deployment);
        let batch = batch.as_array().cloned().unwrap_or_default();
        for line in &batch {
            after = line["seq"].as_i64().unwrap_or(after).max(after);
            let target = line["task_id"]
                .as_str()
                .and_then(|task| targets.get(task))
                .map(String::as_str);
            observer.line(line, target);
        }
        if batch.is_empty() && is_terminal(&deployment) {
            observer.finished(&deployment);
            return Ok(deployment);
        }
        if batch.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Every log line of a deployment, page by page (the server answers at most a page).
pub async fn all_lines(client: &Client, id: &str) -> Result<Vec<Value>, ClientError> {
    let mut lines = Vec::new();
    let mut after = 0;
    loop {
        let batch = client
            .get(&format!("/deployments/{}/logs?after={after}", path(id)))
            .await?;
        let batch = batch.as_array().cloned().unwrap_or_default();
        let Some(last) = batch.last().and_then(|line| line["seq"].as_i64()) else {
            return Ok(lines);
        };
        if last <= after {
            return Ok(lines);
        }
        after = last;
        lines.extend(batch);
    }
}
