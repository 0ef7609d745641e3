//! The `docker` target kind: each component of a release runs as one container on the
//! agent's local Docker engine (`/var/run/docker.sock`).
//!
//! # Settings
//!
//! See [`DockerSettings`]: `components`, `container_name`, `ports`, `env.NAME`,
//! `volumes`, `command` (split on whitespace; no shell quoting — use an image entrypoint
//! script for anything fancier), `restart`, `network`, `health_cmd`, `health_url`,
//! `health_timeout_seconds`, and the extension `stop_timeout_seconds`.
//!
//! # Apply: an idempotent reconciler
//!
//! Per component, [`DockerTarget`]'s `apply`:
//! 1. removes `<name>-next` containers an interrupted deployment left behind;
//! 2. does nothing when the container `<name>` runs the desired image (compared by local
//!    image ID, not by label) with the same settings and a valid sticker — a missing or
//!    edited sticker file is restored from the container's labels. Such a component keeps
//!    the sticker of the deployment that made its container (labels cannot change), and
//!    that sticker is what the outcome reports;
//! 3. pulls `repo@sha256:…` when the engine lacks it (pinned by digest, so a local copy is
//!    the same content), with the task's credentials for that registry;
//! 4. seals the sticker, then creates `<name>-next` with the sticker as labels and
//!    replaces the old container with one of two strategies:
//!    - **start-first** (blue/green) when no fixed host port is published: the new
//!      container starts beside the old one, and only once it is healthy is the old one
//!      stopped and removed and the new one renamed to `<name>`. No downtime.
//!    - **stop-first** when a fixed host port is published, since two containers cannot
//!      bind it: the old container is stopped (and kept), the new one started; if it
//!      does not become healthy it is removed and the old one started again. Downtime is
//!      the new container's start-up time.
//!
//!    Healthy means: Docker's health check reports `healthy` (`health_cmd`, run every
//!    second, or the image's own `HEALTHCHECK`), and `health_url` answers 2xx to the
//!    agent; with neither, the container still runs 2 s after its start. A container
//!    that stops, restarts or reports `unhealthy` fails at once; otherwise the wait ends
//!    after `health_timeout_seconds` (60).
//! 5. writes the sticker file `<sticker_dir>/<target>/<component>.json`.
//!
//! A `-next` container found at the start is what an agent that died mid-deployment left:
//! it is removed, and an old container it had stopped (stop-first) is started again, so
//! the deployment proceeds from the state before the interrupted one.
//!
//! On any failure the old container keeps (or is back to) running, the new one is
//! removed, and the error says why. Afterwards there is exactly one container per
//! component; running the same task again changes nothing.
//!
//! # Drift
//!
//! `detect_drift` compares each desired component with its containers: `missing`,
//! `image_changed` (by local image ID), `config_changed` (settings digest label),
//! `sticker_tampered` (file vs. its digest, the container's label and the desired
//! image), `unexpected` (duplicates, undesired components). `watch` follows the engine's
//! container events (start, stop, die, destroy, rename) so drift is found within
//! seconds.
//!
//! Architecture invariant: this crate knows the Docker engine and agent-core's `Target`
//! trait, nothing of the control plane or the protocol.

mod deploy;
mod drift;
mod engine;
mod error;
mod health;
mod image_ref;
pub mod labels;
mod settings;
mod sticker_file;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use stella_agent_core::{
    async_trait, error_chain, ApplyOutcome, CancellationToken, DeployTask, DriftFinding,
    ObservedComponent, Plan, Progress, Sticker, Target, TargetError, TargetSpec,
};
use tokio::sync::mpsc;

use crate::deploy::ComponentOutcome;
use crate::engine::{Engine, ManagedContainer};
pub use crate::error::DockerError;
pub use crate::image_ref::ImageRef;
pub use crate::settings::{
    DockerSettings, PortSpec, RestartSetting, UpdateStrategy, DEFAULT_HEALTH_TIMEOUT_SECONDS,
    DEFAULT_STOP_TIMEOUT_SECONDS, KNOWN_KEYS,
};
use crate::sticker_file::StickerFiles;

/// The kind name.
pub const KIND: &str = "docker";

/// Where the docker target keeps what it needs besides the engine.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Sticker files go to `<sticker_dir>/<target>/<component>.json`; the agent uses
    /// `<data dir>/stickers`.
    pub sticker_dir: PathBuf,
}

/// The `docker` target kind over one engine.
#[derive(Debug)]
pub struct DockerTarget {
    engine: Engine,
    sticker_files: StickerFiles,
    http: reqwest::Client,
    /// One lock per target name: applies (and drift checks) of the same target never
    /// interleave.
    target_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl DockerTarget {
    /// Connects to the local engine (`/var/run/docker.sock`, or the socket `DOCKER_HOST`
    /// names) and checks that it answers.
    pub async fn connect_local(config: DockerConfig) -> Result<DockerTarget, DockerError> {
        let engine = Engine::connect_local().await?;
        Ok(DockerTarget {
            engine,
            sticker_files: StickerFiles::new(config.sticker_dir),
            http: reqwest::Client::new(),
            target_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Where the sticker of `target`/`component` is kept.
    pub fn sticker_path(&self, target: &str, component: &str) -> Result<PathBuf, DockerError> {
        self.sticker_files.path(target, component)
    }

    fn target_lock(&self, target: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .target_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(target.to_owned()).or_default().clone()
    }

    /// The settings and the selected components of a task.
    fn resolve(
        task: &DeployTask,
    ) -> Result<(DockerSettings, Vec<&stella_agent_core::ComponentSpec>), DockerError> {
        let settings = DockerSettings::parse(&task.target.settings)?;
        let names: Vec<&str> = task.components.iter().map(|c| c.name.as_str()).collect();
        let selected = settings.select(&names)?;
        let components = task
            .components
            .iter()
            .filter(|c| selected.contains(&c.name.as_str()))
            .collect();
        Ok((settings, components))
    }

    /// The digest of the image a container runs: the digest of its `ops.stella.image`
    /// label when the local image of that reference is the container's image, else the
    /// digest among the image's `RepoDigests` (preferring the labelled repository), else
    /// the image ID.
    async fn running_digest(&self, container: &ManagedContainer) -> Result<String, DockerError> {
        let labelled = container
            .label(labels::IMAGE)
            .and_then(|image| ImageRef::parse(image).ok());
        if let Some(image) = &labelled {
            let local = self.engine.local_image_id(&image.to_string()).await?;
            if local.as_deref() == Some(container.image_id.as_str()) {
                return Ok(image.digest.clone());
            }
        }
        let repo_digests = self.engine.repo_digests(&container.image_id).await?;
        let preferred = labelled.as_ref().and_then(|image| {
            repo_digests
                .iter()
                .find(|d| d.starts_with(&format!("{}@", image.repository)))
        });
        let digest = preferred
            .or(repo_digests.first())
            .and_then(|d| d.split_once('@'))
            .map(|(_, digest)| digest.to_owned());
        Ok(digest.unwrap_or_else(|| container.image_id.clone()))
    }

    async fn do_plan(&self, task: &DeployTask) -> Result<Plan, DockerError> {
        let (settings, components) = Self::resolve(task)?;
        let mut steps = Vec::new();
        for component in components {
            let state = self.component_state(task, &settings, component).await?;
            let prefix = &component.name;
            for leftover in &state.leftovers {
                steps.push(format!(
                    "{prefix}: remove container {} left by an interrupted deployment",
                    leftover.name
                ));
            }
            if let Some(current) = state.current(&settings) {
                steps.push(format!(
                    "{prefix}: container {} already runs {} (the sticker is checked and restored if needed)",
                    current.name, component.image
                ));
                continue;
            }
            if state.desired_image_id.is_none() {
                steps.push(format!("{prefix}: pull {}", state.image));
            }
            let strategy = match settings.strategy() {
                UpdateStrategy::StartFirst => "start-first",
                UpdateStrategy::StopFirst => "stop-first (a fixed host port is published)",
            };
            if state.containers.is_empty() {
                steps.push(format!(
                    "{prefix}: create container {} from {}",
                    state.name, state.image
                ));
            } else {
                let old: Vec<&str> = state.containers.iter().map(|c| c.name.as_str()).collect();
                steps.push(format!(
                    "{prefix}: replace {} with a container of {} ({strategy})",
                    old.join(", "),
                    state.image
                ));
            }
        }
        Ok(Plan { steps })
    }

    async fn do_apply(
        &self,
        task: &DeployTask,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, DockerError> {
        let (settings, components) = Self::resolve(task)?;
        let lock = self.target_lock(&task.target.name);
        let _guard = lock.lock().await;
        let mut stickers = Vec::new();
        let mut lines = Vec::new();
        for component in components {
            if cancel.is_cancelled() {
                return Err(DockerError::Cancelled);
            }
            let outcome = self
                .deploy_component(task, &settings, component, progress, cancel)
                .await
                .inspect_err(|error| {
                    tracing::error!(
                        target = %task.target.name,
                        component = %component.name,
                        deployment_id = %task.deployment_id,
                        error = %error_chain(error),
                        "docker deployment failed"
                    );
                })?;
            lines.push(match &outcome {
                ComponentOutcome::UpToDate(_) => format!("{} already up to date", component.name),
                ComponentOutcome::Deployed {
                    strategy, replaced, ..
                } => match (replaced, strategy) {
                    (false, _) => format!("{} deployed", component.name),
                    (true, UpdateStrategy::StartFirst) => {
                        format!("{} replaced start-first", component.name)
                    }
                    (true, UpdateStrategy::StopFirst) => {
                        format!("{} replaced stop-first", component.name)
                    }
                },
            });
            stickers.push(outcome.sticker().clone());
        }
        Ok(ApplyOutcome {
            summary: format!(
                "{} {} on {}: {}",
                task.release,
                task.version,
                task.target.name,
                lines.join(", ")
            ),
            stickers,
        })
    }

    async fn do_inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, DockerError> {
        let containers = self.engine.containers(&target.name, None).await?;
        let mut observed = Vec::new();
        for container in containers.iter().filter(|c| c.running) {
            let Some(component) = container.component() else {
                continue;
            };
            let image_digest = self.running_digest(container).await?;
            let sticker_digest = match self.sticker_files.read(&target.name, component).await {
                Ok(Some(sticker)) if sticker.verify() => Some(sticker.sticker_digest),
                _ => None,
            };
            observed.push(ObservedComponent {
                component: component.to_owned(),
                image_digest,
                sticker_digest,
            });
        }
        observed.sort_by(|a, b| a.component.cmp(&b.component));
        Ok(observed)
    }
}

#[async_trait]
impl Target for DockerTarget {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError> {
        Ok(self.do_plan(task).await?)
    }

    async fn apply(
        &self,
        task: &DeployTask,
        _plan: &Plan,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError> {
        // The plan is advisory: a reconciler looks again at what runs now.
        Ok(self.do_apply(task, progress, cancel).await?)
    }

    async fn inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError> {
        Ok(self.do_inspect(target).await?)
    }

    async fn write_sticker(
        &self,
        target: &TargetSpec,
        sticker: &Sticker,
    ) -> Result<(), TargetError> {
        if sticker.target != target.name {
            return Err(TargetError::failed(format!(
                "sticker of target {} cannot be written for target {}",
                sticker.target, target.name
            )));
        }
        Ok(self.sticker_files.write(sticker).await?)
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        Ok(self.sticker_files.read(&target.name, component).await?)
    }

    async fn detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, TargetError> {
        Ok(self.do_detect_drift(desired).await?)
    }

    fn watch(&self, notify: mpsc::UnboundedSender<String>) {
        self.spawn_watch(notify);
    }
}
