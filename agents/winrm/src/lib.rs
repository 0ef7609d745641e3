//! The `winrm` target kind: Windows hosts that run no agent, driven over WS-Management
//! (MS-WSMV) by one agent — the Windows analogue of the `ssh` kind's script mode.
//!
//! # Settings
//!
//! See [`WinrmSettings`]: `endpoint` (`https://HOST:5986/wsman`, or
//! `http://HOST:5985/wsman` with NTLM and message encryption), `user`,
//! `password_secret` (`${secret.NAME}`: the control plane sends the password with the
//! task; it is kept in memory only), `auth` (`ntlm` | `basic`), `ca_file`, `script`,
//! `sticker_dir` (default `C:\ProgramData\Stella\stickers`),
//! `operation_timeout_seconds` (20), `command_timeout_seconds` (300), `components`.
//!
//! # A deployment
//!
//! 1. The target's sticker directory is read (one command): a `.done-<deployment_id>`
//!    marker there means the script already ran for this deployment (a re-delivery).
//! 2. Otherwise the script runs in PowerShell (`-EncodedCommand`) with the release in
//!    `$env:STELLA_*` variables, its output lines streamed into the deployment log; a
//!    non-zero exit code fails the deployment with the script's stderr.
//! 3. The marker and one sticker per component are written (one command), and older
//!    markers removed.
//!
//! Every remote command is a shell Create, Command, Receive long polls, Delete (see
//! `shell`). A rollback is a deployment of the previous release: the script runs again
//! with its variables.
//!
//! Architecture invariant: this crate knows WS-Management, PowerShell and agent-core's
//! `Target` trait, nothing of the control plane or the protocol.

mod drift;
mod encryption;
mod error;
mod powershell;
mod settings;
mod shell;
mod soap;
mod stickers;
mod transport;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use stella_agent_core::{
    async_trait, error_chain, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask,
    DriftFinding, ObservedComponent, Plan, Progress, Sticker, Target, TargetError, TargetSpec,
};

pub use crate::error::WinrmError;
pub use crate::settings::{
    Auth, Endpoint, Password, WinrmSettings, DEFAULT_COMMAND_TIMEOUT_SECONDS,
    DEFAULT_OPERATION_TIMEOUT_SECONDS, DEFAULT_STICKER_DIR, WINRM_KEYS,
};
pub use crate::shell::{powershell_command, run as run_powershell, Output, StreamKind};
pub use crate::soap::{
    Request, ACTION_COMMAND, ACTION_CREATE, ACTION_DELETE, ACTION_RECEIVE, ACTION_SIGNAL,
    RESOURCE_URI_CMD,
};
pub use crate::transport::Transport;

use crate::stickers::StickerFile;

/// The kind name.
pub const KIND: &str = "winrm";

/// The `winrm` target kind.
#[derive(Debug, Default)]
pub struct WinrmTarget {
    /// The secret values the last task of each target came with, in memory only: the
    /// `Target` methods that get only a `TargetSpec` need the password.
    secrets: stella_agent_core::RememberedSecrets,
    /// One channel per endpoint (so an NTLM-authenticated connection is reused).
    transports: Mutex<HashMap<String, Arc<Transport>>>,
}

impl WinrmTarget {
    /// A target kind with no connection yet.
    pub fn new() -> Self {
        WinrmTarget::default()
    }

    /// The settings of a task, secret references resolved.
    fn settings_of(&self, task: &DeployTask) -> Result<WinrmSettings, WinrmError> {
        let values = self
            .secrets
            .resolved_settings(task)
            .map_err(|e| WinrmError::InvalidSettings(e.to_string()))?;
        WinrmSettings::parse(&values, &task.target.settings)
    }

    fn spec_settings(&self, target: &TargetSpec) -> Result<WinrmSettings, WinrmError> {
        self.settings_of(&DeployTask::for_target(target))
    }

    /// The channel to the target's endpoint, made on first use and again when the
    /// endpoint, the user, the password or the trust changes.
    fn transport(&self, settings: &WinrmSettings) -> Result<Arc<Transport>, WinrmError> {
        let endpoint = &settings.endpoint;
        let key = format!(
            "{}|{}|{}|{:?}|{:?}",
            endpoint.url,
            endpoint.user,
            endpoint.auth.as_str(),
            endpoint.ca_file,
            endpoint.operation_timeout
        );
        let mut transports = self
            .transports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(transport) = transports.get(&key) {
            if transport.endpoint() == endpoint {
                return Ok(transport.clone());
            }
        }
        let transport = Arc::new(Transport::new(endpoint)?);
        transports.insert(key, transport.clone());
        Ok(transport)
    }

    async fn do_apply(
        &self,
        task: &DeployTask,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, WinrmError> {
        let settings = self.settings_of(task)?;
        let components = select(task, &settings);
        let transport = self.transport(&settings)?;
        let endpoint = &settings.endpoint;
        let target = task.target.name.as_str();
        progress.report(format!(
            "connecting to {} as {} ({} authentication)",
            endpoint.url,
            endpoint.user,
            endpoint.auth.as_str()
        ));
        let marker = stickers::marker_name(&task.deployment_id)?;
        let dir = stickers::read_dir(&transport, &settings, target).await?;
        let ran = if dir.files.contains_key(&marker) {
            progress.report(format!(
                "the script already ran for deployment {} ({marker} exists); not running it again",
                task.deployment_id
            ));
            false
        } else {
            if cancel.is_cancelled() {
                return Err(WinrmError::Cancelled);
            }
            let env = powershell::script_env(task, &components);
            progress.report(format!(
                "running the script on {} as {} (up to {} s)",
                endpoint.addr(),
                endpoint.user,
                settings.command_timeout.as_secs()
            ));
            let lines = progress.clone();
            let output = shell::run(
                &transport,
                "the script",
                &powershell::deploy_script(&env, &settings.script),
                settings.command_timeout,
                cancel,
                move |kind, line| match kind {
                    StreamKind::Stdout => lines.report(format!("script: {line}")),
                    StreamKind::Stderr => lines.report(format!("script (stderr): {line}")),
                },
            )
            .await?;
            if output.exit_code != 0 {
                return Err(stickers::remote(&transport, "the script", &output));
            }
            progress.report("the script succeeded".to_owned());
            true
        };
        let mut files = Vec::new();
        if ran {
            files.push((marker.clone(), task.deployment_id.clone().into_bytes()));
        }
        let mut written = Vec::new();
        for component in &components {
            let name = stickers::file_name(&component.name)?;
            let sticker = match dir.sticker(&component.name) {
                StickerFile::Present(sticker)
                    if !ran && sticker.verify() && task.wrote(&sticker) =>
                {
                    *sticker
                }
                _ => {
                    let sticker = task.sticker(component, progress.agent_id());
                    files.push((name, sticker.to_canonical_json().into_bytes()));
                    sticker
                }
            };
            written.push(sticker);
        }
        let stale_markers = dir
            .files
            .keys()
            .any(|name| name.starts_with(".done-") && *name != marker);
        if !files.is_empty() || stale_markers {
            let count = files.len();
            stickers::write(&transport, &settings, target, files, Some(&marker)).await?;
            progress.report(format!(
                "{count} file(s) written to {}",
                stickers::target_dir(&settings.sticker_dir, target)?
            ));
        }
        Ok(ApplyOutcome {
            summary: format!(
                "{} {} on {} ({}): {}",
                task.release,
                task.version,
                target,
                endpoint.addr(),
                if ran {
                    "script ran"
                } else {
                    "script had already run for this deployment"
                }
            ),
            stickers: written,
            ..ApplyOutcome::default()
        })
    }

    async fn do_detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, WinrmError> {
        let settings = self.settings_of(desired)?;
        let components = select(desired, &settings);
        let transport = self.transport(&settings)?;
        let target = desired.target.name.as_str();
        let dir = stickers::read_dir(&transport, &settings, target).await?;
        let path = stickers::target_dir(&settings.sticker_dir, target)?;
        Ok(drift::findings(&dir, &path, desired, &components))
    }

    /// Logs in with the task's own password (a target being created has none
    /// remembered) and reads the target's sticker directory, as a drift round would.
    async fn do_check(&self, task: &DeployTask) -> Result<String, WinrmError> {
        let settings = self.settings_of(task)?;
        let transport = self.transport(&settings)?;
        let dir = stickers::read_dir(&transport, &settings, &task.target.name).await?;
        let observed = drift::observed(&dir).len();
        Ok(format!(
            "{} accepted {} and ran PowerShell; {observed} component{} observed",
            settings.endpoint.url,
            settings.endpoint.user,
            if observed == 1 { "" } else { "s" }
        ))
    }

    async fn do_inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, WinrmError> {
        let settings = self.spec_settings(target)?;
        let transport = self.transport(&settings)?;
        let dir = stickers::read_dir(&transport, &settings, &target.name).await?;
        Ok(drift::observed(&dir))
    }
}

/// The components of the task this target deploys (`components`), in release order.
fn select<'a>(task: &'a DeployTask, settings: &WinrmSettings) -> Vec<&'a ComponentSpec> {
    task.components
        .iter()
        .filter(|c| {
            settings
                .components
                .as_ref()
                .is_none_or(|wanted| wanted.contains(&c.name))
        })
        .collect()
}

#[async_trait]
impl Target for WinrmTarget {
    /// Its secrets go, and every pooled transport with them (one may be authenticated
    /// with this target's password; the others are made again on their next use).
    fn forget(&self, target: &str) {
        self.secrets.forget(target);
        self.transports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError> {
        let settings = self.settings_of(task)?;
        let mut steps: Vec<String> = select(task, &settings)
            .iter()
            .map(|c| format!("{}: {}", c.name, c.image))
            .collect();
        steps.push(format!(
            "run the script on {} unless it already ran for deployment {}",
            settings.endpoint.addr(),
            task.deployment_id
        ));
        Ok(Plan { steps })
    }

    async fn apply(
        &self,
        task: &DeployTask,
        _plan: &Plan,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError> {
        self.do_apply(task, progress, cancel)
            .await
            .map_err(|error| {
                progress.report(format!("failed: {error}"));
                tracing::error!(
                    target = %task.target.name,
                    deployment_id = %task.deployment_id,
                    error = %error_chain(&error),
                    "winrm deployment failed"
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
        let transport = self.transport(&settings)?;
        let name = stickers::file_name(&sticker.component)?;
        stickers::write(
            &transport,
            &settings,
            &target.name,
            vec![(name, sticker.to_canonical_json().into_bytes())],
            None,
        )
        .await?;
        Ok(())
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        let settings = self.spec_settings(target)?;
        let transport = self.transport(&settings)?;
        stickers::check_name("component", component)?;
        let dir = stickers::read_dir(&transport, &settings, &target.name).await?;
        match dir.sticker(component) {
            StickerFile::Present(sticker) => Ok(Some(*sticker)),
            StickerFile::Absent => Ok(None),
            StickerFile::Corrupt => Err(TargetError::failed(format!(
                "the sticker file of {component} on {} does not hold a sticker",
                settings.endpoint.addr()
            ))),
        }
    }

    async fn detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, TargetError> {
        Ok(self.do_detect_drift(desired).await?)
    }
}
