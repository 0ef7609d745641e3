//! `cargo xtask bench deploy --kind nomad`: a new version of a Nomad job deployed
//! through Stella (`stella promote --wait` against a warm agent, which reads the job,
//! pins the image, writes the stickers into its `Meta`, registers it and follows the
//! evaluation and the deployment with blocking queries) versus the bare Nomad API calls
//! doing the same to a second job: `GET /v1/job/:id`, the image replaced, `PUT
//! /v1/jobs`, then `GET /v1/job/:id/deployment` as a blocking query until the new
//! version's deployment is `successful`. Same run, alternating, several rounds.
//!
//! No Nomad binary can be had here: both sides talk to the Nomad API double of the test
//! harness (`stella_tests::doubles::nomad`), in this process, whose deployments succeed
//! `--nomad-rollout-ms` (100) after the registration. A real registry holds the images (the server resolves
//! release digests); the release `stella` binary runs the server and the agent.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use stella_tests::doubles::nomad::{example_job, NomadDouble, Outcome};
use stella_tests::images::WebImages;
use stella_tests::registry::TestRegistry;

use super::deploy::{median, start_agent, uuid_like, DeployArgs, Stella};
use super::server::ServerProcess;
use crate::cargo::step;

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    let (binary, runtime) = super::deploy::server_and_runtime(args)?;
    runtime.block_on(bench(args, &binary))
}

/// The bare API calls: read the job, pin `image`, register it, follow the deployment
/// of the new version with blocking queries until it is successful.
async fn bare_deploy(
    http: &reqwest::Client,
    address: &str,
    job_id: &str,
    image: &str,
) -> anyhow::Result<()> {
    let job_url = format!("{address}/v1/job/{job_id}");
    let mut job: Value = http
        .get(&job_url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    job["TaskGroups"][0]["Tasks"][0]["Config"]["image"] = json!(image);
    let modify_index = job["JobModifyIndex"].clone();
    http.put(format!("{address}/v1/jobs"))
        .json(&json!({"Job": job, "EnforceIndex": true, "JobModifyIndex": modify_index}))
        .send()
        .await?
        .error_for_status()?;
    let version = http
        .get(&job_url)
        .send()
        .await?
        .error_for_status()?
        .json::<Value>()
        .await?["Version"]
        .as_u64()
        .context("no Version")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut index = 0u64;
    loop {
        let response = http
            .get(format!("{job_url}/deployment"))
            .query(&[("index", index.to_string()), ("wait", "5s".to_owned())])
            .send()
            .await?
            .error_for_status()?;
        index = response
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(index);
        let deployment: Value = response.json().await?;
        if deployment["JobVersion"] == version {
            match deployment["Status"].as_str() {
                Some("successful") => return Ok(()),
                Some("failed" | "cancelled") => bail!("deployment {deployment}"),
                _ => {}
            }
        }
        if Instant::now() > deadline {
            bail!("the deployment of {job_id} version {version} did not finish in 30 s");
        }
    }
}

async fn bench(args: &DeployArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-nomad-")
        .tempdir()
        .context("cannot create a temp dir")?;
    step("registry, images and the Nomad API double");
    let registry = TestRegistry::start().await?;
    let suffix = uuid_like();
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-bench/nomad-{suffix}"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let v2 = images.publish("v2", true).await?;
    let rollout = Duration::from_millis(args.nomad_rollout_ms);
    let nomad = NomadDouble::start().await?;
    nomad.set_default(Outcome::Succeed { after: rollout });
    let job = format!("bench-{suffix}");
    let direct = format!("bench-direct-{suffix}");
    nomad.register(example_job(&job, &[("web", 2, &["web"])]))?;
    nomad.register(example_job(&direct, &[("web", 2, &["web"])]))?;

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
    let mut agent = start_agent(binary, &server, &stella, work_dir.path(), "nomad").await?;
    stella
        .run(&["env", "create", "bench", "--allow-unscanned"])
        .await?;
    let address = format!("address={}", nomad.address);
    let job_setting = format!("job={job}");
    stella
        .run(&[
            "target",
            "create",
            &job,
            "--env",
            "bench",
            "--kind",
            "nomad",
            "--agent",
            "bench-agent",
            "--set",
            &address,
            "--set",
            &job_setting,
        ])
        .await?;
    for (version, image) in [("1", &v1), ("2", &v2)] {
        stella
            .run(&[
                "release",
                "create",
                "web",
                version,
                "--component",
                &format!("web={image}"),
            ])
            .await?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    let result = async {
        stella.run(&["promote", "web@1", "--to", "bench", "--wait"]).await?;
        stella.run(&["promote", "web@2", "--to", "bench", "--wait"]).await?;
        let mut through_stella = Vec::new();
        let mut bare = Vec::new();
        for round in 0..=args.rounds {
            let (version, image) = if round % 2 == 0 { ("1", &v1) } else { ("2", &v2) };

            let started = Instant::now();
            stella
                .run(&["promote", &format!("web@{version}"), "--to", "bench", "--wait"])
                .await?;
            let stella_seconds = started.elapsed().as_secs_f64();

            let started = Instant::now();
            bare_deploy(&http, &nomad.address, &direct, image).await?;
            let bare_seconds = started.elapsed().as_secs_f64();

            if round == 0 {
                continue; // warm-up of this loop's paths
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
        println!("rounds                        {}", args.rounds);
        println!("nomad deployment (double)     {:.3} s", rollout.as_secs_f64());
        println!("median stella promote --wait  {stella_median:.3} s (job read, pinned, stickers, registered, deployment followed)");
        println!("median bare API calls         {bare_median:.3} s (GET job, PUT /v1/jobs, blocking GET deployment until successful)");
        println!("ratio                         {ratio:.2}");
        println!(
            "BENCH_JSON {}",
            json!({"bench": "deploy-nomad", "rounds": args.rounds,
                   "rollout_seconds": rollout.as_secs_f64(),
                   "stella_median_seconds": stella_median,
                   "bare_api_median_seconds": bare_median, "ratio": ratio})
        );
        anyhow::Ok(())
    }
    .await;
    let _ = agent.kill().await;
    server.stop().await;
    result
}
