//! Plan compilation: a validated manifest and its inputs become a [`Plan`], named by its
//! `planHash`.
//!
//! What is known when the plan is made is resolved into it, so the hash covers what will
//! actually run: input values (defaults applied), `with` and `parameters` strings whose
//! templates read only inputs, `when` conditions that read only inputs (a false one
//! disables the step), and the items of a `map` or `loop` that come from a range, a
//! static list or the inputs. What needs step outputs or item variables stays as
//! written and is evaluated by the scheduler at run time.
//!
//! `planHash` is `sha256:` + hex of the RFC 8785 canonical JSON of the plan
//! (`stella_decision::canonical`): key order, YAML versus JSON, and map iteration order
//! cannot change it, and the server, the CLI and any other machine compute the same one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::{self, Reference, Template};
use crate::manifest::{
    AggregationMode, ApprovalDecl, FailureAction, FailurePolicy, ItemsSource, Manifest, Metadata,
    OutputType, Sandbox, Slo, Step, StepBody,
};
use crate::{PlanError, PlanErrors};

/// The schema of a plan document; part of what the hash covers.
pub const PLAN_SCHEMA: &str = "stella.pack-plan.v1";

/// A plan and its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledPlan {
    /// `sha256:<hex>` of the plan's canonical JSON.
    pub plan_hash: String,
    /// The plan.
    pub plan: Plan,
}

/// Everything a run needs, resolved as far as the inputs allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// [`PLAN_SCHEMA`].
    pub schema: String,
    /// The pack's metadata.
    pub pack: Metadata,
    /// Effective input values (absent optional inputs are `null`).
    pub inputs: Map<String, Value>,
    /// The sandbox.
    pub sandbox: Sandbox,
    /// Objectives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
    /// Declared approvals, in manifest order.
    pub approvals: Vec<ApprovalDecl>,
    /// The failure policy.
    pub failure_policy: FailurePolicy,
    /// The pack's outputs.
    pub outputs: Vec<PlanOutput>,
    /// The steps, run one after the other.
    pub steps: Vec<PlanStep>,
}

/// A pack output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanOutput {
    /// Name.
    pub name: String,
    /// File or object.
    #[serde(rename = "type")]
    pub ty: OutputType,
    /// Where a file output is (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_expression: Option<String>,
    /// The value of an object output (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_expression: Option<String>,
    /// Whether the value is known only once the run has finished.
    pub requires_runtime_value: bool,
}

/// A step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// Id, unique in the plan.
    pub id: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A condition left for run time (one that reads step outputs or item variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// False when a `when` that reads only inputs is false.
    pub enabled: bool,
    /// Whether a failure of this step lets the run go on.
    pub continue_on_error: bool,
    /// Sibling steps of a `parallel` block this one waits for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// What the step does.
    #[serde(flatten)]
    pub body: PlanBody,
}

/// What a step does; `kind` is the TaskRunner step kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum PlanBody {
    /// Run an executor.
    Run {
        /// Executor.
        uses: String,
        /// Parameters, templates on inputs resolved.
        with: Map<String, Value>,
    },
    /// Wait for an approval.
    GateApproval {
        /// The approval.
        approval_id: String,
        /// What approvers are shown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Evaluate a policy.
    GatePolicy {
        /// Policy id.
        policy_id: String,
        /// Policy version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy_version: Option<String>,
        /// Shown with the result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Input document of the policy, templates on inputs resolved.
        parameters: Map<String, Value>,
        /// What a failure does.
        failure_action: FailureAction,
        /// Evaluations after the first.
        retry_count: u32,
        /// Approval that overrides a failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        override_approval: Option<String>,
        /// Steps run after a failure (`branch`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        on_failure: Vec<PlanStep>,
    },
    /// Children at the same time.
    Parallel {
        /// Most children at once.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_parallel: Option<u32>,
        /// Children.
        steps: Vec<PlanStep>,
    },
    /// One template step per item, at the same time.
    Map(PlanIteration),
    /// The body once per item, one after the other.
    Loop(PlanIteration),
    /// The first branch that holds, else `else`.
    Conditional {
        /// Branches in order.
        branches: Vec<PlanBranch>,
        /// Steps when no branch holds.
        #[serde(rename = "else", default, skip_serializing_if = "Vec::is_empty")]
        else_steps: Vec<PlanStep>,
        /// Whether outputs are the union of the branches'.
        output_union: bool,
    },
}

/// A `map` or `loop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanIteration {
    /// The items template, when the items come from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_expression: Option<String>,
    /// The items, when known at plan time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Value>>,
    /// Item variable name.
    pub iterator: String,
    /// Index variable name.
    pub index: String,
    /// Most iterations.
    pub max_iterations: u32,
    /// Most iterations at once (`map`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// How outputs aggregate.
    pub aggregation: AggregationMode,
    /// The body (one step for `map`).
    pub steps: Vec<PlanStep>,
}

/// A branch of a conditional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanBranch {
    /// The condition, as written.
    pub condition: String,
    /// Its steps.
    pub steps: Vec<PlanStep>,
}

impl Plan {
    /// Every step of the plan, nested ones included (parallel children, map and loop
    /// bodies, conditional branches, a policy gate's failure branch), in manifest order.
    pub fn all_steps(&self) -> Vec<&PlanStep> {
        fn walk<'a>(steps: &'a [PlanStep], out: &mut Vec<&'a PlanStep>) {
            for step in steps {
                out.push(step);
                match &step.body {
                    PlanBody::Run { .. } | PlanBody::GateApproval { .. } => {}
                    PlanBody::GatePolicy { on_failure, .. } => walk(on_failure, out),
                    PlanBody::Parallel { steps, .. } => walk(steps, out),
                    PlanBody::Map(iteration) | PlanBody::Loop(iteration) => {
                        walk(&iteration.steps, out);
                    }
                    PlanBody::Conditional {
                        branches,
                        else_steps,
                        ..
                    } => {
                        for branch in branches {
                            walk(&branch.steps, out);
                        }
                        walk(else_steps, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.steps, &mut out);
        out
    }
}

impl PlanStep {
    /// The seed's step kind: `Run`, `GateApproval`, `GatePolicy`, `Parallel`, `Map`,
    /// `Loop`, `Conditional`.
    pub fn kind(&self) -> &'static str {
        match self.body {
            PlanBody::Run { .. } => "Run",
            PlanBody::GateApproval { .. } => "GateApproval",
            PlanBody::GatePolicy { .. } => "GatePolicy",
            PlanBody::Parallel { .. } => "Parallel",
            PlanBody::Map(_) => "Map",
            PlanBody::Loop(_) => "Loop",
            PlanBody::Conditional { .. } => "Conditional",
        }
    }
}

/// Parse, validate and compile manifest text (YAML or JSON) with its inputs.
pub fn plan_text(text: &str, inputs: &Map<String, Value>) -> Result<CompiledPlan, PlanErrors> {
    compile(&crate::manifest::parse_manifest(text)?, inputs)
}

/// Validate and compile a manifest with its inputs.
pub fn compile(
    manifest: &Manifest,
    inputs: &Map<String, Value>,
) -> Result<CompiledPlan, PlanErrors> {
    let inputs = crate::validate::validate(manifest, inputs)?;
    let mut c = Compiler {
        context: expr::context(&inputs, &Map::new(), &[]),
        errors: Vec::new(),
    };
    let steps = c.steps(&manifest.steps, manifest.failure.continue_on_error);
    let outputs = manifest
        .outputs
        .iter()
        .map(|o| {
            let reads_steps = [&o.path_expression, &o.value_expression]
                .into_iter()
                .flatten()
                .any(|t| {
                    Template::parse(t).is_ok_and(|t| {
                        t.references()
                            .iter()
                            .any(|r| !matches!(r, Reference::Input { .. }))
                    })
                });
            PlanOutput {
                name: o.name.clone(),
                ty: o.ty,
                path_expression: o.path_expression.clone(),
                value_expression: o.value_expression.clone(),
                requires_runtime_value: o.ty == OutputType::File || reads_steps,
            }
        })
        .collect();
    if !c.errors.is_empty() {
        return Err(PlanErrors::new(c.errors));
    }
    let plan = Plan {
        schema: PLAN_SCHEMA.to_owned(),
        pack: manifest.metadata.clone(),
        inputs,
        sandbox: manifest.sandbox.clone(),
        slo: manifest.slo.clone(),
        approvals: manifest.approvals.clone(),
        failure_policy: manifest.failure,
        outputs,
        steps,
    };
    CompiledPlan::new(plan).map_err(|e| PlanErrors::one("$", e))
}

/// `sha256:<hex>` of the plan's RFC 8785 canonical JSON.
pub fn plan_hash(plan: &Plan) -> Result<String, String> {
    let bytes = stella_decision::canonical::canonical_bytes(plan).map_err(|e| e.to_string())?;
    Ok(stella_decision::sha256_id(&bytes))
}

impl CompiledPlan {
    /// A plan with its hash computed.
    pub fn new(plan: Plan) -> Result<CompiledPlan, String> {
        Ok(CompiledPlan {
            plan_hash: plan_hash(&plan)?,
            plan,
        })
    }

    /// Whether the stored hash is the plan's (for a plan read back from storage).
    pub fn verify(&self) -> bool {
        plan_hash(&self.plan).is_ok_and(|h| h == self.plan_hash)
    }
}

struct Compiler {
    context: Value,
    errors: Vec<PlanError>,
}

fn only_inputs(refs: &[Reference]) -> bool {
    refs.iter().all(|r| matches!(r, Reference::Input { .. }))
}

impl Compiler {
    fn steps(&mut self, steps: &[Step], continue_default: bool) -> Vec<PlanStep> {
        steps
            .iter()
            .map(|s| self.step(s, continue_default))
            .collect()
    }

    fn step(&mut self, step: &Step, continue_default: bool) -> PlanStep {
        let p = &step.path;
        let (when, enabled) = match &step.when {
            None => (None, true),
            Some(text) => match expr::parse_condition(text) {
                Ok(e) if only_inputs(&e.references()) => match e.eval(&self.context) {
                    Ok(v) => (None, expr::truthy(&v)),
                    Err(err) => {
                        self.errors.push(PlanError::new(
                            format!("{p}.when"),
                            format!("cannot evaluate: {err}"),
                        ));
                        (None, true)
                    }
                },
                _ => (Some(text.clone()), true),
            },
        };
        let continue_on_error = step.continue_on_error.unwrap_or(continue_default);
        let body = match &step.body {
            StepBody::Run { uses, with } => PlanBody::Run {
                uses: uses.clone(),
                with: self.resolve_map(with, &format!("{p}.run.with")),
            },
            StepBody::GateApproval {
                approval_id,
                message,
            } => PlanBody::GateApproval {
                approval_id: approval_id.clone(),
                message: self.message(message.as_deref(), &format!("{p}.gate.approval.message")),
            },
            StepBody::GatePolicy(g) => PlanBody::GatePolicy {
                policy_id: g.policy_id.clone(),
                policy_version: g.policy_version.clone(),
                message: self.message(g.message.as_deref(), &format!("{p}.gate.policy.message")),
                parameters: self.resolve_map(&g.parameters, &format!("{p}.gate.policy.parameters")),
                failure_action: g.failure_action,
                retry_count: g.retry_count,
                override_approval: g.override_approval.clone(),
                on_failure: self.steps(&g.on_failure, continue_default),
            },
            StepBody::Parallel {
                max_parallel,
                steps,
            } => PlanBody::Parallel {
                max_parallel: *max_parallel,
                steps: self.steps(steps, continue_default),
            },
            StepBody::Map(it) | StepBody::Loop(it) => {
                let is_map = matches!(step.body, StepBody::Map(_));
                let items_path = format!("{p}.{}", if is_map { "map" } else { "loop" });
                let (items_expression, items) =
                    self.items(&it.items, it.max_iterations, &items_path);
                let iteration = PlanIteration {
                    items_expression,
                    items,
                    iterator: it.iterator.clone(),
                    index: it.index.clone(),
                    max_iterations: it.max_iterations,
                    max_parallel: it.max_parallel,
                    aggregation: it.aggregation,
                    steps: self.steps(&it.steps, continue_default),
                };
                if is_map {
                    PlanBody::Map(iteration)
                } else {
                    PlanBody::Loop(iteration)
                }
            }
            StepBody::Conditional(c) => PlanBody::Conditional {
                branches: c
                    .branches
                    .iter()
                    .map(|b| PlanBranch {
                        condition: b.condition.clone(),
                        steps: self.steps(&b.steps, continue_default),
                    })
                    .collect(),
                else_steps: self.steps(&c.else_steps, continue_default),
                output_union: c.output_union,
            },
        };
        PlanStep {
            id: step.id.clone(),
            name: step.name.clone(),
            when,
            enabled,
            continue_on_error,
            needs: step.needs.clone(),
            body,
        }
    }

    /// Items known at plan time: a static list, a range, or a template on inputs.
    fn items(
        &mut self,
        source: &ItemsSource,
        max: u32,
        path: &str,
    ) -> (Option<String>, Option<Vec<Value>>) {
        match source {
            ItemsSource::Static(items) => (None, Some(items.clone())),
            ItemsSource::Range { start, end, step } => {
                let count = crate::validate::range_len(*start, *end, *step).min(u64::from(max));
                let items = (0..count)
                    .filter_map(|i| i64::try_from(i).ok())
                    .map(|i| Value::from(start.saturating_add(i.saturating_mul(*step))))
                    .collect();
                (None, Some(items))
            }
            ItemsSource::Expression(text) => {
                let Ok(t) = Template::parse(text) else {
                    return (Some(text.clone()), None);
                };
                if !only_inputs(&t.references()) {
                    return (Some(text.clone()), None);
                }
                let path = format!("{path}.items");
                match t.render(&self.context) {
                    Ok(Value::Array(items)) if items.len() > max as usize => {
                        self.errors.push(PlanError::new(
                            path,
                            format!("{} items, more than maxIterations {max}", items.len()),
                        ));
                        (Some(text.clone()), None)
                    }
                    Ok(Value::Array(items)) => (Some(text.clone()), Some(items)),
                    Ok(other) => {
                        self.errors.push(PlanError::new(
                            path,
                            format!("items must be an array, found {other}"),
                        ));
                        (Some(text.clone()), None)
                    }
                    Err(e) => {
                        self.errors
                            .push(PlanError::new(path, format!("cannot evaluate: {e}")));
                        (Some(text.clone()), None)
                    }
                }
            }
        }
    }

    /// A gate message, templates on inputs rendered.
    fn message(&mut self, message: Option<&str>, path: &str) -> Option<String> {
        let text = message?;
        Some(expr::to_text(
            &self.resolve(&Value::String(text.to_owned()), path),
        ))
    }

    fn resolve_map(&mut self, map: &Map<String, Value>, path: &str) -> Map<String, Value> {
        map.iter()
            .map(|(k, v)| (k.clone(), self.resolve(v, &format!("{path}.{k}"))))
            .collect()
    }

    /// A parameter value with every string whose templates read only inputs rendered.
    fn resolve(&mut self, value: &Value, path: &str) -> Value {
        match value {
            Value::String(s) if expr::is_template(s) => {
                let Ok(t) = Template::parse(s) else {
                    return value.clone();
                };
                if !only_inputs(&t.references()) {
                    return value.clone();
                }
                match t.render(&self.context) {
                    Ok(v) => v,
                    Err(e) => {
                        self.errors
                            .push(PlanError::new(path, format!("cannot evaluate: {e}")));
                        value.clone()
                    }
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.resolve(v, &format!("{path}[{i}]")))
                    .collect(),
            ),
            Value::Object(map) => Value::Object(self.resolve_map(map, path)),
            _ => value.clone(),
        }
    }
}
