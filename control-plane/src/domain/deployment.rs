//! Deployments, their tasks and log lines, and the deploy payload agents receive.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{ImageRef, Invalid, Release, Target, TargetKind};

string_enum!(
    /// Why a deployment exists.
    DeploymentKind {
        /// A promotion to the environment.
        Promotion = "promotion",
        /// A rollback to an earlier version.
        Rollback = "rollback",
        /// A redeploy of the promoted digests after drift.
        Remediation = "remediation",
    }
);

string_enum!(
    /// Where a deployment is.
    DeploymentState {
        /// Tasks created, none finished.
        Pending = "pending",
        /// Some tasks finished.
        Running = "running",
        /// Every task succeeded.
        Succeeded = "succeeded",
        /// A task failed or expired.
        Failed = "failed",
        /// An operator cancelled it; its unfinished tasks were cancelled.
        Cancelled = "cancelled",
    }
);

string_enum!(
    /// Where a task is.
    TaskState {
        /// Stored, not yet sent.
        Pending = "pending",
        /// Sent to its agent under the current epoch.
        Assigned = "assigned",
        /// The agent reported success.
        Succeeded = "succeeded",
        /// The agent reported failure, or the deadline passed.
        Failed = "failed",
        /// Cancelled with its deployment before it finished.
        Cancelled = "cancelled",
    }
);

impl DeploymentState {
    /// Whether nothing will change it any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded | DeploymentState::Failed | DeploymentState::Cancelled
        )
    }
}

string_enum!(
    /// What a task does on its agent (`TaskAssignment.kind`).
    TaskKind {
        /// Bring the target (or one of its slots) to the payload's release.
        Deploy = "deploy",
        /// Remove one slot's containers from the target.
        Retire = "retire",
    }
);

impl TaskState {
    /// Whether nothing will change it any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// A deployment: one release version rolled out to the targets of one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Id (UUID v7).
    pub id: String,
    /// Why it exists.
    pub kind: DeploymentKind,
    /// Environment name.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// The decision record it carries out (`sha256:…`).
    pub decision_id: String,
    /// Grows with every deployment created (assigned by the store): orders what the
    /// targets should run, so an agent never takes an older desired state for a newer.
    pub generation: i64,
    /// Where it is.
    pub state: DeploymentState,
    /// Why it failed, or a summary.
    pub message: Option<String>,
    /// Who asked for it (`stella:drift` for remediation).
    pub created_by: String,
    /// Creation time.
    pub created_at_ms: i64,
    /// When it reached a terminal state.
    pub finished_at_ms: Option<i64>,
}

/// One target's share of a deployment, delivered to its agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Id (UUID v7); the agent's journal key.
    pub id: String,
    /// Its deployment.
    pub deployment_id: String,
    /// Target name.
    pub target: String,
    /// The agent that drives the target.
    pub agent_id: String,
    /// What it does.
    pub kind: TaskKind,
    /// Lease epoch: increases at every (re)assignment; older results are discarded.
    pub epoch: i64,
    /// Its deployment's generation.
    pub generation: i64,
    /// Where it is.
    pub state: TaskState,
    /// The `deploy` payload without registry credentials (added when sending).
    pub payload_json: String,
    /// The agent's message or the failure reason.
    pub message: Option<String>,
    /// After this the task fails if unfinished.
    pub deadline_at_ms: i64,
    /// Creation time.
    pub created_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
}

/// A progress or log line of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Increasing per store (use it to follow).
    pub seq: i64,
    /// Its deployment.
    pub deployment_id: String,
    /// The task that reported it (empty for server lines).
    pub task_id: String,
    /// When.
    pub at_ms: i64,
    /// The line.
    pub message: String,
}

/// What one target must run: the `deploy` task payload (JSON in `TaskAssignment`), and
/// the record of what a succeeded task put there (the agent's desired state). The JSON
/// shape is a contract with agents (docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    /// The deployment this task belongs to.
    pub deployment_id: String,
    /// The decision being carried out.
    pub decision_id: String,
    /// Environment name.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// The target.
    pub target: TargetSpec,
    /// Components to run, pinned by digest.
    pub components: Vec<ComponentSpec>,
    /// The slot a rollout deploys to (RFC 0005); `None`: the target's own containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// A target as an agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Target name.
    pub name: String,
    /// Kind (`docker`, …).
    pub kind: String,
    /// Settings.
    pub settings: BTreeMap<String, String>,
}

/// A component as an agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Component name.
    pub name: String,
    /// `registry/repository@sha256:…`.
    pub image: String,
}

impl DeploySpec {
    /// The spec of one target's share of a deployment.
    pub fn new(deployment: &Deployment, release: &Release, target: &Target) -> DeploySpec {
        DeploySpec {
            deployment_id: deployment.id.clone(),
            decision_id: deployment.decision_id.clone(),
            environment: deployment.environment.clone(),
            release: release.name.clone(),
            version: release.version.clone(),
            target: TargetSpec {
                name: target.name.clone(),
                kind: target.kind.as_str().to_owned(),
                settings: target.settings.clone(),
            },
            components: TargetKind::selected_components(&target.settings, release)
                .into_iter()
                .map(|c| ComponentSpec {
                    name: c.name.clone(),
                    image: c.image.clone(),
                })
                .collect(),
            slot: None,
        }
    }

    /// Registries the components are pulled from (`host[:port]`), sorted, unique.
    pub fn registries(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .components
            .iter()
            .filter_map(|c| ImageRef::parse(&c.image).ok().map(|r| r.registry))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}
