//! The `ssh` target against a real OpenSSH server on loopback (whose host runs the
//! containers on the real Docker engine) and a real registry: deploys, start-first and
//! stop-first upgrades, host-key pinning, refused keys, remote failures that leave the
//! old container running, a connection cut mid-deploy, drift from an edited remote
//! sticker, script mode as a user without docker, keys from secrets, and one release
//! through a real control plane and agent.
//!
//! Every test has its own sshd, registry, repository and target name, and removes its
//! containers on drop, so the tests run in parallel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use stella_agent_core::{
    ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, DriftKind, Plan, Progress,
    RegistryCredential, Sticker, Target, TargetSpec,
};
use stella_target_ssh::{fetch_host_key, SshTarget};
use stella_tests::images::{
    docker_cli, ContainerCleanup, WebImageOptions, WebImages, WEB_HEALTH_CMD,
};
use stella_tests::registry::TestRegistry;
use stella_tests::sshd::{ensure_nodocker_user, keygen, owned_dir, TestSshd, NODOCKER_USER};
use stella_tests::{free_port, init_tracing, wait_until, TestAgent, TestServer};

/// One test's world. Fields drop in order: containers first, then images, registry, sshd.
struct World {
    _cleanup: ContainerCleanup,
    images: WebImages,
    registry: TestRegistry,
    target: Arc<SshTarget>,
    /// Target name, unique to the test.
    name: String,
    sshd: TestSshd,
}

fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

impl World {
    async fn new(prefix: &str) -> anyhow::Result<World> {
        Self::with_registry(prefix, TestRegistry::start().await?).await
    }

    async fn with_registry(prefix: &str, registry: TestRegistry) -> anyhow::Result<World> {
        init_tracing();
        let name = format!("{prefix}-{}", suffix());
        let images = WebImages::new(
            &registry.host(),
            &format!("stella-test/{name}"),
            &registry.docker_config(),
        );
        Ok(World {
            _cleanup: ContainerCleanup::new([name.clone()]),
            images,
            registry,
            target: Arc::new(SshTarget::new()),
            name,
            sshd: TestSshd::start().await?,
        })
    }

    fn sticker_dir(&self) -> std::path::PathBuf {
        self.sshd.dir().join("stickers")
    }

    /// Connection settings for root (who may run docker) with the authorized key.
    fn connection(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("host".to_owned(), "127.0.0.1".to_owned()),
            ("port".to_owned(), self.sshd.port.to_string()),
            ("user".to_owned(), "root".to_owned()),
            (
                "key_file".to_owned(),
                self.sshd.client_key.display().to_string(),
            ),
            ("host_key".to_owned(), self.sshd.fingerprint.clone()),
            (
                "sticker_dir".to_owned(),
                self.sticker_dir().display().to_string(),
            ),
            ("connect_timeout_seconds".to_owned(), "5".to_owned()),
        ])
    }

    /// Docker mode with the web image's health check.
    fn settings(&self) -> BTreeMap<String, String> {
        let mut settings = self.connection();
        settings.insert("health_cmd".to_owned(), WEB_HEALTH_CMD.to_owned());
        settings.insert("health_timeout_seconds".to_owned(), "30".to_owned());
        settings
    }

    fn task(&self, version: &str, image: &str, settings: BTreeMap<String, String>) -> DeployTask {
        DeployTask {
            deployment_id: format!("dep-{version}-{}", suffix()),
            decision_id: format!("sha256:{}", "d".repeat(64)),
            environment: "test".to_owned(),
            release: "shop".to_owned(),
            version: version.to_owned(),
            target: TargetSpec {
                name: self.name.clone(),
                kind: "ssh".to_owned(),
                settings,
            },
            components: vec![ComponentSpec {
                name: "web".to_owned(),
                image: image.to_owned(),
            }],
            registry_auth: Vec::new(),
            generation: 0,
            secrets: Default::default(),
        }
    }

    fn container_name(&self) -> String {
        format!("{}-web", self.name)
    }

    fn sticker_file(&self) -> std::path::PathBuf {
        self.sticker_dir().join(&self.name).join("web.json")
    }

    /// The outcome (or the error chain) and the progress lines, failed or not.
    async fn apply(&self, task: &DeployTask) -> (Result<ApplyOutcome, String>, Vec<String>) {
        apply_on(&self.target, task).await
    }

    async fn apply_ok(&self, task: &DeployTask) -> anyhow::Result<(ApplyOutcome, Vec<String>)> {
        let (result, lines) = self.apply(task).await;
        match result {
            Ok(outcome) => Ok((outcome, lines)),
            Err(error) => anyhow::bail!("apply failed: {error}\n{lines:#?}"),
        }
    }

    /// `docker inspect` of the target's containers: (name, running, id, labels).
    async fn containers(&self) -> anyhow::Result<Vec<Value>> {
        let ids = docker_cli(
            &[
                "ps",
                "-aq",
                "--filter",
                &format!("label=ops.stella.target={}", self.name),
            ],
            None,
            None,
        )
        .await?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = vec!["inspect"];
        args.extend(ids);
        let inspected: Value = serde_json::from_str(&docker_cli(&args, None, None).await?)?;
        Ok(inspected.as_array().cloned().unwrap_or_default())
    }

    /// The one container; fails unless there is exactly one and it runs.
    async fn only_container(&self) -> anyhow::Result<Value> {
        let containers = self.containers().await?;
        let names: Vec<&Value> = containers.iter().map(|c| &c["Name"]).collect();
        anyhow::ensure!(
            containers.len() == 1,
            "expected one container, found {names:?}"
        );
        let container = containers.into_iter().next().context("one")?;
        anyhow::ensure!(
            container["State"]["Running"] == true,
            "not running: {}",
            container["Name"]
        );
        Ok(container)
    }

    /// What a container serves on its bridge address.
    async fn served_version(&self, container: &Value) -> anyhow::Result<String> {
        let ip = container["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
            .as_str()
            .context("no bridge address")?;
        let response = reqwest::Client::new()
            .get(format!("http://{ip}:8080/"))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.text().await?)
    }
}

async fn apply_on(
    target: &SshTarget,
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

fn digest_of(image: &str) -> &str {
    image.split_once('@').map_or("", |(_, digest)| digest)
}

#[tokio::test]
async fn deploys_over_ssh_with_labels_and_a_remote_sticker_then_upgrades_start_first(
) -> anyhow::Result<()> {
    let world = World::new("ssh-deploy").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());

    let (outcome, lines) = world.apply_ok(&task).await?;
    assert!(lines.iter().any(|l| l.contains("pulling")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("connecting to 127.0.0.1:")),
        "{lines:#?}"
    );
    let sticker = outcome.stickers.first().context("a sticker")?.clone();
    assert!(sticker.verify());
    assert_eq!(sticker.image, v1);
    let container = world.only_container().await?;
    assert_eq!(container["Name"], format!("/{}", world.container_name()));
    let labels = &container["Config"]["Labels"];
    assert_eq!(labels["ops.stella.target"], world.name.as_str());
    assert_eq!(labels["ops.stella.version"], "1.0.0");
    assert_eq!(labels["ops.stella.digest"], digest_of(&v1));
    assert_eq!(labels["ops.stella.deployment"], task.deployment_id.as_str());
    assert_eq!(
        labels["ops.stella.sticker-digest"],
        sticker.sticker_digest.as_str()
    );
    assert_eq!(world.served_version(&container).await?, "v1");
    let file = std::fs::read(world.sticker_file())?;
    assert_eq!(String::from_utf8(file)?, sticker.to_canonical_json());
    assert_eq!(
        world.target.read_sticker(&task.target, "web").await?,
        Some(sticker.clone())
    );
    let observed = world.target.inspect(&task.target).await?;
    assert_eq!(observed.len(), 1);
    assert_eq!(observed[0].image_digest, digest_of(&v1));
    assert_eq!(
        observed[0].sticker_digest.as_deref(),
        Some(sticker.sticker_digest.as_str())
    );
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // The same task again changes nothing; a lost sticker file comes back.
    std::fs::remove_file(world.sticker_file())?;
    let (again, lines) = world.apply_ok(&task).await?;
    assert!(
        again.summary.contains("already up to date"),
        "{}",
        again.summary
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored the sticker file")),
        "{lines:#?}"
    );
    assert_eq!(world.only_container().await?["Id"], container["Id"]);
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
        sticker
    );

    // Start-first upgrade.
    let task_v2 = world.task("2.0.0", &v2, world.settings());
    let (upgraded, lines) = world.apply_ok(&task_v2).await?;
    assert!(
        upgraded.summary.contains("replaced start-first"),
        "{}",
        upgraded.summary
    );
    let started = lines.iter().position(|l| l.contains("-next is healthy"));
    let stopped = lines
        .iter()
        .position(|l| l.contains("stopping old container"));
    assert!(started.is_some() && started < stopped, "{lines:#?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v2");
    assert_eq!(world.target.detect_drift(&task_v2).await?, vec![]);
    // Every operation went over one connection, kept for the next.
    assert_eq!(world.target.open_connections(), 1);
    assert_eq!(world.sshd.session_count(), 1, "{}", world.sshd.log_text());
    Ok(())
}

#[tokio::test]
async fn stop_first_with_a_fixed_host_port_keeps_the_old_container_when_the_new_one_fails(
) -> anyhow::Result<()> {
    let world = World::new("ssh-stopfirst").await?;
    let v1 = world.images.publish("v1", true).await?;
    let broken = world.images.publish("broken", false).await?;
    let v2 = world.images.publish("v2", true).await?;
    let port = free_port().await?;
    let mut settings = world.settings();
    settings.insert("ports".into(), format!("127.0.0.1:{port}:8080"));
    settings.insert("health_timeout_seconds".into(), "4".into());
    world
        .apply_ok(&world.task("1.0.0", &v1, settings.clone()))
        .await?;
    let url = format!("http://127.0.0.1:{port}/");
    let get = || async {
        reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .text()
            .await
    };
    assert_eq!(get().await?, "v1");

    let (result, lines) = world
        .apply(&world.task("1.1.0", &broken, settings.clone()))
        .await;
    let error = result.expect_err("an unhealthy release fails");
    assert!(
        error.contains("did not become healthy within 4 s"),
        "{error}"
    );
    assert!(
        lines.iter().any(|l| l.contains("stopping old container")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("starting old container") && l.contains("again")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed:") && l.contains("healthy")),
        "{lines:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(container["Config"]["Labels"]["ops.stella.version"], "1.0.0");
    wait_until("v1 serves again", Duration::from_secs(10), || async {
        (get().await.ok()?.as_str() == "v1").then_some(())
    })
    .await?;

    let (outcome, _) = world.apply_ok(&world.task("2.0.0", &v2, settings)).await?;
    assert!(
        outcome.summary.contains("replaced stop-first"),
        "{}",
        outcome.summary
    );
    assert_eq!(get().await?, "v2");
    world.only_container().await?;
    Ok(())
}

#[tokio::test]
async fn a_failing_remote_command_is_reported_with_its_stderr_and_the_old_container_keeps_running(
) -> anyhow::Result<()> {
    let world = World::new("ssh-fail").await?;
    let v1 = world.images.publish("v1", true).await?;
    world
        .apply_ok(&world.task("1.0.0", &v1, world.settings()))
        .await?;
    let before = world.only_container().await?;

    let missing = world.images.missing();
    let (result, lines) = world
        .apply(&world.task("2.0.0", &missing, world.settings()))
        .await;
    let error = result.expect_err("a digest the registry lacks cannot be pulled");
    assert!(
        error.contains("docker pull") && error.contains("exit status"),
        "{error}"
    );
    // The remote docker's own words (e.g. `manifest unknown`) are in the log.
    let failed = lines
        .iter()
        .find(|l| l.starts_with("failed:"))
        .with_context(|| format!("no failure line in {lines:#?}"))?;
    assert!(
        failed.contains("docker pull") && failed.len() > "failed: docker pull".len() + 40,
        "{failed}"
    );
    assert!(
        failed.to_lowercase().contains("manifest") || failed.to_lowercase().contains("not found"),
        "{failed}"
    );
    let after = world.only_container().await?;
    assert_eq!(after["Id"], before["Id"]);
    assert_eq!(world.served_version(&after).await?, "v1");
    Ok(())
}

#[tokio::test]
async fn host_key_mismatch_is_refused_before_authenticating_naming_both_fingerprints(
) -> anyhow::Result<()> {
    let world = World::new("ssh-hostkey").await?;
    let other = world.sshd.dir().join("other_host_key");
    keygen(&other).await?;
    let pinned = stella_tests::sshd::fingerprint_of(&other.with_extension("pub")).await?;
    let mut settings = world.settings();
    settings.insert("host_key".into(), pinned.clone());
    let (result, lines) = world
        .apply(&world.task("1.0.0", &world.images.missing(), settings))
        .await;
    let error = result.expect_err("refused");
    assert!(error.contains("host key mismatch"), "{error}");
    assert!(
        error.contains(&pinned) && error.contains(&world.sshd.fingerprint),
        "{error}"
    );
    assert!(
        error.contains(&format!("127.0.0.1:{}", world.sshd.port)),
        "{error}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("reconnecting")),
        "not retried: {lines:#?}"
    );
    // Nothing was authenticated: sshd saw no accepted key.
    assert!(
        !world.sshd.log_text().contains("Accepted publickey"),
        "{}",
        world.sshd.log_text()
    );
    Ok(())
}

#[tokio::test]
async fn a_key_the_host_does_not_accept_is_refused_clearly() -> anyhow::Result<()> {
    let world = World::new("ssh-badkey").await?;
    let stranger = world.sshd.dir().join("stranger_key");
    keygen(&stranger).await?;
    let mut settings = world.settings();
    settings.insert("key_file".into(), stranger.display().to_string());
    let (result, _) = world
        .apply(&world.task("1.0.0", &world.images.missing(), settings.clone()))
        .await;
    let error = result.expect_err("refused");
    assert!(
        error.contains("the host refused the key for user root"),
        "{error}"
    );
    settings.insert("key_file".into(), "/nonexistent/key".into());
    let (result, _) = world
        .apply(&world.task("1.0.0", &world.images.missing(), settings))
        .await;
    let error = result.expect_err("refused");
    assert!(error.contains("cannot be read"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_connection_cut_during_the_health_wait_reconnects_and_completes_exactly_once(
) -> anyhow::Result<()> {
    let world = World::new("ssh-cut").await?;
    let slow = world
        .images
        .publish_with(
            "slow",
            &WebImageOptions {
                healthy: false,
                healthy_after_seconds: Some(3),
                healthcheck: None,
            },
        )
        .await?;
    let task = world.task("1.0.0", &slow, world.settings());
    let (progress, mut lines) = Progress::channel("agent-test", "cut");
    let target = world.target.clone();
    let running = {
        let task = task.clone();
        tokio::spawn(async move {
            target
                .apply(
                    &task,
                    &Plan::default(),
                    &progress,
                    &CancellationToken::new(),
                )
                .await
        })
    };
    let mut seen = Vec::new();
    let mut killed = 0;
    let mut next_id = None;
    while let Some(line) = lines.recv().await {
        if killed == 0 && line.contains("waiting up to") {
            let next = docker_cli(
                &[
                    "inspect",
                    "--format",
                    "{{.Id}}",
                    &format!("{}-next", world.container_name()),
                ],
                None,
                None,
            )
            .await?;
            next_id = Some(next.trim().to_owned());
            tokio::time::sleep(Duration::from_millis(300)).await;
            killed = world.sshd.kill_sessions();
        }
        seen.push(line);
    }
    let outcome = running.await?;
    assert!(killed >= 1, "a session was killed: {seen:#?}");
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{e}: {seen:#?}"))?;
    assert_eq!(outcome.stickers.len(), 1);
    assert!(
        seen.iter().any(|l| l.contains(&format!(
            "connection to 127.0.0.1:{} lost, reconnecting (attempt 1/3)",
            world.sshd.port
        ))),
        "{seen:#?}"
    );
    assert_eq!(
        seen.iter()
            .filter(|l| l.contains("creating container"))
            .count(),
        1,
        "created once: {seen:#?}"
    );
    assert_eq!(
        seen.iter().filter(|l| l.contains("pulling")).count(),
        1,
        "{seen:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(
        container["Id"].as_str(),
        next_id.as_deref(),
        "the container made before the cut"
    );
    assert_eq!(container["Name"], format!("/{}", world.container_name()));
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
        outcome.stickers[0]
    );
    Ok(())
}

#[tokio::test]
async fn drift_sees_a_hand_edited_remote_sticker_a_stopped_container_and_other_settings(
) -> anyhow::Result<()> {
    let world = World::new("ssh-drift").await?;
    let v1 = world.images.publish("v1", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());
    world.apply_ok(&task).await?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    let original = std::fs::read_to_string(world.sticker_file())?;
    std::fs::write(
        world.sticker_file(),
        original.replace("\"1.0.0\"", "\"9.9.9\""),
    )?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0].kind, DriftKind::StickerTampered);
    assert!(findings[0].detail.contains("edited"), "{findings:?}");
    std::fs::remove_file(world.sticker_file())?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(findings[0].kind, DriftKind::StickerTampered);
    assert!(
        findings[0].detail.contains("no sticker file"),
        "{findings:?}"
    );
    std::fs::write(world.sticker_file(), &original)?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    let mut changed = task.clone();
    changed
        .target
        .settings
        .insert("env.COLOUR".into(), "blue".into());
    let kinds: Vec<DriftKind> = world
        .target
        .detect_drift(&changed)
        .await?
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, vec![DriftKind::ConfigChanged]);

    docker_cli(&["stop", "-t", "1", &world.container_name()], None, None).await?;
    let kinds: Vec<DriftKind> = world
        .target
        .detect_drift(&task)
        .await?
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, vec![DriftKind::Missing]);
    Ok(())
}

/// A script-mode world as the user without docker: sticker dir and work dir are the
/// user's own.
struct ScriptHost {
    sshd: TestSshd,
    target: Arc<SshTarget>,
    name: String,
    work: std::path::PathBuf,
    stickers: std::path::PathBuf,
}

impl ScriptHost {
    async fn new(prefix: &str) -> anyhow::Result<ScriptHost> {
        init_tracing();
        let (uid, gid) = ensure_nodocker_user()?;
        let sshd = TestSshd::start().await?;
        let work = sshd.dir().join("work");
        let stickers = sshd.dir().join("stickers");
        owned_dir(&work, uid, gid)?;
        owned_dir(&stickers, uid, gid)?;
        Ok(ScriptHost {
            sshd,
            target: Arc::new(SshTarget::new()),
            name: format!("{prefix}-{}", suffix()),
            work,
            stickers,
        })
    }

    fn settings(&self, user: &str, script: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("host".to_owned(), "127.0.0.1".to_owned()),
            ("port".to_owned(), self.sshd.port.to_string()),
            ("user".to_owned(), user.to_owned()),
            (
                "key_file".to_owned(),
                self.sshd.client_key.display().to_string(),
            ),
            ("host_key".to_owned(), self.sshd.fingerprint.clone()),
            ("mode".to_owned(), "script".to_owned()),
            ("script".to_owned(), script.to_owned()),
            (
                "sticker_dir".to_owned(),
                self.stickers.display().to_string(),
            ),
        ])
    }

    fn task(&self, settings: BTreeMap<String, String>) -> DeployTask {
        DeployTask {
            deployment_id: format!("dep-{}", suffix()),
            decision_id: format!("sha256:{}", "e".repeat(64)),
            environment: "edge".to_owned(),
            release: "shop".to_owned(),
            version: "3.1.4".to_owned(),
            target: TargetSpec {
                name: self.name.clone(),
                kind: "ssh".to_owned(),
                settings,
            },
            components: vec![
                ComponentSpec {
                    name: "web-api".to_owned(),
                    image: format!("registry.example/shop/api@sha256:{}", "a".repeat(64)),
                },
                ComponentSpec {
                    name: "db".to_owned(),
                    image: format!("registry.example/shop/db@sha256:{}", "b".repeat(64)),
                },
            ],
            registry_auth: Vec::new(),
            generation: 0,
            secrets: Default::default(),
        }
    }
}

#[tokio::test]
async fn script_mode_as_a_user_without_docker_runs_once_per_deployment() -> anyhow::Result<()> {
    let host = ScriptHost::new("ssh-script").await?;
    let work = host.work.display().to_string();
    let script = format!(
        "cd {work} && echo run >> count && env | grep '^STELLA_' | sort > env.txt && id -un > user.txt \
         && (docker ps >/dev/null 2>&1 && echo docker-ok || echo no-docker) && echo \"deploying $STELLA_VERSION\""
    );
    let task = host.task(host.settings(NODOCKER_USER, &script));
    let (outcome, lines) = apply_on(&host.target, &task).await;
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    assert!(lines.iter().any(|l| l == "script: no-docker"), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "script: deploying 3.1.4"),
        "{lines:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(host.work.join("user.txt"))?.trim(),
        NODOCKER_USER
    );
    let env = std::fs::read_to_string(host.work.join("env.txt"))?;
    for expected in [
        "STELLA_RELEASE=shop".to_owned(),
        "STELLA_VERSION=3.1.4".to_owned(),
        "STELLA_ENVIRONMENT=edge".to_owned(),
        format!("STELLA_TARGET={}", host.name),
        format!("STELLA_DEPLOYMENT={}", task.deployment_id),
        "STELLA_COMPONENTS=web-api db".to_owned(),
        format!("STELLA_IMAGE_WEB_API={}", task.components[0].image),
        format!("STELLA_DIGEST_WEB_API=sha256:{}", "a".repeat(64)),
        format!("STELLA_IMAGE_DB={}", task.components[1].image),
        format!("STELLA_DIGEST_DB=sha256:{}", "b".repeat(64)),
    ] {
        assert!(env.lines().any(|l| l == expected), "{expected} in {env}");
    }
    assert_eq!(outcome.stickers.len(), 2);
    for sticker in &outcome.stickers {
        let path = host
            .stickers
            .join(&host.name)
            .join(format!("{}.json", sticker.component));
        assert_eq!(Sticker::from_json(&std::fs::read(&path)?)?, *sticker);
    }
    assert!(host
        .stickers
        .join(&host.name)
        .join(format!(".done-{}", task.deployment_id))
        .exists());
    assert_eq!(host.target.detect_drift(&task).await?, vec![]);

    // A re-delivery of the same deployment does not run the script again.
    let (again, lines) = apply_on(&host.target, &task).await;
    let again = again.map_err(anyhow::Error::msg)?;
    assert!(
        lines.iter().any(|l| l.contains("already ran")),
        "{lines:#?}"
    );
    assert_eq!(again.stickers, outcome.stickers);
    assert_eq!(std::fs::read_to_string(host.work.join("count"))?, "run\n");

    // A hand-edited sticker is drift; a missing one is `missing`.
    let db = host.stickers.join(&host.name).join("db.json");
    let text = std::fs::read_to_string(&db)?;
    std::fs::write(&db, text.replace("3.1.4", "3.1.5"))?;
    let findings = host.target.detect_drift(&task).await?;
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        (findings[0].component.as_str(), findings[0].kind),
        ("db", DriftKind::StickerTampered)
    );
    std::fs::remove_file(&db)?;
    let kinds: Vec<DriftKind> = host
        .target
        .detect_drift(&task)
        .await?
        .iter()
        .map(|f| f.kind)
        .collect();
    assert_eq!(kinds, vec![DriftKind::Missing]);

    // A failing script fails the deployment with its stderr, and is not marked done.
    let failing =
        host.task(host.settings(NODOCKER_USER, "echo starting; echo 'disk full' >&2; exit 3"));
    let (result, lines) = apply_on(&host.target, &failing).await;
    let error = result.expect_err("exit 3 fails");
    assert!(
        error.contains("exit status 3") && error.contains("disk full"),
        "{error}"
    );
    assert!(
        lines.iter().any(|l| l == "script (stderr): disk full"),
        "{lines:#?}"
    );
    assert!(!host
        .stickers
        .join(&host.name)
        .join(format!(".done-{}", failing.deployment_id))
        .exists());
    Ok(())
}

#[tokio::test]
async fn a_script_cut_off_mid_run_is_run_again_and_one_that_runs_too_long_fails(
) -> anyhow::Result<()> {
    let host = ScriptHost::new("ssh-rerun").await?;
    let work = host.work.display().to_string();
    let script =
        format!("cd {work} && echo run >> count && echo started && sleep 2 && echo finished");
    let task = host.task(host.settings(NODOCKER_USER, &script));
    let (progress, mut lines) = Progress::channel("agent-test", "rerun");
    let running = {
        let target = host.target.clone();
        let task = task.clone();
        tokio::spawn(async move {
            target
                .apply(
                    &task,
                    &Plan::default(),
                    &progress,
                    &CancellationToken::new(),
                )
                .await
        })
    };
    let mut seen = Vec::new();
    let mut killed = 0;
    while let Some(line) = lines.recv().await {
        if killed == 0 && line == "script: started" {
            killed = host.sshd.kill_sessions();
        }
        seen.push(line);
    }
    let outcome = running
        .await?
        .map_err(|e| anyhow::anyhow!("{e}: {seen:#?}"))?;
    assert!(killed >= 1, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("lost, reconnecting (attempt 1/3)")),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|l| l == "script: finished"), "{seen:#?}");
    // Interrupted while it ran: run again from the start (scripts must be idempotent).
    assert_eq!(
        std::fs::read_to_string(host.work.join("count"))?,
        "run\nrun\n"
    );
    assert_eq!(outcome.stickers.len(), 2);

    let mut settings = host.settings(NODOCKER_USER, "sleep 5");
    settings.insert("command_timeout_seconds".into(), "1".into());
    let started = std::time::Instant::now();
    let (result, lines) = apply_on(&host.target, &host.task(settings)).await;
    let error = result.expect_err("too long");
    assert!(error.contains("did not finish within 1 s"), "{error}");
    assert!(
        !lines.iter().any(|l| l.contains("reconnecting")),
        "not retried: {lines:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn registry_credentials_go_to_a_temporary_docker_config_on_the_host() -> anyhow::Result<()> {
    let password = "ssh-registry-s3cret-pw";
    let registry = TestRegistry::start_with_basic_auth("stella", password).await?;
    let world = World::with_registry("ssh-auth", registry).await?;
    let v1 = world.images.publish("v1", true).await?;
    let registry_host = world.registry.host();

    // Without credentials the host cannot pull; the registry's answer is in the error.
    let (result, _) = world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await;
    let error = result.expect_err("no credentials");
    assert!(error.contains("docker pull"), "{error}");
    assert!(error.to_lowercase().contains("auth"), "{error}");

    let mut task = world.task("1.0.0", &v1, world.settings());
    task.registry_auth = vec![RegistryCredential {
        registry: registry_host.clone(),
        username: "stella".to_owned(),
        password: password.to_owned(),
    }];
    let (outcome, lines) = world.apply_ok(&task).await?;
    assert!(lines.iter().any(|l| l.contains("pulling")), "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(password)), "{lines:#?}");
    assert!(!format!("{outcome:?}").contains(password));
    world.only_container().await?;
    // The login went to a temporary DOCKER_CONFIG, removed afterwards: neither the
    // user's own config nor any leftover temporary one knows the registry.
    let own = std::fs::read_to_string("/root/.docker/config.json").unwrap_or_default();
    assert!(!own.contains(&registry_host), "{own}");
    for entry in std::fs::read_dir("/tmp")?.filter_map(Result::ok) {
        let config = entry.path().join("config.json");
        if entry.file_name().to_string_lossy().starts_with("tmp.") {
            let text = std::fs::read_to_string(&config).unwrap_or_default();
            assert!(
                !text.contains(&registry_host),
                "{} was left behind",
                config.display()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_key_from_a_secret_authenticates_and_is_never_shown() -> anyhow::Result<()> {
    let host = ScriptHost::new("ssh-secret").await?;
    let mut settings = host.settings("root", "echo deployed-with-secret-key");
    settings.remove("key_file");
    settings.insert("key_secret".into(), "${secret.deploy_key}".into());
    let mut task = host.task(settings);
    let pem = host.sshd.client_key_pem()?;
    task.secrets.0.insert("deploy_key".into(), pem.clone());
    let (outcome, lines) = apply_on(&host.target, &task).await;
    let outcome = outcome.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;
    assert!(
        lines
            .iter()
            .any(|l| l == "script: deployed-with-secret-key"),
        "{lines:#?}"
    );
    let key_body = pem.lines().nth(1).context("pem body")?;
    assert!(!lines.iter().any(|l| l.contains(key_body)));
    assert!(!format!("{outcome:?}").contains(key_body));
    // Drift rounds get the desired state with the secret in memory.
    assert_eq!(host.target.detect_drift(&task).await?, vec![]);
    // Without the secret the error names it, not a value.
    let fresh = SshTarget::new();
    let mut without = task.clone();
    without.secrets = Default::default();
    let (result, _) = apply_on(&fresh, &without).await;
    let error = result.expect_err("no secret");
    assert!(error.contains("deploy_key"), "{error}");
    Ok(())
}

#[tokio::test]
async fn fetch_host_key_shows_the_fingerprint_ssh_keygen_prints() -> anyhow::Result<()> {
    init_tracing();
    let sshd = TestSshd::start().await?;
    let port = sshd.port;
    let key = tokio::task::spawn_blocking(move || {
        fetch_host_key("127.0.0.1", port, Duration::from_secs(5))
    })
    .await??;
    let expected = stella_tests::sshd::fingerprint_of(&sshd.host_key_pub()).await?;
    assert_eq!(key.fingerprint, expected);
    assert_eq!(key.key_type, "ssh-ed25519");
    // Nothing listens: a clear error in time.
    let closed = free_port().await?;
    let error = tokio::task::spawn_blocking(move || {
        fetch_host_key("127.0.0.1", closed, Duration::from_secs(2))
    })
    .await?
    .expect_err("nothing listens");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{error}"
    );
    Ok(())
}

/// The CLI shows a host's key for checking, and never pins one on first use without a
/// person confirming it: without a terminal, creating an ssh target with no host_key
/// fails on one line naming the fingerprint to pin.
#[tokio::test]
async fn the_cli_shows_the_host_key_and_refuses_to_pin_it_unseen() -> anyhow::Result<()> {
    init_tracing();
    let sshd = TestSshd::start().await?;
    let port = sshd.port.to_string();
    let expected = stella_tests::sshd::fingerprint_of(&sshd.host_key_pub()).await?;
    let none: [(&str, &str); 0] = [];
    let (code, stdout, stderr) = stella_tests::stella(
        &[
            "target",
            "host-key",
            "127.0.0.1",
            "--port",
            &port,
            "-o",
            "json",
        ],
        &none,
    )
    .await?;
    assert_eq!(code, 0, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(shown["fingerprint"], expected.as_str(), "{shown}");
    assert_eq!(shown["key_type"], "ssh-ed25519", "{shown}");

    let (code, _, stderr) = stella_tests::stella(
        &[
            "--server",
            "http://127.0.0.1:9",
            "target",
            "create",
            "h1",
            "--env",
            "prod",
            "--kind",
            "ssh",
            "--agent",
            "a",
            "--set",
            "host=127.0.0.1",
            "--set",
            &format!("port={port}"),
            "--set",
            "user=root",
            "--set",
            "key_file=/k",
        ],
        &none,
    )
    .await?;
    assert_ne!(code, 0);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("--set host_key={expected}")),
        "{stderr}"
    );
    Ok(())
}

/// A release promoted through a real control plane to an ssh target driven by a real
/// agent.
#[tokio::test]
async fn a_release_reaches_an_ssh_target_through_server_and_agent() -> anyhow::Result<()> {
    let world = World::new("ssh-e2e").await?;
    let v1 = world.images.publish("v1", true).await?;
    let server = TestServer::start().await?;
    let _agent = TestAgent::start(&server, "ssh-driver").await?;
    let shown = server
        .wait_for_state("ssh-driver", "connected", Duration::from_secs(10))
        .await?;
    assert!(
        shown["capabilities"]
            .as_array()
            .is_some_and(|c| c.iter().any(|k| k == "ssh")),
        "{shown}"
    );
    server
        .post(
            "/api/v1/environments",
            json!({"name": "edge", "allow_unscanned": true}),
        )
        .await?;
    server
        .post(
            "/api/v1/targets",
            json!({"name": world.name, "environment": "edge", "kind": "ssh", "agent": "ssh-driver",
                   "settings": world.settings()}),
        )
        .await?;
    server
        .post(
            "/api/v1/releases",
            json!({"name": "shop", "version": "1.0.0", "components": {"web": v1}}),
        )
        .await?;
    let promotion = server
        .post(
            "/api/v1/promotions",
            json!({"release": "shop", "version": "1.0.0", "environment": "edge"}),
        )
        .await?;
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .with_context(|| format!("no deployment in {promotion}"))?
        .to_owned();
    let deployment = server
        .wait_deployment(&deployment_id, Duration::from_secs(120))
        .await?;
    let logs = server
        .get(&format!("/api/v1/deployments/{deployment_id}/logs"))
        .await?;
    assert_eq!(deployment["state"], "succeeded", "{deployment}\n{logs}");
    let text = logs.to_string();
    assert!(
        text.contains(&format!("connecting to 127.0.0.1:{}", world.sshd.port)),
        "{text}"
    );
    assert!(text.contains("creating container"), "{text}");
    assert!(text.contains("sticker written to"), "{text}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v1");
    assert!(world.sticker_file().exists());
    Ok(())
}
