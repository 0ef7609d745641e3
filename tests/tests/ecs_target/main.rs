//! The `ecs` target against a real `moto_server` (the SDK as the real client: API shape,
//! task definitions, tags, drift, rollback, one release through a real control plane
//! and agent) and against the rollout double of `stella_tests::doubles::ecs`
//! (rollouts that progress, complete, fail, roll back, time out).
//!
//! Every test has its own moto server or double, so the tests run in parallel.

use std::collections::BTreeMap;

use stella_agent_core::{
    ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, Plan, Progress, Target, TargetSpec,
};
use stella_target_ecs::EcsTarget;

/// `repo@sha256:<64 × c>`.
fn pinned(repo: &str, c: char) -> String {
    format!("{repo}@sha256:{}", c.to_string().repeat(64))
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

/// Settings for a service behind `endpoint`, keys from the secrets `aws_id`/`aws_key`.
fn settings(endpoint: &str, cluster: &str, service: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("region".to_owned(), stella_tests::moto::REGION.to_owned()),
        ("cluster".to_owned(), cluster.to_owned()),
        ("service".to_owned(), service.to_owned()),
        ("endpoint_url".to_owned(), endpoint.to_owned()),
        (
            "access_key_secret".to_owned(),
            "${secret.aws_id}".to_owned(),
        ),
        (
            "secret_key_secret".to_owned(),
            "${secret.aws_key}".to_owned(),
        ),
        ("poll_interval_ms".to_owned(), "50".to_owned()),
        ("deploy_timeout_seconds".to_owned(), "30".to_owned()),
    ])
}

fn secrets() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "aws_id".to_owned(),
            stella_tests::moto::ACCESS_KEY_ID.to_owned(),
        ),
        (
            "aws_key".to_owned(),
            stella_tests::moto::SECRET_ACCESS_KEY.to_owned(),
        ),
    ])
}

fn task(
    target: &str,
    settings: BTreeMap<String, String>,
    version: &str,
    components: &[(&str, &str)],
) -> DeployTask {
    let mut task = DeployTask {
        deployment_id: format!("dep-{version}-{}", suffix()),
        decision_id: format!("sha256:{}", "d".repeat(64)),
        environment: "prod".to_owned(),
        release: "shop".to_owned(),
        version: version.to_owned(),
        target: TargetSpec {
            name: target.to_owned(),
            kind: "ecs".to_owned(),
            settings,
        },
        components: components
            .iter()
            .map(|(name, image)| ComponentSpec {
                name: (*name).to_owned(),
                image: (*image).to_owned(),
            })
            .collect(),
        registry_auth: Vec::new(),
        generation: 0,
        secrets: Default::default(),
        slot: None,
    };
    task.secrets.0 = secrets();
    task
}

/// The outcome (or the error chain) and the progress lines, failed or not.
async fn apply_on(
    target: &EcsTarget,
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
    target: &EcsTarget,
    task: &DeployTask,
) -> anyhow::Result<(ApplyOutcome, Vec<String>)> {
    let (result, lines) = apply_on(target, task).await;
    match result {
        Ok(outcome) => Ok((outcome, lines)),
        Err(error) => anyhow::bail!("apply failed: {error}\n{lines:#?}"),
    }
}

mod moto;
mod rollouts;
