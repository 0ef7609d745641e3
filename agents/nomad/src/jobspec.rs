//! Reading and changing a job specification (Nomad's JSON form): the task of each
//! component, its `Config.image`, and the job's `Meta`, where Stella keeps its stickers.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::error::NomadError;
use crate::settings::TaskRef;

/// Job `Meta` key of the digest of the task groups as Stella registered them.
pub const META_SPEC: &str = "stella.spec";
/// Job `Meta` key prefix of the sticker of a component (canonical sticker JSON).
pub const META_STICKER_PREFIX: &str = "stella.sticker.";
/// Job `Meta` keys for people reading the job: release, version, deployment.
pub const META_RELEASE: &str = "stella.release";
/// See [`META_RELEASE`].
pub const META_VERSION: &str = "stella.version";
/// See [`META_RELEASE`].
pub const META_DEPLOYMENT: &str = "stella.deployment";

/// Where a task is in the job: indexes of the group and of the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskAt {
    group: usize,
    task: usize,
}

fn groups(job: &Value) -> &[Value] {
    job.get("TaskGroups")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn name(value: &Value) -> &str {
    value
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Finds the task `task_ref` names; an error says what the job has instead.
pub fn find_task(job: &Value, component: &str, task_ref: &TaskRef) -> Result<TaskAt, NomadError> {
    let mut found = Vec::new();
    for (g, group) in groups(job).iter().enumerate() {
        if task_ref
            .group
            .as_deref()
            .is_some_and(|wanted| wanted != name(group))
        {
            continue;
        }
        let tasks = group
            .get("Tasks")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for (t, task) in tasks.iter().enumerate() {
            if name(task) == task_ref.task {
                found.push(TaskAt { group: g, task: t });
            }
        }
    }
    let wanted = match &task_ref.group {
        Some(group) => format!("{group}/{}", task_ref.task),
        None => task_ref.task.clone(),
    };
    match found.as_slice() {
        [at] => Ok(*at),
        [] => Err(NomadError::InvalidSettings(format!(
            "component {component}: the job has no task {wanted} (its tasks: {}); map it with task.{component}=GROUP/TASK",
            all_tasks(job).join(", ")
        ))),
        _ => Err(NomadError::InvalidSettings(format!(
            "component {component}: several task groups have a task {wanted}; name the group with task.{component}=GROUP/TASK"
        ))),
    }
}

/// `GROUP/TASK` of every task.
pub fn all_tasks(job: &Value) -> Vec<String> {
    groups(job)
        .iter()
        .flat_map(|group| {
            group
                .get("Tasks")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(move |task| format!("{}/{}", name(group), name(task)))
        })
        .collect()
}

/// The group name of a task.
#[cfg(test)]
pub fn group_name(job: &Value, at: TaskAt) -> &str {
    groups(job).get(at.group).map_or("", name)
}

fn task(job: &Value, at: TaskAt) -> Option<&Value> {
    groups(job)
        .get(at.group)?
        .get("Tasks")?
        .as_array()?
        .get(at.task)
}

/// The task's `Config.image`, if it has one.
pub fn image(job: &Value, at: TaskAt) -> Option<&str> {
    task(job, at)?.get("Config")?.get("image")?.as_str()
}

/// Sets the task's `Config.image`.
pub fn set_image(job: &mut Value, at: TaskAt, image: &str) -> Result<(), NomadError> {
    let task = job
        .get_mut("TaskGroups")
        .and_then(Value::as_array_mut)
        .and_then(|g| g.get_mut(at.group))
        .and_then(|g| g.get_mut("Tasks"))
        .and_then(Value::as_array_mut)
        .and_then(|t| t.get_mut(at.task))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| NomadError::Failed("the job changed while it was edited".to_owned()))?;
    let config = task
        .entry("Config")
        .or_insert_with(|| Value::Object(Map::new()));
    if !config.is_object() {
        *config = Value::Object(Map::new());
    }
    if let Some(config) = config.as_object_mut() {
        config.insert("image".to_owned(), Value::String(image.to_owned()));
    }
    Ok(())
}

/// The job's `Meta` value for `key`.
pub fn meta<'a>(job: &'a Value, key: &str) -> Option<&'a str> {
    job.get("Meta")?.get(key)?.as_str()
}

/// Sets `Meta[key]`.
pub fn set_meta(job: &mut Value, key: &str, value: &str) {
    let Some(object) = job.as_object_mut() else {
        return;
    };
    let meta = object
        .entry("Meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(key.to_owned(), Value::String(value.to_owned()));
    }
}

/// The `Meta` key of a component's sticker.
pub fn sticker_key(component: &str) -> String {
    format!("{META_STICKER_PREFIX}{component}")
}

/// The SHA-256 of the task groups' canonical JSON (keys sorted), every task's
/// `Config.image` left out (images are compared on their own): what Stella registered,
/// compared with what runs to see an edit made outside Stella.
pub fn spec_digest(job: &Value) -> String {
    let mut groups = job.get("TaskGroups").cloned().unwrap_or(Value::Null);
    for group in groups.as_array_mut().into_iter().flatten() {
        let tasks = group.get_mut("Tasks").and_then(Value::as_array_mut);
        for task in tasks.into_iter().flatten() {
            if let Some(config) = task.get_mut("Config").and_then(Value::as_object_mut) {
                config.remove("image");
            }
        }
    }
    let mut text = String::new();
    canonical(&groups, &mut text);
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> Value {
        json!({"ID": "shop", "TaskGroups": [
            {"Name": "web", "Count": 2, "Tasks": [{"Name": "api", "Driver": "docker", "Config": {"image": "api:1", "ports": ["http"]}}]},
            {"Name": "jobs", "Tasks": [{"Name": "api", "Config": {"image": "api:1"}}, {"Name": "worker"}]},
        ]})
    }

    #[test]
    fn tasks_are_found_by_name_or_group_and_images_replaced() {
        let mut job = job();
        let error = find_task(
            &job,
            "api",
            &TaskRef {
                group: None,
                task: "api".into(),
            },
        )
        .expect_err("two groups have it");
        assert!(error.to_string().contains("task.api=GROUP/TASK"), "{error}");
        let error = find_task(
            &job,
            "db",
            &TaskRef {
                group: None,
                task: "db".into(),
            },
        )
        .expect_err("none");
        assert!(
            error.to_string().contains("web/api, jobs/api, jobs/worker"),
            "{error}"
        );
        let at = find_task(
            &job,
            "api",
            &TaskRef {
                group: Some("web".into()),
                task: "api".into(),
            },
        )
        .expect("found");
        assert_eq!(group_name(&job, at), "web");
        let before = spec_digest(&job);
        set_image(&mut job, at, "r/api@sha256:abc").expect("set");
        assert_eq!(image(&job, at), Some("r/api@sha256:abc"));
        assert_eq!(
            job["TaskGroups"][0]["Tasks"][0]["Config"]["ports"][0],
            "http"
        );
        assert_eq!(
            spec_digest(&job),
            before,
            "images are compared on their own"
        );
        job["TaskGroups"][0]["Count"] = json!(3);
        assert_ne!(spec_digest(&job), before);
        let worker = find_task(
            &job,
            "worker",
            &TaskRef {
                group: None,
                task: "worker".into(),
            },
        )
        .expect("found");
        assert_eq!(image(&job, worker), None);
        set_image(&mut job, worker, "r/w@sha256:def").expect("set");
        assert_eq!(image(&job, worker), Some("r/w@sha256:def"));
    }

    #[test]
    fn meta_and_digest_ignore_key_order_and_meta() {
        let mut job = job();
        let digest = spec_digest(&job);
        set_meta(&mut job, META_RELEASE, "shop");
        assert_eq!(meta(&job, META_RELEASE), Some("shop"));
        assert_eq!(spec_digest(&job), digest);
        let reordered: Value = serde_json::from_str(
            r#"{"TaskGroups":[{"Tasks":[{"Config":{"ports":["http"],"image":"api:1"},"Driver":"docker","Name":"api"}],"Count":2,"Name":"web"},
               {"Name":"jobs","Tasks":[{"Name":"api","Config":{"image":"api:1"}},{"Name":"worker"}]}]}"#,
        )
        .expect("json");
        assert_eq!(spec_digest(&reordered), digest);
    }
}
