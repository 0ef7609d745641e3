//! The reconciler: write the lock, pull the pinned images, `up -d` the lock, wait until
//! the project is up, write the stickers — or, on failure, show the failing service's
//! logs and bring the previous lock back.

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use stella_agent_core::{
    error_chain, ApplyOutcome, CancellationToken, ComponentSpec, DeployTask, Plan, Progress,
    Sticker,
};
use stella_target_docker::ImageRef;

use crate::cli::Generation;
use crate::error::ComposeError;
use crate::files::{read_optional, sha256_hex, TargetFiles};
use crate::health::{Expected, ProjectWait};
use crate::lockfile::{ComposeDocument, Pin};
use crate::settings::ComposeSettings;
use crate::ComposeTarget;

/// How long `up -d` may take beyond the health timeout (it waits for `depends_on`
/// conditions itself, and creates and stops containers).
const UP_EXTRA_TIME: Duration = Duration::from_secs(120);
/// How long one image pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// How many log lines of a failing service are shown.
const LOG_LINES: usize = 50;

/// One covered component, as this deployment pins it.
#[derive(Debug, Clone)]
pub(crate) struct Pinned {
    pub(crate) component: ComponentSpec,
    pub(crate) service: String,
    pub(crate) image: ImageRef,
    pub(crate) sticker: Sticker,
}

/// What a deployment will write, worked out without changing anything.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) files: TargetFiles,
    pub(crate) pinned: Vec<Pinned>,
    /// The services `up` starts.
    pub(crate) services: Vec<String>,
    /// The lock this deployment writes.
    pub(crate) lock: String,
    /// The lock in place now.
    pub(crate) current: Option<String>,
    /// What a failure restores: the lock before this deployment.
    pub(crate) previous: Option<String>,
}

impl ComposeTarget {
    /// Reads the operator's file and the locks in place, and renders this deployment's
    /// lock. A covered component whose service the file lacks is refused here, before
    /// anything changes. Stickers this deployment already wrote into the current or the
    /// previous lock are kept, so a re-delivery (or a redeploy of the same task) renders
    /// the very same bytes.
    pub(crate) async fn prepare(
        &self,
        task: &DeployTask,
        settings: &ComposeSettings,
        components: &[&ComponentSpec],
        agent_id: &str,
    ) -> Result<Prepared, ComposeError> {
        let files = TargetFiles::new(
            &settings.compose_file,
            &settings.sticker_dir,
            &task.target.name,
        )?;
        let text =
            read_optional(&files.compose_file)
                .await?
                .ok_or_else(|| ComposeError::ComposeFile {
                    path: files.compose_file.clone(),
                    reason: "does not exist on the agent's host".to_owned(),
                })?;
        let document = ComposeDocument::parse(&text, &files.compose_file)?;
        let current = read_optional(&files.lock).await?;
        let previous_file = read_optional(&files.previous_lock).await?;
        let parse = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| ComposeDocument::parse(t, &files.lock).ok())
        };
        let (current_doc, previous_doc) = (parse(&current), parse(&previous_file));

        let mut pinned: Vec<Pinned> = Vec::new();
        for component in components {
            let service = settings.service_of(&component.name).to_owned();
            if !document.has_service(&service) {
                return Err(ComposeError::InvalidSettings(format!(
                    "component {} runs as service {service}, which {} does not define (it has: {}); set service.{}=<service>",
                    component.name,
                    files.compose_file.display(),
                    document.services().join(", "),
                    component.name
                )));
            }
            if let Some(other) = pinned.iter().find(|p| p.service == service) {
                return Err(ComposeError::InvalidSettings(format!(
                    "components {} and {} both run as service {service}",
                    other.component.name, component.name
                )));
            }
            let image =
                ImageRef::parse(&component.image).map_err(|reason| ComposeError::InvalidImage {
                    component: component.name.clone(),
                    reference: component.image.clone(),
                    reason,
                })?;
            let kept = [&current_doc, &previous_doc]
                .into_iter()
                .flatten()
                .find_map(|doc| doc.sticker_of(&service, task, &component.name));
            let sticker = kept.unwrap_or_else(|| task.sticker(component, agent_id));
            pinned.push(Pinned {
                component: (*component).clone(),
                service,
                image,
                sticker,
            });
        }
        let pins: Vec<Pin<'_>> = pinned
            .iter()
            .map(|p| Pin {
                service: &p.service,
                sticker: &p.sticker,
            })
            .collect();
        let lock = document.render_lock(&pins)?;
        // The lock this deployment's earlier run wrote replaced the one to go back to.
        let previous = match &current {
            Some(current) if *current != lock => Some(current.clone()),
            Some(_) => previous_file,
            None => None,
        };
        Ok(Prepared {
            files,
            pinned,
            services: document.started_services(),
            lock,
            current,
            previous,
        })
    }

    pub(crate) async fn do_plan(&self, task: &DeployTask) -> Result<Plan, ComposeError> {
        let (settings, components) = Self::resolve_for_apply(task)?;
        let prepared = self.prepare(task, &settings, &components, "").await?;
        let mut steps = Vec::new();
        let lock = prepared.files.lock.display();
        for pin in &prepared.pinned {
            steps.push(format!(
                "pin service {} to {} (component {}) in {lock}",
                pin.service, pin.image, pin.component.name
            ));
            if self
                .engine
                .local_image_id(&pin.image.to_string())
                .await?
                .is_none()
            {
                steps.push(format!("pull {}", pin.image));
            }
        }
        let others: Vec<&String> = prepared
            .services
            .iter()
            .filter(|s| !prepared.pinned.iter().any(|p| &&p.service == s))
            .collect();
        if !others.is_empty() {
            steps.push(format!(
                "keep services {} as {} says",
                others
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                prepared.files.compose_file.display()
            ));
        }
        steps.push(format!(
            "run compose up -d --remove-orphans of {lock} as project {}",
            settings.project
        ));
        steps.push(format!(
            "wait up to {} s until services {} run and are healthy",
            settings.health_timeout.as_secs(),
            prepared.services.join(", ")
        ));
        Ok(Plan { steps })
    }

    pub(crate) async fn do_apply(
        &self,
        task: &DeployTask,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, ComposeError> {
        let (settings, components) = Self::resolve_for_apply(task)?;
        let lock = self.target_lock(&task.target.name);
        let _guard = lock.lock().await;
        self.remember_project(&settings.project, &task.target.name);
        let generation = self.cli.resolve(settings.compose_version).await?;
        let say = |line: String| progress.report(line);
        say(format!(
            "reading {} (compose {}, project {})",
            settings.compose_file.display(),
            generation.as_str(),
            settings.project
        ));
        let prepared = self
            .prepare(task, &settings, &components, progress.agent_id())
            .await?;
        let files = &prepared.files;
        let summary_of = |what: &str| {
            let pins: Vec<String> = prepared
                .pinned
                .iter()
                .map(|p| format!("{} → {}", p.service, p.image.digest))
                .collect();
            format!(
                "{} {} on {}: compose project {} ({}) {what}: {}",
                task.release,
                task.version,
                task.target.name,
                settings.project,
                generation.as_str(),
                pins.join(", ")
            )
        };

        // A re-delivery: the lock is in place and the project runs it.
        let recorded = files.recorded_lock_sha().await?;
        if prepared.current.as_deref() == Some(prepared.lock.as_str())
            && recorded.as_deref() == Some(sha256_hex(&prepared.lock).as_str())
        {
            if let Some(covered) = self.expected(&prepared.pinned).await? {
                let wait = self.project_wait(&settings, &prepared, &covered);
                match wait.is_up(&self.engine, &self.http).await? {
                    Ok(()) => {
                        self.ensure_stickers(&prepared, &say).await?;
                        say(format!(
                            "already up to date: {} is in place and project {} runs it healthy",
                            files.lock.display(),
                            settings.project
                        ));
                        return Ok(self.outcome(&prepared, summary_of("already up to date")));
                    }
                    Err(reason) => say(format!(
                        "{} is in place but {reason}: running up again",
                        files.lock.display()
                    )),
                }
            }
        }

        say(format!(
            "writing {} ({})",
            files.lock.display(),
            prepared
                .pinned
                .iter()
                .map(|p| format!("service {} pinned to {}", p.service, p.image))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        files
            .write_lock(&prepared.lock, prepared.current.as_deref())
            .await?;

        let mut covered = BTreeMap::new();
        for pin in &prepared.pinned {
            let image_id = self.ensure_image(task, pin, progress, cancel).await?;
            covered.insert(
                pin.service.clone(),
                Expected {
                    image_id,
                    sticker_digest: pin.sticker.sticker_digest.clone(),
                },
            );
        }
        if cancel.is_cancelled() {
            return Err(ComposeError::Cancelled);
        }

        let result = async {
            self.up(generation, &settings, &files.lock, &say, cancel)
                .await
                .map_err(|error| (error, None))?;
            let wait = self.project_wait(&settings, &prepared, &covered);
            say(format!(
                "waiting up to {} s until services {} run and are healthy{}",
                settings.health_timeout.as_secs(),
                prepared.services.join(", "),
                settings
                    .health_url
                    .as_deref()
                    .map(|url| format!(", then GET {url} answers 2xx"))
                    .unwrap_or_default()
            ));
            let took = wait
                .wait(&self.engine, &self.http, cancel)
                .await
                .map_err(|failure| (failure.error, failure.container))?;
            say(format!(
                "project {} is up: every service runs and is healthy ({} ms)",
                settings.project,
                took.as_millis()
            ));
            Ok(())
        }
        .await;
        if let Err((failure, container)) = result {
            if matches!(failure, ComposeError::Cancelled) {
                return Err(failure);
            }
            tracing::error!(target = %task.target.name, project = %settings.project, deployment_id = %task.deployment_id, error = %error_chain(&failure), "compose deployment failed");
            say(format!("deployment failed: {failure}"));
            if let Some((service, id)) = container {
                let lines = self.engine.log_tail(&id, LOG_LINES).await;
                say(format!(
                    "last {} log lines of service {service}:",
                    lines.len()
                ));
                for line in lines {
                    say(format!("{service} | {line}"));
                }
            }
            return Err(self
                .restore(generation, &settings, &prepared, failure, &say)
                .await);
        }

        self.ensure_stickers(&prepared, &say).await?;
        tracing::info!(target = %task.target.name, project = %settings.project, deployment_id = %task.deployment_id, "compose project deployed");
        Ok(self.outcome(&prepared, summary_of("deployed")))
    }

    /// The local image of each pin, for a re-delivery check; `None` when one is missing.
    async fn expected(
        &self,
        pinned: &[Pinned],
    ) -> Result<Option<BTreeMap<String, Expected>>, ComposeError> {
        let mut covered = BTreeMap::new();
        for pin in pinned {
            let Some(image_id) = self.engine.local_image_id(&pin.image.to_string()).await? else {
                return Ok(None);
            };
            covered.insert(
                pin.service.clone(),
                Expected {
                    image_id,
                    sticker_digest: pin.sticker.sticker_digest.clone(),
                },
            );
        }
        Ok(Some(covered))
    }

    fn project_wait<'a>(
        &self,
        settings: &'a ComposeSettings,
        prepared: &'a Prepared,
        covered: &'a BTreeMap<String, Expected>,
    ) -> ProjectWait<'a> {
        ProjectWait {
            project: &settings.project,
            services: &prepared.services,
            covered,
            health_url: settings.health_url.as_deref(),
            timeout: settings.health_timeout,
        }
    }

    /// Pulls a pinned image unless the engine has it; returns its local image ID.
    async fn ensure_image(
        &self,
        task: &DeployTask,
        pin: &Pinned,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<String, ComposeError> {
        let reference = pin.image.to_string();
        if let Some(id) = self.engine.local_image_id(&reference).await? {
            progress.report(format!("{}: image {reference} is present", pin.service));
            return Ok(id);
        }
        progress.report(format!(
            "{}: pulling {reference}, up to {} s",
            pin.service,
            PULL_TIMEOUT.as_secs()
        ));
        let credentials = credentials_for(task, &reference);
        let prefix = format!("{}: ", pin.service);
        tokio::time::timeout(
            PULL_TIMEOUT,
            self.engine
                .pull(&pin.image, credentials, &prefix, progress, cancel),
        )
        .await
        .map_err(|_| ComposeError::Command {
            command: format!("pull of {reference}"),
            what: format!("did not finish within {} s", PULL_TIMEOUT.as_secs()),
            output: String::new(),
            lines: Vec::new(),
        })??;
        self.engine
            .local_image_id(&reference)
            .await?
            .ok_or(ComposeError::MissingAfterPull { image: reference })
    }

    /// `up -d --remove-orphans` of `file`, its output as progress lines.
    async fn up(
        &self,
        generation: Generation,
        settings: &ComposeSettings,
        file: &std::path::Path,
        say: &impl Fn(String),
        cancel: &CancellationToken,
    ) -> Result<(), ComposeError> {
        let timeout = settings.health_timeout + UP_EXTRA_TIME;
        say(format!(
            "running {}, up to {} s",
            self.cli.up_line(generation, &settings.project, file),
            timeout.as_secs()
        ));
        match self
            .cli
            .up(generation, &settings.project, file, timeout, cancel)
            .await
        {
            Ok(output) => {
                for line in output.lines {
                    say(format!("compose: {line}"));
                }
                Ok(())
            }
            Err(error) => {
                if let ComposeError::Command { lines, .. } = &error {
                    for line in lines {
                        say(format!("compose: {line}"));
                    }
                }
                Err(error)
            }
        }
    }

    /// After a failure: the previous lock back in place and up, or why not.
    async fn restore(
        &self,
        generation: Generation,
        settings: &ComposeSettings,
        prepared: &Prepared,
        failure: ComposeError,
        say: &impl Fn(String),
    ) -> ComposeError {
        let files = &prepared.files;
        let Some(previous) = &prepared.previous else {
            let aftermath = format!(
                "there was no previous lock to restore: project {} is left as compose left it",
                settings.project
            );
            say(aftermath.clone());
            return ComposeError::Failed {
                failure: Box::new(failure),
                aftermath,
            };
        };
        say(format!(
            "restoring the previous lock in {}",
            files.lock.display()
        ));
        let restored = async {
            files.restore_lock(previous).await?;
            // Not cancellable: the project must not be left half-way.
            let cancel = CancellationToken::new();
            self.up(generation, settings, &files.lock, say, &cancel)
                .await?;
            let services = ComposeDocument::parse(previous, &files.lock)
                .map(|doc| doc.started_services())
                .unwrap_or_else(|_| prepared.services.clone());
            let covered = BTreeMap::new();
            let wait = ProjectWait {
                project: &settings.project,
                services: &services,
                covered: &covered,
                health_url: settings.health_url.as_deref(),
                timeout: settings.health_timeout,
            };
            say(format!(
                "waiting up to {} s until the restored services {} run and are healthy",
                settings.health_timeout.as_secs(),
                services.join(", ")
            ));
            wait.wait(&self.engine, &self.http, &cancel)
                .await
                .map_err(|failure| failure.error)?;
            Ok::<(), ComposeError>(())
        }
        .await;
        let aftermath = match restored {
            Ok(()) => {
                "the previous lock was restored and its services run healthy again".to_owned()
            }
            Err(error) => {
                tracing::error!(project = %settings.project, error = %error_chain(&error), "restoring the previous lock failed");
                format!(
                    "the previous lock was restored but bringing it back failed too: {}",
                    error_chain(&error)
                )
            }
        };
        say(aftermath.clone());
        ComposeError::Failed {
            failure: Box::new(failure),
            aftermath,
        }
    }

    /// Writes each pin's sticker file unless it already holds that sticker.
    async fn ensure_stickers(
        &self,
        prepared: &Prepared,
        say: &impl Fn(String),
    ) -> Result<(), ComposeError> {
        for pin in &prepared.pinned {
            let file = prepared
                .files
                .read_sticker(&pin.component.name)
                .await
                .unwrap_or(None);
            if file.as_ref() != Some(&pin.sticker) {
                prepared.files.write_sticker(&pin.sticker).await?;
                say(format!(
                    "wrote sticker {}",
                    prepared.files.sticker_path(&pin.component.name)?.display()
                ));
            }
        }
        Ok(())
    }

    fn outcome(&self, prepared: &Prepared, summary: String) -> ApplyOutcome {
        ApplyOutcome {
            summary,
            stickers: prepared.pinned.iter().map(|p| p.sticker.clone()).collect(),
            ..ApplyOutcome::default()
        }
    }
}

/// The task's credentials for the registry `image` is pulled from. They go to the engine
/// only (as `X-Registry-Auth`), never into progress lines or errors.
fn credentials_for(task: &DeployTask, image: &str) -> Option<DockerCredentials> {
    task.credential_for(image)
        .map(|credential| DockerCredentials {
            username: Some(credential.username.clone()),
            password: Some(credential.password.clone()),
            serveraddress: Some(stella_agent_core::registry_of(image).to_owned()),
            ..Default::default()
        })
}
