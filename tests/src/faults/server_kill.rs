//! SIGKILL of a single-node control plane (SQLite) while deployments are in flight to
//! simulated targets, then a restart on the same data dir.
//!
//! Each deployment is a promotion of one release to its own environment holding one
//! `sim` target (so N deployments are N independent tasks, spread over the agents).
//! Promotions are sent while earlier ones run; the server is killed once a given share
//! of them was acknowledged and a given share of the targets was changed, so at that moment some tasks are done and
//! acknowledged, some done with their results still on the agents, some running, some
//! not yet assigned, and some promotions are on the wire. After the restart, a
//! promotion that got no answer is looked up and sent again only if the server has no
//! deployment for its environment (what a careful client does).
//!
//! Counted: lost — an acknowledged promotion whose deployment is missing or did not
//! succeed, or a succeeded task with no side effect at its target; duplicated — a task
//! applied more than once at its target, or an environment with two deployments.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{stream, StreamExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::fleet::Fleet;
use super::server::{Api, ServerProcess};
use super::{estate, Figures};
use crate::registry::TestRegistry;

/// The size and timing of one run.
#[derive(Debug, Clone)]
pub struct ServerKillOptions {
    /// Deployments (each one environment with one target).
    pub deployments: usize,
    /// Agents the targets are spread over.
    pub agents: usize,
    /// How long applying one deployment takes at a target, from the first to the
    /// second value (spread evenly over the targets).
    pub apply_ms: (u64, u64),
    /// The server is killed once this share of the promotions was acknowledged and
    /// this share of the targets changed.
    pub kill_when: (f64, f64),
    /// Requests sent at once while building the estate and promoting.
    pub concurrency: usize,
    /// How long every deployment may take to finish after the restart.
    pub recovery_timeout: Duration,
}

impl ServerKillOptions {
    /// The full run of `cargo xtask faults`: 1,000 deployments.
    pub fn full() -> Self {
        ServerKillOptions {
            deployments: 1000,
            agents: 10,
            apply_ms: (5_000, 30_000),
            kill_when: (0.8, 0.1),
            concurrency: 8,
            recovery_timeout: Duration::from_secs(600),
        }
    }

    /// The short form the test suite runs.
    pub fn short() -> Self {
        ServerKillOptions {
            deployments: 100,
            agents: 4,
            apply_ms: (1_000, 8_000),
            kill_when: (0.8, 0.1),
            concurrency: 8,
            recovery_timeout: Duration::from_secs(120),
        }
    }
}

/// What became of one environment's promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Promotion {
    /// Not sent before the kill.
    NotSent,
    /// Sent, no answer (the server died meanwhile).
    Unanswered,
    /// Answered 2xx with this deployment.
    Acknowledged(String),
}

/// Runs the scenario in `dir` (the server's data, the agents', the logs).
pub async fn run(options: &ServerKillOptions, dir: &Path) -> anyhow::Result<Figures> {
    let n = options.deployments;
    let mut figures = Figures {
        scenario: "SIGKILL of the server (SQLite) during in-flight deployments".to_owned(),
        n,
        ..Figures::default()
    };
    let registry = TestRegistry::start().await?;
    let image = registry
        .push_inert_image("faults/app", "1", "server kill")
        .await?;
    let mut server = ServerProcess::start(dir, "").await?;
    let fleet = Fleet::start(&server.api, dir, options.agents).await?;
    let api = server.api.clone();

    api.post(
        "/api/v1/releases",
        json!({"name": "app", "version": "1", "components": {"app": image}}),
    )
    .await?;
    let environments: Vec<String> = (0..n).map(|i| format!("f-{i:04}")).collect();
    estate::create(
        &api,
        &fleet,
        &environments,
        options.apply_ms,
        options.concurrency,
    )
    .await?;

    // Promote, and kill the server once enough targets changed.
    let promotions: Arc<Mutex<HashMap<String, Promotion>>> = Arc::new(Mutex::new(
        environments
            .iter()
            .map(|e| (e.clone(), Promotion::NotSent))
            .collect(),
    ));
    let stop_promoting = CancellationToken::new();
    let promoter = tokio::spawn(promote_all(
        api.clone(),
        environments.clone(),
        Arc::clone(&promotions),
        stop_promoting.clone(),
        options.concurrency,
    ));
    let share = |fraction: f64| ((n as f64) * fraction).ceil() as usize;
    let (kill_acknowledged, kill_applied) =
        (share(options.kill_when.0), share(options.kill_when.1));
    crate::wait_until(
        &format!("{kill_acknowledged} promotions acknowledged and {kill_applied} targets changed"),
        options.recovery_timeout,
        || async {
            let acknowledged = lock(&promotions)
                .values()
                .filter(|p| matches!(p, Promotion::Acknowledged(_)))
                .count();
            (acknowledged >= kill_acknowledged && fleet.ledger.len() >= kill_applied).then_some(())
        },
    )
    .await?;
    server.kill().await?;
    let applied_at_kill = fleet.ledger.len();
    stop_promoting.cancel();
    promoter.await.context("the promoter panicked")?;
    let (acknowledged, unanswered, not_sent) = {
        let promotions = lock(&promotions);
        let count =
            |wanted: fn(&Promotion) -> bool| promotions.values().filter(|p| wanted(p)).count();
        (
            count(|p| matches!(p, Promotion::Acknowledged(_))),
            count(|p| *p == Promotion::Unanswered),
            count(|p| *p == Promotion::NotSent),
        )
    };

    // Restart, then finish what the client did not see answered.
    let repaired = Instant::now();
    figures.ready_after = Some(server.restart().await?);
    let api = server.api.clone();
    let agents = fleet.agents.len() as u64;
    crate::wait_until(
        "every agent holds a session again",
        Duration::from_secs(60),
        || async { (api.agent_sessions().await.ok()? >= agents).then_some(()) },
    )
    .await?;
    let agents_back = repaired.elapsed();
    let mut deployments: HashMap<String, String> = HashMap::new();
    let listed = list_per_environment(&api, &environments, options.concurrency).await?;
    let mut resent = 0;
    for environment in &environments {
        let found = listed.get(environment).cloned().unwrap_or_default();
        if found.len() > 1 {
            figures.duplicated += found.len() - 1;
            figures.problem(format!(
                "{environment}: {} deployments for one promotion",
                found.len()
            ));
        }
        let promotion = lock(&promotions)
            .get(environment)
            .cloned()
            .unwrap_or(Promotion::NotSent);
        match (promotion, found.first()) {
            (Promotion::Acknowledged(id), _) if !found.contains(&id) => {
                figures.lost += 1;
                figures.problem(format!(
                    "{environment}: acknowledged deployment {id} is gone"
                ));
            }
            (_, Some(id)) => {
                deployments.insert(environment.clone(), id.clone());
            }
            (_, None) => {
                let id = estate::promote(&api, "app", "1", environment).await?;
                deployments.insert(environment.clone(), id);
                resent += 1;
            }
        }
    }

    // Wait for every deployment to finish, then count.
    let finished = estate::wait_finished(
        &api,
        deployments.values().cloned(),
        options.concurrency,
        options.recovery_timeout,
    )
    .await;
    if finished.open.is_empty() {
        figures.recovered_after = Some(repaired.elapsed());
    }
    let reassigned = estate::count(&mut figures, &finished, &fleet, true);
    figures.extra = vec![
        ("agents".to_owned(), options.agents.to_string()),
        ("applied at kill".to_owned(), applied_at_kill.to_string()),
        (
            "at the kill".to_owned(),
            format!("{acknowledged} promotions acknowledged, {unanswered} unanswered, {not_sent} not sent"),
        ),
        (
            "agents back".to_owned(),
            format!("{:.2} s after the restart began", agents_back.as_secs_f64()),
        ),
        ("resent".to_owned(), resent.to_string()),
        ("re-leased".to_owned(), format!("{reassigned} tasks ended under epoch > 1")),
        ("side effects".to_owned(), fleet.ledger.len().to_string()),
    ];
    fleet.stop().await;
    server.kill().await?;
    drop(registry);
    Ok(figures)
}

async fn promote_all(
    api: Api,
    environments: Vec<String>,
    promotions: Arc<Mutex<HashMap<String, Promotion>>>,
    stop: CancellationToken,
    concurrency: usize,
) {
    stream::iter(environments)
        .map(|environment| {
            let api = api.clone();
            let promotions = Arc::clone(&promotions);
            let stop = stop.clone();
            async move {
                if stop.is_cancelled() {
                    return;
                }
                lock(&promotions).insert(environment.clone(), Promotion::Unanswered);
                if let Ok(id) = estate::promote(&api, "app", "1", &environment).await {
                    lock(&promotions).insert(environment, Promotion::Acknowledged(id));
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// The ids of each environment's deployments.
async fn list_per_environment(
    api: &Api,
    environments: &[String],
    concurrency: usize,
) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let listed: Vec<anyhow::Result<(String, Vec<String>)>> = stream::iter(environments.to_vec())
        .map(|environment| {
            let api = api.clone();
            async move {
                let list = api
                    .get(&format!("/api/v1/deployments?environment={environment}"))
                    .await?;
                let ids = list
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d["id"].as_str().map(str::to_owned))
                    .collect();
                Ok((environment, ids))
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    listed.into_iter().collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
