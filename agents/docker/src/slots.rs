//! Slots (RFC 0005, "Slots"): a release deployed beside the target's own ("stable")
//! containers, for a router to send traffic to, and retired afterwards.
//!
//! Per component, a slot is one container `<stable container name>-<slot>` labelled
//! [`labels::SLOT`], made exactly as the stable container would be (image, environment,
//! settings, health check) except that every published port loses its host port: the
//! engine picks a free one, so a slot runs beside a stable container that binds a fixed
//! port, and the outcome reports the ports bound. A slot carries no sticker, is not the
//! target's desired state, and is invisible to the stable deployment, `inspect` and drift
//! (see `Engine::containers`).
//!
//! A slot takes no traffic while it is (re)deployed — the rollout driver routes away
//! first — so a slot container that is not the desired one is simply removed before the
//! new one is made, and a new one that fails is removed: there is nothing old to keep.

use stella_agent_core::{
    check_slot_name, error_chain, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, Plan,
    Progress, TargetSpec,
};

use crate::deploy::{container_body, healthcheck};
use crate::engine::ManagedContainer;
use crate::error::DockerError;
use crate::health::HealthWait;
use crate::image_ref::ImageRef;
use crate::labels;
use crate::settings::{DockerSettings, DEFAULT_STOP_TIMEOUT_SECONDS};
use crate::DockerTarget;

/// The suffix of the container a stable deployment starts beside the old one: a slot of
/// that name would take the container name a stable deployment needs.
const NEXT: &str = "next";

/// Checks a slot name for this kind: agent-core's rule, and not `next` (see [`NEXT`]).
pub(crate) fn check_slot(slot: &str) -> Result<(), DockerError> {
    check_slot_name(slot).map_err(DockerError::InvalidSlot)?;
    if slot == NEXT {
        return Err(DockerError::InvalidSlot(format!(
            "slot {NEXT:?} cannot be used on a docker target: a stable deployment names its new container <name>-{NEXT}"
        )));
    }
    Ok(())
}

/// The container name of `component` in `slot`: `<stable container name>-<slot>`.
pub(crate) fn slot_container_name(
    settings: &DockerSettings,
    target: &str,
    component: &str,
    slot: &str,
) -> String {
    format!("{}-{slot}", settings.container_name(target, component))
}

/// The settings a slot container is made with: the target's, with every published port
/// left to the engine (host address, container port and protocol kept). The config
/// digest stays the target's, so a slot made under other settings is replaced.
pub(crate) fn slot_settings(settings: &DockerSettings) -> DockerSettings {
    let mut slot = settings.clone();
    for port in &mut slot.ports {
        port.host_port = None;
    }
    slot
}

/// What was found for one component in a slot.
#[derive(Debug)]
struct SlotState {
    name: String,
    image: ImageRef,
    /// The slot's containers of this component.
    containers: Vec<ManagedContainer>,
    /// The local image ID of the desired image, if the engine has it.
    desired_image_id: Option<String>,
}

impl SlotState {
    /// The running slot container with the desired image and settings.
    fn current(&self, settings: &DockerSettings) -> Option<&ManagedContainer> {
        let desired = self.desired_image_id.as_deref()?;
        self.containers.iter().find(|c| {
            c.name == self.name
                && c.running
                && c.image_id == desired
                && c.label(labels::CONFIG_DIGEST) == Some(settings.config_digest.as_str())
        })
    }
}

/// What a slot deploy did to one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotOutcome {
    UpToDate,
    Deployed { replaced: bool },
}

impl DockerTarget {
    async fn slot_state(
        &self,
        task: &DeployTask,
        slot: &str,
        settings: &DockerSettings,
        component: &ComponentSpec,
    ) -> Result<SlotState, DockerError> {
        let target = task.target.name.as_str();
        let image =
            ImageRef::parse(&component.image).map_err(|reason| DockerError::InvalidImage {
                component: component.name.clone(),
                reference: component.image.clone(),
                reason,
            })?;
        let containers = self
            .engine
            .slot_containers(target, slot, Some(&component.name))
            .await?;
        let desired_image_id = self.engine.local_image_id(&image.to_string()).await?;
        Ok(SlotState {
            name: slot_container_name(settings, target, &component.name, slot),
            image,
            containers,
            desired_image_id,
        })
    }

    /// What a deploy to `slot` would do, changing nothing.
    pub(crate) async fn plan_slot(
        &self,
        task: &DeployTask,
        slot: &str,
    ) -> Result<Plan, DockerError> {
        check_slot(slot)?;
        let (settings, components) = Self::resolve_for_apply(task)?;
        let mut steps = Vec::new();
        for component in components {
            let state = self.slot_state(task, slot, &settings, component).await?;
            let prefix = &component.name;
            if let Some(current) = state.current(&settings) {
                steps.push(format!(
                    "{prefix}: slot container {} already runs {}",
                    current.name, state.image
                ));
                continue;
            }
            if state.desired_image_id.is_none() {
                steps.push(format!("{prefix}: pull {}", state.image));
            }
            if !state.containers.is_empty() {
                let old: Vec<&str> = state.containers.iter().map(|c| c.name.as_str()).collect();
                steps.push(format!(
                    "{prefix}: remove slot container {} (slot {slot} takes no traffic while it is deployed)",
                    old.join(", ")
                ));
            }
            steps.push(format!(
                "{prefix}: create slot container {} from {} beside {}, host ports picked by the engine",
                state.name,
                state.image,
                settings.container_name(&task.target.name, &component.name)
            ));
        }
        Ok(Plan { steps })
    }

    /// Deploys `task` to `slot`: per component, the slot container runs the desired image
    /// and settings afterwards, and the outcome lists the ports it bound.
    pub(crate) async fn apply_slot(
        &self,
        task: &DeployTask,
        slot: &str,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, DockerError> {
        check_slot(slot)?;
        let (settings, components) = Self::resolve_for_apply(task)?;
        let lock = self.target_lock(&task.target.name);
        let _guard = lock.lock().await;
        let mut lines = Vec::new();
        let mut endpoints = Vec::new();
        for component in components {
            if cancel.is_cancelled() {
                return Err(DockerError::Cancelled);
            }
            let outcome = self
                .deploy_slot_component(task, slot, &settings, component, progress, cancel)
                .await
                .inspect_err(|error| {
                    tracing::error!(
                        target = %task.target.name,
                        slot,
                        component = %component.name,
                        deployment_id = %task.deployment_id,
                        error = %error_chain(error),
                        "docker slot deployment failed"
                    );
                })?;
            lines.push(match outcome {
                SlotOutcome::UpToDate => format!("{} already up to date", component.name),
                SlotOutcome::Deployed { replaced: false } => format!("{} deployed", component.name),
                SlotOutcome::Deployed { replaced: true } => format!("{} replaced", component.name),
            });
            let name = slot_container_name(&settings, &task.target.name, &component.name, slot);
            endpoints.extend(self.engine.endpoints(&component.name, &name).await?);
        }
        Ok(ApplyOutcome {
            summary: format!(
                "{} {} in slot {slot} of {}: {}",
                task.release,
                task.version,
                task.target.name,
                lines.join(", ")
            ),
            stickers: Vec::new(),
            slot: Some(slot.to_owned()),
            endpoints,
        })
    }

    async fn deploy_slot_component(
        &self,
        task: &DeployTask,
        slot: &str,
        settings: &DockerSettings,
        component: &ComponentSpec,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<SlotOutcome, DockerError> {
        let target = task.target.name.as_str();
        let say = |line: String| progress.report(format!("{}: {line}", component.name));
        let state = self.slot_state(task, slot, settings, component).await?;

        if let Some(current) = state.current(settings) {
            let current_id = current.id.clone();
            for extra in state.containers.iter().filter(|c| c.id != current_id) {
                self.stop_and_remove(extra, settings.stop_timeout_seconds, &say, "extra slot")
                    .await?;
            }
            say(format!(
                "already up to date: slot container {} runs {}",
                state.name, state.image
            ));
            return Ok(SlotOutcome::UpToDate);
        }
        self.check_name_is_ours(target, &state.name, &state.containers)
            .await?;

        let image_id = self
            .local_or_pulled(
                task,
                component,
                &state.image,
                state.desired_image_id.clone(),
                progress,
                cancel,
            )
            .await?;
        if cancel.is_cancelled() {
            return Err(DockerError::Cancelled);
        }

        let replaced = !state.containers.is_empty();
        for old in &state.containers {
            self.stop_and_remove(old, settings.stop_timeout_seconds, &say, "old slot")
                .await?;
        }

        let labels = labels::slot_labels(
            task,
            slot,
            &component.name,
            &state.image.to_string(),
            &state.image.digest,
            &settings.config_digest,
        );
        let image_has_own = self.engine.image_has_healthcheck(&image_id).await?;
        let body = container_body(
            &slot_settings(settings),
            &state.image,
            labels,
            healthcheck(settings, image_has_own),
        );
        say(format!("creating slot container {}", state.name));
        self.engine.create(&state.name, body).await?;
        let health = HealthWait {
            container: &state.name,
            docker_health: settings.health_cmd.is_some() || image_has_own,
            health_url: settings.health_url.as_deref(),
            network: settings.network.as_deref(),
            timeout: settings.health_timeout,
        };
        let started = async {
            say(format!("starting {}", state.name));
            self.engine.start(&state.name).await?;
            self.wait_healthy(&health, &say, cancel).await
        }
        .await;
        if let Err(failure) = started {
            // Nothing old to keep: a slot that does not work is no slot.
            match self.engine.remove(&state.name).await {
                Ok(()) => say(format!("removed the failed slot container {}", state.name)),
                Err(error) => {
                    tracing::error!(container = %state.name, error = %error_chain(&error), "could not remove the failed slot container");
                }
            }
            return Err(failure);
        }
        tracing::info!(target, slot, component = %component.name, container = %state.name, image = %state.image, deployment_id = %task.deployment_id, "deployed to slot");
        say(format!(
            "slot container {} runs {}",
            state.name, state.image
        ));
        Ok(SlotOutcome::Deployed { replaced })
    }

    /// Stops and removes every container of `slot` of `target` (with the target's stop
    /// timeout); a slot with none succeeds.
    pub(crate) async fn retire_slot(
        &self,
        target: &TargetSpec,
        slot: &str,
        progress: &Progress,
    ) -> Result<ApplyOutcome, DockerError> {
        check_slot(slot)?;
        // A slot must go even when the settings have become invalid since it was made:
        // only the stop timeout is needed from them.
        let stop_timeout_seconds = match DockerSettings::parse(&target.settings) {
            Ok(settings) => settings.stop_timeout_seconds,
            Err(error) => {
                tracing::warn!(target = %target.name, slot, error = %error_chain(&error), "invalid settings; retiring the slot with the default stop timeout");
                progress.report(format!(
                    "the target's settings are invalid ({error}); stopping with the default timeout of {DEFAULT_STOP_TIMEOUT_SECONDS} s"
                ));
                DEFAULT_STOP_TIMEOUT_SECONDS
            }
        };
        let lock = self.target_lock(&target.name);
        let _guard = lock.lock().await;
        let containers = self
            .engine
            .slot_containers(&target.name, slot, None)
            .await?;
        for container in &containers {
            let component = container.component().unwrap_or("?");
            let say = |line: String| progress.report(format!("{component}: {line}"));
            self.stop_and_remove(container, stop_timeout_seconds, &say, "slot")
                .await?;
        }
        tracing::info!(target = %target.name, slot, removed = containers.len(), "retired slot");
        let removed = match containers.len() {
            0 => "nothing to remove".to_owned(),
            1 => "removed 1 container".to_owned(),
            n => format!("removed {n} containers"),
        };
        Ok(ApplyOutcome {
            summary: format!("retired slot {slot}: {removed}"),
            stickers: Vec::new(),
            slot: Some(slot.to_owned()),
            endpoints: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_slot_is_named_after_the_stable_container_and_publishes_no_fixed_port() {
        let settings = DockerSettings::parse(&BTreeMap::from([(
            "ports".to_owned(),
            "127.0.0.1:8080:80,9090:90/udp,7000".to_owned(),
        )]))
        .expect("settings");
        assert_eq!(
            slot_container_name(&settings, "app", "web", "canary"),
            "app-web-canary"
        );
        let slot = slot_settings(&settings);
        assert!(slot.ports.iter().all(|p| p.host_port.is_none()));
        assert_eq!(slot.ports[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(
            slot.ports
                .iter()
                .map(|p| p.container_key())
                .collect::<Vec<_>>(),
            ["80/tcp", "90/udp", "7000/tcp"]
        );
        assert_eq!(slot.config_digest, settings.config_digest);

        let named = DockerSettings::parse(&BTreeMap::from([(
            "container_name".to_owned(),
            "shop".to_owned(),
        )]))
        .expect("settings");
        assert_eq!(
            slot_container_name(&named, "app", "web", "green"),
            "shop-green"
        );
    }

    #[test]
    fn slot_names_follow_agent_core_and_next_is_taken() {
        assert!(check_slot("canary").is_ok());
        for bad in ["Bad!", "stable", "next", ""] {
            let error = check_slot(bad).expect_err(bad);
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
    }
}
