//! The `docker` target against the real engine and a real registry: deploys, start-first
//! and stop-first upgrades, failures that leave the old container running, crash
//! recovery, registry credentials, drift and engine events.
//!
//! Every test has its own registry, image repository and target name (random suffix),
//! and removes its containers on drop, so the tests run in parallel.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bollard::models::ContainerSummary;
use bollard::query_parameters::ListContainersOptions;
use stella_agent_core::{
    CancellationToken, ComponentSpec, DeployTask, DriftKind, Plan, Progress, RegistryCredential,
    Sticker, Target, TargetSpec,
};
use stella_target_docker::{labels, DockerConfig, DockerTarget};
use stella_tests::images::{
    docker_cli, ContainerCleanup, WebImageOptions, WebImages, WEB_HEALTH_CMD,
};
use stella_tests::registry::TestRegistry;
use stella_tests::{free_port, init_tracing, wait_until, TestDir};

/// One test's world. Fields drop in order: containers first, then images, registry, dir.
struct World {
    _cleanup: ContainerCleanup,
    images: WebImages,
    registry: TestRegistry,
    target: Arc<DockerTarget>,
    docker: bollard::Docker,
    http: reqwest::Client,
    /// Target name, unique to the test.
    name: String,
    dir: TestDir,
}

impl World {
    async fn new(prefix: &str) -> anyhow::Result<World> {
        Self::with_registry(prefix, TestRegistry::start().await?).await
    }

    async fn with_registry(prefix: &str, registry: TestRegistry) -> anyhow::Result<World> {
        init_tracing();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("{prefix}-{suffix}");
        let dir = TestDir::new(prefix);
        let target = DockerTarget::connect_local(DockerConfig {
            sticker_dir: dir.path().join("stickers"),
        })
        .await?;
        let docker = bollard::Docker::connect_with_socket_defaults()?
            .negotiate_version()
            .await?;
        let images = WebImages::new(
            &registry.host(),
            &format!("stella-test/{name}"),
            &registry.docker_config(),
        );
        Ok(World {
            _cleanup: ContainerCleanup::new([name.clone()]),
            images,
            registry,
            target: Arc::new(target),
            docker,
            http: reqwest::Client::new(),
            name,
            dir,
        })
    }

    /// The settings every test starts from: the web image's health check.
    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("health_cmd".to_owned(), WEB_HEALTH_CMD.to_owned()),
            ("health_timeout_seconds".to_owned(), "30".to_owned()),
        ])
    }

    /// [`World::settings`] with another health timeout: a release that never becomes
    /// healthy fails after exactly this long.
    fn settings_with_timeout(&self, seconds: u64) -> BTreeMap<String, String> {
        let mut settings = self.settings();
        settings.insert("health_timeout_seconds".to_owned(), seconds.to_string());
        settings
    }

    fn task(&self, version: &str, image: &str, settings: BTreeMap<String, String>) -> DeployTask {
        DeployTask {
            deployment_id: format!("dep-{version}-{}", uuid::Uuid::new_v4().simple()),
            decision_id: format!("sha256:{}", "d".repeat(64)),
            environment: "test".to_owned(),
            release: "shop".to_owned(),
            version: version.to_owned(),
            target: TargetSpec {
                name: self.name.clone(),
                kind: "docker".to_owned(),
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

    /// `<target>-web`.
    fn container_name(&self) -> String {
        format!("{}-web", self.name)
    }

    async fn apply(
        &self,
        task: &DeployTask,
    ) -> Result<(stella_agent_core::ApplyOutcome, Vec<String>), String> {
        let (result, lines) = self.apply_with_lines(task).await;
        result.map(|outcome| (outcome, lines))
    }

    /// The outcome (or the error chain) and the progress lines, failed or not.
    async fn apply_with_lines(
        &self,
        task: &DeployTask,
    ) -> (Result<stella_agent_core::ApplyOutcome, String>, Vec<String>) {
        let (progress, mut lines) = Progress::channel("agent-test", &task.deployment_id);
        let result = self
            .target
            .apply(task, &Plan::default(), &progress, &CancellationToken::new())
            .await;
        drop(progress);
        let mut collected = Vec::new();
        while let Some(line) = lines.recv().await {
            collected.push(line);
        }
        (
            result.map_err(|error| stella_agent_core::error_chain(&error)),
            collected,
        )
    }

    /// Every container labelled for the target, running or not.
    async fn containers(&self) -> anyhow::Result<Vec<ContainerSummary>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{}={}", labels::TARGET, self.name)],
            )])),
            ..Default::default()
        };
        Ok(self.docker.list_containers(Some(options)).await?)
    }

    /// The one container of the target; fails unless there is exactly one and it runs.
    async fn only_container(&self) -> anyhow::Result<ContainerSummary> {
        let containers = self.containers().await?;
        anyhow::ensure!(
            containers.len() == 1,
            "expected exactly one container, found {:?}",
            names(&containers)
        );
        let container = containers.into_iter().next().context("one container")?;
        anyhow::ensure!(
            container.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            "container {:?} is {:?}",
            container.names,
            container.state
        );
        Ok(container)
    }

    /// `GET http://<bridge ip>:8080/` of a container: its version text.
    async fn served_version(&self, container: &ContainerSummary) -> anyhow::Result<String> {
        let ip = bridge_ip(container).context("the container has no bridge address")?;
        get_text(&self.http, &format!("http://{ip}:8080/")).await
    }

    fn sticker_file(&self) -> std::path::PathBuf {
        self.dir
            .path()
            .join("stickers")
            .join(&self.name)
            .join("web.json")
    }
}

fn names(containers: &[ContainerSummary]) -> Vec<String> {
    containers
        .iter()
        .flat_map(|c| c.names.clone().unwrap_or_default())
        .collect()
}

fn bridge_ip(container: &ContainerSummary) -> Option<String> {
    container
        .network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get("bridge")?
        .ip_address
        .clone()
        .filter(|ip| !ip.is_empty())
}

async fn get_text(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = http
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.text().await?)
}

fn digest_of(image: &str) -> &str {
    image.split_once('@').map_or("", |(_, digest)| digest)
}

/// The labels of a container, by name.
async fn labels_of(world: &World, name: &str) -> anyhow::Result<HashMap<String, String>> {
    let inspect = world
        .docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await?;
    Ok(inspect.config.and_then(|c| c.labels).unwrap_or_default())
}

/// Samples every 50 ms whether at least one container of the target answers 200 on
/// its bridge address; counts samples and failures until `stop`.
fn spawn_probe(
    world: &World,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    let docker = world.docker.clone();
    let http = world.http.clone();
    let target = world.name.clone();
    tokio::spawn(async move {
        let samples = AtomicU64::new(0);
        let mut failures = 0;
        let mut failed_at = Vec::new();
        let started = Instant::now();
        // Bounded: at most 3 minutes whatever happens.
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(180) {
            samples.fetch_add(1, Ordering::SeqCst);
            let options = ListContainersOptions {
                filters: Some(HashMap::from([(
                    "label".to_owned(),
                    vec![format!("{}={target}", labels::TARGET)],
                )])),
                ..Default::default()
            };
            let containers = docker
                .list_containers(Some(options))
                .await
                .unwrap_or_default();
            let mut ok = false;
            for container in &containers {
                if let Some(ip) = bridge_ip(container) {
                    if get_text(&http, &format!("http://{ip}:8080/")).await.is_ok() {
                        ok = true;
                        break;
                    }
                }
            }
            if !ok {
                failures += 1;
                failed_at.push(format!("{:?}: {:?}", started.elapsed(), names(&containers)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (samples.load(Ordering::SeqCst), failures, failed_at)
    })
}

mod crashes;
mod deploy;
mod drift;
mod slots;
