//! The desired state: what the control plane last sent in `DesiredState` — per target,
//! the deploy payload of its last successful deployment and that deployment's generation
//! — merged with what this agent deployed itself. A target keeps whichever of the two has
//! the higher generation, so a message the server built before it stored a result this
//! agent already recorded never takes the target back (docs/protocol.md). It is kept in
//! memory (without registry credentials, with the values of the secrets its settings
//! reference, which a drift check may need — an SSH key) and in `<data-dir>/desired.json`
//! (without either), so the agent checks its targets after a restart before the server
//! has said anything; secrets come back with the server's next desired state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use stella_proto::v1;
use tokio::sync::watch;

use crate::error::{error_chain, AgentError};
use crate::fsutil;
use crate::identity::files;
use crate::target::DeployTask;

/// Parses a deploy payload. serde's messages can quote the offending value, so when the
/// payload does not parse it is parsed again without `registry_auth`: no credential can
/// reach the message (which is logged, journaled and sent to the server).
pub(crate) fn parse_deploy_task(payload_json: &[u8]) -> Result<DeployTask, String> {
    if let Ok(task) = serde_json::from_slice::<DeployTask>(payload_json) {
        return Ok(task);
    }
    // A syntax error carries a position, never input text.
    let mut value: serde_json::Value =
        serde_json::from_slice(payload_json).map_err(|e| format!("invalid deploy payload: {e}"))?;
    if let Some(object) = value.as_object_mut() {
        object.remove("registry_auth");
    }
    match serde_json::from_value::<DeployTask>(value) {
        Err(e) => Err(format!("invalid deploy payload: {e}")),
        Ok(_) => Err("invalid deploy payload: registry_auth must be a list of \
                      {registry, username, password}"
            .to_owned()),
    }
}

/// The desired state, by target name: each target's last successful deploy payload,
/// without registry credentials (with secret values in memory, never on disk).
pub(crate) type DesiredTargets = BTreeMap<String, DeployTask>;

/// The form of `desired.json`: `{"targets": {"<target>": <deploy payload>, …}}`.
#[derive(Debug, Deserialize)]
struct DesiredFile {
    targets: DesiredTargets,
}

#[derive(Serialize)]
struct DesiredFileRef<'a> {
    targets: &'a DesiredTargets,
}

/// The desired state in memory (a watch channel, so the drift loop sees changes) and in
/// `<data-dir>/desired.json`.
#[derive(Debug)]
pub(crate) struct DesiredStore {
    path: PathBuf,
    state: watch::Sender<Arc<DesiredTargets>>,
    /// Serializes read-modify-write of the file.
    writing: tokio::sync::Mutex<()>,
}

impl DesiredStore {
    /// Loads `desired.json` from the data dir (blocking). A missing file is an empty desired
    /// state; an unreadable one is logged and treated as empty: the server sends the
    /// desired state after every `Welcome` anyway.
    pub(crate) fn load(data_dir: &Path) -> DesiredStore {
        let path = data_dir.join(files::DESIRED_JSON);
        let targets = match read_desired(&path) {
            Ok(targets) => targets,
            Err(error) => {
                tracing::warn!(
                    error = %error_chain(&error),
                    "could not read the stored desired state; starting without one"
                );
                DesiredTargets::new()
            }
        };
        let (state, _) = watch::channel(Arc::new(targets));
        DesiredStore {
            path,
            state,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// The desired state now.
    pub(crate) fn current(&self) -> Arc<DesiredTargets> {
        self.state.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<DesiredTargets>> {
        self.state.subscribe()
    }

    /// Takes in what the server sent: per target, the server's payload when its
    /// generation is at least that of the one held (the server may have built its
    /// message before storing a result this agent already recorded, so the desired
    /// state never goes backwards); a target the server lists without a payload keeps
    /// what is held; a target the server does not list is no longer this agent's and is
    /// forgotten. Payloads that do not parse are logged and left out.
    pub(crate) async fn replace(&self, message: &v1::DesiredState) {
        let mut sent = DesiredTargets::new();
        let mut listed = BTreeSet::new();
        for desired in &message.targets {
            listed.insert(desired.target.clone());
            if desired.deploy_json.is_empty() {
                continue;
            }
            match parse_deploy_task(&desired.deploy_json) {
                Ok(mut task) => {
                    if task.target.name != desired.target {
                        tracing::warn!(
                            target = %desired.target,
                            payload_target = %task.target.name,
                            "the desired state of a target names another target; using it as sent"
                        );
                    }
                    if desired.generation > 0 {
                        task.generation = desired.generation;
                    }
                    sent.insert(desired.target.clone(), task.without_registry_auth());
                }
                Err(message) => tracing::warn!(
                    target = %desired.target,
                    error = %message,
                    "ignoring the desired state of a target"
                ),
            }
        }
        tracing::info!(targets = listed.len(), "desired state received");
        self.update(|current| {
            current.retain(|target, _| listed.contains(target));
            for (target, task) in sent {
                match current.get(&target) {
                    Some(held) if held.generation > task.generation => {
                        tracing::debug!(
                            target = %target,
                            held = held.generation,
                            sent = task.generation,
                            "keeping the newer desired state this agent recorded"
                        );
                    }
                    _ => {
                        current.insert(target, task);
                    }
                }
            }
        })
        .await;
    }

    /// Records a successful deployment as its target's desired state, unless a newer
    /// one (higher generation) is held already.
    pub(crate) async fn deployed(&self, task: &DeployTask) {
        let task = task.clone().without_registry_auth();
        self.update(|current| {
            let newer_held = current
                .get(&task.target.name)
                .is_some_and(|held| held.generation > task.generation);
            if !newer_held {
                current.insert(task.target.name.clone(), task);
            }
        })
        .await;
    }

    async fn update(&self, change: impl FnOnce(&mut DesiredTargets)) {
        let _writing = self.writing.lock().await;
        let mut targets = DesiredTargets::clone(&self.current());
        change(&mut targets);
        let targets = Arc::new(targets);
        let (path, stored) = (self.path.clone(), Arc::clone(&targets));
        if let Err(error) = fsutil::blocking(move || write_desired(&path, &stored)).await {
            tracing::error!(
                error = %error_chain(&error),
                "could not store the desired state; keeping it in memory only"
            );
        }
        self.state.send_replace(targets);
    }
}

fn read_desired(path: &Path) -> Result<DesiredTargets, AgentError> {
    let Some(json) = fsutil::read_optional(path)? else {
        return Ok(DesiredTargets::new());
    };
    let file: DesiredFile = serde_json::from_str(&json).map_err(|e| AgentError::Corrupt {
        path: path.to_owned(),
        source: Box::new(e),
    })?;
    Ok(file.targets)
}

fn write_desired(path: &Path, targets: &DesiredTargets) -> Result<(), AgentError> {
    // Secret values stay in memory.
    let targets: &DesiredTargets = &targets
        .iter()
        .map(|(name, task)| (name.clone(), task.clone().without_credentials()))
        .collect();
    let mut json = serde_json::to_vec_pretty(&DesiredFileRef { targets }).map_err(|e| {
        AgentError::Corrupt {
            path: path.to_owned(),
            source: Box::new(e),
        }
    })?;
    json.push(b'\n');
    fsutil::write_atomic(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DeployTask {
        crate::target::example_task("fixed")
    }

    #[test]
    fn payload_errors_never_quote_credentials() {
        let mut payload = serde_json::to_value(desired()).expect("json");
        payload["registry_auth"] = serde_json::json!("user:hunter2");
        let error = parse_deploy_task(payload.to_string().as_bytes()).expect_err("invalid");
        assert!(
            !error.contains("hunter2") && error.contains("registry_auth"),
            "{error}"
        );

        payload["registry_auth"] =
            serde_json::json!([{"registry": "r", "username": "u", "password": 7}]);
        let error = parse_deploy_task(payload.to_string().as_bytes()).expect_err("invalid");
        assert!(error.contains("registry_auth"), "{error}");

        payload["registry_auth"] = serde_json::json!([]);
        payload["version"] = serde_json::json!(3);
        let error = parse_deploy_task(payload.to_string().as_bytes()).expect_err("invalid");
        assert!(
            error.starts_with("invalid deploy payload: invalid type"),
            "{error}"
        );

        let error = parse_deploy_task(b"{\"registry_auth\": \"hunter2").expect_err("syntax");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[tokio::test]
    async fn the_desired_state_round_trips_through_desired_json_without_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DesiredStore::load(dir.path());
        assert!(store.current().is_empty());
        let mut task = desired();
        task.registry_auth = vec![crate::RegistryCredential {
            registry: "r.local".into(),
            username: "u".into(),
            password: "hunter2".into(),
        }];
        task.secrets = crate::target::Secrets(std::collections::BTreeMap::from([(
            "ssh_key".to_owned(),
            "s3cret-key".to_owned(),
        )]));
        store
            .replace(&v1::DesiredState {
                targets: vec![
                    v1::DesiredTarget {
                        target: "web-1".into(),
                        deploy_json: serde_json::to_vec(&task).expect("json"),
                        generation: 1,
                    },
                    v1::DesiredTarget {
                        target: "broken".into(),
                        deploy_json: b"{}".to_vec(),
                        generation: 1,
                    },
                ],
            })
            .await;
        let json = std::fs::read_to_string(dir.path().join(files::DESIRED_JSON)).expect("read");
        assert!(
            !json.contains("hunter2") && !json.contains("s3cret-key"),
            "{json}"
        );
        let held = &store.current()["web-1"];
        assert!(held.registry_auth.is_empty(), "no registry password held");
        assert_eq!(
            held.secrets.0.get("ssh_key").map(String::as_str),
            Some("s3cret-key"),
            "secrets held in memory for drift checks"
        );

        let reloaded = DesiredStore::load(dir.path());
        let targets = reloaded.current();
        assert_eq!(targets.keys().collect::<Vec<_>>(), ["web-1"]);
        let mut expected = task.clone().without_credentials();
        expected.generation = 1;
        assert_eq!(targets["web-1"], expected);

        let mut next = desired();
        next.target.name = "web-2".into();
        reloaded.deployed(&next).await;
        assert_eq!(DesiredStore::load(dir.path()).current().len(), 2);

        std::fs::write(dir.path().join(files::DESIRED_JSON), b"{oops").expect("write");
        assert!(
            DesiredStore::load(dir.path()).current().is_empty(),
            "corrupt is empty"
        );
    }

    fn sent(targets: &[(&str, Option<&DeployTask>, u64)]) -> v1::DesiredState {
        v1::DesiredState {
            targets: targets
                .iter()
                .map(|(target, task, generation)| v1::DesiredTarget {
                    target: (*target).to_owned(),
                    deploy_json: task
                        .map(|t| serde_json::to_vec(t).expect("json"))
                        .unwrap_or_default(),
                    generation: *generation,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn the_desired_state_never_goes_backwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DesiredStore::load(dir.path());
        let mut v1_task = desired();
        v1_task.version = "1.0".into();
        let mut v2_task = desired();
        v2_task.version = "2.0".into();
        v2_task.generation = 2;
        // The agent finished generation 2 and recorded it...
        store.deployed(&v2_task).await;
        // ... then a message built before the server stored that result arrives.
        store.replace(&sent(&[("web-1", Some(&v1_task), 1)])).await;
        assert_eq!(store.current()["web-1"].version, "2.0");
        // A re-run of the older task does not overwrite it either.
        let mut old_run = v1_task.clone();
        old_run.generation = 1;
        store.deployed(&old_run).await;
        assert_eq!(store.current()["web-1"].version, "2.0");
        // A target listed without a payload keeps what the agent recorded.
        store.replace(&sent(&[("web-1", None, 0)])).await;
        assert_eq!(store.current()["web-1"].version, "2.0");
        // A newer generation from the server wins; an unlisted target is forgotten.
        let mut v3_task = desired();
        v3_task.version = "3.0".into();
        store.replace(&sent(&[("web-1", Some(&v3_task), 3)])).await;
        assert_eq!(store.current()["web-1"].version, "3.0");
        assert_eq!(store.current()["web-1"].generation, 3);
        store.replace(&sent(&[])).await;
        assert!(store.current().is_empty());
    }
}
