//! The `ssh` target kind: hosts that run no agent, driven over SSH by one agent.
//!
//! # Settings
//!
//! See [`SshSettings`]: `host`, `port` (22), `user`, `key_file` (a private key on the
//! agent's host) or `key_secret` (`${secret.NAME}`: the control plane sends the PEM
//! with the task; it is kept in memory only), `host_key` (`SHA256:…`, required),
//! `mode` (`docker` | `script`), `script`, `sticker_dir` (default
//! `/var/lib/stella/stickers`), `connect_timeout_seconds` (10),
//! `command_timeout_seconds` (300), `components`, and in docker mode the `docker`
//! kind's keys.
//!
//! # Connections
//!
//! After the handshake the host key's SHA-256 fingerprint is compared with `host_key`
//! before anything depends on trusting the host; a mismatch names both fingerprints.
//! One connection per (host, port, user, key, pinned host key) is shared by every
//! target and drift round (see `pool`), made again when found dead. All libssh2 calls
//! run on `spawn_blocking`; every command has `command_timeout_seconds`.
//!
//! # Modes
//!
//! - `docker`: the `docker` kind's reconciler through the host's `docker` CLI (see
//!   `deploy`): pull by digest (registry credentials via `docker login
//!   --password-stdin` into a temporary `DOCKER_CONFIG` removed afterwards),
//!   `<name>-next` labelled with the sticker, start-first unless a fixed host port
//!   forces stop-first, health wait (`health_url` probed on the host with `curl` or
//!   `wget`), swap; the old container keeps running on failure.
//! - `script`: see `script`.
//!
//! The sticker of each component is a file `<sticker_dir>/<target>/<component>.json` on
//! the host: staged next to it over SFTP, synced, then renamed into place.
//!
//! # Retries
//!
//! A deployment whose connection is lost reconnects (at most 3 times, with backoff, a
//! progress line each time) and runs again from the top; each step first looks at the
//! remote state, so no completed step runs twice.
//!
//! Architecture invariant: this crate knows SSH, the remote `docker` CLI and
//! agent-core's `Target` trait, nothing of the control plane or the protocol.

mod conn;
mod deploy;
mod docker_cli;
mod drift;
mod error;
mod health;
mod pool;
mod quote;
mod script;
mod settings;
mod stickers;

use stella_agent_core::{
    async_trait, error_chain, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask,
    DriftFinding, ObservedComponent, Plan, Progress, Sticker, Target, TargetError, TargetSpec,
};

pub use crate::conn::{fetch_host_key, HostKey};
pub use crate::error::SshError;
pub use crate::pool::MAX_RECONNECTS;
pub use crate::quote::{shell_join, shell_quote};
pub use crate::settings::{
    fingerprint, Endpoint, KeyMaterial, Mode, SshSettings, DEFAULT_COMMAND_TIMEOUT_SECONDS,
    DEFAULT_CONNECT_TIMEOUT_SECONDS, DEFAULT_STICKER_DIR, SSH_KEYS,
};

use crate::pool::{retrying, Pool};

/// The kind name.
pub const KIND: &str = "ssh";

/// The `ssh` target kind.
#[derive(Debug, Default)]
pub struct SshTarget {
    pool: Pool,
    /// The secret values the last task of each target came with, in memory only: the
    /// `Target` methods that get only a `TargetSpec` (inspect, stickers) need the key a
    /// `key_secret` names.
    secrets: stella_agent_core::RememberedSecrets,
}

impl SshTarget {
    /// A target kind with no connection yet.
    pub fn new() -> Self {
        SshTarget::default()
    }

    /// How many SSH connections are open now.
    pub fn open_connections(&self) -> usize {
        self.pool.open_connections()
    }

    /// The settings of a task, secret references resolved.
    fn settings_of(&self, task: &DeployTask) -> Result<SshSettings, SshError> {
        let values = self
            .secrets
            .resolved_settings(task)
            .map_err(|e| SshError::InvalidSettings(e.to_string()))?;
        SshSettings::parse(&values, &task.target.settings)
    }

    fn spec_settings(&self, target: &TargetSpec) -> Result<SshSettings, SshError> {
        self.settings_of(&DeployTask::for_target(target))
    }

    async fn do_apply(
        &self,
        task: &DeployTask,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, SshError> {
        let settings = self.settings_of(task)?;
        let components = select(task, &settings)?;
        let endpoint = &settings.endpoint;
        let addr = endpoint.addr();
        progress.report(format!(
            "connecting to {addr} as {} ({} mode)",
            endpoint.user,
            match settings.mode {
                Mode::Docker => "docker",
                Mode::Script => "script",
            }
        ));
        let result = match settings.mode {
            Mode::Script => {
                let (stickers, ran) = retrying(&addr, Some(progress), || async {
                    let mut host = self.pool.host(endpoint, settings.command_timeout).await;
                    script::deploy(&mut host, task, &settings, &components, progress, cancel).await
                })
                .await?;
                ApplyOutcome {
                    summary: format!(
                        "{} {} on {} ({addr}): {}",
                        task.release,
                        task.version,
                        task.target.name,
                        if ran {
                            "script ran"
                        } else {
                            "script had already run for this deployment"
                        }
                    ),
                    stickers,
                    ..ApplyOutcome::default()
                }
            }
            Mode::Docker => {
                let mut stickers = Vec::new();
                let mut lines = Vec::new();
                for component in &components {
                    if cancel.is_cancelled() {
                        return Err(SshError::Cancelled);
                    }
                    let deploy = deploy::ComponentDeploy {
                        task,
                        settings: &settings,
                        component,
                        progress,
                        cancel,
                    };
                    let outcome = retrying(&addr, Some(progress), || async {
                        let mut host = self.pool.host(endpoint, settings.command_timeout).await;
                        deploy.run(&mut host).await
                    })
                    .await?;
                    lines.push(outcome.describe(&component.name));
                    stickers.push(outcome.sticker().clone());
                }
                ApplyOutcome {
                    summary: format!(
                        "{} {} on {} ({addr}): {}",
                        task.release,
                        task.version,
                        task.target.name,
                        lines.join(", ")
                    ),
                    stickers,
                    ..ApplyOutcome::default()
                }
            }
        };
        Ok(result)
    }

    async fn do_plan(&self, task: &DeployTask) -> Result<Plan, SshError> {
        let settings = self.settings_of(task)?;
        let components = select(task, &settings)?;
        let addr = settings.endpoint.addr();
        let steps = components
            .iter()
            .map(|component| match settings.mode {
                Mode::Docker => format!(
                    "{}: on {addr}, run {} as container {} ({}), unless it already runs for this deployment",
                    component.name,
                    component.image,
                    settings.docker.container_name(&task.target.name, &component.name),
                    match settings.docker.strategy() {
                        stella_target_docker::UpdateStrategy::StartFirst => "start-first",
                        stella_target_docker::UpdateStrategy::StopFirst => "stop-first (a fixed host port is published)",
                    }
                ),
                Mode::Script => format!("{}: {}", component.name, component.image),
            })
            .chain(
                (settings.mode == Mode::Script).then(|| {
                    format!(
                        "run the script on {addr} unless it already ran for deployment {}",
                        task.deployment_id
                    )
                }),
            )
            .collect();
        Ok(Plan { steps })
    }

    async fn do_inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, SshError> {
        let settings = self.spec_settings(target)?;
        retrying(&settings.endpoint.addr(), None, || {
            self.inspect_with(target, &settings)
        })
        .await
    }

    /// Connects with the task's own settings and secrets (a target being created has
    /// no desired state yet) and inspects the host as the drift loop would, once: a
    /// check reports the first failure instead of retrying it.
    async fn do_check(&self, task: &DeployTask) -> Result<String, SshError> {
        let settings = self.settings_of(task)?;
        let observed = self.inspect_with(&task.target, &settings).await?;
        let endpoint = &settings.endpoint;
        Ok(format!(
            "{} presented the pinned host key and accepted {}'s key ({} mode); {} component{} observed",
            endpoint.addr(),
            endpoint.user,
            match settings.mode {
                Mode::Docker => "docker",
                Mode::Script => "script",
            },
            observed.len(),
            if observed.len() == 1 { "" } else { "s" }
        ))
    }

    async fn inspect_with(
        &self,
        target: &TargetSpec,
        settings: &SshSettings,
    ) -> Result<Vec<ObservedComponent>, SshError> {
        let mut host = self
            .pool
            .host(&settings.endpoint, settings.command_timeout)
            .await;
        match settings.mode {
            Mode::Docker => drift::docker_inspect(&mut host, &target.name, settings).await,
            Mode::Script => drift::script_inspect(&mut host, &target.name, settings).await,
        }
    }

    async fn do_detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, SshError> {
        let settings = self.settings_of(desired)?;
        let components = select(desired, &settings)?;
        let endpoint = &settings.endpoint;
        retrying(&endpoint.addr(), None, || async {
            let mut host = self.pool.host(endpoint, settings.command_timeout).await;
            match settings.mode {
                Mode::Docker => {
                    drift::docker_drift(&mut host, desired, &settings, &components).await
                }
                Mode::Script => {
                    drift::script_drift(&mut host, desired, &settings, &components).await
                }
            }
        })
        .await
    }
}

/// The components of the task this target runs (`components`), in release order.
fn select<'a>(
    task: &'a DeployTask,
    settings: &SshSettings,
) -> Result<Vec<&'a ComponentSpec>, SshError> {
    let names: Vec<&str> = task.components.iter().map(|c| c.name.as_str()).collect();
    let selected = settings
        .docker
        .select(&names)
        .map_err(|e| SshError::InvalidSettings(e.to_string()))?;
    Ok(task
        .components
        .iter()
        .filter(|c| selected.contains(&c.name.as_str()))
        .collect())
}

#[async_trait]
impl Target for SshTarget {
    /// Its secret values go. Pooled connections are per host and user, may serve other
    /// targets, and close when the host ends them or they fail a command.
    fn forget(&self, target: &str) {
        self.secrets.forget(target);
    }

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
        self.do_apply(task, progress, cancel)
            .await
            .map_err(|error| {
                progress.report(format!("failed: {error}"));
                tracing::error!(
                    target = %task.target.name,
                    deployment_id = %task.deployment_id,
                    error = %error_chain(&error),
                    "ssh deployment failed"
                );
                error.into()
            })
    }

    async fn inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError> {
        Ok(self.do_inspect(target).await?)
    }

    async fn check(&self, task: &DeployTask) -> Result<String, TargetError> {
        Ok(self.do_check(task).await?)
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
        let settings = self.spec_settings(target)?;
        let endpoint = &settings.endpoint;
        Ok(retrying(&endpoint.addr(), None, || async {
            let mut host = self.pool.host(endpoint, settings.command_timeout).await;
            stickers::write(&mut host, &settings.sticker_dir, sticker).await
        })
        .await?)
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        let settings = self.spec_settings(target)?;
        let endpoint = &settings.endpoint;
        let path = stickers::sticker_path(&settings.sticker_dir, &target.name, component)?;
        let file = retrying(&endpoint.addr(), None, || async {
            let mut host = self.pool.host(endpoint, settings.command_timeout).await;
            stickers::read(&mut host, &path).await
        })
        .await?;
        match file {
            stickers::StickerFile::Present(sticker) => Ok(Some(*sticker)),
            stickers::StickerFile::Absent => Ok(None),
            stickers::StickerFile::Corrupt => Err(TargetError::failed(format!(
                "the sticker file {path} on {} does not hold a sticker",
                endpoint.addr()
            ))),
        }
    }

    async fn detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, TargetError> {
        Ok(self.do_detect_drift(desired).await?)
    }
}
