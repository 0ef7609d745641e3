//! The steps of a run as the TaskRunner `RunStateResponse.steps` shows them.

use serde::{Deserialize, Serialize};

use super::{backoff_ms, walk, RunState, StepState, StepStatus};
use crate::plan::{CompiledPlan, PlanBody, PlanStep};
use crate::simulate::StepKind;

/// The TaskRunner `RunStateStep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStateStep {
    /// Instance key (the step id outside maps and loops).
    pub step_id: String,
    /// Kind.
    pub kind: StepKind,
    /// False when a `when` on inputs was false at plan time.
    pub enabled: bool,
    /// Whether a failure lets the run go on.
    pub continue_on_error: bool,
    /// Most children at once (parallel, map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Approval of an approval gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Message of a gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_message: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Skipped` (a waiting gate is
    /// `Pending` with `statusReason` `awaiting-approval`).
    pub status: StepStatus,
    /// Attempts dispatched.
    pub attempts: u32,
    /// When the status last changed (RFC 3339, UTC, milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_at: Option<String>,
    /// When a failed step may be tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Why the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
}

/// Every step of the plan in plan order (depth first), and after each map or loop the
/// instances of its iterations that have a state, with the state the server stored.
pub fn run_state_steps(plan: &CompiledPlan, run: &RunState) -> Vec<RunStateStep> {
    let mut out = Vec::new();
    list(plan, run, &plan.plan.steps, "", &mut out);
    out
}

fn list(
    plan: &CompiledPlan,
    run: &RunState,
    steps: &[PlanStep],
    prefix: &str,
    out: &mut Vec<RunStateStep>,
) {
    for step in steps {
        let key = format!("{prefix}{}", step.id);
        out.push(row(plan, run, step, &key));
        match &step.body {
            PlanBody::Map(it) | PlanBody::Loop(it) => {
                let start = format!("{key}[");
                let mut indexes: Vec<usize> = run
                    .steps
                    .range(start.clone()..)
                    .take_while(|(k, _)| k.starts_with(&start))
                    .filter_map(|(k, _)| k[start.len()..].split(']').next()?.parse().ok())
                    .collect();
                indexes.dedup();
                for i in indexes {
                    list(plan, run, &it.steps, &format!("{key}[{i}]."), out);
                }
            }
            _ => {
                for children in walk::child_lists(step) {
                    list(plan, run, children, prefix, out);
                }
            }
        }
    }
}

fn row(plan: &CompiledPlan, run: &RunState, step: &PlanStep, key: &str) -> RunStateStep {
    let state = run.steps.get(key).copied().unwrap_or(StepState {
        status: StepStatus::Pending,
        attempts: 0,
        last_transition_ms: None,
    });
    let (approval_id, gate_message) = match &step.body {
        PlanBody::GateApproval {
            approval_id,
            message,
        } => (Some(approval_id.clone()), message.clone()),
        PlanBody::GatePolicy { message, .. } => (None, message.clone()),
        _ => (None, None),
    };
    let max_parallel = match &step.body {
        PlanBody::Parallel { max_parallel, .. } => *max_parallel,
        PlanBody::Map(it) => it.max_parallel,
        _ => None,
    };
    let max_attempts = match &step.body {
        PlanBody::Run { .. } => plan.plan.failure_policy.max_attempts,
        PlanBody::GatePolicy { retry_count, .. } => retry_count.saturating_add(1),
        _ => 0,
    };
    let (status, status_reason) = match state.status {
        StepStatus::Waiting => (StepStatus::Pending, Some("awaiting-approval".to_owned())),
        StepStatus::Failed if state.attempts < max_attempts => {
            (StepStatus::Failed, Some("retry-scheduled".to_owned()))
        }
        StepStatus::Skipped if !step.enabled => {
            (StepStatus::Skipped, Some("condition-false".to_owned()))
        }
        other => (other, None),
    };
    let next_attempt_at = match (state.status, state.last_transition_ms) {
        (StepStatus::Failed, Some(t)) if state.attempts < max_attempts => {
            Some(stella_decision::format_time(t.saturating_add(backoff_ms(
                plan.plan.failure_policy.backoff_seconds,
                state.attempts,
            ))))
        }
        _ => None,
    };
    RunStateStep {
        step_id: key.to_owned(),
        kind: StepKind::of(step),
        enabled: step.enabled,
        continue_on_error: step.continue_on_error,
        max_parallel,
        approval_id,
        gate_message,
        status,
        attempts: state.attempts,
        last_transition_at: state.last_transition_ms.map(stella_decision::format_time),
        next_attempt_at,
        status_reason,
    }
}
