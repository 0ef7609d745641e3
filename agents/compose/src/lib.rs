//! The `compose` target kind: a Docker Compose project on the agent's host, deployed from
//! `compose.stella.lock.yml`, the operator's file with every image the release covers
//! pinned by digest.
//!
//! # Settings
//!
//! See [`ComposeSettings`]: `compose_file` (required, absolute), `project` (default: the
//! target name, lowercased), `service.<component>` (default: the service named like the
//! component), `compose_version` (`auto`, `v1`, `v2`), `health_timeout_seconds`
//! (default 60), `health_url`, `sticker_dir` (default `/var/lib/stella/stickers`) and
//! `components`.
//!
//! # Apply: an idempotent reconciler
//!
//! 1. The operator's file is read and every covered service's `image:` pinned to its
//!    component's `repo@sha256:…`, with the component's sticker added as
//!    `ops.stella.*` labels (the service's own labels are kept, list or map form). The
//!    result is written atomically as `compose.stella.lock.yml` **next to the operator's
//!    file**, so relative paths resolve the same; the lock it replaces is kept as
//!    `compose.stella.lock.prev.yml`, and the new lock's sha256 is recorded under the
//!    sticker directory. A component whose service the file lacks is refused before
//!    anything changes.
//! 2. Pinned images the engine lacks are pulled through the engine with the task's
//!    credentials for their registry (never on a command line).
//! 3. `up -d --remove-orphans -p PROJECT -f compose.stella.lock.yml` runs with the chosen
//!    Compose generation; its output becomes progress lines.
//! 4. The agent waits until every service `up` starts runs — healthy where it has a
//!    health check — the covered ones with the pinned image and this deployment's
//!    sticker, and `health_url` answers 2xx, within `health_timeout_seconds`. Services
//!    are found by Compose's project and service labels, never by container names.
//! 5. On failure the failing service's last log lines become progress lines, the
//!    previous lock is put back and `up -d` again, and the deployment fails naming the
//!    service; without a previous lock the project is left as Compose left it, and the
//!    error says so.
//! 6. The sticker files `<sticker_dir>/<target>/<component>.json` are written.
//!
//! A re-delivery of the same task finds its lock in place (the stickers in the lock are
//! reused, so it renders byte for byte the same) and the project running it healthy, and
//! only checks the sticker files. A redeploy of an earlier task renders exactly its lock
//! again (its stickers are found in the previous lock).
//!
//! # Drift
//!
//! `detect_drift` reports `image_changed` (a covered service runs another digest than
//! the lock pins), `missing` (a covered service has no running container), `unexpected`
//! (a running container of the project whose service the lock lacks), `config_changed`
//! (the lock file is missing or its sha256 is not the one recorded — edited by hand;
//! reported for the target as a whole, component empty) and `sticker_tampered` (the
//! sticker file is missing, does not verify, is not the sticker on the container, or
//! names another deployment than the desired one). `watch` follows the engine's events
//! of containers with a Compose project label.
//!
//! Architecture invariant: this crate knows the Docker engine, the Compose command line
//! and agent-core's `Target` trait, nothing of the control plane or the protocol.

mod cli;
mod deploy;
mod drift;
mod emit;
mod engine;
mod error;
mod files;
mod health;
mod lockfile;
mod settings;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use stella_agent_core::{
    async_trait, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, DriftFinding,
    ObservedComponent, Plan, Progress, Sticker, Target, TargetError, TargetSpec,
};
use stella_target_docker::{labels, ImageRef};
use tokio::sync::mpsc;

use crate::cli::ComposeCli;
pub use crate::cli::Generation;
use crate::engine::Engine;
pub use crate::engine::{PROJECT_LABEL, SERVICE_LABEL};
pub use crate::error::ComposeError;
use crate::files::TargetFiles;
pub use crate::lockfile::{LOCK_FILE, PREVIOUS_LOCK_FILE};
pub use crate::settings::{
    ComposeSettings, ComposeVersion, DEFAULT_HEALTH_TIMEOUT_SECONDS, DEFAULT_STICKER_DIR,
    KNOWN_KEYS,
};

/// The kind name.
pub const KIND: &str = "compose";

/// Project name → target name, for the event watch.
type Projects = Arc<Mutex<HashMap<String, String>>>;

/// How the agent runs Compose.
#[derive(Debug, Clone)]
pub struct ComposeConfig {
    /// The `docker` CLI, whose `compose` plugin is Compose v2 and later.
    pub docker_bin: PathBuf,
    /// Compose v1, `docker-compose`.
    pub compose_v1_bin: PathBuf,
}

impl Default for ComposeConfig {
    fn default() -> Self {
        ComposeConfig {
            docker_bin: PathBuf::from("docker"),
            compose_v1_bin: PathBuf::from("docker-compose"),
        }
    }
}

/// The `compose` target kind over the local engine and Compose.
#[derive(Debug)]
pub struct ComposeTarget {
    engine: Engine,
    cli: ComposeCli,
    http: reqwest::Client,
    /// One lock per target name: applies of the same target never interleave.
    target_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    projects: Projects,
}

impl ComposeTarget {
    /// Connects to the local engine and checks that it answers and that a Compose
    /// generation (v2 `docker compose` or v1 `docker-compose`) is present.
    pub async fn connect_local(config: ComposeConfig) -> Result<ComposeTarget, ComposeError> {
        let engine = Engine::connect_local().await?;
        let cli = ComposeCli::new(config.docker_bin, config.compose_v1_bin);
        let target = ComposeTarget {
            engine,
            cli,
            http: reqwest::Client::new(),
            target_locks: Mutex::new(HashMap::new()),
            projects: Arc::default(),
        };
        // v2 first: it answers in milliseconds, v1 (Python) takes half a second, and
        // either is enough to offer the kind; the other is probed when a target asks.
        if !target.cli.available(Generation::V2).await
            && !target.cli.available(Generation::V1).await
        {
            return Err(ComposeError::NoCompose(
                "neither `docker compose` (v2) nor `docker-compose` (v1) answers on this host"
                    .to_owned(),
            ));
        }
        Ok(target)
    }

    /// The Compose generations present on this host.
    pub async fn generations(&self) -> Vec<Generation> {
        let mut found = Vec::new();
        for generation in [Generation::V1, Generation::V2] {
            if self.cli.available(generation).await {
                found.push(generation);
            }
        }
        found
    }

    fn target_lock(&self, target: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .target_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(target.to_owned()).or_default().clone()
    }

    fn remember_project(&self, project: &str, target: &str) {
        self.projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(project.to_owned(), target.to_owned());
    }

    /// The settings (secret references resolved) and the covered components of a task.
    fn resolve_for_apply(
        task: &DeployTask,
    ) -> Result<(ComposeSettings, Vec<&ComponentSpec>), ComposeError> {
        let values = task
            .resolved_settings()
            .map_err(|e| ComposeError::InvalidSettings(e.to_string()))?;
        Self::select(task, ComposeSettings::parse(&task.target.name, &values)?)
    }

    /// The same for drift checks, which have no secret values (none of the compose keys
    /// needs one).
    fn resolve_for_drift(
        task: &DeployTask,
    ) -> Result<(ComposeSettings, Vec<&ComponentSpec>), ComposeError> {
        Self::select(
            task,
            ComposeSettings::parse(&task.target.name, &task.target.settings)?,
        )
    }

    fn select(
        task: &DeployTask,
        settings: ComposeSettings,
    ) -> Result<(ComposeSettings, Vec<&ComponentSpec>), ComposeError> {
        let names: Vec<&str> = task.components.iter().map(|c| c.name.as_str()).collect();
        let selected = settings.select(&names)?;
        let components = task
            .components
            .iter()
            .filter(|c| selected.contains(&c.name.as_str()))
            .collect();
        Ok((settings, components))
    }

    fn files(target: &TargetSpec) -> Result<(ComposeSettings, TargetFiles), ComposeError> {
        let settings = ComposeSettings::parse(&target.name, &target.settings)?;
        let files = TargetFiles::new(&settings.compose_file, &settings.sticker_dir, &target.name)?;
        Ok((settings, files))
    }

    /// Per component deployed by Stella (its containers carry the target's sticker
    /// labels): what its running container runs, and the sticker digest on it.
    async fn do_inspect(
        &self,
        target: &TargetSpec,
    ) -> Result<Vec<ObservedComponent>, ComposeError> {
        let (settings, _) = Self::files(target)?;
        let containers = self.engine.project_containers(&settings.project).await?;
        let mut observed: Vec<ObservedComponent> = Vec::new();
        for container in containers.iter().filter(|c| c.running) {
            let component = match container.label(labels::COMPONENT) {
                Some(component) if container.label(labels::TARGET) == Some(&target.name) => {
                    component.to_owned()
                }
                // A container made without the lock (e.g. from the plain file) of a
                // service a component is mapped to.
                _ => match settings
                    .services
                    .iter()
                    .find(|(_, service)| **service == container.service)
                {
                    Some((component, _)) => component.clone(),
                    None => continue,
                },
            };
            if observed.iter().any(|o| o.component == component) {
                continue;
            }
            let pinned = container
                .label(labels::IMAGE)
                .and_then(|image| ImageRef::parse(image).ok());
            observed.push(ObservedComponent {
                image_digest: self
                    .engine
                    .running_digest(container, pinned.as_ref())
                    .await?,
                sticker_digest: container.label(labels::STICKER_DIGEST).map(str::to_owned),
                component,
            });
        }
        observed.sort_by(|a, b| a.component.cmp(&b.component));
        Ok(observed)
    }
}

#[async_trait]
impl Target for ComposeTarget {
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
        let (_, files) = Self::files(target)?;
        Ok(files.write_sticker(sticker).await?)
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        let (_, files) = Self::files(target)?;
        Ok(files.read_sticker(component).await?)
    }

    async fn detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, TargetError> {
        Ok(self.do_detect_drift(desired).await?)
    }

    fn watch(&self, notify: mpsc::UnboundedSender<String>) {
        self.spawn_watch(notify);
    }

    /// Its project's engine events are no longer mapped to it.
    fn forget(&self, target: &str) {
        self.projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|_, held| held != target);
    }
}
