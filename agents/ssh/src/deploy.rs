//! Docker mode: the `docker` kind's reconciler, run through the remote host's `docker`
//! CLI. Every step first looks at the remote state, so running the whole of it again —
//! after the connection was lost, or on a re-delivery of the task — continues where the
//! last run stopped: an image present is not pulled again, a `<name>-next` container of
//! this deployment is adopted (started if it was only created, waited for if it runs)
//! rather than created again, a component already running this deployment's container
//! only gets its sticker file checked.

use stella_agent_core::{CancellationToken, ComponentSpec, DeployTask, Progress, Sticker};
use stella_target_docker::{labels, DockerSettings, ImageRef, UpdateStrategy};

use crate::docker_cli::{self, RemoteContainer};
use crate::error::SshError;
use crate::health::HealthWait;
use crate::pool::Host;
use crate::settings::SshSettings;
use crate::stickers;

/// What happened to one component.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The right container already ran under this deployment's sticker.
    UpToDate(Sticker),
    /// A new container runs (or one an interrupted run made was finished).
    Deployed {
        sticker: Sticker,
        strategy: UpdateStrategy,
        replaced: bool,
        note: Option<&'static str>,
    },
}

impl Outcome {
    pub(crate) fn sticker(&self) -> &Sticker {
        match self {
            Outcome::UpToDate(sticker) | Outcome::Deployed { sticker, .. } => sticker,
        }
    }

    pub(crate) fn describe(&self, component: &str) -> String {
        match self {
            Outcome::UpToDate(_) => format!("{component} already up to date"),
            Outcome::Deployed {
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
                    Some(note) => format!("{component} {what} ({note})"),
                    None => format!("{component} {what}"),
                }
            }
        }
    }
}

/// The sticker in a container's labels if it is a whole one this task's deployment
/// wrote; otherwise why not.
pub(crate) fn label_sticker(
    task: &DeployTask,
    container: &RemoteContainer,
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

/// One component's deployment over one connection.
pub(crate) struct ComponentDeploy<'a> {
    pub(crate) task: &'a DeployTask,
    pub(crate) settings: &'a SshSettings,
    pub(crate) component: &'a ComponentSpec,
    pub(crate) progress: &'a Progress,
    pub(crate) cancel: &'a CancellationToken,
}

struct State {
    name: String,
    next_name: String,
    image: ImageRef,
    /// The component's containers other than `-next`.
    olds: Vec<RemoteContainer>,
}

impl ComponentDeploy<'_> {
    fn say(&self, line: impl std::fmt::Display) {
        self.progress
            .report(format!("{}: {line}", self.component.name));
    }

    fn docker(&self) -> &DockerSettings {
        &self.settings.docker
    }

    /// Brings the component to the desired state (see the module documentation).
    pub(crate) async fn run(&self, host: &mut Host) -> Result<Outcome, SshError> {
        let task = self.task;
        let target = task.target.name.as_str();
        let docker = self.docker();
        let name = docker.container_name(target, &self.component.name);
        let next_name = format!("{name}-next");
        let image = ImageRef::parse(&self.component.image).map_err(|reason| {
            SshError::InvalidSettings(format!(
                "image {:?} of component {} is not pinned by digest: {reason}",
                self.component.image, self.component.name
            ))
        })?;
        let reference = image.to_string();
        let look = docker_cli::look(
            host,
            target,
            &self.component.name,
            &reference,
            &[&name, &next_name],
        )
        .await?;
        let (leftovers, olds): (Vec<_>, Vec<_>) = look
            .containers
            .into_iter()
            .partition(|c| c.name == next_name);
        let mut state = State {
            name,
            next_name,
            image,
            olds,
        };
        let mut desired = look.image;

        // A `-next` of this deployment is this deployment's progress: adopt it.
        let adoptable = desired.as_ref().and_then(|local| {
            leftovers.iter().find(|c| {
                (c.running || c.status == "created")
                    && c.image_id == local.id
                    && c.label(labels::CONFIG_DIGEST) == Some(docker.config_digest.as_str())
                    && label_sticker(task, c).is_ok()
            })
        });
        let mut interrupted = false;
        for leftover in &leftovers {
            if adoptable.is_some_and(|a| a.id == leftover.id) {
                continue;
            }
            interrupted = true;
            self.say(format!(
                "removing container {} left by an interrupted deployment",
                leftover.name
            ));
            docker_cli::remove(host, &leftover.id).await?;
        }
        // Names held by containers this target does not manage are never touched.
        for name in [&state.name, &state.next_name] {
            let held_by = look.names.get(name.as_str());
            let ours = state
                .olds
                .iter()
                .chain(&leftovers)
                .any(|c| Some(&c.id) == held_by);
            if held_by.is_some() && !ours {
                return Err(SshError::Failed(format!(
                    "container name {name} is taken on {} by a container that target {target} does not manage",
                    host.addr()
                )));
            }
        }
        if let Some(next) = adoptable {
            let sticker = label_sticker(task, next).map_err(SshError::Failed)?;
            let has_healthcheck = desired.as_ref().is_some_and(|d| d.has_healthcheck);
            return self
                .resume(host, &mut state, next, sticker, has_healthcheck)
                .await;
        }
        if interrupted {
            self.restart_stopped(host, &mut state).await;
        }

        let mut note = None;
        if let Some(local) = &desired {
            let current = state.olds.iter().find(|c| {
                c.name == state.name
                    && c.running
                    && c.image_id == local.id
                    && c.label(labels::CONFIG_DIGEST) == Some(docker.config_digest.as_str())
            });
            if let Some(current) = current {
                match label_sticker(task, current) {
                    Ok(sticker) => {
                        let keep = current.id.clone();
                        for extra in state.olds.iter().filter(|c| c.id != keep) {
                            self.retire(host, extra, "extra").await?;
                        }
                        if stickers::ensure(host, &self.settings.sticker_dir, &sticker).await? {
                            self.say(format!(
                                "restored the sticker file from the labels of container {}",
                                state.name
                            ));
                        }
                        self.say(format!(
                            "already up to date: container {} runs {}",
                            state.name, self.component.image
                        ));
                        return Ok(Outcome::UpToDate(sticker));
                    }
                    Err(reason) => {
                        self.say(format!(
                            "container {} runs {} but {reason}: replacing it so that its labels and sticker name this deployment",
                            state.name, self.component.image
                        ));
                        note = Some("same image, new sticker");
                    }
                }
            }
        }

        let local = match desired.take() {
            Some(local) => {
                self.say(format!("image {} is present", state.image));
                local
            }
            None => {
                self.say(format!("pulling {}", state.image));
                docker_cli::pull(host, &state.image, task.credential_for(&reference))
                    .await?
                    .ok_or_else(|| {
                        SshError::Failed(format!("{reference} is not present after pulling it"))
                    })?
            }
        };
        if self.cancel.is_cancelled() {
            return Err(SshError::Cancelled);
        }

        // The sticker exists before the container: its digest is one of the labels.
        let sticker = task.sticker(self.component, self.progress.agent_id());
        let labels = labels::sticker_labels(&sticker, &state.image.digest, &docker.config_digest);
        let replaced = !state.olds.is_empty();
        let strategy = docker.strategy();
        // Start-first starts the new container at once; stop-first first stops the old.
        let start_now = strategy == UpdateStrategy::StartFirst;
        self.say(format!("creating container {}", state.next_name));
        if start_now {
            self.say(format!("starting {}", state.next_name));
        }
        let created = docker_cli::create(
            host,
            &state.next_name,
            docker,
            &state.image,
            &labels,
            local.has_healthcheck,
            start_now,
        )
        .await;
        if let Err(failure) = created {
            if !failure.is_connection_lost() {
                let _ = docker_cli::remove(host, &state.next_name).await;
            }
            return Err(failure);
        }
        self.start_and_swap(host, &state, start_now, local.has_healthcheck)
            .await?;
        self.settle(host, &state, &sticker, strategy).await?;
        Ok(Outcome::Deployed {
            sticker,
            strategy,
            replaced,
            note,
        })
    }

    /// Finishes an interrupted run of this deployment whose `-next` container exists.
    async fn resume(
        &self,
        host: &mut Host,
        state: &mut State,
        next: &RemoteContainer,
        sticker: Sticker,
        has_healthcheck: bool,
    ) -> Result<Outcome, SshError> {
        self.say(format!(
            "continuing with container {} that an earlier attempt of this deployment created ({})",
            next.name, next.status
        ));
        let replaced = !state.olds.is_empty();
        let strategy = self.docker().strategy();
        self.start_and_swap(host, state, next.running, has_healthcheck)
            .await?;
        self.settle(host, state, &sticker, strategy).await?;
        Ok(Outcome::Deployed {
            sticker,
            strategy,
            replaced,
            note: Some("continued an interrupted run"),
        })
    }

    /// Starts `-next` (unless `already_running`), start-first or stop-first, waits until
    /// it is healthy and retires the old containers; on failure removes `-next` and
    /// leaves (or puts back) the old ones running.
    async fn start_and_swap(
        &self,
        host: &mut Host,
        state: &State,
        already_running: bool,
        image_has_healthcheck: bool,
    ) -> Result<(), SshError> {
        let docker = self.docker();
        let health = HealthWait {
            container: &state.next_name,
            docker_health: docker.health_cmd.is_some() || image_has_healthcheck,
            health_url: docker.health_url.as_deref(),
            network: docker.network.as_deref(),
            timeout: docker.health_timeout,
        };
        let mut result = Ok(());
        if docker.strategy() == UpdateStrategy::StopFirst && !already_running {
            for old in state.olds.iter().filter(|c| c.running) {
                self.say(format!(
                    "stopping old container {}, up to {} s (it is kept until the new one is healthy)",
                    old.name, docker.stop_timeout_seconds
                ));
                if let Err(error) =
                    docker_cli::stop(host, &old.id, docker.stop_timeout_seconds).await
                {
                    result = Err(error);
                    break;
                }
            }
        }
        if result.is_ok() {
            result = async {
                if !already_running {
                    self.say(format!("starting {}", state.next_name));
                    docker_cli::start(host, &state.next_name).await?;
                }
                self.say(format!(
                    "waiting up to {} s for {} to be healthy ({})",
                    health.timeout.as_secs(),
                    state.next_name,
                    health.describe()
                ));
                let took = health.wait(host, self.cancel).await?;
                self.say(format!(
                    "{} is healthy after {:.1} s",
                    state.next_name,
                    took.as_secs_f64()
                ));
                Ok(())
            }
            .await;
        }
        if let Err(failure) = result {
            if failure.is_connection_lost() {
                // Nothing can be undone without a connection; the retry continues.
                return Err(failure);
            }
            match docker_cli::remove(host, &state.next_name).await {
                Ok(()) => self.say(format!("removed the new container {}", state.next_name)),
                Err(error) => {
                    tracing::error!(container = %state.next_name, error = %error, "could not remove the failed new container");
                }
            }
            // Any old container that does not run (stopped by this run, or by an
            // interrupted one) is started again.
            let now =
                docker_cli::containers(host, &self.task.target.name, Some(&self.component.name))
                    .await?;
            for old in now.iter().filter(|c| c.name == state.name && !c.running) {
                self.say(format!("starting old container {} again", old.name));
                docker_cli::start(host, &old.id).await.map_err(|restart| {
                    SshError::Failed(format!(
                        "{failure}; restarting the old container {} failed too: {restart}",
                        old.name
                    ))
                })?;
            }
            return Err(failure);
        }
        Ok(())
    }

    /// The new container takes the component's name; the sticker file is written.
    async fn settle(
        &self,
        host: &mut Host,
        state: &State,
        sticker: &Sticker,
        strategy: UpdateStrategy,
    ) -> Result<(), SshError> {
        let seconds = self.docker().stop_timeout_seconds;
        for old in &state.olds {
            self.say(format!(
                "stopping old container {}, up to {seconds} s, and removing it",
                old.name
            ));
        }
        // The sticker is staged next to its place first and moved there right after
        // the rename, in the same command.
        let path = stickers::sticker_path(
            &self.settings.sticker_dir,
            &sticker.target,
            &sticker.component,
        )?;
        let staged = host
            .stage_file(path.clone(), sticker.to_canonical_json().into_bytes())
            .await?;
        let olds: Vec<&str> = state.olds.iter().map(|c| c.id.as_str()).collect();
        docker_cli::retire_and_rename(
            host,
            &olds,
            seconds,
            &state.next_name,
            &state.name,
            Some((&staged, &path)),
        )
        .await?;
        for old in &state.olds {
            self.say(format!("removed old container {}", old.name));
        }
        self.say(format!(
            "container {} runs {} ({}); sticker written to {path}",
            state.name,
            state.image,
            match strategy {
                UpdateStrategy::StartFirst => "start-first",
                UpdateStrategy::StopFirst => "stop-first",
            },
        ));
        Ok(())
    }

    /// Stops a container gracefully and removes it.
    async fn retire(
        &self,
        host: &mut Host,
        container: &RemoteContainer,
        what: &str,
    ) -> Result<(), SshError> {
        let seconds = self.docker().stop_timeout_seconds;
        if container.running {
            self.say(format!(
                "stopping {what} container {}, up to {seconds} s",
                container.name
            ));
            docker_cli::stop(host, &container.id, seconds).await?;
        }
        docker_cli::remove(host, &container.id).await?;
        self.say(format!("removed {what} container {}", container.name));
        Ok(())
    }

    /// Starts again the component's container that an interrupted stop-first run left
    /// stopped, so this deployment proceeds from the state before it.
    async fn restart_stopped(&self, host: &mut Host, state: &mut State) {
        for old in state
            .olds
            .iter_mut()
            .filter(|c| !c.running && c.name == state.name)
        {
            self.say(format!(
                "starting container {} again, which an interrupted deployment had stopped",
                old.name
            ));
            match docker_cli::start(host, &old.id).await {
                Ok(()) => old.running = true,
                Err(error) => {
                    tracing::warn!(container = %old.name, error = %error, "could not start the container an interrupted deployment had stopped");
                }
            }
        }
    }
}
