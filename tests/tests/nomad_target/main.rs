//! The `nomad` target against a double of the Nomad HTTP API
//! (`stella_tests::doubles::nomad`, written from Nomad's API documentation; no Nomad
//! binary runs here): deploys that pin digests and write the stickers into the job's
//! `Meta`, unchanged re-deliveries, failed, timed-out and cancelled Nomad deployments
//! with their reverts, drift of each kind, the ACL token, and releases through a real
//! control plane and agent (rollback, remediation, settings refused). A real Nomad
//! client (`python-nomad`) cross-checks the double.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use stella_agent_core::{
    ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, DriftKind, Plan, Progress, Target,
    TargetSpec,
};
use stella_target_nomad::NomadTarget;
use stella_tests::doubles::nomad::{example_job, NomadDouble, Outcome};
use stella_tests::init_tracing;

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// `registry.example/<name>@sha256:<c repeated>`.
fn image(name: &str, c: char) -> String {
    format!(
        "registry.example/shop/{name}@sha256:{}",
        c.to_string().repeat(64)
    )
}

/// A double with a job `shop` (groups `web` ×2 running `api`, `jobs` ×1 running
/// `worker`), as an operator registered it.
async fn world() -> anyhow::Result<(NomadDouble, NomadTarget)> {
    init_tracing();
    let nomad = NomadDouble::start().await?;
    nomad.register(example_job(
        "shop",
        &[("web", 2, &["api"]), ("jobs", 1, &["worker"])],
    ))?;
    Ok((nomad, NomadTarget::new()))
}

fn settings(nomad: &NomadDouble) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("address".to_owned(), nomad.address.clone()),
        ("job".to_owned(), "shop".to_owned()),
        ("deploy_timeout_seconds".to_owned(), "10".to_owned()),
    ])
}

fn task(settings: BTreeMap<String, String>, version: &str, c: char) -> DeployTask {
    DeployTask {
        deployment_id: format!("dep-{version}-{}", suffix()),
        decision_id: format!("sha256:{}", "d".repeat(64)),
        environment: "prod".to_owned(),
        release: "shop".to_owned(),
        version: version.to_owned(),
        target: TargetSpec {
            name: "nomad-shop".to_owned(),
            kind: "nomad".to_owned(),
            settings,
        },
        components: vec![
            ComponentSpec {
                name: "api".to_owned(),
                image: image("api", c),
            },
            ComponentSpec {
                name: "worker".to_owned(),
                image: image("worker", c),
            },
        ],
        registry_auth: Vec::new(),
        generation: 0,
        secrets: Default::default(),
        slot: None,
    }
}

/// The outcome (or the error chain) and the progress lines.
async fn apply(
    target: &NomadTarget,
    task: &DeployTask,
) -> (Result<ApplyOutcome, String>, Vec<String>) {
    let (progress, mut lines) = Progress::channel("agent-test", &task.deployment_id);
    let result = target
        .apply(task, &Plan::default(), &progress, &CancellationToken::new())
        .await;
    drop(progress);
    let mut collected = Vec::new();
    while let Some(line) = lines.recv().await {
        collected.push(line);
    }
    (
        result.map_err(|e| stella_agent_core::error_chain(&e)),
        collected,
    )
}

async fn apply_ok(
    target: &NomadTarget,
    task: &DeployTask,
) -> anyhow::Result<(ApplyOutcome, Vec<String>)> {
    match apply(target, task).await {
        (Ok(outcome), lines) => Ok((outcome, lines)),
        (Err(error), lines) => anyhow::bail!("apply failed: {error}\n{lines:#?}"),
    }
}

fn task_image(job: &Value, group: usize, task: usize) -> String {
    job["TaskGroups"][group]["Tasks"][task]["Config"]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

mod api;
mod cross_check;
mod deploy;
mod drift;
mod end_to_end;
