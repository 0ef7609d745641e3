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
use stella_tests::{free_port, init_tracing, stella, wait_until, TestAgent, TestServer};

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
            slot: None,
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
            slot: None,
        }
    }
}

mod check;
mod docker_mode;
mod keys;
mod script_mode;
