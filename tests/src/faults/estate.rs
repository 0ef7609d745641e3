//! What the scenarios share: an estate of one `sim` target per environment, promotions,
//! waiting for deployments to finish, and checking them against the side effects at the
//! targets.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{stream, StreamExt};
use serde_json::{json, Value};

use super::fleet::Fleet;
use super::server::Api;
use super::Figures;

/// Creates environment `names[i]` with target `t-<names[i]>` of kind `sim`, driven by
/// the fleet's agent `i mod agents`, whose applies take from `apply_ms.0` to
/// `apply_ms.1` (spread evenly over the targets).
pub async fn create(
    api: &Api,
    fleet: &Fleet,
    names: &[String],
    apply_ms: (u64, u64),
    concurrency: usize,
) -> anyhow::Result<()> {
    let span = apply_ms.1.saturating_sub(apply_ms.0).max(1);
    let results: Vec<anyhow::Result<()>> = stream::iter(names.iter().enumerate())
        .map(|(index, environment)| {
            let api = api.clone();
            let agent = fleet.agent_for(index).name.clone();
            // 7919 is prime: consecutive targets get well spread durations.
            let apply_ms = apply_ms.0 + (index as u64 * 7919) % span;
            async move {
                api.post(
                    "/api/v1/environments",
                    json!({"name": environment, "allow_unscanned": true}),
                )
                .await?;
                api.post(
                    "/api/v1/targets",
                    json!({"name": target_of(environment), "environment": environment,
                           "kind": "sim", "agent": agent,
                           "settings": {"apply_ms": apply_ms.to_string()}}),
                )
                .await?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for result in results {
        result.context("building the estate")?;
    }
    Ok(())
}

/// The target of an environment.
pub fn target_of(environment: &str) -> String {
    format!("t-{environment}")
}

/// Promotes `release@version` to `environment`; returns the deployment id.
pub async fn promote(
    api: &Api,
    release: &str,
    version: &str,
    environment: &str,
) -> anyhow::Result<String> {
    let reply = api
        .post(
            "/api/v1/promotions",
            json!({"release": release, "version": version, "environment": environment}),
        )
        .await?;
    deployment_id(&reply)
}

/// The deployment id of a promotion's answer.
pub fn deployment_id(reply: &Value) -> anyhow::Result<String> {
    reply["deployment_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no deployment_id in {reply}"))
}

/// Promotes to every environment, `concurrency` at a time; returns the deployment ids.
pub async fn promote_all(
    api: &Api,
    release: &str,
    version: &str,
    environments: &[String],
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<anyhow::Result<String>> = stream::iter(environments)
        .map(|environment| promote(api, release, version, environment))
        .buffered(concurrency)
        .collect()
        .await;
    ids.into_iter().collect()
}

/// Deployments that finished (with their tasks) and those still open at the deadline.
#[derive(Debug, Default)]
pub struct Finished {
    /// By id, as `GET /api/v1/deployments/{id}` showed them.
    pub finished: HashMap<String, Value>,
    /// Not finished when the time was up.
    pub open: HashSet<String>,
}

/// Polls the deployments until each is `succeeded`, `failed` or `cancelled`, or the time
/// is up.
pub async fn wait_finished(
    api: &Api,
    ids: impl IntoIterator<Item = String>,
    concurrency: usize,
    timeout: Duration,
) -> Finished {
    let mut open: HashSet<String> = ids.into_iter().collect();
    let mut finished = HashMap::new();
    let deadline = Instant::now() + timeout;
    loop {
        let batch: Vec<String> = open.iter().cloned().collect();
        let shown: Vec<(String, anyhow::Result<Value>)> = stream::iter(batch)
            .map(|id| {
                let api = api.clone();
                async move {
                    let shown = api.get(&format!("/api/v1/deployments/{id}")).await;
                    (id, shown)
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (id, shown) in shown {
            if let Ok(deployment) = shown {
                if matches!(
                    deployment["state"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                ) {
                    open.remove(&id);
                    finished.insert(id, deployment);
                }
            }
        }
        if open.is_empty() || Instant::now() >= deadline {
            return Finished { finished, open };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Counts into `figures` what the finished deployments and the ledger say: a deployment
/// not finished or not `succeeded` and a succeeded task with no side effect are lost; a
/// task applied more than once is duplicated. Only the tasks of `finished` are expected
/// in the ledger when `whole_ledger` is set. Returns how many tasks ran under an epoch
/// above 1 (re-assigned).
pub fn count(
    figures: &mut Figures,
    finished: &Finished,
    fleet: &Fleet,
    whole_ledger: bool,
) -> usize {
    figures.lost += finished.open.len();
    for id in &finished.open {
        figures.problem(format!("deployment {id} did not finish in time"));
    }
    let per_task = fleet.ledger.per_task();
    let mut known_tasks = HashSet::new();
    let mut reassigned = 0;
    for (id, deployment) in &finished.finished {
        if deployment["state"] != "succeeded" {
            figures.lost += 1;
            figures.problem(format!(
                "deployment {id} ended {}: {}",
                deployment["state"], deployment["message"]
            ));
        }
        for task in deployment["tasks"].as_array().into_iter().flatten() {
            let task_id = task["id"].as_str().unwrap_or_default().to_owned();
            if task["epoch"].as_i64().is_some_and(|epoch| epoch > 1) {
                reassigned += 1;
            }
            let effects = per_task.get(&task_id).map_or(0, Vec::len);
            if task["state"] == "succeeded" && effects == 0 {
                figures.lost += 1;
                figures.problem(format!(
                    "task {task_id} succeeded with no side effect at its target"
                ));
            }
            known_tasks.insert(task_id);
        }
    }
    for (task_id, effects) in fleet.ledger.duplicated() {
        figures.duplicated += effects.len() - 1;
        let epochs: Vec<u64> = effects.iter().map(|e| e.epoch).collect();
        figures.problem(format!(
            "task {task_id} applied {} times at {} (epochs {epochs:?})",
            effects.len(),
            effects[0].target
        ));
    }
    if whole_ledger {
        for task_id in per_task.keys().filter(|t| !known_tasks.contains(*t)) {
            figures.problem(format!(
                "side effect of task {task_id}, which no deployment lists"
            ));
        }
    }
    let stopped = fleet.stopped();
    if !stopped.is_empty() {
        figures.problem(format!("agents gave up: {stopped:?}"));
    }
    reassigned
}
