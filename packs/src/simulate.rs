//! Simulation: what a run of a plan would do, executing nothing. The output is the
//! TaskRunner `SimulationResponse`, field for field.
//!
//! Each step gets one status:
//! - `Pending`: it would run (run steps, parallel blocks, approved gates).
//! - `Skipped`: it would not: its `when` is false, its branch is not taken, its map or
//!   loop has no items, or an earlier gate was rejected (`statusReason` says which).
//! - `RequiresApproval`: an approval gate whose approval is not granted.
//! - `RequiresPolicy`: a policy gate (policies are evaluated at run time).
//! - `WillIterate`: a map or loop; `statusReason` is `iterations: N` when the items are
//!   known, and its children are the body, with ids `<loop>[*].<child>`.
//! - `WillBranch`: a conditional; `statusReason` names the branch taken when the
//!   conditions can be decided from inputs and known step outputs.
//!
//! A condition that reads a step output not given in the [`SimulationContext`], or an
//! item variable, is decided at run time: the step keeps its status and
//! `statusReason` says so.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::{self, Reference, Template};
use crate::manifest::{AggregationMode, FailureAction, FailurePolicy, OutputType};
use crate::plan::{CompiledPlan, PlanBody, PlanIteration, PlanStep};

/// What is already known when simulating: step outputs and approval decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulationContext {
    /// Outputs by step id.
    #[serde(default)]
    pub step_outputs: BTreeMap<String, Map<String, Value>>,
    /// Decisions by approval id.
    #[serde(default)]
    pub approvals: BTreeMap<String, ApprovalDecision>,
}

/// A decision on an approval (the TaskRunner `ApprovalDecisionRequest.decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ApprovalDecision {
    /// Granted.
    Approved,
    /// Refused.
    Rejected,
    /// Not decided in time.
    Expired,
}

/// The TaskRunner `SimulationResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulationResponse {
    /// The plan's hash.
    pub plan_hash: String,
    /// The plan's failure policy.
    pub failure_policy: FailurePolicy,
    /// The steps, as a tree.
    pub steps: Vec<SimulationStep>,
    /// The pack's outputs.
    pub outputs: Vec<SimulationOutput>,
    /// Whether some enabled approval gate still waits for its approval.
    pub has_pending_approvals: bool,
}

/// The TaskRunner step kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKind {
    /// `run`.
    Run,
    /// `gate.approval`.
    GateApproval,
    /// `gate.policy`.
    GatePolicy,
    /// `parallel`.
    Parallel,
    /// `map`.
    Map,
    /// `loop`.
    Loop,
    /// `conditional`.
    Conditional,
    /// Not produced by this crate; part of the contract's enum.
    Unknown,
}

impl StepKind {
    /// The kind of a plan step.
    pub fn of(step: &PlanStep) -> StepKind {
        match step.body {
            PlanBody::Run { .. } => StepKind::Run,
            PlanBody::GateApproval { .. } => StepKind::GateApproval,
            PlanBody::GatePolicy { .. } => StepKind::GatePolicy,
            PlanBody::Parallel { .. } => StepKind::Parallel,
            PlanBody::Map(_) => StepKind::Map,
            PlanBody::Loop(_) => StepKind::Loop,
            PlanBody::Conditional { .. } => StepKind::Conditional,
        }
    }
}

/// The status of a simulated step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SimulationStatus {
    /// Would run.
    Pending,
    /// Would not run.
    Skipped,
    /// Waits for an approval.
    RequiresApproval,
    /// Waits for a policy evaluation.
    RequiresPolicy,
    /// Iterates.
    WillIterate,
    /// Branches.
    WillBranch,
}

/// The TaskRunner `SimulationStep`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulationStep {
    /// Id (`<loop>[*].<child>` inside a map or loop).
    pub id: String,
    /// The step id of the manifest.
    pub template_id: String,
    /// Kind.
    pub kind: StepKind,
    /// False when a `when` on inputs is false.
    pub enabled: bool,
    /// Status.
    pub status: SimulationStatus,
    /// Why the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// Executor of a run step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<String>,
    /// Approval of an approval gate (or a policy gate's override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// Message of a gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_message: Option<String>,
    /// Most children at once (parallel, map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// Present (true) only when a failure of the step lets the run go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continue_on_error: Option<bool>,
    /// Children.
    pub children: Vec<SimulationStep>,
    /// Map and loop details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loop_info: Option<LoopInfo>,
    /// Conditional details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditional_info: Option<ConditionalInfo>,
    /// Policy gate details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_info: Option<PolicyInfo>,
}

/// The TaskRunner `LoopInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoopInfo {
    /// The items template, when the items come from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_expression: Option<String>,
    /// Item variable.
    pub iterator: String,
    /// Index variable.
    pub index: String,
    /// Most iterations.
    pub max_iterations: u32,
    /// Aggregation.
    pub aggregation_mode: AggregationMode,
}

/// The TaskRunner `ConditionalInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionalInfo {
    /// Branches in order.
    pub branches: Vec<BranchInfo>,
    /// Steps of `else`.
    pub else_step_count: usize,
    /// Whether outputs are the union of the branches'.
    pub output_union: bool,
}

/// One branch of [`ConditionalInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchInfo {
    /// Condition as written.
    pub condition: String,
    /// Steps of the branch.
    pub step_count: usize,
}

/// The TaskRunner `PolicyInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInfo {
    /// Policy id.
    pub policy_id: String,
    /// Policy version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// What a failure does.
    pub failure_action: FailureAction,
    /// Evaluations after the first.
    pub retry_count: u32,
}

/// The TaskRunner `SimulationOutput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulationOutput {
    /// Name.
    pub name: String,
    /// `file` or `object`.
    #[serde(rename = "type")]
    pub ty: OutputType,
    /// Whether the value is known only at run time.
    pub requires_runtime_value: bool,
    /// Path template of a file output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_expression: Option<String>,
    /// Value template of an object output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_expression: Option<String>,
}

/// Simulate a plan.
pub fn simulate(plan: &CompiledPlan, known: &SimulationContext) -> SimulationResponse {
    let outputs: Map<String, Value> = known
        .step_outputs
        .iter()
        .map(|(k, v)| (k.clone(), Value::Object(v.clone())))
        .collect();
    let mut sim = Simulator {
        known,
        context: expr::context(&plan.plan.inputs, &outputs, &[]),
        pending_approvals: false,
        rejected: None,
    };
    let steps = sim.list(&plan.plan.steps, "", None);
    SimulationResponse {
        plan_hash: plan.plan_hash.clone(),
        failure_policy: plan.plan.failure_policy,
        steps,
        outputs: plan
            .plan
            .outputs
            .iter()
            .map(|o| SimulationOutput {
                name: o.name.clone(),
                ty: o.ty,
                requires_runtime_value: o.requires_runtime_value,
                path_expression: o.path_expression.clone(),
                value_expression: o.value_expression.clone(),
            })
            .collect(),
        has_pending_approvals: sim.pending_approvals,
    }
}

struct Simulator<'a> {
    known: &'a SimulationContext,
    context: Value,
    pending_approvals: bool,
    /// The first approval gate found rejected: every later step is skipped.
    rejected: Option<String>,
}

/// Outcome of deciding a condition now.
enum Decided {
    Yes,
    No,
    AtRunTime,
    Error(String),
}

impl Simulator<'_> {
    fn decidable(&self, refs: &[Reference]) -> bool {
        refs.iter().all(|r| match r {
            Reference::Input { .. } => true,
            Reference::StepOutput { step, .. } => self.known.step_outputs.contains_key(step),
            _ => false,
        })
    }

    fn decide(&self, condition: &str) -> Decided {
        let Ok(e) = expr::parse_condition(condition) else {
            return Decided::Error("invalid condition".to_owned());
        };
        if !self.decidable(&e.references()) {
            return Decided::AtRunTime;
        }
        match e.eval(&self.context) {
            Ok(v) if expr::truthy(&v) => Decided::Yes,
            Ok(_) => Decided::No,
            Err(err) => Decided::Error(err.0),
        }
    }

    /// A list run in order; `blocked` makes every step skipped with that reason.
    fn list(
        &mut self,
        steps: &[PlanStep],
        prefix: &str,
        blocked: Option<&str>,
    ) -> Vec<SimulationStep> {
        let mut out = Vec::new();
        let mut blocked = blocked.map(str::to_owned);
        for step in steps {
            out.push(self.step(step, prefix, blocked.as_deref()));
            if blocked.is_none() {
                if let Some(gate) = &self.rejected {
                    blocked = Some(format!("blocked: approval of `{gate}` was not granted"));
                }
            }
        }
        out
    }

    fn step(&mut self, step: &PlanStep, prefix: &str, blocked: Option<&str>) -> SimulationStep {
        let mut sim = SimulationStep {
            id: format!("{prefix}{}", step.id),
            template_id: step.id.clone(),
            kind: StepKind::of(step),
            enabled: step.enabled,
            status: SimulationStatus::Pending,
            status_reason: None,
            uses: None,
            approval_id: None,
            gate_message: None,
            max_parallel: None,
            continue_on_error: step.continue_on_error.then_some(true),
            children: Vec::new(),
            loop_info: None,
            conditional_info: None,
            policy_info: None,
        };
        let skip_reason: Option<String> = if let Some(b) = blocked {
            Some(b.to_owned())
        } else if !step.enabled {
            Some("condition-false".to_owned())
        } else {
            match step.when.as_deref().map(|w| self.decide(w)) {
                Some(Decided::No) => Some("condition-false".to_owned()),
                Some(Decided::Error(e)) => Some(format!("condition cannot be evaluated: {e}")),
                Some(Decided::AtRunTime) => {
                    sim.status_reason = Some("condition decided at run time".to_owned());
                    None
                }
                Some(Decided::Yes) | None => None,
            }
        };
        let skipped = skip_reason.is_some();
        let child_block = skip_reason.clone();
        let child_block = child_block.as_deref().map(|r| {
            if blocked.is_some() {
                r
            } else {
                "parent skipped"
            }
        });
        match &step.body {
            PlanBody::Run { uses, .. } => sim.uses = Some(uses.clone()),
            PlanBody::GateApproval {
                approval_id,
                message,
            } => {
                sim.approval_id = Some(approval_id.clone());
                sim.gate_message = message.clone();
                if !skipped {
                    match self.known.approvals.get(approval_id) {
                        Some(ApprovalDecision::Approved) => {
                            sim.status_reason = Some("approval-granted".to_owned());
                        }
                        Some(ApprovalDecision::Rejected | ApprovalDecision::Expired) => {
                            sim.status = SimulationStatus::Skipped;
                            sim.status_reason = Some("approval-rejected".to_owned());
                            self.rejected.get_or_insert_with(|| step.id.clone());
                        }
                        None => {
                            sim.status = SimulationStatus::RequiresApproval;
                            sim.status_reason = Some("awaiting-approval".to_owned());
                            self.pending_approvals = true;
                        }
                    }
                }
            }
            PlanBody::GatePolicy {
                policy_id,
                policy_version,
                message,
                failure_action,
                retry_count,
                override_approval,
                on_failure,
                ..
            } => {
                sim.status = SimulationStatus::RequiresPolicy;
                sim.gate_message = message.clone();
                sim.approval_id = override_approval.clone();
                sim.policy_info = Some(PolicyInfo {
                    policy_id: policy_id.clone(),
                    policy_version: policy_version.clone(),
                    failure_action: *failure_action,
                    retry_count: *retry_count,
                });
                let mut children = self.list(on_failure, prefix, child_block);
                if !skipped {
                    for c in &mut children {
                        c.status_reason
                            .get_or_insert_with(|| "runs if the policy fails".to_owned());
                    }
                }
                sim.children = children;
            }
            PlanBody::Parallel {
                max_parallel,
                steps,
            } => {
                sim.max_parallel = *max_parallel;
                sim.children = self.list(steps, prefix, child_block);
            }
            PlanBody::Map(it) | PlanBody::Loop(it) => {
                sim.status = SimulationStatus::WillIterate;
                sim.max_parallel = it.max_parallel;
                sim.loop_info = Some(LoopInfo {
                    items_expression: it.items_expression.clone(),
                    iterator: it.iterator.clone(),
                    index: it.index.clone(),
                    max_iterations: it.max_iterations,
                    aggregation_mode: it.aggregation,
                });
                let count = self.iterations(it);
                let inner_prefix = format!("{prefix}{}[*].", step.id);
                let empty = count == Some(0);
                let block = child_block.or(if empty { Some("no items") } else { None });
                sim.children = self.list(&it.steps, &inner_prefix, block);
                if !skipped {
                    match count {
                        Some(0) => {
                            sim.status = SimulationStatus::Skipped;
                            sim.status_reason = Some("no items".to_owned());
                        }
                        Some(n) => sim.status_reason = Some(format!("iterations: {n}")),
                        None => {
                            sim.status_reason = Some("iterations decided at run time".to_owned());
                        }
                    }
                }
            }
            PlanBody::Conditional {
                branches,
                else_steps,
                output_union,
            } => {
                sim.status = SimulationStatus::WillBranch;
                sim.conditional_info = Some(ConditionalInfo {
                    branches: branches
                        .iter()
                        .map(|b| BranchInfo {
                            condition: b.condition.clone(),
                            step_count: b.steps.len(),
                        })
                        .collect(),
                    else_step_count: else_steps.len(),
                    output_union: *output_union,
                });
                // The branch taken: Some(Some(i)) branch i, Some(None) else, None unknown.
                let mut taken: Option<Option<usize>> = Some(None);
                for (i, b) in branches.iter().enumerate() {
                    match self.decide(&b.condition) {
                        Decided::Yes => {
                            taken = Some(Some(i));
                            break;
                        }
                        Decided::No => {}
                        Decided::AtRunTime | Decided::Error(_) => {
                            taken = None;
                            break;
                        }
                    }
                }
                let mut children = Vec::new();
                for (i, b) in branches.iter().enumerate() {
                    let block = child_block.or(match taken {
                        Some(t) if t != Some(i) => Some("branch-not-taken"),
                        _ => None,
                    });
                    children.extend(self.list(&b.steps, prefix, block));
                }
                let else_block = child_block.or(match taken {
                    Some(Some(_)) => Some("branch-not-taken"),
                    _ => None,
                });
                children.extend(self.list(else_steps, prefix, else_block));
                sim.children = children;
                if !skipped {
                    sim.status_reason = Some(match taken {
                        Some(Some(i)) => format!("branch: {i}"),
                        Some(None) if else_steps.is_empty() => "branch: none".to_owned(),
                        Some(None) => "branch: else".to_owned(),
                        None => "branch decided at run time".to_owned(),
                    });
                }
            }
        }
        if let Some(reason) = skip_reason {
            sim.status = SimulationStatus::Skipped;
            sim.status_reason = Some(reason);
        }
        sim
    }

    /// Number of iterations, when known now.
    fn iterations(&self, it: &PlanIteration) -> Option<usize> {
        if let Some(items) = &it.items {
            return Some(items.len());
        }
        let t = Template::parse(it.items_expression.as_deref()?).ok()?;
        if !self.decidable(&t.references()) {
            return None;
        }
        match t.render(&self.context).ok()? {
            Value::Array(items) => Some(items.len().min(it.max_iterations as usize)),
            _ => None,
        }
    }
}
