//! The reconciler: bring one component's container to the desired image, settings and
//! sticker, start-first or stop-first, leaving the old container running on any failure.

use std::collections::HashMap;

use bollard::auth::DockerCredentials;
use bollard::models::{
    ContainerCreateBody, HealthConfig, HostConfig, PortBinding, PortMap, RestartPolicy,
    RestartPolicyNameEnum,
};
use stella_agent_core::{
    error_chain, CancellationToken, ComponentSpec, DeployTask, Progress, Sticker,
};

use crate::engine::ManagedContainer;
use crate::error::DockerError;
use crate::health::HealthWait;
use crate::image_ref::ImageRef;
use crate::labels;
use crate::settings::{DockerSettings, RestartSetting, UpdateStrategy};
use crate::DockerTarget;

/// How often Docker runs the health check, during the start period too.
const HEALTH_INTERVAL_NS: i64 = 1_000_000_000;
/// How long one `health_cmd` run may take.
const HEALTH_CHECK_TIMEOUT_NS: i64 = 2_000_000_000;
/// Failed runs in a row, after the start period, before Docker reports `unhealthy`.
const HEALTH_RETRIES: i64 = 3;

/// What happened to one component.
#[derive(Debug)]
pub(crate) enum ComponentOutcome {
    /// The right container already ran, under this deployment's sticker.
    UpToDate(Sticker),
    /// A new container was made (or one an interrupted run made was finished).
    Deployed {
        sticker: Sticker,
        strategy: UpdateStrategy,
        /// An old container was replaced.
        replaced: bool,
        /// Why, when it is not the obvious (for the summary).
        note: Option<&'static str>,
    },
}

impl ComponentOutcome {
    pub(crate) fn sticker(&self) -> &Sticker {
        match self {
            ComponentOutcome::UpToDate(sticker) | ComponentOutcome::Deployed { sticker, .. } => {
                sticker
            }
        }
    }
}

/// What `plan` found for one component.
#[derive(Debug)]
pub(crate) struct ComponentState {
    pub(crate) name: String,
    pub(crate) next_name: String,
    pub(crate) image: ImageRef,
    /// The containers labelled for this component, leftover `-next` ones excluded.
    pub(crate) containers: Vec<ManagedContainer>,
    /// `-next` containers of an interrupted deployment.
    pub(crate) leftovers: Vec<ManagedContainer>,
    /// The local image ID of the desired image, if the engine has it.
    pub(crate) desired_image_id: Option<String>,
}

impl ComponentState {
    /// The running container named `name` with the desired image and settings (its
    /// sticker still to be judged: see [`label_sticker`]).
    pub(crate) fn current(&self, settings: &DockerSettings) -> Option<&ManagedContainer> {
        let desired = self.desired_image_id.as_deref()?;
        self.containers.iter().find(|c| {
            c.name == self.name
                && c.running
                && c.image_id == desired
                && c.label(labels::CONFIG_DIGEST) == Some(settings.config_digest.as_str())
        })
    }

    /// A `-next` container that an interrupted run of this same deployment made and
    /// started, with the desired image and settings, and its sticker: that run's
    /// progress, to be finished rather than thrown away (throwing it away would remove a
    /// container that may be the only one serving, since Docker finishes a stop of the
    /// old one that the dead run had asked for).
    pub(crate) fn adoptable(
        &self,
        task: &DeployTask,
        settings: &DockerSettings,
    ) -> Option<(&ManagedContainer, Sticker)> {
        let desired = self.desired_image_id.as_deref()?;
        self.leftovers
            .iter()
            .filter(|c| {
                c.running
                    && c.image_id == desired
                    && c.label(labels::CONFIG_DIGEST) == Some(settings.config_digest.as_str())
            })
            .find_map(|c| label_sticker(task, c).ok().map(|sticker| (c, sticker)))
    }
}

/// The sticker in a container's labels, if it is a whole one that this task's deployment
/// wrote; otherwise why not, for the operator (`its sticker names deployment …`).
pub(crate) fn label_sticker(
    task: &DeployTask,
    container: &ManagedContainer,
) -> Result<Sticker, String> {
    let Some(sticker) = labels::sticker_from_labels(&container.labels) else {
        return Err(format!(
            "its ops.stella.* labels do not add up to their {}",
            labels::STICKER_DIGEST
        ));
    };
    if task.wrote(&sticker) {
        Ok(sticker)
    } else {
        Err(format!(
            "its sticker names deployment {} ({} {})",
            sticker.deployment_id, sticker.release, sticker.version
        ))
    }
}

impl DockerTarget {
    /// Looks at one component without changing anything.
    pub(crate) async fn component_state(
        &self,
        task: &DeployTask,
        settings: &DockerSettings,
        component: &ComponentSpec,
    ) -> Result<ComponentState, DockerError> {
        let target = &task.target.name;
        let name = settings.container_name(target, &component.name);
        let next_name = format!("{name}-next");
        let image =
            ImageRef::parse(&component.image).map_err(|reason| DockerError::InvalidImage {
                component: component.name.clone(),
                reference: component.image.clone(),
                reason,
            })?;
        let (leftovers, containers) = self
            .engine
            .containers(target, Some(&component.name))
            .await?
            .into_iter()
            .partition(|c| c.name == next_name);
        let desired_image_id = self.engine.local_image_id(&image.to_string()).await?;
        Ok(ComponentState {
            name,
            next_name,
            image,
            containers,
            leftovers,
            desired_image_id,
        })
    }

    /// Brings one component to the desired state.
    pub(crate) async fn deploy_component(
        &self,
        task: &DeployTask,
        settings: &DockerSettings,
        component: &ComponentSpec,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ComponentOutcome, DockerError> {
        let target = task.target.name.as_str();
        let say = |line: String| progress.report(format!("{}: {line}", component.name));
        let mut state = self.component_state(task, settings, component).await?;

        let adopt = state
            .adoptable(task, settings)
            .map(|(next, sticker)| (next.id.clone(), sticker));
        let mut adopted = None;
        let mut interrupted = false;
        for leftover in std::mem::take(&mut state.leftovers) {
            if let Some((id, sticker)) = &adopt {
                if *id == leftover.id {
                    adopted = Some((leftover, sticker.clone()));
                    continue;
                }
            }
            interrupted = true;
            say(format!(
                "removing container {} left by an interrupted deployment",
                leftover.name
            ));
            self.engine.remove(&leftover.id).await?;
            tracing::warn!(target, component = %component.name, container = %leftover.name, "removed a container left by an interrupted deployment");
        }
        if let Some((next, sticker)) = adopted {
            return self
                .resume(task, settings, &mut state, &next, sticker, &say, cancel)
                .await;
        }
        if interrupted {
            self.restart_interrupted(&mut state, &say).await;
        }
        for name in [&state.name, &state.next_name] {
            self.check_name_is_ours(target, name, &state.containers)
                .await?;
        }

        let mut note = None;
        if let Some(current) = state.current(settings) {
            match self.current_sticker(task, component, current, &say).await? {
                Ok(sticker) => {
                    let current_id = current.id.clone();
                    self.remove_extras(&state.containers, &current_id, settings, &say)
                        .await?;
                    say(format!(
                        "already up to date: container {} runs {}",
                        state.name, component.image
                    ));
                    return Ok(ComponentOutcome::UpToDate(sticker));
                }
                Err(reason) => {
                    // Labels cannot be changed: only a new container can carry this
                    // deployment's sticker.
                    say(format!(
                        "container {} runs {} but {reason}: replacing it so that its labels and sticker name this deployment",
                        state.name, component.image
                    ));
                    note = Some("same image, new sticker");
                }
            }
        }

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

        // The sticker exists before the container: its digest is one of the labels.
        let sticker = task.sticker(component, progress.agent_id());
        let labels = labels::sticker_labels(&sticker, &state.image.digest, &settings.config_digest);
        let image_has_own = self.engine.image_has_healthcheck(&image_id).await?;
        let docker_health = settings.health_cmd.is_some() || image_has_own;
        let body = container_body(
            settings,
            &state.image,
            labels,
            healthcheck(settings, image_has_own),
        );
        say(format!("creating container {}", state.next_name));
        self.engine.create(&state.next_name, body).await?;

        let health = HealthWait {
            container: &state.next_name,
            docker_health,
            health_url: settings.health_url.as_deref(),
            network: settings.network.as_deref(),
            timeout: settings.health_timeout,
        };
        let strategy = settings.strategy();
        let replaced = !state.containers.is_empty();
        match strategy {
            UpdateStrategy::StartFirst => {
                self.start_first(&state, settings, &health, &say, cancel)
                    .await?;
            }
            UpdateStrategy::StopFirst => {
                self.stop_first(&state, settings, &health, &say, cancel)
                    .await?;
            }
        }
        self.settle(&state, &sticker, strategy, &say).await?;
        Ok(ComponentOutcome::Deployed {
            sticker,
            strategy,
            replaced,
            note,
        })
    }

    /// The local image ID of `image`: `known_id` when the engine has it, else after
    /// pulling it with the task's credentials for its registry.
    pub(crate) async fn local_or_pulled(
        &self,
        task: &DeployTask,
        component: &ComponentSpec,
        image: &ImageRef,
        known_id: Option<String>,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<String, DockerError> {
        if let Some(id) = known_id {
            progress.report(format!("{}: image {image} is present", component.name));
            return Ok(id);
        }
        progress.report(format!("{}: pulling {image}", component.name));
        let credentials = credentials_for(task, image);
        let prefix = format!("{}: ", component.name);
        self.engine
            .pull(image, credentials, &prefix, progress, cancel)
            .await?;
        self.engine
            .local_image_id(&image.to_string())
            .await?
            .ok_or_else(|| DockerError::MissingAfterPull {
                image: image.to_string(),
            })
    }

    /// Finishes what an interrupted run of this deployment started: its `-next`
    /// container (`next`, adopted with its `sticker`) runs; once it is healthy the old
    /// containers go and it takes the component's name, as in a run that was not
    /// interrupted. If it does not become healthy it is removed and an old container the
    /// interrupted run had stopped is started again.
    #[allow(clippy::too_many_arguments)]
    async fn resume(
        &self,
        task: &DeployTask,
        settings: &DockerSettings,
        state: &mut ComponentState,
        next: &ManagedContainer,
        sticker: Sticker,
        say: &impl Fn(String),
        cancel: &CancellationToken,
    ) -> Result<ComponentOutcome, DockerError> {
        let target = task.target.name.as_str();
        say(format!(
            "adopting container {} left by an interrupted deployment: it already runs {} for this deployment",
            next.name, state.image
        ));
        tracing::warn!(target, container = %next.name, deployment_id = %task.deployment_id, "adopting the container an interrupted run of this deployment left");
        self.check_name_is_ours(target, &state.name, &state.containers)
            .await?;
        let docker_health = settings.health_cmd.is_some()
            || self.engine.image_has_healthcheck(&next.image_id).await?;
        let health = HealthWait {
            container: &state.next_name,
            docker_health,
            health_url: settings.health_url.as_deref(),
            network: settings.network.as_deref(),
            timeout: settings.health_timeout,
        };
        if let Err(failure) = self.wait_healthy(&health, say, cancel).await {
            self.discard_new(state, say).await;
            // A stop the dead run had asked for may have finished since the listing.
            for old in &mut state.containers {
                match self.engine.container_named(&old.id).await {
                    Ok(Some(now)) => old.running = now.running,
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(container = %old.name, error = %error_chain(&error), "could not look at the old container again");
                    }
                }
            }
            self.restart_interrupted(state, say).await;
            return Err(failure);
        }
        let replaced = !state.containers.is_empty();
        for old in &state.containers {
            self.stop_and_remove(old, settings.stop_timeout_seconds, say, "old")
                .await?;
        }
        let strategy = settings.strategy();
        self.settle(state, &sticker, strategy, say).await?;
        Ok(ComponentOutcome::Deployed {
            sticker,
            strategy,
            replaced,
            note: Some("resumed an interrupted run"),
        })
    }

    /// The last steps of a deployment, once the old containers are gone: the new
    /// container takes the component's name, and the sticker file is written.
    async fn settle(
        &self,
        state: &ComponentState,
        sticker: &Sticker,
        strategy: UpdateStrategy,
        say: &impl Fn(String),
    ) -> Result<(), DockerError> {
        self.engine.rename(&state.next_name, &state.name).await?;
        self.sticker_files.write(sticker).await?;
        tracing::info!(target = %sticker.target, component = %sticker.component, container = %state.name, image = %state.image, deployment_id = %sticker.deployment_id, ?strategy, "deployed");
        say(format!(
            "container {} runs {} ({})",
            state.name,
            state.image,
            match strategy {
                UpdateStrategy::StartFirst => "start-first",
                UpdateStrategy::StopFirst => "stop-first",
            }
        ));
        Ok(())
    }

    /// Waits until the new container is healthy, saying for how long at most first.
    pub(crate) async fn wait_healthy(
        &self,
        health: &HealthWait<'_>,
        say: &impl Fn(String),
        cancel: &CancellationToken,
    ) -> Result<(), DockerError> {
        say(format!(
            "waiting up to {} s for {} to be healthy ({})",
            health.timeout.as_secs(),
            health.container,
            health.describe()
        ));
        let took = health.wait(&self.engine, &self.http, cancel).await?;
        say(format!(
            "{} is healthy after {:.1} s",
            health.container,
            took.as_secs_f64()
        ));
        Ok(())
    }

    /// New beside old; the old ones go once the new one is healthy.
    async fn start_first(
        &self,
        state: &ComponentState,
        settings: &DockerSettings,
        health: &HealthWait<'_>,
        say: &impl Fn(String),
        cancel: &CancellationToken,
    ) -> Result<(), DockerError> {
        let started = async {
            say(format!("starting {}", state.next_name));
            self.engine.start(&state.next_name).await?;
            self.wait_healthy(health, say, cancel).await
        }
        .await;
        if let Err(failure) = started {
            self.discard_new(state, say).await;
            return Err(failure);
        }
        for old in &state.containers {
            self.stop_and_remove(old, settings.stop_timeout_seconds, say, "old")
                .await?;
        }
        Ok(())
    }

    /// Old stopped (kept) first, because both cannot bind the same host port; started
    /// again if the new one fails.
    async fn stop_first(
        &self,
        state: &ComponentState,
        settings: &DockerSettings,
        health: &HealthWait<'_>,
        say: &impl Fn(String),
        cancel: &CancellationToken,
    ) -> Result<(), DockerError> {
        let running: Vec<&ManagedContainer> =
            state.containers.iter().filter(|c| c.running).collect();
        let mut stopped = Vec::new();
        let mut result = Ok(());
        for old in &running {
            say(format!(
                "stopping old container {}, up to {} s (it is kept until the new one is healthy)",
                old.name, settings.stop_timeout_seconds
            ));
            match self
                .engine
                .stop(&old.id, settings.stop_timeout_seconds)
                .await
            {
                Ok(()) => {
                    stopped.push(*old);
                    say(format!("stopped old container {}", old.name));
                }
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = async {
                say(format!("starting {}", state.next_name));
                self.engine.start(&state.next_name).await?;
                self.wait_healthy(health, say, cancel).await
            }
            .await;
        }
        if let Err(failure) = result {
            self.discard_new(state, say).await;
            for old in stopped {
                say(format!("starting old container {} again", old.name));
                if let Err(restart_error) = self.engine.start(&old.id).await {
                    tracing::error!(container = %old.name, error = %error_chain(&restart_error), "could not start the old container again");
                    return Err(DockerError::RollbackFailed {
                        failure: Box::new(failure),
                        container: old.name.clone(),
                        restart_error: error_chain(&restart_error),
                    });
                }
                say(format!("started old container {} again", old.name));
            }
            return Err(failure);
        }
        for old in &state.containers {
            self.engine.remove(&old.id).await?;
            say(format!("removed old container {}", old.name));
        }
        Ok(())
    }

    /// Undoes the rest of an interrupted deployment: a stop-first deployment that died
    /// after stopping the old container left it stopped, so it is started again — the
    /// state before the deployment — and this deployment proceeds from there (and, if it
    /// fails, leaves it running).
    async fn restart_interrupted(&self, state: &mut ComponentState, say: &impl Fn(String)) {
        for old in state
            .containers
            .iter_mut()
            .filter(|c| !c.running && c.name == state.name)
        {
            say(format!(
                "starting container {} again, which the interrupted deployment had stopped",
                old.name
            ));
            match self.engine.start(&old.id).await {
                Ok(()) => old.running = true,
                Err(error) => {
                    tracing::warn!(container = %old.name, error = %error_chain(&error), "could not start the container an interrupted deployment had stopped");
                }
            }
        }
    }

    /// Removes the new container after a failure; a failure to remove it is logged (the
    /// next apply removes it as a leftover).
    async fn discard_new(&self, state: &ComponentState, say: &impl Fn(String)) {
        match self.engine.remove(&state.next_name).await {
            Ok(()) => say(format!("removed the new container {}", state.next_name)),
            Err(error) => {
                tracing::error!(container = %state.next_name, error = %error_chain(&error), "could not remove the failed new container");
            }
        }
    }

    /// The sticker of a container that runs the desired image and settings, if its
    /// labels hold a whole sticker of this task's deployment (the sticker file is
    /// restored from them when it is missing or differs); otherwise why not.
    async fn current_sticker(
        &self,
        task: &DeployTask,
        component: &ComponentSpec,
        current: &ManagedContainer,
        say: &impl Fn(String),
    ) -> Result<Result<Sticker, String>, DockerError> {
        let target = task.target.name.as_str();
        let sticker = match label_sticker(task, current) {
            Ok(sticker) => sticker,
            Err(reason) => return Ok(Err(reason)),
        };
        let file = match self.sticker_files.read(target, &component.name).await {
            Ok(file) => file,
            Err(error @ DockerError::StickerCorrupt { .. }) => {
                tracing::warn!(target, component = %component.name, error = %error_chain(&error), "sticker file is corrupt");
                None
            }
            Err(error) => return Err(error),
        };
        if file.as_ref() != Some(&sticker) {
            self.sticker_files.write(&sticker).await?;
            tracing::warn!(target, component = %component.name, "sticker file restored from the container labels");
            say(format!(
                "restored the sticker file from the labels of container {}",
                current.name
            ));
        }
        Ok(Ok(sticker))
    }

    /// Removes the component's containers other than `keep`.
    async fn remove_extras(
        &self,
        containers: &[ManagedContainer],
        keep: &str,
        settings: &DockerSettings,
        say: &impl Fn(String),
    ) -> Result<(), DockerError> {
        for extra in containers.iter().filter(|c| c.id != keep) {
            self.stop_and_remove(extra, settings.stop_timeout_seconds, say, "extra")
                .await?;
        }
        Ok(())
    }

    /// Stops a container gracefully (SIGKILL after `stop_timeout_seconds`) and removes
    /// it; `what` says which in the progress lines (`old`, `extra`, `slot`).
    pub(crate) async fn stop_and_remove(
        &self,
        container: &ManagedContainer,
        stop_timeout_seconds: u64,
        say: &impl Fn(String),
        what: &str,
    ) -> Result<(), DockerError> {
        say(format!(
            "stopping {what} container {}, up to {stop_timeout_seconds} s",
            container.name
        ));
        self.engine
            .stop(&container.id, stop_timeout_seconds)
            .await?;
        self.engine.remove(&container.id).await?;
        say(format!("removed {what} container {}", container.name));
        Ok(())
    }

    /// Refuses to touch a container this target does not manage.
    pub(crate) async fn check_name_is_ours(
        &self,
        target: &str,
        name: &str,
        ours: &[ManagedContainer],
    ) -> Result<(), DockerError> {
        let Some(found) = self.engine.find_container(name).await? else {
            return Ok(());
        };
        let id = found.id.unwrap_or_default();
        if ours.iter().any(|c| c.id == id) {
            Ok(())
        } else {
            Err(DockerError::NameTaken {
                name: name.to_owned(),
                target: target.to_owned(),
            })
        }
    }
}

/// The task's credentials for the registry `image` is pulled from. They go to the engine
/// only (as `X-Registry-Auth`), never into progress lines or errors.
fn credentials_for(task: &DeployTask, image: &ImageRef) -> Option<DockerCredentials> {
    let image = image.to_string();
    task.credential_for(&image)
        .map(|credential| DockerCredentials {
            username: Some(credential.username.clone()),
            password: Some(credential.password.clone()),
            serveraddress: Some(stella_agent_core::registry_of(&image).to_owned()),
            ..Default::default()
        })
}

/// The container's health check: `health_cmd` every second, or the image's own
/// `HEALTHCHECK` (Docker fills the fields left unset from the image), either way with a
/// start period of `health_timeout_seconds`, checked every second meanwhile. Docker does
/// not count failed checks in the start period, so a slow starter is not `unhealthy`
/// before Stella's wait for it ends: that wait decides (see `health`). After the start
/// period Docker's usual rule holds (3 failures in a row for `health_cmd`).
pub(crate) fn healthcheck(settings: &DockerSettings, image_has_own: bool) -> Option<HealthConfig> {
    let start_period = i64::try_from(settings.health_timeout.as_nanos()).unwrap_or(i64::MAX);
    match &settings.health_cmd {
        Some(command) => Some(HealthConfig {
            test: Some(vec!["CMD-SHELL".to_owned(), command.clone()]),
            interval: Some(HEALTH_INTERVAL_NS),
            timeout: Some(HEALTH_CHECK_TIMEOUT_NS),
            retries: Some(HEALTH_RETRIES),
            start_period: Some(start_period),
            // Engines before API 1.44 ignore it and check at `interval` anyway; later
            // ones would check only every 5 s during the start period without it.
            start_interval: Some(HEALTH_INTERVAL_NS),
        }),
        None if image_has_own => Some(HealthConfig {
            start_period: Some(start_period),
            start_interval: Some(HEALTH_INTERVAL_NS),
            ..Default::default()
        }),
        None => None,
    }
}

/// The container as the settings describe it.
pub(crate) fn container_body(
    settings: &DockerSettings,
    image: &ImageRef,
    labels: HashMap<String, String>,
    healthcheck: Option<HealthConfig>,
) -> ContainerCreateBody {
    let mut exposed_ports = HashMap::new();
    let mut port_bindings: PortMap = HashMap::new();
    for port in &settings.ports {
        exposed_ports.insert(port.container_key(), HashMap::new());
        port_bindings
            .entry(port.container_key())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: port.host_ip.clone(),
                host_port: port.host_port.map(|p| p.to_string()),
            });
    }
    let restart_policy = match settings.restart {
        RestartSetting::No => RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        },
        RestartSetting::Always => RestartPolicy {
            name: Some(RestartPolicyNameEnum::ALWAYS),
            maximum_retry_count: None,
        },
        RestartSetting::UnlessStopped => RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        },
        RestartSetting::OnFailure(count) => RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: count,
        },
    };
    let env: Vec<String> = settings
        .env
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: settings.command.clone(),
        env: (!env.is_empty()).then_some(env),
        labels: Some(labels),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        healthcheck,
        stop_timeout: i64::try_from(settings.stop_timeout_seconds).ok(),
        host_config: Some(HostConfig {
            binds: (!settings.volumes.is_empty()).then(|| settings.volumes.clone()),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            restart_policy: Some(restart_policy),
            network_mode: settings.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_health_timeout_is_the_start_period_of_any_health_check() {
        let settings = DockerSettings::parse(&BTreeMap::from([(
            "health_timeout_seconds".to_owned(),
            "20".to_owned(),
        )]))
        .expect("settings");
        assert_eq!(healthcheck(&settings, false), None);
        let own = healthcheck(&settings, true).expect("the image's check, extended");
        assert_eq!(own.test, None, "the image's test is kept");
        assert_eq!(own.retries, None);
        assert_eq!(own.start_period, Some(20_000_000_000));
    }

    #[test]
    fn container_body_follows_the_settings() {
        let settings = DockerSettings::parse(&BTreeMap::from([
            (
                "ports".to_owned(),
                "8080:80,127.0.0.1:9090:90/udp".to_owned(),
            ),
            ("env.A".to_owned(), "1".to_owned()),
            ("volumes".to_owned(), "/srv:/data:ro".to_owned()),
            ("command".to_owned(), "run --fast".to_owned()),
            ("network".to_owned(), "backend".to_owned()),
            ("health_cmd".to_owned(), "true".to_owned()),
        ]))
        .expect("settings");
        let image = ImageRef::parse(&format!("r/web@sha256:{}", "0".repeat(64))).expect("image");
        let body = container_body(
            &settings,
            &image,
            HashMap::new(),
            healthcheck(&settings, false),
        );
        assert_eq!(body.image.as_deref(), Some(image.to_string().as_str()));
        assert_eq!(body.env, Some(vec!["A=1".to_owned()]));
        assert_eq!(body.cmd, Some(vec!["run".to_owned(), "--fast".to_owned()]));
        let health = body.healthcheck.expect("healthcheck");
        assert_eq!(
            health.test,
            Some(vec!["CMD-SHELL".to_owned(), "true".to_owned()])
        );
        assert_eq!(health.interval, Some(1_000_000_000));
        // The health timeout (default 60 s) is the start period.
        assert_eq!(health.start_period, Some(60_000_000_000));
        assert_eq!(health.start_interval, Some(1_000_000_000));
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("backend"));
        assert_eq!(host.binds, Some(vec!["/srv:/data:ro".to_owned()]));
        let bindings = host.port_bindings.expect("bindings");
        assert_eq!(
            bindings["90/udp"],
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some("9090".into())
            }])
        );
        assert!(body.exposed_ports.expect("exposed").contains_key("80/tcp"));
        assert_eq!(
            host.restart_policy.and_then(|p| p.name),
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
    }
}
