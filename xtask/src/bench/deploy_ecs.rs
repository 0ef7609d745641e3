//! `cargo xtask bench deploy --kind ecs`: a new image on an ECS service, through Stella
//! (`stella promote --wait` to an `ecs` target, agent warm) versus the bare ECS API calls
//! that do the same (DescribeServices, DescribeTaskDefinition, RegisterTaskDefinition,
//! UpdateService, DescribeServices until the deployment's `rolloutState` is
//! `COMPLETED`, TagResource), in the same run, alternating, against the same ECS
//! double (`stella_tests::doubles::ecs`: each DescribeServices advances a rollout one
//! step, it completes on the third), both polling every [`POLL_MS`] ms. Two services,
//! one per side. The ratio is Stella's median over the bare calls' median.
//!
//! The release's images come from a real local registry (the control plane resolves
//! them); ECS itself is the double, so no task runs: this measures Stella's overhead
//! around the same API conversation, not a real rollout.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use stella_tests::doubles::ecs::{EcsDouble, RolloutScript};
use stella_tests::images::WebImages;
use stella_tests::moto::aws_sdk_ecs;
use stella_tests::registry::TestRegistry;

use super::deploy::{median, start_agent, uuid_like, DeployArgs, Stella};
use super::server::ServerProcess;
use crate::cargo::step;

/// How often both sides read the rollout state.
const POLL_MS: u64 = 200;
/// DescribeServices calls a rollout takes in the double.
const ROLLOUT_POLLS: u32 = 3;

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    let (binary, runtime) = super::deploy::server_and_runtime(args)?;
    runtime.block_on(bench(args, &binary))
}

/// The bare API calls of one deployment of `image` to container `api` of `service`.
async fn bare_deploy(
    ecs: &aws_sdk_ecs::Client,
    service: &str,
    image: &str,
    version: &str,
) -> anyhow::Result<()> {
    use aws_sdk_ecs::types::{ServiceField, Tag, TaskDefinitionField};
    let described = ecs
        .describe_services()
        .cluster("bench")
        .services(service)
        .include(ServiceField::Tags)
        .send()
        .await?;
    let current = described.services().first().context("no service")?;
    let service_arn = current.service_arn().context("no arn")?.to_owned();
    let task_definition = current.task_definition().context("no task definition")?;
    let definition = ecs
        .describe_task_definition()
        .task_definition(task_definition)
        .include(TaskDefinitionField::Tags)
        .send()
        .await?;
    let definition = definition.task_definition().context("no task definition")?;
    let containers = definition
        .container_definitions()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if c.name() == Some("api") {
                c.image = Some(image.to_owned());
            }
            c
        })
        .collect();
    let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
    let registered = ecs
        .register_task_definition()
        .set_family(definition.family.clone())
        .set_container_definitions(Some(containers))
        .tags(tag("stella:version", version))
        .send()
        .await?;
    let arn = registered
        .task_definition()
        .and_then(|t| t.task_definition_arn())
        .context("no arn")?
        .to_owned();
    ecs.update_service()
        .cluster("bench")
        .service(service)
        .task_definition(&arn)
        .send()
        .await?;
    loop {
        let described = ecs
            .describe_services()
            .cluster("bench")
            .services(service)
            .send()
            .await?;
        let state = described
            .services()
            .first()
            .and_then(|s| {
                s.deployments()
                    .iter()
                    .find(|d| d.task_definition() == Some(&arn))
            })
            .and_then(|d| d.rollout_state())
            .map(|s| s.as_str().to_owned());
        match state.as_deref() {
            Some("COMPLETED") => break,
            Some("FAILED") => bail!("the bare rollout failed"),
            _ => tokio::time::sleep(Duration::from_millis(POLL_MS)).await,
        }
    }
    ecs.tag_resource()
        .resource_arn(&service_arn)
        .tags(tag("stella:version", version))
        .send()
        .await?;
    Ok(())
}

async fn bench(args: &DeployArgs, binary: &Path) -> anyhow::Result<()> {
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-deploy-ecs-")
        .tempdir()
        .context("cannot create a temp dir")?;
    step("registry, images and the ECS double");
    let registry = TestRegistry::start().await?;
    let suffix = uuid_like();
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-bench/ecs-api-{suffix}"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let v2 = images.publish("v2", true).await?;
    let double = EcsDouble::start().await?;
    double.script(RolloutScript::Complete {
        polls: ROLLOUT_POLLS,
    });
    for service in ["through-stella", "bare"] {
        let base = double.register(service, &[("api", "r.example/api:0")]);
        double.create_service("bench", service, &base, 2);
    }
    let ecs = stella_tests::moto::ecs_client(&double.url);

    step("server and agent");
    let server = ServerProcess::start(
        binary,
        work_dir.path(),
        "heartbeat_interval_seconds = 5\napi_plain_http = true\n",
        None,
    )
    .await?;
    let stella = Stella {
        binary,
        api_url: server.api_url().to_owned(),
        token: server.admin_token().to_owned(),
    };
    let mut agent = start_agent(binary, &server, &stella, work_dir.path(), "ecs").await?;
    let http = reqwest::Client::new();
    let result = async {
        stella
            .run(&["env", "create", "bench", "--allow-unscanned"])
            .await?;
        for (name, value) in [
            ("aws_id", stella_tests::moto::ACCESS_KEY_ID),
            ("aws_key", stella_tests::moto::SECRET_ACCESS_KEY),
        ] {
            let response = http
                .put(format!(
                    "{}/api/v1/environments/bench/secrets/{name}",
                    server.api_url()
                ))
                .bearer_auth(server.admin_token())
                .json(&json!({ "value": value }))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("setting secret {name} answered {}", response.status());
            }
        }
        let settings = BTreeMap::from([
            ("region", stella_tests::moto::REGION.to_owned()),
            ("cluster", "bench".to_owned()),
            ("service", "through-stella".to_owned()),
            ("endpoint_url", double.url.clone()),
            ("access_key_secret", "${secret.aws_id}".to_owned()),
            ("secret_key_secret", "${secret.aws_key}".to_owned()),
            ("poll_interval_ms", POLL_MS.to_string()),
        ]);
        let response = http
            .post(format!("{}/api/v1/targets", server.api_url()))
            .bearer_auth(server.admin_token())
            .json(&json!({"name": "bench-ecs", "environment": "bench", "kind": "ecs",
                          "agent": "bench-agent", "settings": settings}))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "creating the target answered {}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        for (version, image) in [("1", &v1), ("2", &v2)] {
            stella
                .run(&[
                    "release",
                    "create",
                    "api",
                    version,
                    "--component",
                    &format!("api={image}"),
                ])
                .await?;
        }

        step("stella promote --wait versus the bare ECS API calls");
        let mut through_stella = Vec::new();
        let mut bare = Vec::new();
        // Round 0 warms up both sides (the agent's client, the connection pools).
        for round in 0..=args.rounds {
            let (version, image) = if round % 2 == 0 { ("1", &v1) } else { ("2", &v2) };
            let started = Instant::now();
            stella
                .run(&["promote", &format!("api@{version}"), "--to", "bench", "--wait"])
                .await?;
            let stella_seconds = started.elapsed().as_secs_f64();
            let started = Instant::now();
            bare_deploy(&ecs, "bare", image, version).await?;
            let bare_seconds = started.elapsed().as_secs_f64();
            if round == 0 {
                continue;
            }
            println!(
                "round {round}: stella promote --wait {stella_seconds:.3} s, bare API calls {bare_seconds:.3} s"
            );
            through_stella.push(stella_seconds);
            bare.push(bare_seconds);
        }
        let stella_median = median(&mut through_stella);
        let bare_median = median(&mut bare);
        let ratio = stella_median / bare_median;
        println!();
        println!("rounds                              {}", args.rounds);
        println!("rollout in the double               {ROLLOUT_POLLS} DescribeServices, polled every {POLL_MS} ms by both");
        println!("median stella promote --wait (ecs)  {stella_median:.3} s");
        println!("median bare ECS API calls           {bare_median:.3} s");
        println!("ratio                               {ratio:.2}");
        println!(
            "BENCH_JSON {}",
            json!({"bench": "deploy_ecs", "rounds": args.rounds, "poll_ms": POLL_MS,
                   "rollout_polls": ROLLOUT_POLLS, "stella_median_seconds": stella_median,
                   "bare_api_median_seconds": bare_median, "ratio": ratio})
        );
        anyhow::Ok(())
    }
    .await;
    let _ = agent.kill().await;
    server.stop().await;
    result
}
