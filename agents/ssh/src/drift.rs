//! What runs on the host compared with the desired state (the last successful
//! deployment). Docker mode sees the containers and the sticker files and reports the
//! `docker` kind's drift kinds; script mode can only check the sticker files.

use stella_agent_core::{ComponentSpec, DeployTask, DriftFinding, DriftKind, ObservedComponent};
use stella_target_docker::{labels, ImageRef};

use crate::docker_cli::{self, RemoteContainer};
use crate::error::SshError;
use crate::pool::Host;
use crate::settings::SshSettings;
use crate::stickers::{self, StickerFile};

fn finding(component: &ComponentSpec, kind: DriftKind, detail: String) -> DriftFinding {
    DriftFinding {
        component: component.name.clone(),
        kind,
        detail,
    }
}

/// The digest of the image a container runs: its `ops.stella.image` label's when that
/// reference's local image is the container's, else from the image's `RepoDigests`
/// (the labelled repository first), else the image ID.
pub(crate) async fn running_digest(
    host: &mut Host,
    container: &RemoteContainer,
) -> Result<String, SshError> {
    let labelled = container
        .label(labels::IMAGE)
        .and_then(|image| ImageRef::parse(image).ok());
    if let Some(image) = &labelled {
        let local = docker_cli::image(host, &image.to_string()).await?;
        if local.is_some_and(|l| l.id == container.image_id) {
            return Ok(image.digest.clone());
        }
    }
    let digests = docker_cli::repo_digests(host, &container.image_id).await?;
    let preferred = labelled.as_ref().and_then(|image| {
        digests
            .iter()
            .find(|d| d.starts_with(&format!("{}@", image.repository)))
    });
    Ok(preferred
        .or(digests.first())
        .and_then(|d| d.split_once('@'))
        .map(|(_, digest)| digest.to_owned())
        .unwrap_or_else(|| container.image_id.clone()))
}

/// Docker mode: per desired component `missing`, `unexpected` (duplicates),
/// `image_changed`, `config_changed`, `sticker_tampered`; and `unexpected` for a running
/// component that is not desired.
pub(crate) async fn docker_drift(
    host: &mut Host,
    desired: &DeployTask,
    settings: &SshSettings,
    components: &[&ComponentSpec],
) -> Result<Vec<DriftFinding>, SshError> {
    let target = desired.target.name.as_str();
    let containers = docker_cli::containers(host, target, None).await?;
    let mut findings = Vec::new();
    for component in components {
        let name = settings.docker.container_name(target, &component.name);
        let mine: Vec<&RemoteContainer> = containers
            .iter()
            .filter(|c| c.component() == Some(component.name.as_str()))
            .collect();
        let running: Vec<&RemoteContainer> = mine.iter().copied().filter(|c| c.running).collect();
        let Some(primary) = running
            .iter()
            .find(|c| c.name == name)
            .or_else(|| running.first())
            .copied()
        else {
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
        let desired_id = docker_cli::image(host, &component.image)
            .await?
            .map(|l| l.id);
        if desired_id.as_deref() != Some(primary.image_id.as_str()) {
            let runs = running_digest(host, primary).await?;
            findings.push(finding(
                component,
                DriftKind::ImageChanged,
                format!(
                    "container {} runs {runs}, desired {}",
                    primary.name,
                    component.digest().unwrap_or(&component.image)
                ),
            ));
        }
        if primary.label(labels::CONFIG_DIGEST) != Some(settings.docker.config_digest.as_str()) {
            findings.push(finding(
                component,
                DriftKind::ConfigChanged,
                format!(
                    "container {} was not made with the target's current settings",
                    primary.name
                ),
            ));
        }
        if let Some(detail) =
            sticker_drift(host, desired, settings, component, Some(primary)).await?
        {
            findings.push(finding(component, DriftKind::StickerTampered, detail));
        }
    }
    for container in containers.iter().filter(|c| c.running) {
        let wanted = container
            .component()
            .is_some_and(|name| components.iter().any(|c| c.name == name));
        if !wanted {
            let component = container.component().unwrap_or_default().to_owned();
            findings.push(DriftFinding {
                detail: format!(
                    "container {} runs {} but component {component:?} is not desired on this target",
                    container.name,
                    running_digest(host, container).await?
                ),
                component,
                kind: DriftKind::Unexpected,
            });
        }
    }
    Ok(findings)
}

/// Why the sticker file of a component is not to be trusted, if it is not: missing,
/// not a sticker, edited (does not verify), not the sticker in the container's labels
/// (docker mode), another image or another deployment than desired.
async fn sticker_drift(
    host: &mut Host,
    desired: &DeployTask,
    settings: &SshSettings,
    component: &ComponentSpec,
    container: Option<&RemoteContainer>,
) -> Result<Option<String>, SshError> {
    let path =
        stickers::sticker_path(&settings.sticker_dir, &desired.target.name, &component.name)?;
    let sticker = match stickers::read(host, &path).await? {
        StickerFile::Absent => {
            return Ok(Some(format!(
                "no sticker file at {path} on {}",
                host.addr()
            )))
        }
        StickerFile::Corrupt => {
            return Ok(Some(format!(
                "the sticker file {path} does not hold a sticker"
            )))
        }
        StickerFile::Present(sticker) => *sticker,
    };
    if !sticker.verify() {
        return Ok(Some(format!(
            "the sticker file {path} was edited: it does not match its sticker_digest"
        )));
    }
    if let Some(container) = container {
        match labels::sticker_from_labels(&container.labels) {
            None => {
                return Ok(Some(format!(
                    "the ops.stella.* labels of container {} do not add up to its {}",
                    container.name,
                    labels::STICKER_DIGEST
                )))
            }
            Some(from_labels) if from_labels.sticker_digest != sticker.sticker_digest => {
                return Ok(Some(format!(
                    "the sticker file {path} ({}) is not the sticker of container {} ({})",
                    sticker.sticker_digest, container.name, from_labels.sticker_digest
                )))
            }
            Some(_) => {}
        }
    }
    if sticker.image != component.image {
        return Ok(Some(format!(
            "the sticker names {}, desired {}",
            sticker.image, component.image
        )));
    }
    if !desired.wrote(&sticker) {
        return Ok(Some(format!(
            "the sticker names deployment {} ({} {}), the desired state is deployment {} ({} {})",
            sticker.deployment_id,
            sticker.release,
            sticker.version,
            desired.deployment_id,
            desired.release,
            desired.version
        )));
    }
    Ok(None)
}

/// Script mode: only the sticker files can be checked. No sticker: `missing`; one that
/// is not a sticker, was edited or names another deployment: `sticker_tampered`; one
/// that names another image: `image_changed`; a sticker of a component that is not
/// desired: `unexpected`.
pub(crate) async fn script_drift(
    host: &mut Host,
    desired: &DeployTask,
    settings: &SshSettings,
    components: &[&ComponentSpec],
) -> Result<Vec<DriftFinding>, SshError> {
    let target = desired.target.name.as_str();
    let mut findings = Vec::new();
    for component in components {
        let path = stickers::sticker_path(&settings.sticker_dir, target, &component.name)?;
        match stickers::read(host, &path).await? {
            StickerFile::Absent => findings.push(finding(
                component,
                DriftKind::Missing,
                format!(
                    "no sticker file at {path} on {}: nothing says {} is deployed",
                    host.addr(),
                    component.image
                ),
            )),
            StickerFile::Present(sticker)
                if sticker.verify() && sticker.image != component.image =>
            {
                findings.push(finding(
                    component,
                    DriftKind::ImageChanged,
                    format!(
                        "the sticker names {}, desired {}",
                        sticker.image, component.image
                    ),
                ));
            }
            _ => {
                if let Some(detail) =
                    sticker_drift(host, desired, settings, component, None).await?
                {
                    findings.push(finding(component, DriftKind::StickerTampered, detail));
                }
            }
        }
    }
    let dir = stickers::target_dir(&settings.sticker_dir, target)?;
    for file in host.list_dir(dir).await? {
        let Some(name) = file.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') || components.iter().any(|c| c.name == name) {
            continue;
        }
        findings.push(DriftFinding {
            component: name.to_owned(),
            kind: DriftKind::Unexpected,
            detail: format!("a sticker of component {name:?}, which is not desired on this target"),
        });
    }
    Ok(findings)
}

/// Docker mode: the running containers of the target's components.
pub(crate) async fn docker_inspect(
    host: &mut Host,
    target: &str,
    settings: &SshSettings,
) -> Result<Vec<ObservedComponent>, SshError> {
    let containers = docker_cli::containers(host, target, None).await?;
    let mut observed = Vec::new();
    for container in containers.iter().filter(|c| c.running) {
        let Some(component) = container.component() else {
            continue;
        };
        let image_digest = running_digest(host, container).await?;
        let path = stickers::sticker_path(&settings.sticker_dir, target, component)?;
        let sticker_digest = match stickers::read(host, &path).await? {
            StickerFile::Present(sticker) if sticker.verify() => Some(sticker.sticker_digest),
            _ => None,
        };
        observed.push(ObservedComponent {
            component: component.to_owned(),
            image_digest,
            sticker_digest,
        });
    }
    observed.sort_by(|a, b| a.component.cmp(&b.component));
    Ok(observed)
}

/// Script mode: what the sticker files say.
pub(crate) async fn script_inspect(
    host: &mut Host,
    target: &str,
    settings: &SshSettings,
) -> Result<Vec<ObservedComponent>, SshError> {
    let dir = stickers::target_dir(&settings.sticker_dir, target)?;
    let mut observed = Vec::new();
    for file in host.list_dir(dir).await? {
        let Some(component) = file.strip_suffix(".json") else {
            continue;
        };
        if component.starts_with('.') {
            continue;
        }
        let path = stickers::sticker_path(&settings.sticker_dir, target, component)?;
        if let StickerFile::Present(sticker) = stickers::read(host, &path).await? {
            let image_digest = sticker
                .image
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default();
            observed.push(ObservedComponent {
                component: component.to_owned(),
                image_digest,
                sticker_digest: sticker.verify().then(|| sticker.sticker_digest.clone()),
            });
        }
    }
    observed.sort_by(|a, b| a.component.cmp(&b.component));
    Ok(observed)
}
