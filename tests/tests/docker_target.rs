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

#[tokio::test]
async fn first_deploy_labels_the_container_and_writes_the_sticker() -> anyhow::Result<()> {
    let world = World::new("dk-first").await?;
    let v1 = world.images.publish("v1", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());

    let plan = world.target.plan(&task).await?;
    assert!(
        plan.steps.iter().any(|s| s.contains("pull"))
            && plan.steps.iter().any(|s| s.contains("create container")),
        "{plan:?}"
    );

    let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(lines.iter().any(|l| l.contains("pull")), "{lines:#?}");
    assert_eq!(outcome.stickers.len(), 1);
    let sticker = &outcome.stickers[0];
    assert!(sticker.verify());
    assert_eq!(sticker.image, v1);
    assert_eq!(sticker.agent_id, "agent-test");

    let container = world.only_container().await?;
    assert_eq!(
        names(std::slice::from_ref(&container)),
        vec![format!("/{}", world.container_name())]
    );
    let container_labels = container.labels.clone().unwrap_or_default();
    for (key, value) in [
        (labels::TARGET, world.name.as_str()),
        (labels::ENVIRONMENT, "test"),
        (labels::RELEASE, "shop"),
        (labels::VERSION, "1.0.0"),
        (labels::COMPONENT, "web"),
        (labels::DIGEST, digest_of(&v1)),
        (labels::DEPLOYMENT, task.deployment_id.as_str()),
        (labels::DECISION, task.decision_id.as_str()),
        (labels::STICKER_DIGEST, sticker.sticker_digest.as_str()),
    ] {
        assert_eq!(
            container_labels.get(key).map(String::as_str),
            Some(value),
            "label {key}"
        );
    }
    assert_eq!(world.served_version(&container).await?, "v1");

    let file = std::fs::read(world.sticker_file())?;
    let from_file = Sticker::from_json(&file)?;
    assert_eq!(&from_file, sticker);
    assert_eq!(String::from_utf8(file)?, sticker.to_canonical_json());
    assert_eq!(
        world
            .target
            .read_sticker(&task.target, "web")
            .await?
            .as_ref(),
        Some(sticker)
    );

    let observed = world.target.inspect(&task.target).await?;
    assert_eq!(observed.len(), 1);
    assert_eq!(observed[0].component, "web");
    assert_eq!(observed[0].image_digest, digest_of(&v1));
    assert_eq!(
        observed[0].sticker_digest.as_deref(),
        Some(sticker.sticker_digest.as_str())
    );

    // The same task again changes nothing.
    let plan = world.target.plan(&task).await?;
    assert!(
        plan.steps.iter().all(|s| s.contains("already runs")),
        "{plan:?}"
    );
    let (again, _) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(
        again.summary.contains("already up to date"),
        "{}",
        again.summary
    );
    assert_eq!(&again.stickers[0], sticker);
    assert_eq!(world.only_container().await?.id, container.id);

    // A lost sticker file comes back from the labels, without a restart.
    std::fs::remove_file(world.sticker_file())?;
    let (restored, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("restored the sticker file")),
        "{lines:#?}"
    );
    assert_eq!(&restored.stickers[0], sticker);
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
        *sticker
    );
    assert_eq!(world.only_container().await?.id, container.id);
    Ok(())
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

#[tokio::test]
async fn start_first_upgrade_never_stops_serving_and_failures_keep_the_old_container(
) -> anyhow::Result<()> {
    let world = World::new("dk-startfirst").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await
        .map_err(anyhow::Error::msg)?;

    let stop = Arc::new(AtomicBool::new(false));
    let probe = spawn_probe(&world, stop.clone());
    let task_v2 = world.task("2.0.0", &v2, world.settings());
    let plan = world.target.plan(&task_v2).await?;
    assert!(
        plan.steps.iter().any(|s| s.contains("start-first")),
        "{plan:?}"
    );
    let started = Instant::now();
    let (outcome, lines) = world.apply(&task_v2).await.map_err(anyhow::Error::msg)?;
    let upgrade_time = started.elapsed();
    // A few more samples after the switch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let (samples, failures, failed_at) = probe.await?;
    println!("v1 -> v2 start-first upgrade took {upgrade_time:?}; probe: {samples} samples, {failures} failed");
    assert!(
        outcome.summary.contains("replaced start-first"),
        "{}",
        outcome.summary
    );
    assert!(samples >= 10, "only {samples} samples");
    assert_eq!(
        failures, 0,
        "failed samples: {failed_at:#?}\nprogress: {lines:#?}"
    );
    // Before each step that can take a while, a line says what and for how long at most.
    let name = world.container_name();
    for expected in [
        format!("web: pulling {v2}"),
        format!("web: starting {name}-next"),
        format!("web: waiting up to 30 s for {name}-next to be healthy (its Docker health check)"),
        format!("web: stopping old container {name}, up to 10 s"),
    ] {
        assert!(lines.contains(&expected), "{expected:?} in {lines:#?}");
    }
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v2");
    assert_eq!(
        container
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::VERSION))
            .map(String::as_str),
        Some("2.0.0")
    );

    // v3 never becomes healthy: a clear error once the health timeout is over, v2
    // untouched.
    let error = world
        .apply(&world.task("3.0.0", &v3, world.settings_with_timeout(3)))
        .await
        .expect_err("v3 is unhealthy");
    println!("v3: {error}");
    assert!(
        error.contains(&format!(
            "container {}-next did not become healthy within 3 s",
            world.container_name()
        )) && error.contains("404"),
        "{error}"
    );
    let after = world.only_container().await?;
    assert_eq!(after.id, container.id);
    assert_eq!(world.served_version(&after).await?, "v2");
    assert_eq!(
        Sticker::from_json(&std::fs::read(world.sticker_file())?)?.image,
        v2,
        "the sticker file still names v2"
    );

    // A digest the registry does not have: the pull fails, v2 untouched.
    let missing = world.images.missing();
    let error = world
        .apply(&world.task("4.0.0", &missing, world.settings()))
        .await
        .expect_err("the digest is missing");
    println!("missing digest: {error}");
    assert!(
        error.contains(&format!("pulling {missing} failed")),
        "{error}"
    );
    assert!(
        error.contains("manifest unknown") || error.contains("not found"),
        "{error}"
    );
    let after = world.only_container().await?;
    assert_eq!(after.id, container.id);
    assert_eq!(world.served_version(&after).await?, "v2");
    Ok(())
}

#[tokio::test]
async fn stop_first_with_a_fixed_host_port_restarts_the_old_container_on_failure(
) -> anyhow::Result<()> {
    let world = World::new("dk-stopfirst").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    let port = free_port().await?;
    let mut settings = world.settings();
    settings.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));
    let url = format!("http://127.0.0.1:{port}/");

    world
        .apply(&world.task("1.0.0", &v1, settings.clone()))
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(get_text(&world.http, &url).await?, "v1");

    let task_v2 = world.task("2.0.0", &v2, settings.clone());
    let plan = world.target.plan(&task_v2).await?;
    assert!(
        plan.steps.iter().any(|s| s.contains("stop-first")),
        "{plan:?}"
    );
    let started = Instant::now();
    let (outcome, lines) = world.apply(&task_v2).await.map_err(anyhow::Error::msg)?;
    println!("v1 -> v2 stop-first upgrade took {:?}", started.elapsed());
    assert!(
        outcome.summary.contains("replaced stop-first"),
        "{}",
        outcome.summary
    );
    assert!(
        lines.iter().any(|l| l.contains("stopped old container")),
        "{lines:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(get_text(&world.http, &url).await?, "v2");

    settings.insert("health_timeout_seconds".to_owned(), "3".to_owned());
    let error = world
        .apply(&world.task("3.0.0", &v3, settings))
        .await
        .expect_err("v3 is unhealthy");
    println!("v3 stop-first: {error}");
    assert!(
        error.contains("did not become healthy within 3 s"),
        "{error}"
    );
    let after = world.only_container().await?;
    assert_eq!(
        after.id, container.id,
        "the old container is the one running"
    );
    let served = wait_until(
        "the old container serves again",
        Duration::from_secs(10),
        || async { get_text(&world.http, &url).await.ok() },
    )
    .await?;
    assert_eq!(served, "v2");
    Ok(())
}

#[tokio::test]
async fn apply_after_a_crash_mid_deployment_ends_with_one_container() -> anyhow::Result<()> {
    let world = World::new("dk-crash").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await
        .map_err(anyhow::Error::msg)?;

    // The agent dies while the new container is being health-checked.
    let task_v2 = world.task("2.0.0", &v2, world.settings());
    let target = world.target.clone();
    let task = task_v2.clone();
    let crashed = tokio::spawn(async move {
        let progress = Progress::detached("agent-test", "crash");
        target
            .apply(
                &task,
                &Plan::default(),
                &progress,
                &CancellationToken::new(),
            )
            .await
    });
    let next = format!("/{}-next", world.container_name());
    wait_until(
        "the -next container runs",
        Duration::from_secs(60),
        || async {
            let containers = world.containers().await.ok()?;
            names(&containers).contains(&next).then_some(())
        },
    )
    .await?;
    crashed.abort();
    let _ = crashed.await;
    assert_eq!(world.containers().await?.len(), 2, "old and -next are left");

    let (_, lines) = world.apply(&task_v2).await.map_err(anyhow::Error::msg)?;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("left by an interrupted deployment")),
        "{lines:#?}"
    );
    let container = world.only_container().await?;
    assert_eq!(
        names(std::slice::from_ref(&container)),
        vec![format!("/{}", world.container_name())]
    );
    assert_eq!(world.served_version(&container).await?, "v2");
    Ok(())
}

#[tokio::test]
async fn basic_auth_registry_pulls_with_the_task_credentials() -> anyhow::Result<()> {
    let password = "s3cret-registry-pw";
    let registry = TestRegistry::start_with_basic_auth("stella", password).await?;
    let world = World::with_registry("dk-auth", registry).await?;
    let v1 = world.images.publish("v1", true).await?;

    let mut task = world.task("1.0.0", &v1, world.settings());
    let error = world.apply(&task).await.expect_err("no credentials");
    println!("without credentials: {error}");
    assert!(error.contains(&format!("pulling {v1} failed")), "{error}");
    assert!(
        error.contains("no basic auth credentials") || error.contains("unauthorized"),
        "{error}"
    );
    assert!(world.containers().await?.is_empty());

    task.registry_auth = vec![RegistryCredential {
        registry: world.registry.host(),
        username: "stella".to_owned(),
        password: "wrong".to_owned(),
    }];
    let error = world.apply(&task).await.expect_err("wrong credentials");
    assert!(error.contains("pulling"), "{error}");
    assert!(!error.contains("wrong"), "the password leaks: {error}");

    task.registry_auth[0].password = password.to_owned();
    let (_, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(lines.iter().all(|l| !l.contains(password)), "{lines:#?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v1");
    Ok(())
}

#[tokio::test]
async fn drift_finds_missing_unexpected_changed_and_tampered() -> anyhow::Result<()> {
    let world = World::new("dk-drift").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let task = world.task("1.0.0", &v1, world.settings());
    world.apply(&task).await.map_err(anyhow::Error::msg)?;
    let kinds = |findings: &[stella_agent_core::DriftFinding]| {
        findings.iter().map(|f| f.kind).collect::<Vec<_>>()
    };
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    let (notify, mut events) = tokio::sync::mpsc::unbounded_channel();
    world.target.watch(notify);
    // The event stream is subscribed asynchronously; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An edited sticker file.
    let original = std::fs::read_to_string(world.sticker_file())?;
    std::fs::write(world.sticker_file(), original.replace("1.0.0", "9.9.9"))?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::StickerTampered],
        "{findings:?}"
    );
    std::fs::remove_file(world.sticker_file())?;
    assert_eq!(
        kinds(&world.target.detect_drift(&task).await?),
        vec![DriftKind::StickerTampered]
    );
    std::fs::write(world.sticker_file(), &original)?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // Stopped: missing; and the engine event names the target.
    docker_cli(&["stop", "-t", "5", &world.container_name()], None, None).await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(kinds(&findings), vec![DriftKind::Missing], "{findings:?}");
    // Events of other tests' targets arrive too; ours must be among them.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(target) = events.recv().await {
            if target == world.name {
                return;
            }
        }
    })
    .await
    .context("no engine event named the target within 10 s")?;
    docker_cli(&["start", &world.container_name()], None, None).await?;
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // Someone runs v2 under the target's labels: a second container of the component.
    let config = world.registry.docker_config();
    docker_cli(&["pull", &v2], Some(&config), None).await?;
    let target_label = format!("{}={}", labels::TARGET, world.name);
    let intruder = format!("{}-intruder", world.name);
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &intruder,
            "--label",
            &target_label,
            "--label",
            "ops.stella.component=web",
            &v2,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::Unexpected],
        "{findings:?}"
    );
    docker_cli(&["rm", "-f", &intruder], None, None).await?;

    // A component the target should not run.
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &intruder,
            "--label",
            &target_label,
            "--label",
            "ops.stella.component=db",
            &v2,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::Unexpected],
        "{findings:?}"
    );
    assert_eq!(findings[0].component, "db");
    docker_cli(&["rm", "-f", &intruder], None, None).await?;

    // The container replaced by one of v2 carrying the same labels: the labels still say
    // v1, but the image ID does not.
    let deployed = world.only_container().await?;
    let mut label_args = Vec::new();
    for (key, value) in deployed.labels.clone().unwrap_or_default() {
        label_args.push("--label".to_owned());
        label_args.push(format!("{key}={value}"));
    }
    docker_cli(&["rm", "-f", &world.container_name()], None, None).await?;
    let mut args: Vec<&str> = vec!["run", "-d", "--name"];
    let container_name = world.container_name();
    args.push(&container_name);
    args.extend(label_args.iter().map(String::as_str));
    args.push(&v2);
    docker_cli(&args, None, None).await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::ImageChanged],
        "{findings:?}"
    );
    assert!(findings[0].detail.contains(digest_of(&v2)), "{findings:?}");
    let observed = world.target.inspect(&task.target).await?;
    assert_eq!(
        observed[0].image_digest,
        digest_of(&v2),
        "inspect trusts the image, not the label"
    );

    // Other settings than the container was made with.
    let mut changed = task.clone();
    changed
        .target
        .settings
        .insert("env.MODE".to_owned(), "fast".to_owned());
    world.apply(&task).await.map_err(anyhow::Error::msg)?;
    let findings = world.target.detect_drift(&changed).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::ConfigChanged],
        "{findings:?}"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_settings_and_unpinned_images_are_refused_before_anything_changes(
) -> anyhow::Result<()> {
    let world = World::new("dk-invalid").await?;
    let image = format!("{}@sha256:{}", world.images.repository(), "1".repeat(64));
    let mut settings = world.settings();
    settings.insert("colour".to_owned(), "blue".to_owned());
    let error = world
        .target
        .apply(
            &world.task("1", &image, settings),
            &Plan::default(),
            &Progress::detached("a", "t"),
            &CancellationToken::new(),
        )
        .await
        .expect_err("unknown key");
    assert!(
        matches!(error, stella_agent_core::TargetError::InvalidSettings(_)),
        "{error}"
    );

    let unpinned = format!("{}:latest", world.images.repository());
    let error = world
        .apply(&world.task("1", &unpinned, world.settings()))
        .await
        .expect_err("unpinned");
    assert!(error.contains("is not pinned by digest"), "{error}");
    assert!(world.containers().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn health_url_probe_plain_settle_and_exiting_containers() -> anyhow::Result<()> {
    let world = World::new("dk-health").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    let url_settings = BTreeMap::from([
        (
            "health_url".to_owned(),
            "http://{ip}:8080/health".to_owned(),
        ),
        ("health_timeout_seconds".to_owned(), "3".to_owned()),
    ]);

    // health_url alone: the agent's probe decides.
    world
        .apply(&world.task("1.0.0", &v1, url_settings.clone()))
        .await
        .map_err(anyhow::Error::msg)?;
    let container = world.only_container().await?;
    let started = Instant::now();
    let error = world
        .apply(&world.task("3.0.0", &v3, url_settings))
        .await
        .expect_err("v3 has no /health");
    println!("health_url: {error} (after {:?})", started.elapsed());
    assert!(
        error.contains(&format!(
            "container {}-next did not become healthy within 3 s",
            world.container_name()
        )) && error.contains("/health answered 404"),
        "{error}"
    );
    assert_eq!(world.only_container().await?.id, container.id);

    // No health check at all: running 2 s after the start is enough.
    let started = Instant::now();
    world
        .apply(&world.task("2.0.0", &v2, BTreeMap::new()))
        .await
        .map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    println!("v1 -> v2 without a health check took {took:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "v2");

    // A command that exits fails at once, whatever the timeout.
    let exiting = BTreeMap::from([
        ("command".to_owned(), "/bin/busybox false".to_owned()),
        ("restart".to_owned(), "no".to_owned()),
        ("health_timeout_seconds".to_owned(), "60".to_owned()),
    ]);
    let started = Instant::now();
    let error = world
        .apply(&world.task("3.0.0", &v1, exiting))
        .await
        .expect_err("the command exits");
    println!("exiting: {error} (after {:?})", started.elapsed());
    assert!(
        error.contains("stopped before it became healthy") && error.contains("exit code 1"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(world.only_container().await?.id, container.id);
    Ok(())
}

#[tokio::test]
async fn stop_first_crash_then_a_failed_rerun_leaves_the_old_container_running(
) -> anyhow::Result<()> {
    let world = World::new("dk-crashstop").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", false).await?;
    let port = free_port().await?;
    let mut settings = world.settings();
    settings.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));
    let url = format!("http://127.0.0.1:{port}/");
    world
        .apply(&world.task("1.0.0", &v1, settings.clone()))
        .await
        .map_err(anyhow::Error::msg)?;
    let old = world.only_container().await?;

    // The agent dies after stopping the old container, while the new one starts.
    let target = world.target.clone();
    let task = world.task("2.0.0", &v2, settings.clone());
    let crashed = tokio::spawn(async move {
        let progress = Progress::detached("agent-test", "crash");
        target
            .apply(
                &task,
                &Plan::default(),
                &progress,
                &CancellationToken::new(),
            )
            .await
    });
    let next = format!("/{}-next", world.container_name());
    wait_until(
        "the old container is stopped and -next runs",
        Duration::from_secs(60),
        || async {
            let containers = world.containers().await.ok()?;
            let next_runs = containers.iter().any(|c| {
                names(std::slice::from_ref(c)).contains(&next)
                    && c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            });
            let old_stopped = containers.iter().any(|c| {
                c.id == old.id
                    && c.state != Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            });
            (next_runs && old_stopped).then_some(())
        },
    )
    .await?;
    crashed.abort();
    let _ = crashed.await;

    // The rerun (of a release that fails) first undoes the interrupted deployment.
    settings.insert("health_timeout_seconds".to_owned(), "3".to_owned());
    let error = world
        .apply(&world.task("3.0.0", &v3, settings))
        .await
        .expect_err("v3 is unhealthy");
    assert!(error.contains("did not become healthy"), "{error}");
    let after = world.only_container().await?;
    assert_eq!(after.id, old.id);
    let served = wait_until("v1 serves again", Duration::from_secs(10), || async {
        get_text(&world.http, &url).await.ok()
    })
    .await?;
    assert_eq!(served, "v1");
    Ok(())
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

/// Runs `task` as an agent would and drops the run, as a crash of the agent would, right
/// after the first progress line that contains `until`. Docker finishes what the engine
/// had already been asked to do.
async fn crash_after(world: &World, task: &DeployTask, until: &str) -> anyhow::Result<()> {
    let (progress, mut lines) = Progress::channel("agent-test", "crash");
    let target = world.target.clone();
    let task = task.clone();
    let run = tokio::spawn(async move {
        target
            .apply(
                &task,
                &Plan::default(),
                &progress,
                &CancellationToken::new(),
            )
            .await
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.recv().await {
            if line.contains(until) {
                return Ok(());
            }
        }
        anyhow::bail!("the run ended before a line containing {until:?}")
    })
    .await;
    run.abort();
    let _ = run.await;
    outcome.with_context(|| format!("no line containing {until:?} within 60 s"))?
}

/// `(id, running)` of a container, by name; `None` when there is none.
async fn container_state(world: &World, name: &str) -> anyhow::Result<Option<(String, bool)>> {
    match world
        .docker
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    {
        Ok(inspect) => Ok(Some((
            inspect.id.unwrap_or_default(),
            inspect.state.and_then(|s| s.running).unwrap_or(false),
        ))),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

#[tokio::test]
async fn a_retry_after_a_crash_keeps_the_new_container_the_crashed_run_started(
) -> anyhow::Result<()> {
    let world = World::new("dk-resume").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let v3 = world.images.publish("v3", true).await?;
    world
        .apply(&world.task("1.0.0", &v1, world.settings()))
        .await
        .map_err(anyhow::Error::msg)?;
    let name = world.container_name();
    let next = format!("{name}-next");

    // 1: the agent dies right after `-next` is healthy, and Docker finishes the stop of
    //    the old container the dead agent had asked for.
    // 2: the agent dies while it waits for `-next` to be healthy; the old one still runs.
    for (version, image, crash_point, old_running) in [
        ("2.0.0", &v2, "is healthy", false),
        ("3.0.0", &v3, "waiting", true),
    ] {
        let (old_id, _) = container_state(&world, &name)
            .await?
            .context("the old container")?;
        let task = world.task(version, image, world.settings());
        crash_after(&world, &task, crash_point).await?;
        if !old_running {
            docker_cli(&["stop", "-t", "5", &name], None, None).await?;
        }
        let (next_id, next_running) = container_state(&world, &next)
            .await?
            .context("the crashed run left -next")?;
        assert!(next_running, "-next runs after the crash");
        let (_, running) = container_state(&world, &name)
            .await?
            .context("the old container is still there")?;
        assert_eq!(
            running, old_running,
            "the old container's state after the crash"
        );
        let next_sticker = labels_of(&world, &next).await?[labels::STICKER_DIGEST].clone();

        // The same task again, as the journal re-runs a task that was running.
        let stop = Arc::new(AtomicBool::new(false));
        let probe = spawn_probe(&world, stop.clone());
        let started = Instant::now();
        let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let (samples, failures, failed_at) = probe.await?;
        println!(
            "{version}: retry after a crash at {crash_point:?} took {took:?}; probe: {samples} samples, {failures} failed\n{lines:#?}"
        );

        let container = world.only_container().await?;
        assert_eq!(
            container.id.as_deref(),
            Some(next_id.as_str()),
            "the healthy -next container is kept: {lines:#?}"
        );
        assert_eq!(
            names(std::slice::from_ref(&container)),
            vec![format!("/{name}")]
        );
        assert_ne!(container.id.as_deref(), Some(old_id.as_str()));
        assert_eq!(
            world.served_version(&container).await?,
            version
                .split('.')
                .next()
                .map(|major| format!("v{major}"))
                .unwrap_or_default()
        );
        for nothing_twice in ["pulling", "creating", "starting", "again"] {
            assert!(
                lines.iter().all(|l| !l.contains(nothing_twice)),
                "nothing is done twice ({nothing_twice}): {lines:#?}"
            );
        }
        assert!(lines.iter().any(|l| l.contains("adopting")), "{lines:#?}");
        assert!(outcome.summary.contains("resumed"), "{}", outcome.summary);
        assert_eq!(failures, 0, "gaps while retrying: {failed_at:#?}");
        assert!(samples >= 2, "only {samples} samples");

        // Stickers tell the truth: the labels the crashed run wrote, the file, the outcome.
        let sticker = &outcome.stickers[0];
        assert_eq!(sticker.sticker_digest, next_sticker);
        assert_eq!(sticker.deployment_id, task.deployment_id);
        assert_eq!(sticker.image, *image);
        assert_eq!(
            Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
            *sticker
        );
        assert_eq!(world.target.detect_drift(&task).await?, vec![]);

        // And once more: nothing to do.
        let (again, _) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        assert!(
            again.summary.contains("already up to date"),
            "{}",
            again.summary
        );
        assert_eq!(world.only_container().await?.id, container.id);
    }
    Ok(())
}

#[tokio::test]
async fn health_timeout_seconds_is_how_long_a_new_container_may_take() -> anyhow::Result<()> {
    let world = World::new("dk-slow").await?;
    let config = world.registry.docker_config();
    let slow = world
        .images
        .publish_with(
            "slow",
            &WebImageOptions {
                healthy_after_seconds: Some(6),
                ..WebImageOptions::default()
            },
        )
        .await?;
    // The same with the image's own HEALTHCHECK, which gives up after one failure.
    let slow_own = world
        .images
        .publish_with(
            "slow-own",
            &WebImageOptions {
                healthy_after_seconds: Some(6),
                healthcheck: Some(format!(
                    "HEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD {WEB_HEALTH_CMD}"
                )),
                ..WebImageOptions::default()
            },
        )
        .await?;
    let never = world.images.publish("never", false).await?;
    // Pulled beforehand so only the health wait is timed.
    for image in [&slow, &slow_own, &never] {
        docker_cli(&["pull", image], Some(&config), None).await?;
    }

    let started = Instant::now();
    let (_, lines) = world
        .apply(&world.task("1.0.0", &slow, world.settings_with_timeout(20)))
        .await
        .map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    println!("a container healthy after 6 s, timeout 20 s: deployed in {took:?}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "waiting up to 20 s for {}-next to be healthy",
            world.container_name()
        ))),
        "{lines:#?}"
    );

    let started = Instant::now();
    let mut own = world.task("2.0.0", &slow_own, BTreeMap::new());
    own.target
        .settings
        .insert("health_timeout_seconds".to_owned(), "20".to_owned());
    world.apply(&own).await.map_err(anyhow::Error::msg)?;
    let took = started.elapsed();
    println!("the image's own health check, healthy after 6 s, timeout 20 s: deployed in {took:?}");
    assert!(took >= Duration::from_secs(5), "{took:?}");
    let container = world.only_container().await?;
    assert_eq!(world.served_version(&container).await?, "slow-own");

    let started = Instant::now();
    let error = world
        .apply(&world.task("3.0.0", &never, world.settings_with_timeout(5)))
        .await
        .expect_err("never healthy");
    let took = started.elapsed();
    println!("never healthy, timeout 5 s: failed after {took:?}: {error}");
    assert!(
        took >= Duration::from_millis(4_900) && took < Duration::from_secs(9),
        "{took:?}"
    );
    assert!(
        error.contains(&format!(
            "container {}-next did not become healthy within 5 s",
            world.container_name()
        )) && error.contains("404"),
        "{error}"
    );
    assert_eq!(world.only_container().await?.id, container.id);
    Ok(())
}

#[tokio::test]
async fn drift_sees_edited_labels_and_a_container_squatting_the_name() -> anyhow::Result<()> {
    let world = World::new("dk-lies").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", true).await?;
    let config = world.registry.docker_config();
    docker_cli(&["pull", &v2], Some(&config), None).await?;
    let task = world.task("1.0.0", &v1, world.settings());
    world.apply(&task).await.map_err(anyhow::Error::msg)?;
    let name = world.container_name();
    let kinds = |findings: &[stella_agent_core::DriftFinding]| {
        findings.iter().map(|f| f.kind).collect::<Vec<_>>()
    };

    // Recreated by hand with the same image and every label, the version edited: the
    // sticker-digest label (and the sticker file) still match each other.
    let mut edited = labels_of(&world, &name).await?;
    edited.insert(labels::VERSION.to_owned(), "9.9.9".to_owned());
    docker_cli(&["rm", "-f", &name], None, None).await?;
    let mut args = vec![
        "run".to_owned(),
        "-d".to_owned(),
        "--name".to_owned(),
        name.clone(),
    ];
    for (key, value) in &edited {
        args.extend(["--label".to_owned(), format!("{key}={value}")]);
    }
    args.push(v1.clone());
    docker_cli(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::StickerTampered],
        "{findings:?}"
    );
    assert!(
        findings[0].detail.contains(labels::VERSION) && findings[0].detail.contains("9.9.9"),
        "{findings:?}"
    );
    // A deployment does not take lying labels for "up to date".
    let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
    assert!(
        !outcome.summary.contains("already up to date"),
        "{}\n{lines:#?}",
        outcome.summary
    );
    assert_eq!(labels_of(&world, &name).await?[labels::VERSION], "1.0.0");
    assert_eq!(world.target.detect_drift(&task).await?, vec![]);

    // Someone else's container under the target's container name, with another image.
    let squatter_target = format!("{}-squatter", world.name);
    let _squatters = ContainerCleanup::new([squatter_target.clone()]);
    let squatter_label = format!("{}={squatter_target}", labels::TARGET);
    docker_cli(&["rm", "-f", &name], None, None).await?;
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &squatter_label,
            &v2,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::ImageChanged],
        "{findings:?}"
    );
    assert!(
        findings[0].detail.contains("not deployed by Stella")
            && findings[0].detail.contains(digest_of(&v2))
            && findings[0].detail.contains(&name),
        "{findings:?}"
    );
    // With the desired image, but no sticker.
    docker_cli(&["rm", "-f", &name], None, None).await?;
    docker_cli(
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &squatter_label,
            &v1,
        ],
        None,
        None,
    )
    .await?;
    let findings = world.target.detect_drift(&task).await?;
    assert_eq!(
        kinds(&findings),
        vec![DriftKind::StickerTampered],
        "{findings:?}"
    );
    assert!(
        findings[0].detail.contains("not deployed by Stella"),
        "{findings:?}"
    );
    // Stella does not remove what it did not deploy.
    let error = world.apply(&task).await.expect_err("the name is taken");
    assert!(error.contains("is taken"), "{error}");
    docker_cli(&["rm", "-f", &name], None, None).await?;
    Ok(())
}

#[tokio::test]
async fn a_new_deployment_of_the_running_digest_replaces_the_container_so_labels_tell_the_truth(
) -> anyhow::Result<()> {
    let world = World::new("dk-relabel").await?;
    let v1 = world.images.publish("v1", true).await?;
    let port = free_port().await?;
    let mut fixed_port = world.settings();
    fixed_port.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));

    for (settings, strategy, versions) in [
        (world.settings(), "start-first", ["1.0.0", "1.0.1"]),
        (fixed_port, "stop-first", ["2.0.0", "2.0.1"]),
    ] {
        let first = world.task(versions[0], &v1, settings.clone());
        world.apply(&first).await.map_err(anyhow::Error::msg)?;
        let before = world.only_container().await?;

        // Another release (or a rollback, or a remediation) with the same digest.
        let task = world.task(versions[1], &v1, settings);
        let plan = world.target.plan(&task).await?;
        assert!(plan.steps.iter().any(|s| s.contains("replace")), "{plan:?}");
        let (outcome, lines) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        assert!(
            outcome.summary.contains(&format!("replaced {strategy}")),
            "{}\n{lines:#?}",
            outcome.summary
        );
        let after = world.only_container().await?;
        assert_ne!(after.id, before.id, "a new container with new labels");
        let container_labels = after.labels.clone().unwrap_or_default();
        assert_eq!(container_labels[labels::VERSION], versions[1]);
        assert_eq!(container_labels[labels::DEPLOYMENT], task.deployment_id);
        let sticker = &outcome.stickers[0];
        assert_eq!(sticker.deployment_id, task.deployment_id);
        assert_eq!(sticker.version, versions[1]);
        assert_eq!(
            container_labels[labels::STICKER_DIGEST],
            sticker.sticker_digest
        );
        assert_eq!(
            Sticker::from_json(&std::fs::read(world.sticker_file())?)?,
            *sticker
        );
        let listed = docker_cli(
            &[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("label={}={}", labels::VERSION, versions[1]),
                "--filter",
                &format!("label={}={}", labels::TARGET, world.name),
            ],
            None,
            None,
        )
        .await?;
        assert_eq!(listed.trim(), after.id.as_deref().unwrap_or_default());
        assert_eq!(world.target.detect_drift(&task).await?, vec![]);
        // Measured against the earlier deployment, the sticker is not the desired one.
        let findings = world.target.detect_drift(&first).await?;
        assert_eq!(
            findings.iter().map(|f| f.kind).collect::<Vec<_>>(),
            vec![DriftKind::StickerTampered],
            "{findings:?}"
        );

        // The same task again (a retry) is a no-op.
        let (again, _) = world.apply(&task).await.map_err(anyhow::Error::msg)?;
        assert!(
            again.summary.contains("already up to date"),
            "{}",
            again.summary
        );
        assert_eq!(&again.stickers[0], sticker);
        assert_eq!(world.only_container().await?.id, after.id);
    }
    Ok(())
}

#[tokio::test]
async fn an_adopted_container_that_never_becomes_healthy_is_removed_and_the_old_one_serves_again(
) -> anyhow::Result<()> {
    let world = World::new("dk-resumefail").await?;
    let v1 = world.images.publish("v1", true).await?;
    let v2 = world.images.publish("v2", false).await?;
    let port = free_port().await?;
    let mut settings = world.settings_with_timeout(3);
    settings.insert("ports".to_owned(), format!("127.0.0.1:{port}:8080"));
    let url = format!("http://127.0.0.1:{port}/");
    world
        .apply(&world.task("1.0.0", &v1, settings.clone()))
        .await
        .map_err(anyhow::Error::msg)?;
    let old = world.only_container().await?;

    // Stop-first: the old container is stopped, -next runs its (failing) health wait.
    let task = world.task("2.0.0", &v2, settings);
    crash_after(&world, &task, "waiting").await?;
    let name = world.container_name();
    let (_, old_running) = container_state(&world, &name)
        .await?
        .context("the old container")?;
    assert!(!old_running, "stop-first stopped the old container");

    // The retry adopts -next, waits, gives up, and puts the old container back.
    let (result, lines) = world.apply_with_lines(&task).await;
    let error = result.expect_err("v2 never becomes healthy");
    assert!(
        error.contains("did not become healthy within 3 s"),
        "{error}"
    );
    for expected in [
        "adopting",
        "removed the new container",
        "starting container",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "{expected:?} in {lines:#?}"
        );
    }
    let after = world.only_container().await?;
    assert_eq!(after.id, old.id, "the old container is the one left");
    let served = wait_until("v1 serves again", Duration::from_secs(10), || async {
        get_text(&world.http, &url).await.ok()
    })
    .await?;
    assert_eq!(served, "v1");
    Ok(())
}
