//! `cargo xtask bench deploy --kind compose`: a new version of a two-service Compose
//! project deployed through Stella (`stella promote --wait` against a warm agent, which
//! writes the lock, `up -d`s it and waits until every service is healthy) versus by
//! hand, with the very lock Stella just wrote: `docker compose -p P -f LOCK up -d --wait`
//! in a second project, and `up -d` followed by polling `docker inspect` for the health
//! states every 20 ms in a third. Same run, alternating, several rounds; each replaces
//! the `web` service's container with the other version and counts until every service
//! is healthy (the Compose health check runs every second on every side).
//!
//! Everything is real and local: a Debian `docker-registry`, busybox web images built
//! with `docker import`, Compose v2+ (`docker compose`), the release `stella` binary as
//! server and agent.

use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use stella_tests::compose::{two_service_file, ComposeGeneration};
use stella_tests::images::WebImages;
use stella_tests::registry::TestRegistry;

use super::deploy::{docker, median, start_agent, uuid_like, DeployArgs, Stella};
use super::server::ServerProcess;
use crate::cargo::step;

/// The lock's file name (the compose crate's `LOCK_FILE`; xtask does not depend on it).
const LOCK_FILE: &str = "compose.stella.lock.yml";

/// Runs the bench and prints medians and the ratio.
pub fn run(args: &DeployArgs) -> anyhow::Result<()> {
    let (binary, runtime) = super::deploy::server_and_runtime(args)?;
    runtime.block_on(bench(args, &binary))
}

async fn bench(args: &DeployArgs, binary: &std::path::Path) -> anyhow::Result<()> {
    ComposeGeneration::V2.require().await?;
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-compose-")
        .tempdir()
        .context("cannot create a temp dir")?;
    step("registry and images");
    let registry = TestRegistry::start().await?;
    let suffix = uuid_like();
    let images = WebImages::new(
        &registry.host(),
        &format!("stella-bench/compose-{suffix}"),
        &registry.docker_config(),
    );
    let v1 = images.publish("v1", true).await?;
    let v2 = images.publish("v2", true).await?;
    images.publish("side", true).await?;
    let app = work_dir.path().join("app");
    std::fs::create_dir_all(&app)?;
    let compose_file = app.join("compose.yml");
    std::fs::write(&compose_file, two_service_file(images.repository(), "v1"))?;

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
    let mut agent = start_agent(binary, &server, &stella, work_dir.path(), "compose").await?;
    let target = format!("bench-{suffix}");
    let direct = format!("bench-direct-{suffix}");
    let polled = format!("bench-polled-{suffix}");
    stella
        .run(&["env", "create", "bench", "--allow-unscanned"])
        .await?;
    let compose_setting = format!("compose_file={}", compose_file.display());
    let sticker_setting = format!("sticker_dir={}", work_dir.path().join("stickers").display());
    stella
        .run(&[
            "target",
            "create",
            &target,
            "--env",
            "bench",
            "--kind",
            "compose",
            "--agent",
            "bench-agent",
            "--set",
            &compose_setting,
            "--set",
            "compose_version=v2",
            "--set",
            &sticker_setting,
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
    let lock = app.join(LOCK_FILE);
    let direct_lock = app.join("direct.lock.yml");

    let result = async {
        // Warm-up: the agent pulls both digests, which the direct side then finds too.
        stella.run(&["promote", "web@1", "--to", "bench", "--wait"]).await?;
        stella.run(&["promote", "web@2", "--to", "bench", "--wait"]).await?;
        let mut through_stella = Vec::new();
        let mut by_hand = Vec::new();
        let mut by_hand_polled = Vec::new();
        for round in 0..=args.rounds {
            let version = if round % 2 == 0 { "1" } else { "2" };

            let started = Instant::now();
            stella
                .run(&["promote", &format!("web@{version}"), "--to", "bench", "--wait"])
                .await?;
            let stella_seconds = started.elapsed().as_secs_f64();

            // The same pinned lock, next to the operator's file, in another project.
            std::fs::copy(&lock, &direct_lock)?;
            let started = Instant::now();
            ComposeGeneration::V2
                .run(&direct, &direct_lock, &["up", "-d", "--wait", "--remove-orphans"])
                .await?;
            let hand_seconds = started.elapsed().as_secs_f64();

            // The same again in a third project, `up -d` then polling the health states.
            let started = Instant::now();
            ComposeGeneration::V2
                .run(&polled, &direct_lock, &["up", "-d", "--remove-orphans"])
                .await?;
            wait_all_healthy(&polled, 2).await?;
            let polled_seconds = started.elapsed().as_secs_f64();

            if round == 0 {
                continue; // warm-up of this loop's paths
            }
            println!(
                "round {round}: stella promote --wait {stella_seconds:.3} s, docker compose up -d --wait {hand_seconds:.3} s, up -d + polling {polled_seconds:.3} s"
            );
            through_stella.push(stella_seconds);
            by_hand.push(hand_seconds);
            by_hand_polled.push(polled_seconds);
        }
        let stella_median = median(&mut through_stella);
        let hand_median = median(&mut by_hand);
        let polled_median = median(&mut by_hand_polled);
        let ratio = stella_median / hand_median;
        let ratio_polled = stella_median / polled_median;
        println!();
        println!("rounds                                {}", args.rounds);
        println!("median stella promote --wait          {stella_median:.3} s (lock written, up -d, every service healthy)");
        println!("median docker compose up -d --wait    {hand_median:.3} s (the same lock, every service healthy)");
        println!("median docker compose up -d + polling {polled_median:.3} s (the same lock, health polled every 20 ms)");
        println!("ratio to up -d --wait                 {ratio:.2} (target <= 1.3)");
        println!("ratio to up -d + polling              {ratio_polled:.2} (target <= 1.3)");
        println!(
            "BENCH_JSON {}",
            json!({"bench": "deploy-compose", "rounds": args.rounds,
                   "stella_median_seconds": stella_median,
                   "compose_up_wait_median_seconds": hand_median,
                   "compose_up_polled_median_seconds": polled_median,
                   "ratio_to_up_wait": ratio, "ratio_to_up_polled": ratio_polled})
        );
        anyhow::Ok(())
    }
    .await;
    for project in [&target, &direct, &polled] {
        let filter = format!("label=com.docker.compose.project={project}");
        let ids = docker(&["ps", "-aq", "--filter", &filter])
            .await
            .unwrap_or_default();
        for id in ids.split_whitespace() {
            let _ = docker(&["rm", "-f", id]).await;
        }
        let networks = docker(&["network", "ls", "-q", "--filter", &filter])
            .await
            .unwrap_or_default();
        for id in networks.split_whitespace() {
            let _ = docker(&["network", "rm", id]).await;
        }
    }
    // Compose pulled the `side` tag, which `WebImages` does not know of.
    let local = docker(&["images", "-q", images.repository()])
        .await
        .unwrap_or_default();
    for id in local.split_whitespace() {
        let _ = docker(&["rmi", "-f", id]).await;
    }
    let _ = agent.kill().await;
    server.stop().await;
    result
}

/// Polls `docker inspect` every 20 ms until the project's `count` running containers all
/// report `healthy` (at most 60 s).
async fn wait_all_healthy(project: &str, count: usize) -> anyhow::Result<()> {
    let filter = format!("label=com.docker.compose.project={project}");
    let ids = docker(&["ps", "-q", "--filter", &filter]).await?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.len() != count {
        anyhow::bail!(
            "project {project} runs {} containers, not {count}",
            ids.len()
        );
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let mut args = vec!["inspect", "--format", "{{.State.Health.Status}}"];
    args.extend(&ids);
    loop {
        let states = docker(&args).await?;
        if states.lines().filter(|s| s.trim() == "healthy").count() == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("project {project} was not healthy within 60 s: {states}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
