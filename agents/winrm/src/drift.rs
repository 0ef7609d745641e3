//! What the host says compared with the desired state (the last successful deployment).
//! A script deploy leaves nothing the agent can inspect but the sticker files, so drift
//! is read from them, all in one command: no sticker is `missing`; one that is not a
//! sticker, was edited or names another deployment is `sticker_tampered`; one that names
//! another image is `image_changed`; a sticker of a component that is not desired is
//! `unexpected`.

use stella_agent_core::{ComponentSpec, DeployTask, DriftFinding, DriftKind, ObservedComponent};

use crate::stickers::{Dir, StickerFile};

fn finding(component: &ComponentSpec, kind: DriftKind, detail: String) -> DriftFinding {
    DriftFinding {
        component: component.name.clone(),
        kind,
        detail,
    }
}

/// The findings for `components` of `desired`, given the target's sticker directory
/// `dir` (named `path` in the details).
pub(crate) fn findings(
    dir: &Dir,
    path: &str,
    desired: &DeployTask,
    components: &[&ComponentSpec],
) -> Vec<DriftFinding> {
    let mut findings = Vec::new();
    for component in components {
        let file = format!("{path}\\{}.json", component.name);
        match dir.sticker(&component.name) {
            StickerFile::Absent => findings.push(finding(
                component,
                DriftKind::Missing,
                format!(
                    "no sticker file at {file}: nothing says {} is deployed",
                    component.image
                ),
            )),
            StickerFile::Corrupt => findings.push(finding(
                component,
                DriftKind::StickerTampered,
                format!("the sticker file {file} does not hold a sticker"),
            )),
            StickerFile::Present(sticker) => {
                if !sticker.verify() {
                    findings.push(finding(
                        component,
                        DriftKind::StickerTampered,
                        format!("the sticker file {file} was edited: it does not match its sticker_digest"),
                    ));
                } else if sticker.image != component.image {
                    findings.push(finding(
                        component,
                        DriftKind::ImageChanged,
                        format!(
                            "the sticker names {}, desired {}",
                            sticker.image, component.image
                        ),
                    ));
                } else if !desired.wrote(&sticker) {
                    findings.push(finding(
                        component,
                        DriftKind::StickerTampered,
                        format!(
                            "the sticker names deployment {} ({} {}), the desired state is deployment {} ({} {})",
                            sticker.deployment_id,
                            sticker.release,
                            sticker.version,
                            desired.deployment_id,
                            desired.release,
                            desired.version
                        ),
                    ));
                }
            }
        }
    }
    for name in dir.components() {
        if components.iter().any(|c| c.name == name) {
            continue;
        }
        findings.push(DriftFinding {
            component: name.to_owned(),
            kind: DriftKind::Unexpected,
            detail: format!("a sticker of component {name:?}, which is not desired on this target"),
        });
    }
    findings
}

/// What the sticker files say runs.
pub(crate) fn observed(dir: &Dir) -> Vec<ObservedComponent> {
    let mut observed = Vec::new();
    for component in dir.components() {
        if let StickerFile::Present(sticker) = dir.sticker(component) {
            observed.push(ObservedComponent {
                component: component.to_owned(),
                image_digest: sticker
                    .image
                    .rsplit_once('@')
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_default(),
                sticker_digest: sticker.verify().then(|| sticker.sticker_digest.clone()),
            });
        }
    }
    observed
}
