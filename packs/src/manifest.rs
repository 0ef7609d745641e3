//! The `stellaops.io/pack.v1` `TaskPack` manifest: YAML or JSON text into typed steps.
//!
//! The text is first read into a JSON value (YAML through `serde_yaml_ng`, JSON through
//! `serde_json`), then walked by hand rather than by `#[derive(Deserialize)]`: serde
//! stops at the first error and loses where it was, while a plan error must name every
//! problem with its JSON path (`$.spec.steps[2].run.with.image`). Unknown keys are errors,
//! so a misspelt field never silently does nothing.
//!
//! docs/task-packs.md is the reference for every field.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only `apiVersion` this crate reads.
pub const API_VERSION: &str = "stellaops.io/pack.v1";
/// The only `kind` this crate reads.
pub const KIND: &str = "TaskPack";

/// A parsed manifest: structurally valid, not yet checked as a whole (see
/// [`crate::validate`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `metadata`.
    pub metadata: Metadata,
    /// `spec.inputs`, in manifest order.
    pub inputs: Vec<InputDecl>,
    /// `spec.sandbox` (sealed, no limits, when absent).
    pub sandbox: Sandbox,
    /// `spec.slo`.
    pub slo: Option<Slo>,
    /// `spec.approvals`.
    pub approvals: Vec<ApprovalDecl>,
    /// `spec.failure` (one attempt, no backoff, stop on error, when absent).
    pub failure: FailurePolicy,
    /// `spec.outputs`.
    pub outputs: Vec<OutputDecl>,
    /// `spec.steps`, run one after the other.
    pub steps: Vec<Step>,
}

/// `metadata`: what the pack is called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// Pack name.
    pub name: String,
    /// Pack version (a number in YAML is kept as its text).
    pub version: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The type an input value must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InputType {
    /// A JSON string.
    String,
    /// Any JSON number.
    Number,
    /// A whole JSON number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl InputType {
    fn parse(name: &str) -> Option<InputType> {
        Some(match name {
            "string" => InputType::String,
            "number" => InputType::Number,
            "integer" => InputType::Integer,
            "boolean" | "bool" => InputType::Boolean,
            "object" => InputType::Object,
            "array" | "list" => InputType::Array,
            _ => return None,
        })
    }

    /// Whether a value has this type.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            InputType::String => value.is_string(),
            InputType::Number => value.is_number(),
            InputType::Integer => value.is_i64() || value.is_u64(),
            InputType::Boolean => value.is_boolean(),
            InputType::Object => value.is_object(),
            InputType::Array => value.is_array(),
        }
    }

    /// The manifest spelling.
    pub fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Integer => "integer",
            InputType::Boolean => "boolean",
            InputType::Object => "object",
            InputType::Array => "array",
        }
    }
}

/// One `spec.inputs[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct InputDecl {
    /// Name, referenced as `inputs.<name>`.
    pub name: String,
    /// Type every value must have.
    pub ty: InputType,
    /// Whether a value must be given when there is no default.
    pub required: bool,
    /// Value used when none is given.
    pub default: Option<Value>,
    /// Free text.
    pub description: Option<String>,
    /// JSON path of this entry.
    pub path: String,
}

/// How a step's process may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SandboxMode {
    /// No egress at all: `egressAllowlist` must be empty.
    Sealed,
    /// Egress only to the hosts of `egressAllowlist` (at least one).
    Restricted,
}

/// `spec.sandbox`: where steps run and with what limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Network mode.
    pub mode: SandboxMode,
    /// Hosts (`host` or `host:port`) a restricted sandbox may reach, sorted.
    pub egress_allowlist: Vec<String>,
    /// CPU limit in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_limit_millicores: Option<u64>,
    /// Memory limit in MiB.
    #[serde(
        rename = "memoryLimitMiB",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_limit_mib: Option<u64>,
    /// Wall-clock quota of the whole run, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_seconds: Option<u64>,
}

impl Default for Sandbox {
    fn default() -> Sandbox {
        Sandbox {
            mode: SandboxMode::Sealed,
            egress_allowlist: Vec::new(),
            cpu_limit_millicores: None,
            memory_limit_mib: None,
            quota_seconds: None,
        }
    }
}

/// `spec.slo`: objectives the server measures runs against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Slo {
    /// 95th percentile of a run's duration, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_p95_seconds: Option<u64>,
    /// 95th percentile of the wait for an approval, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_p95_seconds: Option<u64>,
    /// Most runs of this pack that may queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_depth: Option<u64>,
}

/// One `spec.approvals[]` entry: an approval a gate can wait for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecl {
    /// Id, referenced by `gate.approval.id` and `gate.policy.overrideApproval`.
    pub id: String,
    /// Permissions an approver must hold, sorted.
    pub grants: Vec<String>,
    /// How long a request stays open, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_after_seconds: Option<u64>,
}

/// `spec.failure`: the run's failure policy, the seed's `FailurePolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Attempts of a failing step, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles for each further one.
    pub backoff_seconds: u64,
    /// Whether a step that failed every attempt lets the run go on.
    pub continue_on_error: bool,
}

impl Default for FailurePolicy {
    fn default() -> FailurePolicy {
        FailurePolicy {
            max_attempts: 1,
            backoff_seconds: 0,
            continue_on_error: false,
        }
    }
}

/// What a pack output is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutputType {
    /// A file a step leaves at `path`.
    File,
    /// The JSON value of `expression`.
    Object,
}

/// One `spec.outputs[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputDecl {
    /// Name of the artifact.
    pub name: String,
    /// File or object.
    pub ty: OutputType,
    /// Where a file output is (may be a template).
    pub path_expression: Option<String>,
    /// The value of an object output (a template).
    pub value_expression: Option<String>,
    /// JSON path of this entry.
    pub path: String,
}

/// One step: common fields and what it does.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Id, unique in the whole pack.
    pub id: String,
    /// Free text.
    pub name: Option<String>,
    /// Condition: the step runs only when it is true.
    pub when: Option<String>,
    /// Overrides the pack's `continueOnError` for this step.
    pub continue_on_error: Option<bool>,
    /// Sibling steps of a `parallel` block this one waits for.
    pub needs: Vec<String>,
    /// What the step does.
    pub body: StepBody,
    /// JSON path of this step.
    pub path: String,
}

/// What a step does: exactly one of `run`, `gate.approval`, `gate.policy`, `parallel`,
/// `map`, `loop`, `conditional`.
#[derive(Debug, Clone, PartialEq)]
pub enum StepBody {
    /// `run`: an executor and its parameters.
    Run {
        /// Executor (`builtin:scanner`, …).
        uses: String,
        /// Parameters; strings may hold templates.
        with: Map<String, Value>,
    },
    /// `gate.approval`: wait for an approval.
    GateApproval {
        /// The `spec.approvals[].id` waited for.
        approval_id: String,
        /// What approvers are shown.
        message: Option<String>,
    },
    /// `gate.policy`: evaluate a policy.
    GatePolicy(PolicyGate),
    /// `parallel`: children at the same time.
    Parallel {
        /// Most children running at once (no limit when absent).
        max_parallel: Option<u32>,
        /// The children.
        steps: Vec<Step>,
    },
    /// `map`: one template step per item, iterations at the same time.
    Map(Iteration),
    /// `loop`: the body once per item, iterations one after the other.
    Loop(Iteration),
    /// `conditional`: the first branch whose condition holds, else `else`.
    Conditional(Conditional),
}

/// `gate.policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyGate {
    /// Policy id.
    pub policy_id: String,
    /// Policy version (a number in YAML is kept as its text).
    pub policy_version: Option<String>,
    /// What approvers or logs are shown.
    pub message: Option<String>,
    /// Input document of the policy; strings may hold templates.
    pub parameters: Map<String, Value>,
    /// What a failed evaluation does.
    pub failure_action: FailureAction,
    /// Evaluations after the first before the failure action applies.
    pub retry_count: u32,
    /// Approval that overrides a failure (`requestOverride`).
    pub override_approval: Option<String>,
    /// Steps run after a failure (`branch`).
    pub on_failure: Vec<Step>,
}

/// What a failed policy evaluation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureAction {
    /// The gate fails (and so the run, unless it continues on error).
    Abort,
    /// The failure is recorded and the run goes on.
    Warn,
    /// The gate waits for `overrideApproval`.
    RequestOverride,
    /// The gate's `onFailure` steps run, then the run goes on.
    Branch,
}

/// Where the items of a `map` or `loop` come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ItemsSource {
    /// A template whose value is an array.
    Expression(String),
    /// Integers `start, start+step, …` below `end`.
    Range {
        /// First value.
        start: i64,
        /// Bound, excluded.
        end: i64,
        /// Increment (not 0; negative counts down).
        step: i64,
    },
    /// A literal list.
    Static(Vec<Value>),
}

/// How iteration outputs become the outputs of the `map` or `loop` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AggregationMode {
    /// Each output is the array of every iteration's value.
    Collect,
    /// Outputs of later iterations overwrite earlier ones, key by key.
    Merge,
    /// The last iteration's outputs.
    Last,
    /// The first iteration's outputs.
    First,
    /// No outputs.
    None,
}

/// The body of `map` and `loop`.
#[derive(Debug, Clone, PartialEq)]
pub struct Iteration {
    /// The items.
    pub items: ItemsSource,
    /// Name of the item variable (`item`).
    pub iterator: String,
    /// Name of the index variable (`index`).
    pub index: String,
    /// Most iterations; more items are a failure.
    pub max_iterations: u32,
    /// Most iterations at once (`map` only).
    pub max_parallel: Option<u32>,
    /// How outputs aggregate.
    pub aggregation: AggregationMode,
    /// The body: one template step for `map`, a list for `loop`.
    pub steps: Vec<Step>,
}

/// Default and ceiling of `maxIterations`.
pub const DEFAULT_MAX_ITERATIONS: u32 = 100;
/// The most `maxIterations` may be.
pub const MAX_ITERATIONS_LIMIT: u32 = 10_000;

/// The body of `conditional`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditional {
    /// Branches in order; the first that holds is taken.
    pub branches: Vec<Branch>,
    /// Steps when no branch holds.
    pub else_steps: Vec<Step>,
    /// Whether the step's outputs are the union of every branch's.
    pub output_union: bool,
}

/// One branch of a `conditional`.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    /// The condition.
    pub condition: String,
    /// Its steps.
    pub steps: Vec<Step>,
}

mod read;

pub use read::{manifest_from_value, parse_manifest};

impl Step {
    /// The child step lists of this step, each with the JSON path of the list.
    pub fn child_lists(&self) -> Vec<(&[Step], String)> {
        let p = &self.path;
        match &self.body {
            StepBody::Run { .. } | StepBody::GateApproval { .. } => Vec::new(),
            StepBody::GatePolicy(g) => vec![(
                g.on_failure.as_slice(),
                format!("{p}.gate.policy.onFailure"),
            )],
            StepBody::Parallel { steps, .. } => {
                vec![(steps.as_slice(), format!("{p}.parallel.steps"))]
            }
            StepBody::Map(it) => vec![(it.steps.as_slice(), format!("{p}.map.step"))],
            StepBody::Loop(it) => vec![(it.steps.as_slice(), format!("{p}.loop.steps"))],
            StepBody::Conditional(c) => {
                let mut out: Vec<(&[Step], String)> = c
                    .branches
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        (
                            b.steps.as_slice(),
                            format!("{p}.conditional.branches[{i}].steps"),
                        )
                    })
                    .collect();
                out.push((c.else_steps.as_slice(), format!("{p}.conditional.else")));
                out
            }
        }
    }
}
