//! Stickers as ECS tags, on the service and on the task definition revision it runs.
//!
//! One deployment's stickers share every field but `component`, `image` and
//! `sticker_digest` (the deploy gives them one `deployed_at`), so the shared fields are
//! one tag each and the others one tag per component:
//!
//! | tag | sticker field |
//! |---|---|
//! | `stella:release` | `release` |
//! | `stella:version` | `version` |
//! | `stella:environment` | `environment` |
//! | `stella:target` | `target` |
//! | `stella:deployment` | `deployment_id` |
//! | `stella:decision` | `decision_id` |
//! | `stella:deployed-at` | `deployed_at` |
//! | `stella:agent` | `agent_id` |
//! | `stella:image:<component>` | `image` |
//! | `stella:sticker-digest:<component>` | `sticker_digest` |
//!
//! ECS allows keys of at most 128 and values of at most 256 characters, 50 tags per
//! resource. A component name longer than 64 characters or with characters tag keys do
//! not allow is written as `h.` and the first 24 hex digits of its SHA-256. A value
//! longer than 256 characters is refused, never truncated: a truncated sticker would
//! not verify. (ECS limits image references to 255 characters, so an image always
//! fits.) The service also carries `stella:previous-task-definition` (what it ran
//! before the last deploy: the rollback target) and `stella:desired-count`.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use stella_agent_core::{Sticker, StickerFields};

use crate::error::EcsError;

/// The prefix of every tag this kind writes.
pub const PREFIX: &str = "stella:";
/// The service tag naming the task definition it ran before the last deploy.
pub const PREVIOUS_TASK_DEFINITION: &str = "stella:previous-task-definition";
/// The service tag holding its desired count at the last deploy (to undo a scale to 0).
pub const DESIRED_COUNT: &str = "stella:desired-count";
/// ECS's limits.
pub const MAX_KEY_LEN: usize = 128;
/// See [`MAX_KEY_LEN`].
pub const MAX_VALUE_LEN: usize = 256;
/// See [`MAX_KEY_LEN`].
pub const MAX_TAGS: usize = 50;

const SHARED: [&str; 8] = [
    "release",
    "version",
    "environment",
    "target",
    "deployment",
    "decision",
    "deployed-at",
    "agent",
];

/// The part of a tag key that names a component.
pub fn component_key(component: &str) -> String {
    let plain = !component.is_empty()
        && component.len() <= 64
        && component
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !component.starts_with("h.");
    if plain {
        component.to_owned()
    } else {
        let hash = hex::encode(Sha256::digest(component.as_bytes()));
        format!("h.{}", &hash[..24])
    }
}

/// `stella:image:<component>`.
pub fn image_key(component: &str) -> String {
    format!("{PREFIX}image:{}", component_key(component))
}

/// `stella:sticker-digest:<component>`.
pub fn digest_key(component: &str) -> String {
    format!("{PREFIX}sticker-digest:{}", component_key(component))
}

/// The tags of one deployment's stickers (all of one deployment: their shared fields
/// are taken from the first).
pub fn tags_of(stickers: &[Sticker]) -> Result<BTreeMap<String, String>, EcsError> {
    let mut tags = BTreeMap::new();
    let Some(first) = stickers.first() else {
        return Ok(tags);
    };
    let shared = [
        &first.release,
        &first.version,
        &first.environment,
        &first.target,
        &first.deployment_id,
        &first.decision_id,
        &first.deployed_at,
        &first.agent_id,
    ];
    for (name, value) in SHARED.iter().zip(shared) {
        tags.insert(format!("{PREFIX}{name}"), value.clone());
    }
    for sticker in stickers {
        tags.insert(image_key(&sticker.component), sticker.image.clone());
        tags.insert(
            digest_key(&sticker.component),
            sticker.sticker_digest.clone(),
        );
    }
    for (key, value) in &tags {
        if key.len() > MAX_KEY_LEN {
            return Err(EcsError::Failed(format!(
                "the tag key {key} is longer than ECS allows ({MAX_KEY_LEN})"
            )));
        }
        if value.chars().count() > MAX_VALUE_LEN {
            return Err(EcsError::Failed(format!(
                "the sticker field {key} is {} characters long; ECS tag values hold at most {MAX_VALUE_LEN}",
                value.chars().count()
            )));
        }
    }
    Ok(tags)
}

/// The sticker of `component` in `tags`, if the tags hold one (it may not verify, when
/// a tag was edited).
pub fn read(tags: &BTreeMap<String, String>, target: &str, component: &str) -> Option<Sticker> {
    let sticker_digest = tags.get(&digest_key(component))?.clone();
    let get = |name: &str| {
        tags.get(&format!("{PREFIX}{name}"))
            .cloned()
            .unwrap_or_default()
    };
    let fields = StickerFields {
        release: get("release"),
        version: get("version"),
        environment: get("environment"),
        target: match tags.get(&format!("{PREFIX}target")) {
            Some(name) => name.clone(),
            None => target.to_owned(),
        },
        component: component.to_owned(),
        image: tags.get(&image_key(component)).cloned().unwrap_or_default(),
        deployment_id: get("deployment"),
        decision_id: get("decision"),
        deployed_at: get("deployed-at"),
        agent_id: get("agent"),
    };
    let mut sticker = Sticker::seal(fields);
    sticker.sticker_digest = sticker_digest;
    Some(sticker)
}

/// `tags` on a resource that has `existing` tags: the tags it will have, checked against
/// ECS's count limit.
pub fn check_count(
    existing: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
) -> Result<(), EcsError> {
    let others = existing
        .keys()
        .filter(|key| !key.starts_with(PREFIX))
        .count();
    if others + tags.len() > MAX_TAGS {
        return Err(EcsError::Failed(format!(
            "the sticker needs {} tags and the resource has {others} others; ECS allows {MAX_TAGS}",
            tags.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticker(component: &str, image: &str) -> Sticker {
        Sticker::seal(StickerFields {
            release: "shop".into(),
            version: "1.2.3".into(),
            environment: "prod".into(),
            target: "ecs-1".into(),
            component: component.into(),
            image: image.into(),
            deployment_id: "dep-1".into(),
            decision_id: format!("sha256:{}", "d".repeat(64)),
            deployed_at: "2026-01-01T00:00:00.000Z".into(),
            agent_id: "agent-1".into(),
        })
    }

    #[test]
    fn stickers_round_trip_through_tags_and_edits_show() {
        let api = sticker("api", &format!("r.local/api@sha256:{}", "a".repeat(64)));
        let web = sticker("web", &format!("r.local/web@sha256:{}", "b".repeat(64)));
        let mut tags = tags_of(&[api.clone(), web.clone()]).expect("tags");
        assert_eq!(tags.len(), 12);
        assert_eq!(read(&tags, "ecs-1", "api"), Some(api));
        assert_eq!(read(&tags, "ecs-1", "web"), Some(web));
        assert_eq!(read(&tags, "ecs-1", "worker"), None);
        tags.insert("stella:version".into(), "9.9.9".into());
        let edited = read(&tags, "ecs-1", "api").expect("still there");
        assert!(!edited.verify());
    }

    #[test]
    fn long_or_odd_component_names_are_hashed_and_long_values_refused() {
        assert_eq!(component_key("api-v2.x"), "api-v2.x");
        let long = "c".repeat(100);
        let key = image_key(&long);
        assert!(key.len() <= MAX_KEY_LEN && key.starts_with("stella:image:h."));
        assert_eq!(key, image_key(&long), "deterministic");
        assert_ne!(component_key("a b"), "a b");

        let too_long = sticker("api", &format!("{}@sha256:x", "r".repeat(300)));
        let error = tags_of(&[too_long]).expect_err("too long");
        assert!(error.to_string().contains("256"), "{error}");

        let many: BTreeMap<String, String> =
            (0..45).map(|i| (format!("team{i}"), "x".into())).collect();
        let tags = tags_of(&[sticker("api", "r/api@sha256:a")]).expect("tags");
        assert!(check_count(&many, &tags).is_err());
        assert!(check_count(&BTreeMap::new(), &tags).is_ok());
    }
}
