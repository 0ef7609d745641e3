//! Drift: how a target's containers differ from the last successful deployment, and the
//! engine-event watch that makes the agent look soon after something changed.

use bollard::Docker;
use stella_agent_core::{ComponentSpec, DeployTask, DriftFinding, DriftKind};
use tokio::sync::mpsc;

use crate::engine::ManagedContainer;
use crate::error::DockerError;
use crate::image_ref::ImageRef;
use crate::labels;
use crate::DockerTarget;

impl DockerTarget {
    /// The drift of one target: per desired component, `missing` (no running container),
    /// `image_changed` (the container's image is not the local image of the desired
    /// digest), `config_changed` (made under other settings), `sticker_tampered` (see
    /// [`DockerTarget::sticker_drift`]); and `unexpected` for a second container of a
    /// component or a running container of a component that is not desired.
    ///
    /// A container Stella did not deploy for the target that runs under a component's
    /// container name (a squatter: no `ops.stella.target` label of this target) is what
    /// runs there, so it is reported as such rather than as `missing`: `image_changed`
    /// ("a container not deployed by Stella runs … under the name …") when it runs
    /// another image, `sticker_tampered` when it runs the desired one without a sticker.
    /// Stella never removes it; a deployment fails until an operator does.
    pub(crate) async fn do_detect_drift(
        &self,
        desired: &DeployTask,
    ) -> Result<Vec<DriftFinding>, DockerError> {
        let (settings, components) = Self::resolve_for_drift(desired)?;
        let target = desired.target.name.as_str();
        let containers = self.engine.containers(target, None).await?;
        let mut findings = Vec::new();
        for component in &components {
            let name = settings.container_name(target, &component.name);
            let mine: Vec<&ManagedContainer> = containers
                .iter()
                .filter(|c| c.component() == Some(component.name.as_str()))
                .collect();
            let running: Vec<&ManagedContainer> =
                mine.iter().copied().filter(|c| c.running).collect();
            let Some(primary) = running
                .iter()
                .find(|c| c.name == name)
                .or_else(|| running.first())
                .copied()
            else {
                if let Some(squatter) = self.squatter(component, &name, &containers).await? {
                    findings.push(squatter);
                    continue;
                }
                let detail = match mine.first() {
                    Some(stopped) => format!(
                        "container {} of {} is not running",
                        stopped.name, component.image
                    ),
                    None => format!("no container runs {}", component.image),
                };
                findings.push(finding(component, DriftKind::Missing, detail));
                continue;
            };
            if running.len() > 1 {
                let names: Vec<&str> = running.iter().map(|c| c.name.as_str()).collect();
                findings.push(finding(
                    component,
                    DriftKind::Unexpected,
                    format!(
                        "{} containers run the component: {}",
                        running.len(),
                        names.join(", ")
                    ),
                ));
            }
            findings.extend(
                self.container_drift(component, primary, &settings.config_digest)
                    .await?,
            );
            if let Some(tampered) = self.sticker_drift(desired, component, primary).await? {
                findings.push(finding(component, DriftKind::StickerTampered, tampered));
            }
        }
        for container in containers.iter().filter(|c| c.running) {
            let desired_component = container
                .component()
                .is_some_and(|name| components.iter().any(|c| c.name == name));
            if !desired_component {
                let component = container.component().unwrap_or_default().to_owned();
                findings.push(DriftFinding {
                    detail: format!(
                        "container {} runs {} but component {:?} is not desired on this target",
                        container.name,
                        self.running_digest(container).await?,
                        component
                    ),
                    component,
                    kind: DriftKind::Unexpected,
                });
            }
        }
        Ok(findings)
    }

    /// `image_changed` and `config_changed` of the running container.
    async fn container_drift(
        &self,
        component: &ComponentSpec,
        container: &ManagedContainer,
        config_digest: &str,
    ) -> Result<Vec<DriftFinding>, DockerError> {
        let mut findings = Vec::new();
        let image =
            ImageRef::parse(&component.image).map_err(|reason| DockerError::InvalidImage {
                component: component.name.clone(),
                reference: component.image.clone(),
                reason,
            })?;
        let desired_id = self.engine.local_image_id(&image.to_string()).await?;
        if desired_id.as_deref() != Some(container.image_id.as_str()) {
            findings.push(finding(
                component,
                DriftKind::ImageChanged,
                format!(
                    "container {} runs {}, desired {}",
                    container.name,
                    self.running_digest(container).await?,
                    image.digest
                ),
            ));
        }
        if container.label(labels::CONFIG_DIGEST) != Some(config_digest) {
            findings.push(finding(
                component,
                DriftKind::ConfigChanged,
                format!(
                    "container {} was not made with the target's current settings",
                    container.name
                ),
            ));
        }
        Ok(findings)
    }

    /// What runs under a component's container name when no container of the target
    /// runs the component, if the name is held by a running container that is not the
    /// target's (see [`DockerTarget::do_detect_drift`]).
    async fn squatter(
        &self,
        component: &ComponentSpec,
        name: &str,
        ours: &[ManagedContainer],
    ) -> Result<Option<DriftFinding>, DockerError> {
        let Some(found) = self.engine.container_named(name).await? else {
            return Ok(None);
        };
        if !found.running || ours.iter().any(|c| c.id == found.id) {
            return Ok(None);
        }
        let image =
            ImageRef::parse(&component.image).map_err(|reason| DockerError::InvalidImage {
                component: component.name.clone(),
                reference: component.image.clone(),
                reason,
            })?;
        let desired_id = self.engine.local_image_id(&image.to_string()).await?;
        let runs = self.running_digest(&found).await?;
        let runs_here =
            format!("a container not deployed by Stella runs {runs} under the name {name}");
        let (kind, detail) = if desired_id.as_deref() == Some(found.image_id.as_str()) {
            (
                DriftKind::StickerTampered,
                format!("{runs_here}: the desired image, without a sticker"),
            )
        } else {
            (
                DriftKind::ImageChanged,
                format!("{runs_here}, desired {}", image.digest),
            )
        };
        Ok(Some(finding(component, kind, detail)))
    }

    /// Why the sticker of a running component is not to be trusted, if it is not: its
    /// labels do not add up to the sticker digest they carry (labels edited when the
    /// container was made again by hand); the sticker file is missing, does not verify or
    /// is not the sticker in the labels; the sticker names another image than desired; or
    /// it is the sticker of another deployment than the desired state's (the container
    /// runs the right image, but its sticker does not tell how it got there).
    async fn sticker_drift(
        &self,
        desired: &DeployTask,
        component: &ComponentSpec,
        container: &ManagedContainer,
    ) -> Result<Option<String>, DockerError> {
        let target = desired.target.name.as_str();
        let path = self.sticker_files.path(target, &component.name)?;
        let file = match self.sticker_files.read(target, &component.name).await {
            Ok(file) => file,
            Err(DockerError::StickerCorrupt { .. }) => {
                return Ok(Some(format!(
                    "the sticker file {} does not hold a sticker",
                    path.display()
                )))
            }
            Err(error) => return Err(error),
        };
        let Some(from_labels) = labels::sticker_from_labels(&container.labels) else {
            let edited = file
                .as_ref()
                .filter(|file| {
                    file.verify()
                        && container.label(labels::STICKER_DIGEST)
                            == Some(file.sticker_digest.as_str())
                })
                .map(|file| labels::differences(&container.labels, file))
                .unwrap_or_default();
            return Ok(Some(if edited.is_empty() {
                format!(
                    "the ops.stella.* labels of container {} do not add up to its {}",
                    container.name,
                    labels::STICKER_DIGEST
                )
            } else {
                format!(
                    "the labels of container {} were edited: {}",
                    container.name,
                    edited.join("; ")
                )
            }));
        };
        let Some(sticker) = file else {
            return Ok(Some(format!("no sticker file at {}", path.display())));
        };
        let on_container = from_labels.sticker_digest.as_str();
        let detail = if !sticker.verify() {
            format!(
                "the sticker file {} does not match its sticker_digest",
                path.display()
            )
        } else if on_container != sticker.sticker_digest {
            format!(
                "the sticker file ({}) is not the sticker of container {} ({on_container})",
                sticker.sticker_digest, container.name,
            )
        } else if sticker.image != component.image {
            format!(
                "the sticker names {}, desired {}",
                sticker.image, component.image
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

    /// Watches engine events for containers with an `ops.stella.target` label and sends
    /// the target's name on `notify`; reconnects with backoff; ends when `notify` closes.
    pub(crate) fn spawn_watch(&self, notify: mpsc::UnboundedSender<String>) {
        let docker = self.engine.docker.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(watch_events(docker, notify));
            }
            Err(_) => {
                tracing::warn!("no tokio runtime: docker events are not watched; drift is found at the interval");
            }
        }
    }
}

async fn watch_events(docker: Docker, notify: mpsc::UnboundedSender<String>) {
    crate::shared::watch_labelled(docker, labels::TARGET, notify, |target| {
        Some(target.to_owned())
    })
    .await;
}

fn finding(component: &ComponentSpec, kind: DriftKind, detail: String) -> DriftFinding {
    DriftFinding {
        component: component.name.clone(),
        kind,
        detail,
    }
}
