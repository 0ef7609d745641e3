//! The sticker as container labels (BRIEF §4). Besides the documented `ops.stella.*`
//! labels, a container carries the few sticker fields those leave out (`image`,
//! `deployed-at`, `agent`), so the whole sticker can be rebuilt from the labels and its
//! digest checked — that is how a lost or edited sticker file is restored without
//! restarting the container — and the digest of the settings it was made with. A slot
//! container (RFC 0005) carries [`SLOT`] and no sticker: see [`slot_labels`].

use std::collections::HashMap;

use stella_agent_core::{Sticker, StickerFields};

/// Target name.
pub const TARGET: &str = "ops.stella.target";
/// Environment name.
pub const ENVIRONMENT: &str = "ops.stella.environment";
/// Release name.
pub const RELEASE: &str = "ops.stella.release";
/// Release version.
pub const VERSION: &str = "ops.stella.version";
/// Component name.
pub const COMPONENT: &str = "ops.stella.component";
/// The image digest, `sha256:…`.
pub const DIGEST: &str = "ops.stella.digest";
/// Deployment id.
pub const DEPLOYMENT: &str = "ops.stella.deployment";
/// Decision id.
pub const DECISION: &str = "ops.stella.decision";
/// The sticker's `sticker_digest`.
pub const STICKER_DIGEST: &str = "ops.stella.sticker-digest";
/// The image reference with its digest (extension).
pub const IMAGE: &str = "ops.stella.image";
/// The sticker's `deployed_at` (extension).
pub const DEPLOYED_AT: &str = "ops.stella.deployed-at";
/// The sticker's `agent_id` (extension).
pub const AGENT: &str = "ops.stella.agent";
/// Digest of the settings the container was made with (extension; see
/// `DockerSettings::config_digest`).
pub const CONFIG_DIGEST: &str = "ops.stella.config-digest";
/// The slot a container runs in (RFC 0005; extension): only on slot containers. A
/// container without it is the target's own ("stable") container; everything that looks
/// at the stable deployment (apply, inspect, drift) leaves slot containers alone.
pub const SLOT: &str = "ops.stella.slot";

/// The labels of a container deployed to `slot`: the target, component, slot, what it
/// runs and which deployment made it, and its settings digest. No sticker: a slot is not
/// what the target runs for its environment, so its containers carry none
/// (no `ops.stella.sticker-digest`, [`sticker_from_labels`] finds nothing).
pub fn slot_labels(
    task: &stella_agent_core::DeployTask,
    slot: &str,
    component: &str,
    image: &str,
    digest: &str,
    config_digest: &str,
) -> HashMap<String, String> {
    [
        (TARGET, task.target.name.as_str()),
        (ENVIRONMENT, task.environment.as_str()),
        (RELEASE, task.release.as_str()),
        (VERSION, task.version.as_str()),
        (COMPONENT, component),
        (DIGEST, digest),
        (DEPLOYMENT, task.deployment_id.as_str()),
        (IMAGE, image),
        (CONFIG_DIGEST, config_digest),
        (SLOT, slot),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// The labels of a container deployed with `sticker`.
pub fn sticker_labels(
    sticker: &Sticker,
    digest: &str,
    config_digest: &str,
) -> HashMap<String, String> {
    [
        (TARGET, sticker.target.as_str()),
        (ENVIRONMENT, sticker.environment.as_str()),
        (RELEASE, sticker.release.as_str()),
        (VERSION, sticker.version.as_str()),
        (COMPONENT, sticker.component.as_str()),
        (DIGEST, digest),
        (DEPLOYMENT, sticker.deployment_id.as_str()),
        (DECISION, sticker.decision_id.as_str()),
        (STICKER_DIGEST, sticker.sticker_digest.as_str()),
        (IMAGE, sticker.image.as_str()),
        (DEPLOYED_AT, sticker.deployed_at.as_str()),
        (AGENT, sticker.agent_id.as_str()),
        (CONFIG_DIGEST, config_digest),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

/// The sticker a container's labels hold, if they hold a whole one whose digest checks
/// out against `ops.stella.sticker-digest` and whose image digest is `ops.stella.digest`:
/// labels edited after the container was made (it has to be made again for that) do not
/// yield a sticker.
pub fn sticker_from_labels(labels: &HashMap<String, String>) -> Option<Sticker> {
    let get = |key: &str| labels.get(key).cloned();
    let sticker = Sticker::seal(StickerFields {
        release: get(RELEASE)?,
        version: get(VERSION)?,
        environment: get(ENVIRONMENT)?,
        target: get(TARGET)?,
        component: get(COMPONENT)?,
        image: get(IMAGE)?,
        deployment_id: get(DEPLOYMENT)?,
        decision_id: get(DECISION)?,
        deployed_at: get(DEPLOYED_AT)?,
        agent_id: get(AGENT)?,
    });
    let digest = sticker.image.rsplit_once('@').map(|(_, digest)| digest);
    (labels.get(STICKER_DIGEST) == Some(&sticker.sticker_digest)
        && labels.get(DIGEST).map(String::as_str) == digest)
        .then_some(sticker)
}

/// The sticker labels whose value is not what `sticker` puts there, each as
/// `ops.stella.version is "9.9.9", the sticker says "1.0.0"`.
pub fn differences(labels: &HashMap<String, String>, sticker: &Sticker) -> Vec<String> {
    let digest = sticker
        .image
        .rsplit_once('@')
        .map_or("", |(_, digest)| digest);
    let mut expected: Vec<(String, String)> = sticker_labels(sticker, digest, "")
        .into_iter()
        .filter(|(key, _)| key != CONFIG_DIGEST)
        .collect();
    expected.sort();
    expected
        .into_iter()
        .filter_map(|(key, value)| {
            let found = labels.get(&key);
            (found != Some(&value)).then(|| match found {
                Some(found) => format!("{key} is {found:?}, the sticker says {value:?}"),
                None => format!("{key} is missing, the sticker says {value:?}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticker() -> Sticker {
        Sticker::seal(StickerFields {
            release: "shop".into(),
            version: "1.0".into(),
            environment: "prod".into(),
            target: "app".into(),
            component: "web".into(),
            image: "127.0.0.1:5000/web@sha256:00".into(),
            deployment_id: "dep-1".into(),
            decision_id: "sha256:dd".into(),
            deployed_at: "2024-05-01T12:00:00Z".into(),
            agent_id: "agent-1".into(),
        })
    }

    #[test]
    fn labels_round_trip_to_the_sticker() {
        let sticker = sticker();
        let labels = sticker_labels(&sticker, "sha256:00", "sha256:cfg");
        for key in [
            TARGET,
            ENVIRONMENT,
            RELEASE,
            VERSION,
            COMPONENT,
            DIGEST,
            DEPLOYMENT,
            DECISION,
            STICKER_DIGEST,
        ] {
            assert!(labels.contains_key(key), "{key}");
        }
        assert_eq!(sticker_from_labels(&labels), Some(sticker));
        assert!(!labels.contains_key(SLOT), "a stable container has no slot");
    }

    #[test]
    fn slot_labels_name_the_slot_and_hold_no_sticker() {
        let mut task = stella_agent_core::DeployTask::for_target(&stella_agent_core::TargetSpec {
            name: "app".into(),
            kind: "docker".into(),
            settings: Default::default(),
        });
        task.release = "shop".into();
        task.version = "2.0".into();
        let labels = slot_labels(
            &task,
            "canary",
            "web",
            "r/web@sha256:00",
            "sha256:00",
            "sha256:cfg",
        );
        assert_eq!(labels[SLOT], "canary");
        assert_eq!(labels[TARGET], "app");
        assert_eq!(labels[COMPONENT], "web");
        assert_eq!(labels[VERSION], "2.0");
        assert!(!labels.contains_key(STICKER_DIGEST));
        assert_eq!(sticker_from_labels(&labels), None);
    }

    #[test]
    fn edited_labels_do_not_yield_a_sticker_and_are_named() {
        let sticker = sticker();
        let mut labels = sticker_labels(&sticker, "sha256:00", "sha256:cfg");
        assert!(differences(&labels, &sticker).is_empty());
        labels.insert(VERSION.into(), "2.0".into());
        assert_eq!(sticker_from_labels(&labels), None);
        assert_eq!(
            differences(&labels, &sticker),
            [r#"ops.stella.version is "2.0", the sticker says "1.0""#]
        );
        labels.remove(VERSION);
        assert_eq!(sticker_from_labels(&labels), None);
        assert_eq!(
            differences(&labels, &sticker),
            [r#"ops.stella.version is missing, the sticker says "1.0""#]
        );

        // The digest label is not a sticker field, but it must agree with the image.
        let mut labels = sticker_labels(&sticker, "sha256:00", "sha256:cfg");
        labels.insert(DIGEST.into(), "sha256:ff".into());
        assert_eq!(sticker_from_labels(&labels), None);
        assert_eq!(differences(&labels, &sticker).len(), 1);
    }
}
