//! The `nomad` target kind: a HashiCorp Nomad job, driven through Nomad's HTTP API by
//! one agent (nothing of Stella runs on the Nomad cluster).
//!
//! # Settings
//!
//! See [`NomadSettings`]: `address` (`http(s)://host:4646`, required), `job` (the job
//! ID, required), `job_file` (a job specification on the agent's host, JSON or HCL, used
//! instead of the registered job as the base of each registration), `namespace`
//! (`default`), `region`, `token_secret` (`${secret.NAME}`: the ACL token, sent by the
//! control plane with each task and kept in memory only), `ca_file`, `task.<component>`
//! (`GROUP/TASK` or `TASK`; by default the task named like the component),
//! `deploy_timeout_seconds` (600) and `components`.
//!
//! # A deployment
//!
//! 1. `GET /v1/job/:id` (or the job file); each component's task gets
//!    `Config.image = repo@sha256:…`; the job's `Meta` gets one sticker per component
//!    (`stella.sticker.<component>`: the canonical sticker JSON) and `stella.spec`, the
//!    digest of the task groups as registered (images left out).
//! 2. `PUT /v1/jobs` with `EnforceIndex` and the `JobModifyIndex` read in 1, so an edit
//!    made meanwhile is not overwritten.
//! 3. When Nomad made no new version (an unchanged job: a re-delivery of the same
//!    deployment keeps its stickers, so its spec is unchanged), the job's latest
//!    deployment says whether it runs; otherwise the evaluation, then the deployment of
//!    the new version are followed with blocking queries (`index`, `wait`,
//!    `X-Nomad-Index`) until `successful`, `failed` or `cancelled`, the placed, healthy
//!    and unhealthy allocations of each task group reported as they change.
//! 4. `failed` or `deploy_timeout_seconds` passed: the last stable version before it is
//!    registered again (`POST /v1/job/:id/revert`, `EnforcePriorVersion`) and the Stella
//!    deployment fails with Nomad's reason. `cancelled` (a newer version was registered)
//!    fails it without reverting.
//!
//! # Drift
//!
//! A purged or stopped job is `missing`; a task whose image is not the desired digest
//! is `image_changed`; a sticker edited in `Meta` is `sticker_tampered`; task groups
//! that differ from `stella.spec` (a version registered outside Stella) are
//! `config_changed`. Each target whose task the agent has run is watched with a blocking
//! query on its job (see `watch`): a change to the job starts a drift round at once.
//!
//! Architecture invariant: this crate knows Nomad's HTTP API and agent-core's `Target`
//! trait, nothing of the control plane or the protocol.

mod client;
mod deploy;
mod drift;
mod error;
mod jobspec;
mod settings;
mod watch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use stella_agent_core::{
    async_trait, error_chain, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask,
    DriftFinding, ObservedComponent, Plan, Progress, Sticker, Target, TargetError, TargetSpec,
};

pub use crate::client::{NomadClient, Registered, BLOCKING_WAIT};
pub use crate::error::NomadError;
pub use crate::jobspec::{
    META_DEPLOYMENT, META_RELEASE, META_SPEC, META_STICKER_PREFIX, META_VERSION,
};
pub use crate::settings::{
    NomadSettings, TaskRef, DEFAULT_DEPLOY_TIMEOUT_SECONDS, DEFAULT_NAMESPACE, NOMAD_KEYS,
};

/// The kind name.
pub const KIND: &str = "nomad";

/// The `nomad` target kind.
#[derive(Debug, Default)]
pub struct NomadTarget {
    /// The secret values the last task of each target came with, in memory only: the
    /// `Target` methods that get only a `TargetSpec` need the token `token_secret` names.
    secrets: stella_agent_core::RememberedSecrets,
    /// The settings of each target seen, for the watcher.
    seen: Arc<Mutex<HashMap<String, NomadSettings>>>,
}

impl NomadTarget {
    /// The target kind.
    pub fn new() -> Self {
        NomadTarget::default()
    }

    /// The settings of a task, secret references resolved.
    fn settings_of(&self, task: &DeployTask) -> Result<NomadSettings, NomadError> {
        let values = self
            .secrets
            .resolved_settings(task)
            .map_err(|e| NomadError::InvalidSettings(e.to_string()))?;
        let settings = NomadSettings::parse(&values, &task.target.settings)?;
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(task.target.name.clone(), settings.clone());
        Ok(settings)
    }

    fn spec_settings(&self, target: &TargetSpec) -> Result<NomadSettings, NomadError> {
        self.settings_of(&DeployTask::for_target(target))
    }

    async fn do_apply(
        &self,
        task: &DeployTask,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, NomadError> {
        let settings = self.settings_of(task)?;
        let client = NomadClient::new(&settings)?;
        let components = select(task, &settings)?;
        deploy::JobDeploy {
            task,
            settings: &settings,
            client: &client,
            components,
            progress,
            cancel,
        }
        .run()
        .await
    }

    async fn do_inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, NomadError> {
        let settings = self.spec_settings(target)?;
        let job = NomadClient::new(&settings)?.job(&settings.job).await?;
        Ok(drift::observed(job.as_ref(), &settings))
    }

    /// Reads the job with the task's own settings and token (a target being created has
    /// no desired state yet): what a deploy would start from.
    async fn do_check(&self, task: &DeployTask) -> Result<String, NomadError> {
        let settings = self.settings_of(task)?;
        let job = NomadClient::new(&settings)?.job(&settings.job).await?;
        let Some(found) = job.as_ref() else {
            return match &settings.job_file {
                Some(file) => Ok(format!(
                    "{} answers; job {:?} is not registered yet: the first deploy registers it from {}",
                    settings.address,
                    settings.job,
                    file.display()
                )),
                None => Err(NomadError::JobNotFound {
                    job: settings.job.clone(),
                    namespace: settings.namespace.clone(),
                }),
            };
        };
        let observed = drift::observed(job.as_ref(), &settings).len();
        Ok(format!(
            "{} answers; job {:?} version {} ({}); {observed} component{} observed",
            settings.address,
            settings.job,
            found
                .get("Version")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            found
                .get("Status")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown status"),
            if observed == 1 { "" } else { "s" }
        ))
    }

    async fn do_detect_drift(
        &self,
        desired: &DeployTask,
    ) -> Result<Vec<DriftFinding>, TargetError> {
        let settings = self.settings_of(desired)?;
        let components: Vec<String> = select(desired, &settings)?
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let job = NomadClient::new(&settings)?.job(&settings.job).await?;
        let mut findings = drift::job_findings(job.as_ref(), &settings.job, &components);
        let gone = job
            .as_ref()
            .is_none_or(|j| j.get("Stop").and_then(serde_json::Value::as_bool) == Some(true));
        if !gone {
            let mut only_ours = desired.clone();
            only_ours
                .components
                .retain(|c| components.contains(&c.name));
            findings.extend(stella_agent_core::sticker_drift(self, &only_ours).await?);
        }
        Ok(findings)
    }
}

/// The components of the task this target runs (`components`), in release order.
fn select<'a>(
    task: &'a DeployTask,
    settings: &NomadSettings,
) -> Result<Vec<&'a ComponentSpec>, NomadError> {
    let selected: Vec<&ComponentSpec> = task
        .components
        .iter()
        .filter(|c| settings.runs(&c.name))
        .collect();
    if selected.is_empty() && !task.components.is_empty() {
        return Err(NomadError::InvalidSettings(format!(
            "components names none of the release's components ({})",
            task.components
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(selected)
}

#[async_trait]
impl Target for NomadTarget {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError> {
        let settings = self.settings_of(task)?;
        let components = select(task, &settings)?;
        let mut steps: Vec<String> = components
            .iter()
            .map(|c| {
                let task_ref = settings.task_of(&c.name);
                format!(
                    "{}: set Config.image of task {}{} to {}",
                    c.name,
                    task_ref.group.map(|g| format!("{g}/")).unwrap_or_default(),
                    task_ref.task,
                    c.image
                )
            })
            .collect();
        steps.push(format!(
            "register job {} in namespace {} at {} with the stickers in its Meta, then follow its deployment",
            settings.job, settings.namespace, settings.address
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
                    "nomad deployment failed"
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

    /// Stickers live in the job's `Meta` and are written by registering the job, as part
    /// of a deployment; writing one alone would make a new job version, which Stella
    /// does not do behind the operator's back.
    async fn write_sticker(
        &self,
        target: &TargetSpec,
        sticker: &Sticker,
    ) -> Result<(), TargetError> {
        let current = self.read_sticker(target, &sticker.component).await?;
        if current.as_ref() == Some(sticker) {
            return Ok(());
        }
        Err(TargetError::failed(format!(
            "the sticker of {} on nomad target {} is written by a deployment (it lives in the job's Meta)",
            sticker.component, target.name
        )))
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        let settings = self.spec_settings(target)?;
        let job = NomadClient::new(&settings)?.job(&settings.job).await?;
        Ok(job.as_ref().and_then(|job| drift::sticker(job, component)))
    }

    async fn detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, TargetError> {
        self.do_detect_drift(desired).await
    }

    fn watch(&self, notify: tokio::sync::mpsc::UnboundedSender<String>) {
        tokio::spawn(watch::run(self.seen.clone(), notify));
    }

    /// Its secrets and its settings go; its job's watcher stops (see `watch::run`).
    fn forget(&self, target: &str) {
        self.secrets.forget(target);
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(target);
    }
}
