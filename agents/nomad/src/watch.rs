//! Watching the jobs of the targets this agent has seen, with blocking queries: when a
//! job's modify index moves (or the job appears or goes), the target's name is sent so
//! the agent runs a drift round at once instead of at the interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::NomadClient;
use crate::settings::NomadSettings;

/// How often the list of targets is looked at for new ones.
const SCAN: Duration = Duration::from_secs(1);
/// The pause after an error (API unreachable, 403, …) before the next query.
const RETRY: Duration = Duration::from_secs(5);

type Seen = Arc<Mutex<HashMap<String, NomadSettings>>>;

fn settings_of(seen: &Seen, target: &str) -> Option<NomadSettings> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(target)
        .cloned()
}

/// Starts one watcher per target seen, and stops the watchers of targets forgotten;
/// stops when `notify` is closed.
pub(crate) async fn run(seen: Seen, notify: mpsc::UnboundedSender<String>) {
    let mut watching: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    while !notify.is_closed() {
        let targets: Vec<String> = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        watching.retain(|target, task| {
            let keep = targets.contains(target);
            if !keep {
                task.abort();
            }
            keep
        });
        for target in targets {
            if watching.get(&target).is_none_or(|w| w.is_finished()) {
                let task = tokio::spawn(watch_one(seen.clone(), target.clone(), notify.clone()));
                watching.insert(target, task);
            }
        }
        tokio::time::sleep(SCAN).await;
    }
    for task in watching.into_values() {
        task.abort();
    }
}

/// What identifies a version of the job: `None` when it does not exist.
fn mark(job: Option<&Value>) -> Option<(u64, bool)> {
    job.map(|job| {
        (
            job.get("ModifyIndex").and_then(Value::as_u64).unwrap_or(0),
            job.get("Stop").and_then(Value::as_bool).unwrap_or(false),
        )
    })
}

/// Follows one target's job until its settings change (then a new watcher starts) or
/// `notify` is closed.
async fn watch_one(seen: Seen, target: String, notify: mpsc::UnboundedSender<String>) {
    let Some(settings) = settings_of(&seen, &target) else {
        return;
    };
    let Ok(client) = NomadClient::new(&settings) else {
        return;
    };
    let mut index = 0;
    let mut last: Option<Option<(u64, bool)>> = None;
    while !notify.is_closed() {
        if settings_of(&seen, &target).as_ref() != Some(&settings) {
            return;
        }
        match client.job_blocking(&settings.job, index).await {
            Ok((job, next)) => {
                let now = mark(job.as_ref());
                if last.is_some_and(|before| before != now) && notify.send(target.clone()).is_err()
                {
                    return;
                }
                last = Some(now);
                if job.is_none() || next <= index {
                    // A missing job is answered at once, without blocking.
                    tokio::time::sleep(SCAN).await;
                }
                index = next.max(index);
            }
            Err(error) => {
                tracing::debug!(%target, %error, "watching the nomad job failed; trying again");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
