//! Drift of an ECS service from its desired state: the service gone or scaled to 0
//! (`missing`), its task definition running other digests (`image_changed`), the
//! stickers in its tags edited, absent, or not those on the task definition it runs
//! (`sticker_tampered`).

use stella_agent_core::{ComponentSpec, DeployTask, DriftFinding, DriftKind, ObservedComponent};

use crate::api::{Api, Revision};
use crate::error::EcsError;
use crate::settings::EcsSettings;
use crate::stickers;

/// What runs: one component per container of the service's task definition (named by
/// `container.<component>` or by the container's name), with the digest of its image
/// and the sticker digest on the revision's tags.
pub(crate) async fn inspect(
    api: &Api,
    settings: &EcsSettings,
) -> Result<Vec<ObservedComponent>, EcsError> {
    let Some(service) = api.service().await? else {
        return Ok(Vec::new());
    };
    if service.status != "ACTIVE" || service.desired_count == 0 {
        return Ok(Vec::new());
    }
    let revision = api.revision(&service.task_definition).await?;
    Ok(revision
        .containers()
        .iter()
        .filter_map(|container| {
            let name = container.name()?;
            let component = settings.component_of(name);
            Some(ObservedComponent {
                component: component.to_owned(),
                image_digest: digest_of(container.image().unwrap_or("")).to_owned(),
                sticker_digest: revision.tags.get(&stickers::digest_key(component)).cloned(),
            })
        })
        .collect())
}

/// The drift of the desired components (containers no component maps to, sidecars,
/// are not reported).
pub(crate) async fn detect(
    api: &Api,
    settings: &EcsSettings,
    desired: &DeployTask,
    components: &[&ComponentSpec],
) -> Result<Vec<DriftFinding>, EcsError> {
    let finding = |component: &ComponentSpec, kind, detail: String| DriftFinding {
        component: component.name.clone(),
        kind,
        detail,
    };
    let service = api.service().await?;
    let absent = match &service {
        None => Some(format!(
            "service {} does not exist in cluster {}",
            settings.service, settings.cluster
        )),
        Some(service) if service.status != "ACTIVE" => Some(format!(
            "service {} is {}",
            settings.service, service.status
        )),
        Some(service) if service.desired_count == 0 => {
            Some(format!("service {} is scaled to 0 tasks", settings.service))
        }
        Some(_) => None,
    };
    let (Some(service), None) = (service, absent.clone()) else {
        let detail = absent.unwrap_or_default();
        return Ok(components
            .iter()
            .map(|c| finding(c, DriftKind::Missing, detail.clone()))
            .collect());
    };
    let revision = api.revision(&service.task_definition).await?;
    let mut findings = Vec::new();
    for component in components {
        let container = settings.container_of(&component.name);
        let Some(image) = revision.image_of(container) else {
            findings.push(finding(
                component,
                DriftKind::Missing,
                format!("{} has no container {container}", revision.arn),
            ));
            continue;
        };
        if let Some(digest) = component.digest() {
            if digest_of(image) != digest {
                findings.push(finding(
                    component,
                    DriftKind::ImageChanged,
                    format!("{} runs {image}, desired {}", revision.arn, component.image),
                ));
            }
        }
        if let Some(detail) = sticker_problem(&service.tags, &revision, desired, component) {
            findings.push(finding(component, DriftKind::StickerTampered, detail));
        }
    }
    Ok(findings)
}

fn sticker_problem(
    service_tags: &std::collections::BTreeMap<String, String>,
    revision: &Revision,
    desired: &DeployTask,
    component: &ComponentSpec,
) -> Option<String> {
    let Some(sticker) = stickers::read(service_tags, &desired.target.name, &component.name) else {
        return Some("the service has no sticker tags for the component".to_owned());
    };
    if !sticker.verify() {
        return Some("the service's sticker tags do not match their sticker digest".to_owned());
    }
    let on_revision = revision.tags.get(&stickers::digest_key(&component.name));
    if on_revision != Some(&sticker.sticker_digest) {
        return Some(format!(
            "the service's sticker ({}) is not the one on the task definition it runs, {} ({})",
            sticker.sticker_digest,
            revision.arn,
            on_revision.map_or("none", String::as_str)
        ));
    }
    if sticker.image != component.image {
        return Some(format!(
            "the sticker names {}, desired {}",
            sticker.image, component.image
        ));
    }
    None
}

/// The digest of an image reference, `sha256:…`; the reference itself when it has none
/// (so it never equals a desired digest).
fn digest_of(image: &str) -> &str {
    image.rsplit_once('@').map_or(image, |(_, digest)| digest)
}
