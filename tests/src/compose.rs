//! Compose for tests: both generations (v1 `docker-compose`, v2+ `docker compose`), a
//! check that fails loudly when one is missing, a way to run them by hand as an operator
//! would, the Compose file of the web images, the guard that removes a project's
//! containers and networks, and a test's world ([`ComposeWorld`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use bollard::query_parameters::ListContainersOptions;
use stella_agent_core::{
    ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, DriftFinding, DriftKind, Plan,
    Progress, Target, TargetSpec,
};
use stella_target_compose::{ComposeConfig, ComposeTarget, LOCK_FILE};

use crate::images::WebImages;
use crate::registry::TestRegistry;
use crate::{init_tracing, wait_until, TestDir};

/// A Compose generation the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeGeneration {
    /// Debian's `docker-compose` 1.29.
    V1,
    /// `docker compose`, the CLI plugin (v2 and later).
    V2,
}

impl ComposeGeneration {
    /// The `compose_version` setting that selects it.
    pub fn setting(self) -> &'static str {
        match self {
            ComposeGeneration::V1 => "v1",
            ComposeGeneration::V2 => "v2",
        }
    }

    fn command(self) -> tokio::process::Command {
        match self {
            ComposeGeneration::V1 => tokio::process::Command::new("docker-compose"),
            ComposeGeneration::V2 => {
                let mut command = tokio::process::Command::new("docker");
                command.arg("compose");
                command
            }
        }
    }

    /// Fails (never skips) when this generation does not answer `version`.
    pub async fn require(self) -> anyhow::Result<()> {
        let mut command = self.command();
        let output = command.arg("version").stdin(Stdio::null()).output().await;
        match output {
            Ok(output) if output.status.success() => Ok(()),
            _ => bail!(
                "Compose {} is missing on this machine ({}); `cargo xtask test` installs both generations",
                self.setting(),
                match self {
                    ComposeGeneration::V1 => "docker-compose version",
                    ComposeGeneration::V2 => "docker compose version",
                }
            ),
        }
    }

    /// Runs `compose --ansi never -p PROJECT -f FILE ARGS…` as an operator would;
    /// returns its output, or fails with it.
    pub async fn run(
        self,
        project: &str,
        file: &std::path::Path,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let mut command = self.command();
        let output = command
            .args(["--ansi", "never", "-p", project, "-f"])
            .arg(file)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running compose")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
        if !output.status.success() {
            bail!("compose {} failed: {text}", args.join(" "));
        }
        Ok(text)
    }
}

/// The health check of the web images, in Compose form: checked every second.
pub const WEB_HEALTHCHECK: &str = r#"healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/health"]
      interval: 1s
      timeout: 2s
      retries: 3"#;

/// A Compose file with two services of the web images of `repository`: `web` (tag
/// `web_tag`, its labels a list, a command that says it is starting) and `side` (tag
/// `side`, its labels a map), both with [`WEB_HEALTHCHECK`].
pub fn two_service_file(repository: &str, web_tag: &str) -> String {
    format!(
        r#"# The operator's file.
services:
  web:
    image: {repository}:{web_tag}
    command: ["/bin/sh", "-c", "echo web is starting; trap 'exit 0' TERM; /bin/httpd -f -p 8080 -h /www & wait"]
    labels:
      - "team=shop"
    {WEB_HEALTHCHECK}
  side:
    image: {repository}:side
    labels:
      team: shop
    {WEB_HEALTHCHECK}
"#
    )
}

/// Removes, on drop, every container and network of the given Compose projects (found by
/// the `com.docker.compose.project` label), and every local image of the given
/// repositories (Compose pulls the operator's tags, which [`WebImages`] does not know
/// of), so a test leaves nothing behind even when it fails.
#[derive(Debug)]
pub struct ProjectCleanup {
    projects: Vec<String>,
    repositories: Vec<String>,
}

impl ProjectCleanup {
    /// Cleans up after `projects`.
    pub fn new<S: Into<String>>(projects: impl IntoIterator<Item = S>) -> Self {
        ProjectCleanup {
            projects: projects.into_iter().map(Into::into).collect(),
            repositories: Vec::new(),
        }
    }

    /// Also removes the local images of `repository` (every tag).
    pub fn with_images(mut self, repository: &str) -> Self {
        self.repositories.push(repository.to_owned());
        self
    }
}

impl Drop for ProjectCleanup {
    fn drop(&mut self) {
        for project in &self.projects {
            let filter = format!("label=com.docker.compose.project={project}");
            for (list, remove) in [
                (vec!["ps", "-aq", "--filter", &filter], vec!["rm", "-f"]),
                (
                    vec!["network", "ls", "-q", "--filter", &filter],
                    vec!["network", "rm"],
                ),
            ] {
                let Ok(listed) = std::process::Command::new("docker").args(&list).output() else {
                    continue;
                };
                let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let _ = std::process::Command::new("docker")
                    .args(&remove)
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for repository in &self.repositories {
            let Ok(listed) = std::process::Command::new("docker")
                .args(["images", "-q", repository])
                .output()
            else {
                continue;
            };
            let mut ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            ids.sort();
            ids.dedup();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rmi", "-f"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// One compose test's world: a registry, an image repository and a project of its own. Fields drop in order: containers first, then images, registry, dir.
#[derive(Debug)]
pub struct ComposeWorld {
    _cleanup: ProjectCleanup,
    pub images: WebImages,
    _registry: TestRegistry,
    pub target: ComposeTarget,
    pub docker: bollard::Docker,
    pub generation: ComposeGeneration,
    /// Target and project name, unique to the test.
    pub name: String,
    pub dir: TestDir,
}

impl ComposeWorld {
    /// A world named `<prefix>-<generation>-<random>`; fails when the generation is missing.
    pub async fn new(prefix: &str, generation: ComposeGeneration) -> anyhow::Result<ComposeWorld> {
        init_tracing();
        generation.require().await?;
        let registry = TestRegistry::start().await?;
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("{prefix}-{}-{suffix}", generation.setting());
        let dir = TestDir::new(prefix);
        std::fs::create_dir_all(dir.path().join("app"))?;
        let target = ComposeTarget::connect_local(ComposeConfig::default()).await?;
        let docker = bollard::Docker::connect_with_socket_defaults()?
            .negotiate_version()
            .await?;
        let images = WebImages::new(
            &registry.host(),
            &format!("stella-test/{name}"),
            &registry.docker_config(),
        );
        Ok(ComposeWorld {
            _cleanup: ProjectCleanup::new([name.clone()]).with_images(images.repository()),
            images,
            _registry: registry,
            target,
            docker,
            generation,
            name,
            dir,
        })
    }

    /// The operator's file, `<dir>/app/compose.yml`.
    pub fn compose_file(&self) -> PathBuf {
        self.dir.path().join("app").join("compose.yml")
    }

    /// The lock beside it.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.path().join("app").join(LOCK_FILE)
    }

    /// The sticker file of a component.
    pub fn sticker_file(&self, component: &str) -> PathBuf {
        self.dir
            .path()
            .join("stickers")
            .join(&self.name)
            .join(format!("{component}.json"))
    }

    /// The operator's file: `web` on tag `web_tag`, `side` on tag `side`.
    pub fn write_compose_file(&self, web_tag: &str) -> anyhow::Result<String> {
        let text = two_service_file(self.images.repository(), web_tag);
        std::fs::write(self.compose_file(), &text)?;
        Ok(text)
    }

    /// The target's settings: this world's file, generation and sticker dir.
    pub fn settings(&self, health_timeout_seconds: u64) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "compose_file".to_owned(),
                self.compose_file().display().to_string(),
            ),
            (
                "compose_version".to_owned(),
                self.generation.setting().to_owned(),
            ),
            (
                "health_timeout_seconds".to_owned(),
                health_timeout_seconds.to_string(),
            ),
            (
                "sticker_dir".to_owned(),
                self.dir.path().join("stickers").display().to_string(),
            ),
        ])
    }

    /// A task of release `shop` `version` deploying component `web` as `image`.
    pub fn task(
        &self,
        version: &str,
        image: &str,
        settings: BTreeMap<String, String>,
    ) -> DeployTask {
        DeployTask {
            deployment_id: format!("dep-{version}-{}", uuid::Uuid::new_v4().simple()),
            decision_id: format!("sha256:{}", "d".repeat(64)),
            environment: "test".to_owned(),
            release: "shop".to_owned(),
            version: version.to_owned(),
            target: TargetSpec {
                name: self.name.clone(),
                kind: "compose".to_owned(),
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

    /// The outcome (or the error chain) and the progress lines, failed or not.
    pub async fn apply(&self, task: &DeployTask) -> (Result<ApplyOutcome, String>, Vec<String>) {
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

    /// [`ComposeWorld::apply`] that must succeed.
    pub async fn apply_ok(&self, task: &DeployTask) -> anyhow::Result<(ApplyOutcome, Vec<String>)> {
        let (result, lines) = self.apply(task).await;
        match result {
            Ok(outcome) => Ok((outcome, lines)),
            Err(error) => anyhow::bail!("deploy failed: {error}\n{}", lines.join("\n")),
        }
    }

    /// Every container of the project, running or not.
    pub async fn containers(&self) -> anyhow::Result<Vec<ContainerSummary>> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("com.docker.compose.project={}", self.name)],
            )])),
            ..Default::default()
        };
        Ok(self.docker.list_containers(Some(options)).await?)
    }

    /// The one running container of a service.
    pub async fn service(&self, service: &str) -> anyhow::Result<ContainerSummary> {
        let found: Vec<ContainerSummary> = self
            .containers()
            .await?
            .into_iter()
            .filter(|c| label(c, "com.docker.compose.service") == Some(service))
            .collect();
        anyhow::ensure!(
            found.len() == 1,
            "expected one container of service {service}, found {}",
            found.len()
        );
        let container = found.into_iter().next().expect("one");
        anyhow::ensure!(
            container.state == Some(ContainerSummaryStateEnum::RUNNING),
            "the container of {service} is {:?}",
            container.state
        );
        Ok(container)
    }

    /// Whether the service's container runs the local image of `image`.
    pub async fn runs(&self, service: &str, image: &str) -> anyhow::Result<bool> {
        let container = self.service(service).await?;
        let local = self.docker.inspect_image(image).await?.id;
        Ok(local.is_some() && local == container.image_id)
    }

    /// One drift check.
    pub async fn drift(&self, task: &DeployTask) -> anyhow::Result<Vec<DriftFinding>> {
        Ok(self.target.detect_drift(task).await?)
    }

    /// Polls drift until a finding of `kind` shows up; returns it.
    pub async fn wait_drift(
        &self,
        task: &DeployTask,
        kind: DriftKind,
    ) -> anyhow::Result<DriftFinding> {
        wait_until(
            &format!("drift {kind} is found"),
            Duration::from_secs(20),
            || async {
                self.drift(task)
                    .await
                    .ok()?
                    .into_iter()
                    .find(|f| f.kind == kind)
            },
        )
        .await
    }

    /// Polls drift until none is found.
    pub async fn wait_clean(&self, task: &DeployTask) -> anyhow::Result<()> {
        wait_until("no drift is found", Duration::from_secs(20), || async {
            self.drift(task).await.ok()?.is_empty().then_some(())
        })
        .await
    }
}

/// A label of a listed container.
pub fn label<'a>(container: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    container.labels.as_ref()?.get(key).map(String::as_str)
}

/// The `sha256:…` of `repo@sha256:…`.
pub fn digest_of(image: &str) -> &str {
    image.split_once('@').map_or("", |(_, digest)| digest)
}
