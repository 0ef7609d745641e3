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
//! 1. looks at `<name>-next` containers an interrupted deployment left behind. One that
//!    runs, with the desired image and settings, under a sticker of this same deployment
//!    (a retry of the task after the agent died) is that run's progress: it is
//!    **adopted** — waited for until healthy, then the old containers are stopped and
//!    removed and it is renamed, exactly as the interrupted run would have done, so a
//!    container that may already be the only one serving is never thrown away. Any other
//!    leftover is removed, and an old container the interrupted run had stopped
//!    (stop-first) is started again, so the deployment proceeds from the state before it;
//! 2. does nothing when the container `<name>` runs the desired image (compared by local
//!    image ID, not by label) with the same settings, and its labels hold a whole sticker
//!    of **this** deployment (a re-delivery of the same task) — a missing or edited
//!    sticker file is restored from the labels. A container that runs the right image
//!    under the sticker of another deployment (a promotion of a release with the same
//!    digests, a rollback, a remediation) or under labels that do not add up to their
//!    sticker digest is replaced like any other: labels cannot be changed, and what a
//!    sticker says must be true after every successful deployment;
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
//!    agent; with neither, the container still runs 2 s after its start.
//!    `health_timeout_seconds` (default 60) is how long a new container may take: it is
//!    the health check's start period (checked every second meanwhile; for the image's
//!    own check too), so Docker counts no failure before then, and Stella's wait is what
//!    decides. A container that stops or restarts fails at once; one that is not healthy
//!    when the timeout is over fails with the last health output.
//! 5. writes the sticker file `<sticker_dir>/<target>/<component>.json`.
//!
//! Before every step that can take a while a progress line says what and for how long at
//! most (`pulling …`, `starting …-next`, `waiting up to 30 s for …-next to be healthy
//! (…)`, `stopping old container …, up to 10 s`).
//!
//! On any failure the old container keeps (or is back to) running, the new one is
//! removed, and the error says why. Afterwards there is exactly one container per
//! component; running the same task again changes nothing. The outcome lists the ports
//! each container published, as the engine bound them (`endpoints`).
//!
//! # Slots
//!
//! A deploy task with a `slot` (RFC 0005) runs each component as a second container,
//! `<name>-<slot>` (e.g. `shop-web-canary`), labelled `ops.stella.slot=<slot>`, beside
//! the stable one and never touching it: same image, environment, settings and health
//! check, but every published port without its host port, so the engine picks a free
//! one, which the outcome reports (`endpoints`). A slot container that already runs the
//! desired image and settings is up to date; any other is removed and made again (a
//! slot takes no traffic while it is deployed); one that fails its health check is
//! removed and the task fails. A slot writes no sticker. `retire` stops and removes every
//! container of a slot. Slot `next` is refused (a stable deployment's new container is
//! `<name>-next`). The stable deployment, `inspect` and drift ignore slot containers.
//!
//! # Drift
//!
//! `detect_drift` compares each desired component with its containers:
//! - `missing`: no running container of the component;
//! - `image_changed`: its image is not the local image of the desired digest — or a
//!   container Stella did not deploy for the target (a squatter) runs another image
//!   under the component's container name;
//! - `config_changed`: made under other settings (settings digest label);
//! - `sticker_tampered`: the `ops.stella.*` labels do not add up to their sticker digest
//!   (a container made again by hand with edited labels; the edited labels are named),
//!   the sticker file is missing, does not verify or is not the labels' sticker, the
//!   sticker names another image, or another deployment than the desired state's — or a
//!   squatter runs the desired image without a sticker;
//! - `unexpected`: duplicates, components that are not desired.
//!
//! Slot containers are not drift: a running canary is neither `unexpected` nor a
//! duplicate.
//!
//! Stella never removes a squatter: deployments fail (`name … is taken`) until an
//! operator does. `watch` follows the engine's container events (start, stop, die,
//! destroy, rename) so drift is found within seconds.
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
pub mod shared;
mod slots;
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

    /// The settings and the selected components of a task, as applied: secret
    /// references resolved (see [`DeployTask::resolved_settings`]); the config digest is
    /// still taken over the references, so it never depends on a secret's value.
    fn resolve_for_apply(
        task: &DeployTask,
    ) -> Result<(DockerSettings, Vec<&stella_agent_core::ComponentSpec>), DockerError> {
        let values = task
            .resolved_settings()
            .map_err(|e| DockerError::InvalidSettings(e.to_string()))?;
        Self::select(
            task,
            DockerSettings::parse_values(&values, &task.target.settings)?,
        )
    }

    /// The settings and the selected components of a desired state, for drift checks:
    /// the agent keeps no secret values, and compares only what does not depend on one
    /// (names, components, config digest over the references).
    fn resolve_for_drift(
        task: &DeployTask,
    ) -> Result<(DockerSettings, Vec<&stella_agent_core::ComponentSpec>), DockerError> {
        Self::select(task, DockerSettings::parse(&task.target.settings)?)
    }

    fn select(
        task: &DeployTask,
        settings: DockerSettings,
    ) -> Result<(DockerSettings, Vec<&stella_agent_core::ComponentSpec>), DockerError> {
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
        let (settings, components) = Self::resolve_for_apply(task)?;
        let mut steps = Vec::new();
        for component in components {
            let state = self.component_state(task, &settings, component).await?;
            let prefix = &component.name;
            let adoptable = state
                .adoptable(task, &settings)
                .map(|(next, _)| next.id.clone());
            for leftover in &state.leftovers {
                if adoptable.as_ref() == Some(&leftover.id) {
                    steps.push(format!(
                        "{prefix}: adopt container {} that an interrupted run of this deployment left running {}; once it is healthy, remove the old containers and rename it {}",
                        leftover.name, state.image, state.name
                    ));
                } else {
                    steps.push(format!(
                        "{prefix}: remove container {} left by an interrupted deployment",
                        leftover.name
                    ));
                }
            }
            if adoptable.is_some() {
                continue;
            }
            let strategy = match settings.strategy() {
                UpdateStrategy::StartFirst => "start-first",
                UpdateStrategy::StopFirst => "stop-first (a fixed host port is published)",
            };
            if let Some(current) = state.current(&settings) {
                match deploy::label_sticker(task, current) {
                    Ok(_) => {
                        steps.push(format!(
                            "{prefix}: container {} already runs {} for this deployment (the sticker file is checked and restored if needed)",
                            current.name, component.image
                        ));
                    }
                    Err(reason) => {
                        steps.push(format!(
                            "{prefix}: replace container {}, which runs {} but {reason}, with one whose labels name this deployment ({strategy})",
                            current.name, component.image
                        ));
                    }
                }
                continue;
            }
            if state.desired_image_id.is_none() {
                steps.push(format!("{prefix}: pull {}", state.image));
            }
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
        let (settings, components) = Self::resolve_for_apply(task)?;
        let lock = self.target_lock(&task.target.name);
        let _guard = lock.lock().await;
        let mut stickers = Vec::new();
        let mut lines = Vec::new();
        let mut endpoints = Vec::new();
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
                    strategy,
                    replaced,
                    note,
                    ..
                } => {
                    let what = match (replaced, strategy) {
                        (false, _) => "deployed",
                        (true, UpdateStrategy::StartFirst) => "replaced start-first",
                        (true, UpdateStrategy::StopFirst) => "replaced stop-first",
                    };
                    match note {
                        Some(note) => format!("{} {what} ({note})", component.name),
                        None => format!("{} {what}", component.name),
                    }
                }
            });
            stickers.push(outcome.sticker().clone());
            let name = settings.container_name(&task.target.name, &component.name);
            endpoints.extend(self.engine.endpoints(&component.name, &name).await?);
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
            slot: None,
            endpoints,
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
        match &task.slot {
            Some(slot) => Ok(self.plan_slot(task, slot).await?),
            None => Ok(self.do_plan(task).await?),
        }
    }

    async fn apply(
        &self,
        task: &DeployTask,
        _plan: &Plan,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError> {
        // The plan is advisory: a reconciler looks again at what runs now.
        match &task.slot {
            Some(slot) => Ok(self.apply_slot(task, slot, progress, cancel).await?),
            None => Ok(self.do_apply(task, progress, cancel).await?),
        }
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

    fn supports_slots(&self) -> bool {
        true
    }

    async fn retire(
        &self,
        target: &TargetSpec,
        slot: &str,
        progress: &Progress,
    ) -> Result<ApplyOutcome, TargetError> {
        Ok(self.retire_slot(target, slot, progress).await?)
    }
}
