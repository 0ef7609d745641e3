//! `cargo xtask bench deploy`: one container deployed through Stella (`stella promote
//! --wait` against a warm agent) versus `docker run` of the same digest, in the same run,
//! alternating, several rounds. Both count until the container answers its health URL,
//! so both measure "deployed and serving".
//!
//! Each Stella round replaces the running version (blue/green: the old container is
//! stopped and removed inside the measured time). The direct side is measured two ways:
//! `docker run` alone (the previous container removed before the clock starts), and the
//! like-for-like replacement `docker rm -f OLD && docker run NEW`.
//!
//! Everything is real and local: a Debian `docker-registry`, a busybox web image built
//! with `docker import`, the release `stella` binary as server and agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use stella_tests::images::WebImages;
use stella_tests::registry::TestRegistry;

use super::server::ServerProcess;
use crate::cargo::step;

/// Flags of `cargo xtask bench deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The target kind deployed: `docker` (one container), `compose` (a Compose project,
    /// against `docker compose up -d` of the same pinned file), `ssh` (a container on
    /// a host driven over SSH, against `ssh host docker run …`), `nomad` (a job on the
    /// Nomad API double, against the bare API calls), `winrm` (a script on a Windows host
    /// over WS-Management — the test double — against the bare calls) or `ecs` (an ECS
    /// service of the ECS double, against the bare API calls).
    #[arg(long, value_enum, default_value_t = DeployKind::Docker)]
    pub kind: DeployKind,
    /// Measured rounds of each method (after one warm-up round each).
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Use this `stella` binary instead of building `target/release/stella`.
    #[arg(long)]
    pub server_binary: Option<PathBuf>,
    /// Skip the release build.
    #[arg(long)]
    pub no_build: bool,
    /// `--kind ssh`: the remote user, for Stella and by hand alike. By default a user
    /// `stella-deploy` in the docker group whose shell is `/bin/sh` (made if absent):
    /// every remote command pays the user's shell start-up, and root's `~/.bashrc` here
    /// is slow.
    #[arg(long, default_value = "stella-deploy")]
    pub ssh_user: String,
    /// `--kind nomad`: how long the Nomad API double's deployments take, in ms.
    #[arg(long, default_value_t = 100)]
    pub nomad_rollout_ms: u64,
}

/// The kinds `cargo xtask bench deploy` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeployKind {
    /// One container on the local engine.
    Docker,
    /// A Compose project.
    Compose,
    /// A container on a host reached over SSH.
    Ssh,
    /// A job on the Nomad API double.
    Nomad,
    /// A deploy script on a Windows host over WS-Management.
    Winrm,
    /// An ECS service (against the ECS double), versus the bare API calls.
    Ecs,
}

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    match args.kind {
        DeployKind::Docker => {}
        DeployKind::Compose => return super::deploy_compose::run(args),
        DeployKind::Ssh => return super::deploy_ssh::run(args),
        DeployKind::Nomad => return super::deploy_nomad::run(args),
        DeployKind::Winrm => return super::deploy_winrm::run(args),
        DeployKind::Ecs => return super::deploy_ecs::run(args),
    }
    let (binary, runtime) = super::deploy::server_and_runtime(args)?;
    runtime.block_on(bench(args, &binary))
}

/// The `stella` CLI aimed at the bench's server.
pub(super) struct Stella<'a> {
    pub(super) binary: &'a Path,
    pub(super) api_url: String,
    pub(super) token: String,
}

impl Stella<'_> {
    /// Runs `stella ARGS…`; returns stdout, or fails with stderr.
    pub(super) async fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new(self.binary)
            .args(args)
            .env("STELLA_SERVER", &self.api_url)
            .env("STELLA_TOKEN", &self.token)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "stella {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Runs `docker ARGS…`; returns stdout (trimmed), or fails with stderr.
pub(super) async fn docker(args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .context("running docker")?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Polls `http://IP:8080/health` of a container until it answers 200.
pub(super) async fn wait_serving(http: &reqwest::Client, container: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut url = None;
    loop {
        if url.is_none() {
            let ip = docker(&[
                "inspect",
                "--format",
                "{{.NetworkSettings.IPAddress}}",
                container,
            ])
            .await?;
            if !ip.is_empty() {
                url = Some(format!("http://{ip}:8080/health"));
            }
        }
        if let Some(url) = &url {
            if http
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{container} did not serve within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The median of the samples (sorts them).
pub(super) fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    }
}

async fn bench(args: &DeployArgs, binary: &Path) -> anyhow::Result<()> {
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-deploy-")
        .tempdir()
        .context("cannot create a temp dir")?;
    step("registry and images");
    let registry = TestRegistry::start().await?;
    let suffix = &uuid_like();
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-bench/web-{suffix}"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let v2 = images.publish("v2", true).await?;

    step("server and agent");
    let server = ServerProcess::start(
        binary,
        work_dir.path(),
        // The bench client speaks plain HTTP to the loopback API (the server serves TLS
        // by default since the API got its own CA).
        "heartbeat_interval_seconds = 5\napi_plain_http = true\n",
        None,
    )
    .await?;
    let stella = Stella {
        binary,
        api_url: server.api_url().to_owned(),
        token: server.admin_token().to_owned(),
    };
    let mut agent = start_agent(binary, &server, &stella, work_dir.path(), "docker").await?;
    let target = format!("bench-{suffix}");
    let direct = format!("bench-direct-{suffix}");
    stella
        .run(&["env", "create", "bench", "--allow-unscanned"])
        .await?;
    stella
        .run(&[
            "target",
            "create",
            &target,
            "--env",
            "bench",
            "--kind",
            "docker",
            "--agent",
            "bench-agent",
            "--set",
            "health_url=http://{ip}:8080/health",
        ])
        .await?;
    stella
        .run(&[
            "release",
            "create",
            "web",
            "1",
            "--component",
            &format!("web={v1}"),
        ])
        .await?;
    stella
        .run(&[
            "release",
            "create",
            "web",
            "2",
            "--component",
            &format!("web={v2}"),
        ])
        .await?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let result = async {
        // Warm-up: the agent pulls both digests; docker run has them locally too.
        stella.run(&["promote", "web@1", "--to", "bench", "--wait"]).await?;
        stella.run(&["promote", "web@2", "--to", "bench", "--wait"]).await?;
        let mut through_stella = Vec::new();
        let mut direct_run = Vec::new();
        let mut direct_replace = Vec::new();
        for round in 0..=args.rounds {
            let version = if round % 2 == 0 { "1" } else { "2" };
            let image = if round % 2 == 0 { &v1 } else { &v2 };

            let started = Instant::now();
            stella.run(&["promote", &format!("web@{version}"), "--to", "bench", "--wait"]).await?;
            let stella_seconds = started.elapsed().as_secs_f64();

            // Replacing the previous direct container, timed in two parts.
            let started = Instant::now();
            let _ = docker(&["rm", "-f", &direct]).await;
            let remove_seconds = started.elapsed().as_secs_f64();
            let started = Instant::now();
            docker(&["run", "-d", "--name", &direct, image]).await?;
            wait_serving(&http, &direct).await?;
            let run_seconds = started.elapsed().as_secs_f64();

            if round == 0 {
                continue; // warm-up of this loop's paths
            }
            println!(
                "round {round}: stella promote --wait {stella_seconds:.3} s, docker run {run_seconds:.3} s, docker rm -f + run {:.3} s",
                remove_seconds + run_seconds
            );
            through_stella.push(stella_seconds);
            direct_run.push(run_seconds);
            direct_replace.push(remove_seconds + run_seconds);
        }
        let stella_median = median(&mut through_stella);
        let run_median = median(&mut direct_run);
        let replace_median = median(&mut direct_replace);
        let ratio_run = stella_median / run_median;
        let ratio_replace = stella_median / replace_median;
        println!();
        println!("rounds                              {}", args.rounds);
        println!("median stella promote --wait        {stella_median:.3} s (replaces the running version, no gap)");
        println!("median docker run + serving         {run_median:.3} s (nothing to replace)");
        println!("median docker rm -f + run + serving {replace_median:.3} s (replaces it, with a gap)");
        println!("ratio to docker run                 {ratio_run:.2}");
        println!("ratio to docker rm -f + run         {ratio_replace:.2} (like for like; target <= 1.5)");
        println!(
            "BENCH_JSON {}",
            json!({"bench": "deploy", "rounds": args.rounds, "stella_median_seconds": stella_median,
                   "docker_run_median_seconds": run_median, "docker_replace_median_seconds": replace_median,
                   "ratio_to_docker_run": ratio_run, "ratio_to_docker_replace": ratio_replace})
        );
        anyhow::Ok(())
    }
    .await;
    let _ = docker(&["rm", "-f", &direct]).await;
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=ops.stella.target={target}"),
    ])
    .await
    .unwrap_or_default();
    for id in ids.split_whitespace() {
        let _ = docker(&["rm", "-f", id]).await;
    }
    let _ = agent.kill().await;
    server.stop().await;
    result
}

/// Starts `stella agent run` as `bench-agent` (log in `<work_dir>/agent.log`, data dir
/// `<work_dir>/agent`) and waits until it is connected with `capability`.
pub(super) async fn start_agent(
    binary: &Path,
    server: &ServerProcess,
    stella: &Stella<'_>,
    work_dir: &Path,
    capability: &str,
) -> anyhow::Result<tokio::process::Child> {
    let token = server.create_join_token(600).await?;
    let agent_log = std::fs::File::create(work_dir.join("agent.log"))?;
    let agent = tokio::process::Command::new(binary)
        .args([
            "agent",
            "run",
            "--server",
            server.api_url(),
            "--name",
            "bench-agent",
            "--join-token",
            &token,
        ])
        .arg("--data-dir")
        .arg(work_dir.join("agent"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(agent_log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the agent")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = stella
            .run(&["agents", "show", "bench-agent", "-o", "json"])
            .await
            .ok();
        let agent_json: Option<Value> = shown.and_then(|s| serde_json::from_str(&s).ok());
        if agent_json.is_some_and(|a| {
            a["state"] == "connected"
                && a["capabilities"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|k| k == capability))
        }) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the agent did not connect with the {capability} capability; see {}",
                work_dir.join("agent.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(agent)
}

/// Eight random lowercase letters.
pub(super) fn uuid_like() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| char::from(b'a' + rng.gen_range(0..26)))
        .collect()
}

/// The `stella` binary a deploy bench runs (`--server-binary`, else the release build,
/// built unless `--no-build`) and the runtime it runs in.
pub(super) fn server_and_runtime(
    args: &DeployArgs,
) -> anyhow::Result<(std::path::PathBuf, tokio::runtime::Runtime)> {
    let binary = match &args.server_binary {
        Some(path) => path.clone(),
        None => super::server::server_binary(args.no_build)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    Ok((binary, runtime))
}
