//! The `ecs` target kind: an existing AWS ECS service, driven through the ECS API by an
//! agent anywhere that can reach it (nothing runs on the service's side).
//!
//! # Settings
//!
//! See [`EcsSettings`]: `region`, `cluster`, `service` (required), `endpoint_url`,
//! `access_key_secret` and `secret_key_secret` (both `${secret.NAME}`, with an optional
//! `session_token_secret`; without them the agent's `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`), `container.<component>` (default:
//! the container named like the component), `deploy_timeout_seconds` (900),
//! `poll_interval_ms` (5000), and `components`.
//!
//! # Deploy
//!
//! See `deploy`: a new revision of the service's current task definition with each
//! selected component's container image replaced by the release's `repo@sha256:…`
//! (tagged with the stickers), `UpdateService` to it, then the deployment's
//! `rolloutState` followed until `COMPLETED`, `FAILED` (the circuit breaker's rollback
//! named) or `deploy_timeout_seconds`; then the stickers as tags on the service. A
//! release whose images are those of the revision the service ran before the last
//! deploy (a rollback) puts the service back on that revision.
//!
//! # Credentials
//!
//! The keys are held in memory only (the task's secret values, remembered per target
//! for the drift loop, and the SDK client's credentials provider); they are never
//! logged, shown in errors or written to disk.
//!
//! Architecture invariant: this crate knows the ECS API and agent-core's `Target` trait,
//! nothing of the control plane or the protocol.

mod api;
mod deploy;
mod drift;
mod error;
mod settings;
mod stickers;

use std::collections::HashMap;
use std::sync::Mutex;

use stella_agent_core::{
    async_trait, error_chain, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask,
    DriftFinding, ObservedComponent, Plan, Progress, Sticker, Target, TargetError, TargetSpec,
};

pub use crate::error::EcsError;
pub use crate::settings::{
    AwsKeys, EcsSettings, CONTAINER_KEY_PREFIX, DEFAULT_DEPLOY_TIMEOUT_SECONDS,
    DEFAULT_POLL_INTERVAL_MS, ECS_KEYS,
};
pub use crate::stickers::{
    component_key, DESIRED_COUNT as DESIRED_COUNT_TAG,
    PREVIOUS_TASK_DEFINITION as PREVIOUS_TASK_DEFINITION_TAG,
};

use crate::api::Api;

/// The kind name.
pub const KIND: &str = "ecs";

/// The `ecs` target kind.
#[derive(Default)]
pub struct EcsTarget {
    /// One SDK client per region, endpoint and keys (each holds a connection pool).
    clients: Mutex<HashMap<String, aws_sdk_ecs::Client>>,
    /// The secret values the last task of each target came with, in memory only: the
    /// `Target` methods that get only a `TargetSpec` need the keys the settings name.
    secrets: stella_agent_core::RememberedSecrets,
}

// By hand: the clients hold credentials, the map secret values; neither is shown.
impl std::fmt::Debug for EcsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        f.debug_struct("EcsTarget")
            .field("clients", &clients)
            .finish_non_exhaustive()
    }
}

impl EcsTarget {
    /// A target kind with no client yet.
    pub fn new() -> Self {
        EcsTarget::default()
    }

    /// The settings of a task, secret references resolved.
    fn settings_of(&self, task: &DeployTask) -> Result<EcsSettings, EcsError> {
        let values = self
            .secrets
            .resolved_settings(task)
            .map_err(|e| EcsError::InvalidSettings(e.to_string()))?;
        EcsSettings::parse(&values, &task.target.settings, |name| {
            std::env::var(name).ok()
        })
    }

    fn api(&self, settings: &EcsSettings) -> Api {
        let key = settings.client_key();
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let client = clients
            .entry(key)
            .or_insert_with(|| api::client(settings))
            .clone();
        Api::new(client, settings)
    }

    async fn do_apply(
        &self,
        task: &DeployTask,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, EcsError> {
        let settings = self.settings_of(task)?;
        let components = select(task, &settings)?;
        progress.report(format!(
            "ecs service {} in cluster {} ({}{}), credentials from the {}",
            settings.service,
            settings.cluster,
            settings.region,
            settings
                .endpoint_url
                .as_deref()
                .map_or(String::new(), |url| format!(", endpoint {url}")),
            settings.keys.origin
        ));
        let api = self.api(&settings);
        let deployed = deploy::Deploy {
            api: &api,
            task,
            settings: &settings,
            components: &components,
            progress,
            cancel,
        }
        .run()
        .await?;
        Ok(ApplyOutcome {
            summary: deployed.summary,
            stickers: deployed.stickers,
            ..ApplyOutcome::default()
        })
    }

    fn spec_settings(&self, target: &TargetSpec) -> Result<EcsSettings, EcsError> {
        self.settings_of(&DeployTask::for_target(target))
    }
}

/// Whether two stickers agree on every field the tags hold once for all components.
fn shared_fields_equal(a: &Sticker, b: &Sticker) -> bool {
    a.release == b.release
        && a.version == b.version
        && a.environment == b.environment
        && a.target == b.target
        && a.deployment_id == b.deployment_id
        && a.decision_id == b.decision_id
        && a.deployed_at == b.deployed_at
        && a.agent_id == b.agent_id
}

/// The components of the task this target deploys (`components`), in release order.
fn select<'a>(
    task: &'a DeployTask,
    settings: &EcsSettings,
) -> Result<Vec<&'a ComponentSpec>, EcsError> {
    if let Some(wanted) = &settings.components {
        if let Some(unknown) = wanted
            .iter()
            .find(|name| !task.components.iter().any(|c| &c.name == *name))
        {
            return Err(EcsError::InvalidSettings(format!(
                "components names {unknown}, which release {} {} does not have",
                task.release, task.version
            )));
        }
    }
    let selected: Vec<&ComponentSpec> = task
        .components
        .iter()
        .filter(|c| settings.selects(&c.name))
        .collect();
    if selected.is_empty() {
        return Err(EcsError::InvalidSettings(
            "no component of the release is selected".to_owned(),
        ));
    }
    if let Some(component) = selected.iter().find(|c| c.digest().is_none()) {
        return Err(EcsError::Failed(format!(
            "the image of {} is not pinned by digest: {}",
            component.name, component.image
        )));
    }
    Ok(selected)
}

#[async_trait]
impl Target for EcsTarget {
    /// Its secrets go, and every cached client with them (a client holds the
    /// credentials it was made with, possibly this target's; the others are made again
    /// on their next use).
    fn forget(&self, target: &str) {
        self.secrets.forget(target);
        self.clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    fn kind(&self) -> &'static str {
        KIND
    }

    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError> {
        let settings = self.settings_of(task)?;
        let components = select(task, &settings)?;
        let mut steps: Vec<String> = components
            .iter()
            .map(|c| {
                format!(
                    "{}: container {} runs {}",
                    c.name,
                    settings.container_of(&c.name),
                    c.image
                )
            })
            .collect();
        steps.push(format!(
            "register a revision of the task definition of service {} (cluster {}) with these images, \
             update the service, wait for its rollout ({} s at most), tag service and revision",
            settings.service,
            settings.cluster,
            settings.deploy_timeout.as_secs()
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
        // The plan is advisory: a reconciler looks again at what runs now.
        self.do_apply(task, progress, cancel)
            .await
            .map_err(|error| {
                progress.report(format!("failed: {error}"));
                tracing::error!(
                    target = %task.target.name,
                    deployment_id = %task.deployment_id,
                    error = %error_chain(&error),
                    "ecs deployment failed"
                );
                error.into()
            })
    }

    async fn inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError> {
        let settings = self.spec_settings(target)?;
        Ok(drift::inspect(&self.api(&settings), &settings).await?)
    }

    /// Describes the service with the task's own credentials (a target being created
    /// has none remembered): what a deploy would start from.
    async fn check(&self, task: &DeployTask) -> Result<String, TargetError> {
        let settings = self.settings_of(task)?;
        let api = self.api(&settings);
        let service = api.service().await?;
        let Some(service) = service.filter(|s| s.status == "ACTIVE") else {
            return Err(EcsError::ServiceNotFound {
                cluster: settings.cluster.clone(),
                service: settings.service.clone(),
                state: "does not exist or is not ACTIVE".to_owned(),
            }
            .into());
        };
        let observed = drift::inspect(&api, &settings).await?.len();
        Ok(format!(
            "service {} in cluster {} runs {} ({} of {} tasks running); {observed} component{} observed",
            settings.service,
            settings.cluster,
            service.task_definition,
            service.running_count,
            service.desired_count,
            if observed == 1 { "" } else { "s" }
        ))
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
        let api = self.api(&settings);
        let service = api.active_service().await?;
        // The fields all components share are one tag each: the other components'
        // stickers are kept when they share them with this one, and dropped otherwise
        // (they would no longer verify); the next deploy writes them again.
        let digest_prefix = format!("{}sticker-digest:", stickers::PREFIX);
        let mut stickers: Vec<Sticker> = service
            .tags
            .keys()
            .filter_map(|key| key.strip_prefix(digest_prefix.as_str()))
            // A hashed component name cannot be read back; its sticker is rewritten by
            // the next deploy.
            .filter(|c| *c != sticker.component && stickers::component_key(c) == *c)
            .filter_map(|c| stickers::read(&service.tags, &target.name, c))
            .filter(|s| shared_fields_equal(s, sticker))
            .collect();
        stickers.insert(0, sticker.clone());
        let mut tags = stickers::tags_of(&stickers)?;
        for key in [stickers::PREVIOUS_TASK_DEFINITION, stickers::DESIRED_COUNT] {
            if let Some(value) = service.tags.get(key) {
                tags.insert(key.to_owned(), value.clone());
            }
        }
        stickers::check_count(&service.tags, &tags)?;
        api.retag(&service.arn, &service.tags, &tags).await?;
        Ok(())
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        let settings = self.spec_settings(target)?;
        let api = self.api(&settings);
        let Some(service) = api.service().await? else {
            return Ok(None);
        };
        Ok(stickers::read(&service.tags, &target.name, component))
    }

    async fn detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, TargetError> {
        let settings = self.settings_of(desired)?;
        let components = select(desired, &settings)?;
        Ok(drift::detect(&self.api(&settings), &settings, desired, &components).await?)
    }
}
