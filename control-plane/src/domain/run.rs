//! Task-pack runs as the store keeps them: the run, its step states, approvals, log
//! lines and artifacts. What a run does next is decided by `stella_packs::schedule`.

use serde_json::{Map, Value};

/// The tenant of a request that names none.
pub const DEFAULT_TENANT: &str = "default";

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Tenant that owns it.
    pub tenant: String,
    /// Id, unique within the tenant (`[A-Za-z0-9_-]+`).
    pub id: String,
    /// `sha256:` of the plan.
    pub plan_hash: String,
    /// The compiled plan as canonical JSON.
    pub plan_json: String,
    /// The manifest as sent.
    pub manifest: String,
    /// The input values as sent (JSON object).
    pub inputs_json: String,
    /// `Running`, `Waiting`, `Succeeded`, `Failed`, `Cancelled`.
    pub status: String,
    /// Whether cancellation was requested.
    pub cancel_requested: bool,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at_ms: i64,
    /// Last change of any of its states.
    pub updated_at_ms: i64,
    /// When it reached a final status.
    pub finished_at_ms: Option<i64>,
    /// Replica holding the lease.
    pub lease_owner: Option<String>,
    /// Until when.
    pub lease_expires_at_ms: Option<i64>,
    /// Raised by every claim.
    pub lease_epoch: i64,
}

impl Run {
    /// Whether the run reached a final status.
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "Succeeded" | "Failed" | "Cancelled")
    }
}

/// A new run, as created by the API.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Tenant.
    pub tenant: String,
    /// Id.
    pub id: String,
    /// Plan hash.
    pub plan_hash: String,
    /// Plan JSON.
    pub plan_json: String,
    /// Manifest text.
    pub manifest: String,
    /// Inputs JSON.
    pub inputs_json: String,
    /// Creator.
    pub created_by: String,
    /// Creation time.
    pub created_at_ms: i64,
}

/// The stored state of one step instance.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStepRecord {
    /// Instance key.
    pub key: String,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Skipped`, `Waiting`.
    pub status: String,
    /// Attempts dispatched.
    pub attempts: i64,
    /// Last status change.
    pub last_transition_ms: Option<i64>,
    /// Why the status (a failure's reason, a skip's cause).
    pub reason: Option<String>,
    /// Outputs of a finished step.
    pub outputs: Option<Map<String, Value>>,
    /// Lease epoch it was dispatched under.
    pub epoch: i64,
}

/// An approval decision of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunApproval {
    /// The approval (from the pack's `spec.approvals`).
    pub approval_id: String,
    /// `approved`, `rejected`, `expired`.
    pub decision: String,
    /// Who decided.
    pub actor: String,
    /// Why.
    pub summary: Option<String>,
    /// When.
    pub decided_at_ms: i64,
}

/// A log line of a run (the TaskRunner `RunLogEntry`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunLogLine {
    /// Number within the run, from 0.
    pub seq: i64,
    /// When.
    pub at_ms: i64,
    /// `debug`, `info`, `warn`, `error`.
    pub level: String,
    /// `run.created`, `step.started`, …
    pub event_type: String,
    /// Text.
    pub message: String,
    /// Step instance key.
    pub step_id: Option<String>,
    /// String-valued details.
    pub metadata: Option<Map<String, Value>>,
}

/// A log line to append (numbered by the store).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRunLog {
    /// `debug`, `info`, `warn`, `error`.
    pub level: &'static str,
    /// Event type.
    pub event_type: &'static str,
    /// Text.
    pub message: String,
    /// Step instance key.
    pub step_id: Option<String>,
    /// Details (string values).
    pub metadata: Vec<(String, String)>,
}

impl NewRunLog {
    /// An `info` line.
    pub fn info(event_type: &'static str, message: impl Into<String>) -> NewRunLog {
        NewRunLog {
            level: "info",
            event_type,
            message: message.into(),
            step_id: None,
            metadata: Vec::new(),
        }
    }

    /// The same line at `level`.
    pub fn level(mut self, level: &'static str) -> NewRunLog {
        self.level = level;
        self
    }

    /// The same line about a step.
    pub fn step(mut self, key: &str) -> NewRunLog {
        self.step_id = Some(key.to_owned());
        self
    }

    /// The same line with one more detail.
    pub fn meta(mut self, key: &str, value: impl Into<String>) -> NewRunLog {
        self.metadata.push((key.to_owned(), value.into()));
        self
    }
}

/// A captured pack output.
#[derive(Debug, Clone, PartialEq)]
pub struct RunArtifact {
    /// Output name.
    pub name: String,
    /// `file` or `object`.
    pub kind: String,
    /// Path inside the sandbox (files).
    pub source_path: Option<String>,
    /// Where it is kept (`runs/<run>/artifacts/<name>`).
    pub stored_path: Option<String>,
    /// `pending`, `captured`, `failed`.
    pub status: String,
    /// Why it failed.
    pub notes: Option<String>,
    /// When captured.
    pub captured_at_ms: Option<i64>,
    /// The value of an object output, JSON.
    pub expression_json: Option<String>,
    /// The bytes of a file output.
    pub content: Option<Vec<u8>>,
}

/// A step state to write.
#[derive(Debug, Clone, PartialEq)]
pub struct StepWrite {
    /// Instance key.
    pub key: String,
    /// New status.
    pub status: String,
    /// Attempts after this write.
    pub attempts: i64,
    /// Time of the change.
    pub at_ms: i64,
    /// Why.
    pub reason: Option<String>,
    /// Outputs (kept when `None`).
    pub outputs: Option<Map<String, Value>>,
}

/// Everything one step of a driver writes at once, fenced by the run's lease epoch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunChanges {
    /// Step states.
    pub steps: Vec<StepWrite>,
    /// Log lines.
    pub logs: Vec<NewRunLog>,
    /// A new run status.
    pub status: Option<String>,
    /// Artifacts captured.
    pub artifacts: Vec<RunArtifact>,
}

impl RunChanges {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
            && self.logs.is_empty()
            && self.status.is_none()
            && self.artifacts.is_empty()
    }
}
