//! What the phases set up and read over the REST API: a release of one inert image
//! (pushed to a local registry, since a release pins digests), environments of `sim`
//! targets driven by the simulated agents, promotions, deployments and agent states.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{json, Value};
use stella_tests::registry::TestRegistry;
use tokio::time::Instant;

use crate::bench::server::ServerProcess;

/// The release every phase promotes.
pub const RELEASE: &str = "fleet";
/// Its version.
pub const VERSION: &str = "1";
/// How long a promotion's answer may take.
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(900);
/// REST calls in flight while building environments and targets.
const SETUP_CONCURRENCY: usize = 32;

/// Starts a registry, pushes an inert image and creates the release of it. The registry
/// must outlive the release's creation only (the `sim` kind pulls nothing).
pub async fn create_release(server: &ServerProcess) -> anyhow::Result<()> {
    let registry = TestRegistry::start().await.context("starting a registry")?;
    let image = registry
        .push_inert_image("bench/fleet", VERSION, "bench fleet")
        .await?;
    server
        .post_json(
            "/api/v1/releases",
            &json!({"name": RELEASE, "version": VERSION, "components": {"app": image}}),
        )
        .await?;
    Ok(())
}

/// A `sim` target to create: its name and the agent that drives it.
#[derive(Debug, Clone)]
pub struct TargetPlan {
    /// Environment it belongs to.
    pub environment: String,
    /// Its name.
    pub name: String,
    /// The agent driving it.
    pub agent: String,
}

/// Creates `environments` (each once) and then `targets`, a few calls at a time.
pub async fn create(
    server: &ServerProcess,
    environments: &[String],
    targets: &[TargetPlan],
) -> anyhow::Result<()> {
    let started = Instant::now();
    let environment_bodies = environments
        .iter()
        .map(|name| json!({"name": name, "allow_unscanned": true}));
    post_all(server, "/api/v1/environments", environment_bodies)
        .await
        .context("creating environments")?;
    let target_bodies = targets.iter().map(|target| {
        json!({"name": target.name, "environment": target.environment,
               "kind": "sim", "agent": target.agent, "settings": {}})
    });
    post_all(server, "/api/v1/targets", target_bodies)
        .await
        .context("creating targets")?;
    println!(
        "created {} environments and {} targets in {:.1} s",
        environments.len(),
        targets.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Promotes the release to `environment`; returns the deployment id. The server answers
/// once it has handed the tasks to their agents' sessions, which for thousands of
/// targets takes minutes: the call may take up to [`PROMOTION_TIMEOUT`].
pub async fn promote(server: &ServerProcess, environment: &str) -> anyhow::Result<String> {
    let reply = server
        .post_json_within(
            "/api/v1/promotions",
            &json!({"release": RELEASE, "version": VERSION, "environment": environment}),
            PROMOTION_TIMEOUT,
        )
        .await?;
    reply["deployment_id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no deployment_id in the promotion's answer: {reply}"))
}

/// The state of a deployment (`running`, `succeeded`, …).
pub async fn deployment_state(server: &ServerProcess, id: &str) -> anyhow::Result<String> {
    let deployment = server
        .get_json(&format!("/api/v1/deployments/{id}"))
        .await?;
    deployment["state"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("deployment {id} has no state"))
}

/// Every agent's state by name.
pub async fn agent_states(server: &ServerProcess) -> anyhow::Result<HashMap<String, String>> {
    let agents = server.get_json("/api/v1/agents").await?;
    let list = agents
        .as_array()
        .context("GET /api/v1/agents answered no list")?;
    Ok(list
        .iter()
        .filter_map(|agent| {
            Some((
                agent["name"].as_str()?.to_owned(),
                agent["state"].as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// POSTs every body to `path`, [`SETUP_CONCURRENCY`] at a time; fails on the first error.
async fn post_all(
    server: &ServerProcess,
    path: &str,
    bodies: impl Iterator<Item = Value>,
) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<Value>> = futures::stream::iter(bodies)
        .map(|body| async move { server.post_json(path, &body).await })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}
