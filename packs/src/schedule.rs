//! The scheduler core of a run: a pure function from a plan, the states the server
//! stored, and `now_ms`, to what happens next. The server stores what it returns, runs
//! what it dispatches, and calls it again whenever something changes (a step finished,
//! an approval was decided, a retry came due); the same inputs always give the same
//! answer.
//!
//! Steps are addressed by instance key: a step's id, prefixed inside a map or loop by
//! `<loop key>[<index>].` (`deploy-all[2].health`), so every iteration has its own
//! states and outputs.
//!
//! Rules (docs/task-packs.md, "Runs"):
//! - A list runs in order; a `parallel` block starts children whose `needs` are done,
//!   at most `maxParallel` at once, and none after a child has failed; a `map` is a
//!   parallel block of iterations, a `loop` runs them one after the other.
//! - A failed run step or policy evaluation is dispatched again while it has attempts
//!   left (`failurePolicy.maxAttempts`; `retryCount + 1` for a policy gate), not before
//!   `lastTransitionMs + backoffSeconds × 2^(attempts − 1)` seconds. When none are left
//!   it fails the run, unless the step continues on error.
//! - A `when` that is false, an untaken branch, a policy gate's `onFailure` steps after
//!   it passed, and every pending step of a cancelled run become `Skipped`.
//! - Gates wait for decisions in [`RunState::approvals`]: an approval gate for its
//!   approval, a policy gate with `requestOverride` for its override approval.

mod view;
mod walk;

pub use view::{run_state_steps, RunStateStep};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plan::CompiledPlan;
use crate::simulate::{ApprovalDecision, StepKind};

/// The stored state of one step instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Dispatched and not finished (containers: a child has started).
    Running,
    /// Finished well.
    Succeeded,
    /// Finished badly (may still be retried).
    Failed,
    /// Will not run.
    Skipped,
    /// A gate waiting for a decision.
    Waiting,
}

/// What the server stored for a step instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    /// Status.
    pub status: StepStatus,
    /// Attempts dispatched so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the status last changed (UTC milliseconds); a failure's time starts its
    /// backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_ms: Option<i64>,
}

/// Everything the server knows about a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    /// States by instance key; an absent key is `Pending` with no attempts.
    #[serde(default)]
    pub steps: BTreeMap<String, StepState>,
    /// Outputs of finished steps by instance key.
    #[serde(default)]
    pub outputs: BTreeMap<String, Map<String, Value>>,
    /// Decisions by approval id.
    #[serde(default)]
    pub approvals: BTreeMap<String, ApprovalDecision>,
    /// Whether cancellation was requested.
    #[serde(default)]
    pub cancelled: bool,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// Steps are running, dispatched, or waiting for a retry or a free slot.
    Running,
    /// Nothing runs; gates wait for approvals.
    Waiting,
    /// Every step finished or was skipped.
    Succeeded,
    /// A step failed for good.
    Failed,
    /// Cancelled, and nothing is running any more.
    Cancelled,
}

/// What the scheduler decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Where the run stands once the transitions and dispatches are applied.
    pub run_status: RunStatus,
    /// Steps to start now, in plan order.
    pub dispatch: Vec<Dispatch>,
    /// Status changes the scheduler decided (skips, gate outcomes, container states).
    pub transitions: Vec<Transition>,
    /// Gates waiting for a decision.
    pub waiting: Vec<GateWait>,
    /// Earliest time a failed step may be retried, when one waits for its backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at_ms: Option<i64>,
}

/// A step to start: the server marks it `Running`, counts the attempt, and runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dispatch {
    /// Instance key.
    pub key: String,
    /// Step id in the plan.
    pub step_id: String,
    /// `Run` or `GatePolicy`.
    pub kind: StepKind,
    /// Executor of a run step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<String>,
    /// Policy of a policy gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// Policy version of a policy gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// `with` (run) or `parameters` (policy), every template rendered.
    pub with: Map<String, Value>,
    /// Which attempt this is (1 for the first).
    pub attempt: u32,
}

/// A status change decided by the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// Instance key.
    pub key: String,
    /// New status.
    pub to: StepStatus,
    /// Why (`condition-false`, `branch-not-taken`, `approval-granted`, …).
    pub reason: String,
}

/// A gate waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GateWait {
    /// Instance key of the gate.
    pub key: String,
    /// The approval waited for.
    pub approval_id: String,
    /// What approvers are shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `awaiting-approval` or `awaiting-override`.
    pub reason: String,
}

/// What happens next in a run.
pub fn schedule(plan: &CompiledPlan, run: &RunState, now_ms: i64) -> Schedule {
    if run.cancelled {
        return cancel(plan, run);
    }
    let mut walker = walk::Walker::new(&plan.plan, run, now_ms);
    let flow = walker.top();
    let run_status = match flow {
        walk::Flow::Done => RunStatus::Succeeded,
        walk::Flow::Failed => RunStatus::Failed,
        walk::Flow::Blocked => RunStatus::Waiting,
        walk::Flow::Active => RunStatus::Running,
    };
    walker.finish(run_status)
}

/// Cancel a run: every pending or waiting step instance, and every step of the plan
/// not started yet, becomes `Skipped`; running steps are left to the server to stop.
/// The run is `Cancelled` once nothing is running.
pub fn cancel(plan: &CompiledPlan, run: &RunState) -> Schedule {
    let mut transitions = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut running = false;
    let mut containers = Vec::new();
    for (key, state) in &run.steps {
        seen.insert(key.clone());
        match state.status {
            StepStatus::Pending | StepStatus::Waiting => transitions.push(Transition {
                key: key.clone(),
                to: StepStatus::Skipped,
                reason: "cancelled".to_owned(),
            }),
            StepStatus::Running if walk::is_leaf_key(&plan.plan, key) => running = true,
            StepStatus::Running => containers.push(key.clone()),
            _ => {}
        }
    }
    if !running {
        for key in containers {
            transitions.push(Transition {
                key,
                to: StepStatus::Skipped,
                reason: "cancelled".to_owned(),
            });
        }
    }
    walk::static_keys(&plan.plan.steps, &mut |key| {
        if !seen.contains(key) {
            transitions.push(Transition {
                key: key.to_owned(),
                to: StepStatus::Skipped,
                reason: "cancelled".to_owned(),
            });
        }
    });
    transitions.sort_by(|a, b| a.key.cmp(&b.key));
    Schedule {
        run_status: if running {
            RunStatus::Running
        } else {
            RunStatus::Cancelled
        },
        dispatch: Vec::new(),
        transitions,
        waiting: Vec::new(),
        next_retry_at_ms: None,
    }
}

/// Delay before the attempt after `attempts` failed ones: `backoffSeconds` doubled
/// for each attempt after the first (at most 2^16 times), in milliseconds.
pub fn backoff_ms(backoff_seconds: u64, attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(16);
    let ms = backoff_seconds
        .saturating_mul(1000)
        .saturating_mul(1u64 << doublings);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
