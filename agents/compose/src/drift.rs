//! Drift: how a Compose project differs from the last successful deployment, and the
//! engine-event watch that makes the agent look soon after one of its containers changed.

use bollard::Docker;
use stella_agent_core::{DeployTask, DriftFinding, DriftKind};
use stella_target_docker::{labels, ImageRef};
use tokio::sync::mpsc;

use crate::engine::PROJECT_LABEL;
use crate::error::ComposeError;
use crate::files::{read_optional, sha256_hex, TargetFiles};
use crate::lockfile::ComposeDocument;
use crate::ComposeTarget;

impl ComposeTarget {
    /// The drift of one target (see the crate documentation for the kinds).
    pub(crate) async fn do_detect_drift(
        &self,
        desired: &DeployTask,
    ) -> Result<Vec<DriftFinding>, ComposeError> {
        let (settings, components) = Self::resolve_for_drift(desired)?;
        self.remember_project(&settings.project, &desired.target.name);
        let files = TargetFiles::new(
            &settings.compose_file,
            &settings.sticker_dir,
            &desired.target.name,
        )?;
        let mut findings = Vec::new();
        let lock_name = files.lock.display().to_string();

        // config_changed: the lock is not the one Stella wrote.
        let lock_text = read_optional(&files.lock).await?;
        let recorded = files.recorded_lock_sha().await?;
        let lock = lock_text
            .as_deref()
            .and_then(|text| ComposeDocument::parse(text, &files.lock).ok());
        match (&lock_text, &recorded) {
            (None, _) => findings.push(target_finding(format!(
                "the lock file {lock_name} is missing"
            ))),
            (Some(text), Some(recorded)) if sha256_hex(text) != *recorded => {
                findings.push(target_finding(format!(
                    "the lock file {lock_name} was edited: its sha256 is {}, Stella wrote {recorded}",
                    sha256_hex(text)
                )));
            }
            (Some(_), None) => findings.push(target_finding(format!(
                "the sha256 Stella recorded for the lock file {lock_name} is missing ({})",
                files.lock_sha_path().display()
            ))),
            _ => {}
        }

        let containers = self.engine.project_containers(&settings.project).await?;
        for component in &components {
            let service = settings.service_of(&component.name);
            let finding = |kind: DriftKind, detail: String| DriftFinding {
                component: component.name.clone(),
                kind,
                detail,
            };
            let image =
                ImageRef::parse(&component.image).map_err(|reason| ComposeError::InvalidImage {
                    component: component.name.clone(),
                    reference: component.image.clone(),
                    reason,
                })?;
            let running: Vec<_> = containers
                .iter()
                .filter(|c| c.service == service && c.running)
                .collect();
            let Some(container) = running.first() else {
                findings.push(finding(
                    DriftKind::Missing,
                    format!(
                        "service {service} of project {} has no running container (desired {})",
                        settings.project, component.image
                    ),
                ));
                continue;
            };
            for container in &running {
                let digest = self.engine.running_digest(container, Some(&image)).await?;
                if digest != image.digest {
                    findings.push(finding(
                        DriftKind::ImageChanged,
                        format!(
                            "container {} of service {service} runs {digest}, the lock pins {}",
                            container.name, image.digest
                        ),
                    ));
                }
            }
            if let Some(detail) = self
                .sticker_drift(desired, &files, &component.name, container)
                .await?
            {
                findings.push(finding(DriftKind::StickerTampered, detail));
            }
        }

        // unexpected: containers of services the lock does not have.
        let known = match &lock {
            Some(lock) => lock.services(),
            None => {
                let text = read_optional(&files.compose_file)
                    .await?
                    .unwrap_or_default();
                ComposeDocument::parse(&text, &files.compose_file)
                    .map(|doc| doc.services())
                    .unwrap_or_default()
            }
        };
        for container in containers
            .iter()
            .filter(|c| c.running && !known.contains(&c.service))
        {
            let digest = self.engine.running_digest(container, None).await?;
            findings.push(DriftFinding {
                component: container.service.clone(),
                kind: DriftKind::Unexpected,
                detail: format!(
                    "container {} of service {} runs {digest} in project {}, but the lock has no such service",
                    container.name, container.service, settings.project
                ),
            });
        }
        Ok(findings)
    }

    /// Why the sticker of a running covered service is not to be trusted, if it is not.
    async fn sticker_drift(
        &self,
        desired: &DeployTask,
        files: &TargetFiles,
        component: &str,
        container: &crate::engine::ProjectContainer,
    ) -> Result<Option<String>, ComposeError> {
        let path = files.sticker_path(component)?;
        let sticker = match files.read_sticker(component).await {
            Ok(Some(sticker)) => sticker,
            Ok(None) => return Ok(Some(format!("no sticker file at {}", path.display()))),
            Err(ComposeError::StickerCorrupt { .. }) => {
                return Ok(Some(format!(
                    "the sticker file {} does not hold a sticker",
                    path.display()
                )))
            }
            Err(error) => return Err(error),
        };
        let on_container = container.label(labels::STICKER_DIGEST);
        let detail = if !sticker.verify() {
            format!(
                "the sticker file {} does not match its sticker_digest",
                path.display()
            )
        } else if on_container != Some(sticker.sticker_digest.as_str()) {
            format!(
                "the sticker file {} ({}) is not the sticker on container {} ({})",
                path.display(),
                sticker.sticker_digest,
                container.name,
                on_container.unwrap_or("none")
            )
        } else if !desired.wrote(&sticker) {
            format!(
                "the sticker names deployment {} ({} {}), the desired state is deployment {} ({} {})",
                sticker.deployment_id,
                sticker.release,
                sticker.version,
                desired.deployment_id,
                desired.release,
                desired.version
            )
        } else {
            return Ok(None);
        };
        Ok(Some(detail))
    }

    /// Watches engine events of containers with a Compose project label and sends the
    /// name of the target that deploys that project (as learnt from deployments and
    /// drift checks) on `notify`; reconnects with backoff; ends when `notify` closes.
    pub(crate) fn spawn_watch(&self, notify: mpsc::UnboundedSender<String>) {
        let docker = self.engine.docker.clone();
        let projects = self.projects.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(watch_events(docker, projects, notify));
            }
            Err(_) => {
                tracing::warn!("no tokio runtime: compose events are not watched; drift is found at the interval");
            }
        }
    }
}

/// A finding about the target as a whole (the lock file), not one component.
fn target_finding(detail: String) -> DriftFinding {
    DriftFinding {
        component: String::new(),
        kind: DriftKind::ConfigChanged,
        detail,
    }
}

async fn watch_events(
    docker: Docker,
    projects: crate::Projects,
    notify: mpsc::UnboundedSender<String>,
) {
    stella_target_docker::shared::watch_labelled(docker, PROJECT_LABEL, notify, |project| {
        projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(project)
            .cloned()
    })
    .await;
}
