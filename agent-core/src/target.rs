//! The `Target` trait that every target kind (docker, compose, ssh, …) implements, the
//! registry of the kinds an agent drives, and the deploy task they receive.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::TargetError;
use crate::sticker::{Sticker, StickerFields};
use stella_proto::v1;

/// A kind of deployment target. Implementations are idempotent reconcilers: `apply` brings
/// the target to the state `task` describes whatever state it is in, so the agent may run
/// the same task again after a crash.
#[async_trait]
pub trait Target: Send + Sync + fmt::Debug {
    /// The kind this implementation drives: `docker`, `compose`, `ssh`, …; reported as a
    /// capability in `Hello` and matched against `TargetSpec::kind`.
    fn kind(&self) -> &'static str;

    /// What `apply` would do, without changing anything.
    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError>;

    /// Carries out the plan, reporting progress lines; stops early with
    /// [`TargetError::Cancelled`] when `cancel` fires. Writes a sticker per component.
    async fn apply(
        &self,
        task: &DeployTask,
        plan: &Plan,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError>;

    /// What runs on the target now.
    async fn inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError>;

    /// Stores a sticker where this kind keeps them (labels, a file, tags, …).
    async fn write_sticker(
        &self,
        target: &TargetSpec,
        sticker: &Sticker,
    ) -> Result<(), TargetError>;

    /// Reads the sticker of one component, if there is one.
    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError>;
}

/// The target kinds an agent drives, by kind.
#[derive(Debug, Clone, Default)]
pub struct TargetRegistry {
    targets: BTreeMap<&'static str, Arc<dyn Target>>,
}

impl TargetRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        TargetRegistry::default()
    }

    /// Adds a target kind; returns the implementation it replaces, if any.
    pub fn register(&mut self, target: Arc<dyn Target>) -> Option<Arc<dyn Target>> {
        self.targets.insert(target.kind(), target)
    }

    /// The kinds, sorted: the agent's capabilities.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.targets.keys().copied().collect()
    }

    /// The implementation of a kind.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Target>> {
        self.targets.get(kind).cloned()
    }

    /// Whether no kind is registered.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// The `payload_json` of a `deploy` task assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployTask {
    /// The deployment this task belongs to.
    pub deployment_id: String,
    /// The promotion decision being carried out.
    pub decision_id: String,
    /// Environment name.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Where to deploy.
    pub target: TargetSpec,
    /// What to deploy, images pinned by digest.
    pub components: Vec<ComponentSpec>,
}

impl DeployTask {
    /// The sealed sticker for one component of this task, deployed now by `agent_id`.
    pub fn sticker(&self, component: &ComponentSpec, agent_id: &str) -> Sticker {
        Sticker::seal(StickerFields {
            release: self.release.clone(),
            version: self.version.clone(),
            environment: self.environment.clone(),
            target: self.target.name.clone(),
            component: component.name.clone(),
            image: component.image.clone(),
            deployment_id: self.deployment_id.clone(),
            decision_id: self.decision_id.clone(),
            deployed_at: crate::sticker::rfc3339_utc(time::OffsetDateTime::now_utc()),
            agent_id: agent_id.to_owned(),
        })
    }
}

/// A deployment target as configured on the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Target name.
    pub name: String,
    /// Target kind: selects the [`Target`] implementation.
    pub kind: String,
    /// Kind-specific settings (`--set key=value`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// One component of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Component name.
    pub name: String,
    /// Image pinned by digest: `repo@sha256:…`.
    pub image: String,
}

/// What `apply` will do, one human-readable line per step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<String>,
}

/// What `apply` did; sent to the server as the task's `output_json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// One line for the operator.
    pub summary: String,
    /// The stickers written, one per component deployed; each is also sent as a
    /// `StickerReport`.
    #[serde(default)]
    pub stickers: Vec<Sticker>,
}

/// One component as found running on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedComponent {
    /// Component name.
    pub component: String,
    /// The digest of the image that runs (`sha256:…`).
    pub image_digest: String,
    /// The `sticker_digest` of the component's sticker, if it has one.
    pub sticker_digest: Option<String>,
}

/// How a running task reports progress lines to the server (as `TaskUpdate`s).
#[derive(Clone)]
pub struct Progress {
    agent_id: String,
    task_id: String,
    sink: ProgressSink,
}

#[derive(Clone)]
enum ProgressSink {
    Session {
        epoch: Arc<AtomicU64>,
        outbox: mpsc::UnboundedSender<v1::AgentMessage>,
    },
    Lines(mpsc::UnboundedSender<String>),
    Log,
}

impl Progress {
    /// A progress reporter that only logs: for running a target outside a session.
    pub fn detached(agent_id: impl Into<String>, task_id: impl Into<String>) -> Self {
        Progress {
            agent_id: agent_id.into(),
            task_id: task_id.into(),
            sink: ProgressSink::Log,
        }
    }

    /// A progress reporter whose lines arrive on the returned receiver: for target tests.
    pub fn channel(
        agent_id: impl Into<String>,
        task_id: impl Into<String>,
    ) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let progress = Progress {
            agent_id: agent_id.into(),
            task_id: task_id.into(),
            sink: ProgressSink::Lines(tx),
        };
        (progress, rx)
    }

    pub(crate) fn session(
        agent_id: String,
        task_id: String,
        epoch: Arc<AtomicU64>,
        outbox: mpsc::UnboundedSender<v1::AgentMessage>,
    ) -> Self {
        Progress {
            agent_id,
            task_id,
            sink: ProgressSink::Session { epoch, outbox },
        }
    }

    /// Reports one progress line.
    pub fn report(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(task_id = %self.task_id, "{message}");
        match &self.sink {
            ProgressSink::Session { epoch, outbox } => {
                let update = v1::TaskUpdate {
                    task_id: self.task_id.clone(),
                    epoch: epoch.load(Ordering::SeqCst),
                    message,
                    at_unix_ms: crate::now_unix_ms(),
                };
                // No session receiving: the line is dropped, the task's result is not.
                let _ = outbox.send(v1::AgentMessage {
                    body: Some(v1::agent_message::Body::TaskUpdate(update)),
                });
            }
            ProgressSink::Lines(tx) => {
                let _ = tx.send(message);
            }
            ProgressSink::Log => {}
        }
    }

    /// The id of the agent running the task (for stickers).
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The id of the task being run.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("agent_id", &self.agent_id)
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}
