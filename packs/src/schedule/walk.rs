//! The walk over the plan tree that decides a schedule.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::{
    backoff_ms, Dispatch, GateWait, RunState, RunStatus, Schedule, StepState, StepStatus,
    Transition,
};
use crate::expr::{self, Reference, Template};
use crate::manifest::{AggregationMode, FailureAction};
use crate::plan::{Plan, PlanBody, PlanIteration, PlanStep};
use crate::simulate::{ApprovalDecision, StepKind};

/// How a step or list stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    /// Finished (succeeded, skipped, or failed with continue-on-error).
    Done,
    /// Running, dispatched, waiting for a retry or for a slot.
    Active,
    /// Waiting for an approval and nothing else.
    Blocked,
    /// Failed for good.
    Failed,
}

/// Where a step instance lives: its key prefix and the item variables bound there.
#[derive(Debug, Clone, Default)]
struct Frame {
    /// Key prefixes from the outermost (`""`) to this frame's.
    prefixes: Vec<String>,
    variables: Vec<(String, Value)>,
}

impl Frame {
    fn prefix(&self) -> &str {
        self.prefixes.last().map_or("", String::as_str)
    }

    fn iteration(&self, key: &str, i: usize, item: &Value, it: &PlanIteration) -> Frame {
        let mut f = self.clone();
        f.prefixes.push(format!("{key}[{i}]."));
        f.variables.push((it.iterator.clone(), item.clone()));
        f.variables.push((it.index.clone(), Value::from(i)));
        f
    }
}

/// One child of a parallel block: a step, or an iteration of a map.
enum Unit<'a> {
    Step(&'a PlanStep),
    Iteration(usize, &'a Value, &'a PlanIteration),
}

pub(super) struct Walker<'a> {
    plan: &'a Plan,
    run: &'a RunState,
    now_ms: i64,
    by_id: BTreeMap<&'a str, &'a PlanStep>,
    dispatch: Vec<Dispatch>,
    transitions: Vec<Transition>,
    waiting: Vec<GateWait>,
    next_retry_at_ms: Option<i64>,
}

fn index_steps<'a>(steps: &'a [PlanStep], out: &mut BTreeMap<&'a str, &'a PlanStep>) {
    for s in steps {
        out.insert(s.id.as_str(), s);
        for list in child_lists(s) {
            index_steps(list, out);
        }
    }
}

/// The child lists of a step.
pub(super) fn child_lists(step: &PlanStep) -> Vec<&[PlanStep]> {
    match &step.body {
        PlanBody::Run { .. } | PlanBody::GateApproval { .. } => Vec::new(),
        PlanBody::GatePolicy { on_failure, .. } => vec![on_failure],
        PlanBody::Parallel { steps, .. } => vec![steps],
        PlanBody::Map(it) | PlanBody::Loop(it) => vec![&it.steps],
        PlanBody::Conditional {
            branches,
            else_steps,
            ..
        } => {
            let mut out: Vec<&[PlanStep]> = branches.iter().map(|b| b.steps.as_slice()).collect();
            out.push(else_steps);
            out
        }
    }
}

/// Every key of the plan outside iterations (map and loop bodies have keys only once
/// their iterations exist).
pub(super) fn static_keys(steps: &[PlanStep], f: &mut impl FnMut(&str)) {
    for s in steps {
        f(&s.id);
        if !matches!(s.body, PlanBody::Map(_) | PlanBody::Loop(_)) {
            for list in child_lists(s) {
                static_keys(list, f);
            }
        }
    }
}

/// Whether an instance key names a run step or a policy gate (what the server runs).
pub(super) fn is_leaf_key(plan: &Plan, key: &str) -> bool {
    let id = key.rsplit('.').next().unwrap_or(key);
    let mut index = BTreeMap::new();
    index_steps(&plan.steps, &mut index);
    index
        .get(id)
        .is_some_and(|s| matches!(s.body, PlanBody::Run { .. } | PlanBody::GatePolicy { .. }))
}

fn pending() -> StepState {
    StepState {
        status: StepStatus::Pending,
        attempts: 0,
        last_transition_ms: None,
    }
}

impl<'a> Walker<'a> {
    pub(super) fn new(plan: &'a Plan, run: &'a RunState, now_ms: i64) -> Walker<'a> {
        let mut by_id = BTreeMap::new();
        index_steps(&plan.steps, &mut by_id);
        Walker {
            plan,
            run,
            now_ms,
            by_id,
            dispatch: Vec::new(),
            transitions: Vec::new(),
            waiting: Vec::new(),
            next_retry_at_ms: None,
        }
    }

    pub(super) fn top(&mut self) -> Flow {
        let frame = Frame {
            prefixes: vec![String::new()],
            variables: Vec::new(),
        };
        self.sequence(&self.plan.steps, &frame)
    }

    pub(super) fn finish(self, run_status: RunStatus) -> Schedule {
        Schedule {
            run_status,
            dispatch: self.dispatch,
            transitions: self.transitions,
            waiting: self.waiting,
            next_retry_at_ms: self.next_retry_at_ms,
        }
    }

    fn state(&self, key: &str) -> StepState {
        self.run.steps.get(key).copied().unwrap_or_else(pending)
    }

    fn transition(&mut self, key: &str, to: StepStatus, reason: impl Into<String>) {
        if self.state(key).status != to {
            self.transitions.push(Transition {
                key: key.to_owned(),
                to,
                reason: reason.into(),
            });
        }
    }

    fn sequence(&mut self, steps: &[PlanStep], frame: &Frame) -> Flow {
        for step in steps {
            match self.step(step, frame) {
                Flow::Done => {}
                other => return other,
            }
        }
        Flow::Done
    }

    /// Children at the same time, ordered by `needs`, at most `limit` started at once.
    fn parallel(
        &mut self,
        units: &[Unit<'_>],
        key: &str,
        limit: Option<u32>,
        frame: &Frame,
    ) -> Flow {
        let limit = limit.map_or(usize::MAX, |l| l as usize);
        let order = topological(units);
        let mut results: BTreeMap<usize, Flow> = BTreeMap::new();
        let mut active = 0;
        // Children already started go on without a slot; count the ones still busy.
        for &u in &order {
            if self.started(&units[u], key, frame) {
                let flow = self.unit(&units[u], key, frame);
                if matches!(flow, Flow::Active | Flow::Blocked) {
                    active += 1;
                }
                results.insert(u, flow);
            }
        }
        let mut waiting = false;
        for &u in &order {
            if results.contains_key(&u) {
                continue;
            }
            let needs = unit_needs(units, u);
            if !needs.iter().all(|n| results.get(n) == Some(&Flow::Done)) {
                waiting = true;
                continue;
            }
            let failed = results.values().any(|f| *f == Flow::Failed);
            if failed || active >= limit {
                waiting = true;
                continue;
            }
            let flow = self.unit(&units[u], key, frame);
            if matches!(flow, Flow::Active | Flow::Blocked) {
                active += 1;
            }
            results.insert(u, flow);
        }
        let has = |f: Flow| results.values().any(|r| *r == f);
        if has(Flow::Active) {
            Flow::Active
        } else if has(Flow::Blocked) {
            Flow::Blocked
        } else if has(Flow::Failed) {
            Flow::Failed
        } else if waiting {
            Flow::Active
        } else {
            Flow::Done
        }
    }

    fn unit(&mut self, unit: &Unit<'_>, key: &str, frame: &Frame) -> Flow {
        match unit {
            Unit::Step(step) => self.step(step, frame),
            Unit::Iteration(i, item, it) => {
                let inner = frame.iteration(key, *i, item, it);
                self.sequence(&it.steps, &inner)
            }
        }
    }

    /// Whether a child of a parallel block has started (and so holds a slot while busy).
    fn started(&self, unit: &Unit<'_>, key: &str, frame: &Frame) -> bool {
        let prefix = match unit {
            Unit::Step(step) => format!("{}{}", frame.prefix(), step.id),
            Unit::Iteration(i, ..) => format!("{key}[{i}]."),
        };
        let busy = |s: &StepState| !matches!(s.status, StepStatus::Pending);
        match unit {
            Unit::Step(step) => {
                let mut keys = Vec::new();
                static_keys(std::slice::from_ref(*step), &mut |k| {
                    keys.push(format!("{}{k}", frame.prefix()));
                });
                keys.iter().any(|k| self.run.steps.get(k).is_some_and(busy))
                    || self
                        .run
                        .steps
                        .range(format!("{prefix}[")..)
                        .take_while(|(k, _)| k.starts_with(&format!("{prefix}[")))
                        .any(|(_, s)| busy(s))
            }
            Unit::Iteration(..) => self
                .run
                .steps
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .any(|(_, s)| busy(s)),
        }
    }

    fn step(&mut self, step: &PlanStep, frame: &Frame) -> Flow {
        let key = format!("{}{}", frame.prefix(), step.id);
        let state = self.state(&key);
        if matches!(state.status, StepStatus::Succeeded | StepStatus::Skipped) {
            if let (StepStatus::Succeeded, PlanBody::GatePolicy { on_failure, .. }) =
                (state.status, &step.body)
            {
                self.skip_list(on_failure, frame, "policy-passed");
            }
            return Flow::Done;
        }
        if !step.enabled {
            self.skip_step(step, frame, "condition-false");
            return Flow::Done;
        }
        if state.status == StepStatus::Pending {
            if let Some(when) = &step.when {
                match self.condition(when, frame) {
                    Ok(true) => {}
                    Ok(false) => {
                        self.skip_step(step, frame, "condition-false");
                        return Flow::Done;
                    }
                    Err(e) => {
                        return self.fail(step, &key, format!("condition cannot be evaluated: {e}"))
                    }
                }
            }
        }
        match &step.body {
            PlanBody::Run { .. } | PlanBody::GatePolicy { .. } => {
                self.leaf(step, &key, state, frame)
            }
            PlanBody::GateApproval {
                approval_id,
                message,
            } => {
                if state.status == StepStatus::Failed {
                    return self.after_failure(step, Flow::Failed);
                }
                match self.run.approvals.get(approval_id) {
                    Some(ApprovalDecision::Approved) => {
                        self.transition(&key, StepStatus::Succeeded, "approval-granted");
                        Flow::Done
                    }
                    Some(ApprovalDecision::Rejected) => {
                        self.fail(step, &key, "approval-rejected".to_owned())
                    }
                    Some(ApprovalDecision::Expired) => {
                        self.fail(step, &key, "approval-expired".to_owned())
                    }
                    None => {
                        self.transition(&key, StepStatus::Waiting, "awaiting-approval");
                        self.waiting.push(GateWait {
                            key: key.clone(),
                            approval_id: approval_id.clone(),
                            message: message.as_ref().map(|m| {
                                self.render(&Value::String(m.clone()), frame)
                                    .map_or_else(|_| m.clone(), |v| expr::to_text(&v))
                            }),
                            reason: "awaiting-approval".to_owned(),
                        });
                        Flow::Blocked
                    }
                }
            }
            PlanBody::Parallel {
                max_parallel,
                steps,
            } => {
                let units: Vec<Unit<'_>> = steps.iter().map(Unit::Step).collect();
                let flow = self.parallel(&units, &key, *max_parallel, frame);
                self.container(step, &key, flow)
            }
            PlanBody::Map(it) | PlanBody::Loop(it) => {
                let items = match self.items(it, frame) {
                    Ok(items) => items,
                    Err(e) => return self.fail(step, &key, e),
                };
                let flow = if matches!(step.body, PlanBody::Map(_)) {
                    let units: Vec<Unit<'_>> = items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Unit::Iteration(i, v, it))
                        .collect();
                    self.parallel(&units, &key, it.max_parallel, frame)
                } else {
                    let mut flow = Flow::Done;
                    for (i, item) in items.iter().enumerate() {
                        flow = self.sequence(&it.steps, &frame.iteration(&key, i, item, it));
                        if flow != Flow::Done {
                            break;
                        }
                    }
                    flow
                };
                self.container(step, &key, flow)
            }
            PlanBody::Conditional {
                branches,
                else_steps,
                ..
            } => {
                let mut taken: Option<usize> = None;
                for (i, b) in branches.iter().enumerate() {
                    match self.condition(&b.condition, frame) {
                        Ok(true) => {
                            taken = Some(i);
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            return self.fail(
                                step,
                                &key,
                                format!("branch {i} condition cannot be evaluated: {e}"),
                            )
                        }
                    }
                }
                for (i, b) in branches.iter().enumerate() {
                    if taken != Some(i) {
                        self.skip_list(&b.steps, frame, "branch-not-taken");
                    }
                }
                let flow = match taken {
                    Some(i) => {
                        self.skip_list(else_steps, frame, "branch-not-taken");
                        self.sequence(&branches[i].steps, frame)
                    }
                    None => self.sequence(else_steps, frame),
                };
                self.container(step, &key, flow)
            }
        }
    }

    /// A run step or policy evaluation: dispatch, retry after backoff, or give up.
    fn leaf(&mut self, step: &PlanStep, key: &str, state: StepState, frame: &Frame) -> Flow {
        let max_attempts = match &step.body {
            PlanBody::GatePolicy { retry_count, .. } => retry_count.saturating_add(1),
            _ => self.plan.failure_policy.max_attempts,
        };
        match state.status {
            StepStatus::Succeeded | StepStatus::Skipped => {
                return Flow::Done;
            }
            StepStatus::Running | StepStatus::Waiting => return Flow::Active,
            StepStatus::Pending => return self.start(step, key, state, frame),
            StepStatus::Failed => {}
        }
        if state.attempts < max_attempts {
            let due = state.last_transition_ms.map_or(self.now_ms, |t| {
                t.saturating_add(backoff_ms(
                    self.plan.failure_policy.backoff_seconds,
                    state.attempts,
                ))
            });
            if due <= self.now_ms {
                return self.start(step, key, state, frame);
            }
            self.next_retry_at_ms = Some(self.next_retry_at_ms.map_or(due, |t| t.min(due)));
            return Flow::Active;
        }
        let PlanBody::GatePolicy {
            failure_action,
            override_approval,
            on_failure,
            ..
        } = &step.body
        else {
            return self.after_failure(step, Flow::Failed);
        };
        match failure_action {
            FailureAction::Abort => self.after_failure(step, Flow::Failed),
            FailureAction::Warn => Flow::Done,
            FailureAction::Branch => {
                let flow = self.sequence(on_failure, frame);
                self.after_failure(step, flow)
            }
            FailureAction::RequestOverride => {
                let approval = override_approval.clone().unwrap_or_default();
                match self.run.approvals.get(&approval) {
                    Some(ApprovalDecision::Approved) => Flow::Done,
                    Some(_) => self.after_failure(step, Flow::Failed),
                    None => {
                        self.waiting.push(GateWait {
                            key: key.to_owned(),
                            approval_id: approval,
                            message: None,
                            reason: "awaiting-override".to_owned(),
                        });
                        Flow::Blocked
                    }
                }
            }
        }
    }

    /// Dispatch a leaf, its templates rendered; a template that cannot be rendered fails
    /// the step for good (it would fail the same way on every attempt).
    fn start(&mut self, step: &PlanStep, key: &str, state: StepState, frame: &Frame) -> Flow {
        let (kind, uses, policy_id, policy_version, params) = match &step.body {
            PlanBody::Run { uses, with } => (StepKind::Run, Some(uses.clone()), None, None, with),
            PlanBody::GatePolicy {
                policy_id,
                policy_version,
                parameters,
                ..
            } => (
                StepKind::GatePolicy,
                None,
                Some(policy_id.clone()),
                policy_version.clone(),
                parameters,
            ),
            _ => return Flow::Failed,
        };
        let mut with = Map::new();
        for (name, value) in params {
            match self.render(value, frame) {
                Ok(v) => {
                    with.insert(name.clone(), v);
                }
                Err(e) => {
                    return self.fail(
                        step,
                        key,
                        format!("parameter `{name}` cannot be evaluated: {e}"),
                    )
                }
            }
        }
        self.dispatch.push(Dispatch {
            key: key.to_owned(),
            step_id: step.id.clone(),
            kind,
            uses,
            policy_id,
            policy_version,
            with,
            attempt: state.attempts.saturating_add(1),
        });
        Flow::Active
    }

    fn after_failure(&self, step: &PlanStep, flow: Flow) -> Flow {
        if flow == Flow::Failed && step.continue_on_error {
            Flow::Done
        } else {
            flow
        }
    }

    fn fail(&mut self, step: &PlanStep, key: &str, reason: String) -> Flow {
        self.transition(key, StepStatus::Failed, reason);
        self.after_failure(step, Flow::Failed)
    }

    /// Container states follow their children.
    fn container(&mut self, step: &PlanStep, key: &str, flow: Flow) -> Flow {
        match flow {
            Flow::Done => self.transition(key, StepStatus::Succeeded, "children finished"),
            Flow::Failed => self.transition(key, StepStatus::Failed, "a child failed"),
            Flow::Active | Flow::Blocked => {
                if self.state(key).status == StepStatus::Pending {
                    self.transition(key, StepStatus::Running, "started");
                }
            }
        }
        self.after_failure(step, flow)
    }

    fn skip_step(&mut self, step: &PlanStep, frame: &Frame, reason: &str) {
        self.skip_list(std::slice::from_ref(step), frame, reason);
    }

    /// Skip every not-started instance of these steps (outside iterations).
    fn skip_list(&mut self, steps: &[PlanStep], frame: &Frame, reason: &str) {
        let mut keys = Vec::new();
        static_keys(steps, &mut |k| keys.push(format!("{}{k}", frame.prefix())));
        for key in keys {
            if self.state(&key).status == StepStatus::Pending {
                self.transition(&key, StepStatus::Skipped, reason);
            }
        }
    }

    fn items(&self, it: &PlanIteration, frame: &Frame) -> Result<Vec<Value>, String> {
        let items = match (&it.items, &it.items_expression) {
            (Some(items), _) => items.clone(),
            (None, Some(text)) => {
                let t = Template::parse(text).map_err(|e| e.0)?;
                match t
                    .render(&self.context(&t.references(), frame))
                    .map_err(|e| e.0)?
                {
                    Value::Array(items) => items,
                    other => return Err(format!("items must be an array, found {other}")),
                }
            }
            (None, None) => Vec::new(),
        };
        if items.len() > it.max_iterations as usize {
            return Err(format!(
                "{} items, more than maxIterations {}",
                items.len(),
                it.max_iterations
            ));
        }
        Ok(items)
    }

    fn condition(&self, text: &str, frame: &Frame) -> Result<bool, String> {
        let e = expr::parse_condition(text).map_err(|e| e.0)?;
        let v = e
            .eval(&self.context(&e.references(), frame))
            .map_err(|e| e.0)?;
        Ok(expr::truthy(&v))
    }

    fn render(&self, value: &Value, frame: &Frame) -> Result<Value, String> {
        Ok(match value {
            Value::String(s) if expr::is_template(s) => {
                let t = Template::parse(s).map_err(|e| e.0)?;
                t.render(&self.context(&t.references(), frame))
                    .map_err(|e| e.0)?
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render(v, frame))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.render(v, frame)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }

    /// The evaluation context of expressions at `frame`: inputs, the outputs the
    /// references name (innermost iteration first), item variables.
    fn context(&self, refs: &[Reference], frame: &Frame) -> Value {
        let mut steps = Map::new();
        for r in refs {
            if let Reference::StepOutput { step, .. } = r {
                if let Some(outputs) = self.outputs_of(step, frame) {
                    steps.insert(step.clone(), Value::Object(outputs));
                }
            }
        }
        let vars: Vec<(&str, Value)> = frame
            .variables
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        expr::context(&self.plan.inputs, &steps, &vars)
    }

    fn outputs_of(&self, id: &str, frame: &Frame) -> Option<Map<String, Value>> {
        for prefix in frame.prefixes.iter().rev() {
            let key = format!("{prefix}{id}");
            if let Some(o) = self.run.outputs.get(&key) {
                return Some(o.clone());
            }
            if let Some(step) = self.by_id.get(id) {
                if let PlanBody::Map(it) | PlanBody::Loop(it) = &step.body {
                    if self.run.steps.contains_key(&key) {
                        return Some(aggregate(self.run, &key, it));
                    }
                }
            }
        }
        None
    }
}

/// The outputs of a map or loop from its iterations': an iteration's outputs are its
/// body steps' outputs merged in order; then [`AggregationMode`] combines iterations.
fn aggregate(run: &RunState, key: &str, it: &PlanIteration) -> Map<String, Value> {
    let mut iterations: BTreeMap<usize, Map<String, Value>> = BTreeMap::new();
    let start = format!("{key}[");
    let indexes: BTreeSet<usize> = run
        .steps
        .range(start.clone()..)
        .take_while(|(k, _)| k.starts_with(&start))
        .filter_map(|(k, _)| k[start.len()..].split(']').next()?.parse().ok())
        .collect();
    for i in indexes {
        let mut merged = Map::new();
        for child in &it.steps {
            if let Some(o) = run.outputs.get(&format!("{key}[{i}].{}", child.id)) {
                merged.extend(o.clone());
            }
        }
        iterations.insert(i, merged);
    }
    match it.aggregation {
        AggregationMode::None => Map::new(),
        AggregationMode::First => iterations.into_values().next().unwrap_or_default(),
        AggregationMode::Last => iterations.into_values().next_back().unwrap_or_default(),
        AggregationMode::Merge => iterations.into_values().fold(Map::new(), |mut acc, m| {
            acc.extend(m);
            acc
        }),
        AggregationMode::Collect => {
            let names: BTreeSet<String> = iterations
                .values()
                .flat_map(|m| m.keys().cloned())
                .collect();
            names
                .into_iter()
                .map(|name| {
                    let values = iterations
                        .values()
                        .map(|m| m.get(&name).cloned().unwrap_or(Value::Null))
                        .collect();
                    (name, Value::Array(values))
                })
                .collect()
        }
    }
}

/// Children of a parallel block ordered so that every child comes after its `needs`,
/// otherwise in plan order (iterations have no needs).
fn topological(units: &[Unit<'_>]) -> Vec<usize> {
    let mut placed: Vec<usize> = Vec::with_capacity(units.len());
    let mut done = vec![false; units.len()];
    while placed.len() < units.len() {
        let before = placed.len();
        for u in 0..units.len() {
            if !done[u] && unit_needs(units, u).iter().all(|n| done[*n]) {
                done[u] = true;
                placed.push(u);
            }
        }
        if placed.len() == before {
            // A cycle (refused by validation): keep the rest in plan order.
            placed.extend((0..units.len()).filter(|u| !done[*u]));
            break;
        }
    }
    placed
}

fn unit_needs(units: &[Unit<'_>], u: usize) -> Vec<usize> {
    let Unit::Step(step) = &units[u] else {
        return Vec::new();
    };
    step.needs
        .iter()
        .filter_map(|n| {
            units
                .iter()
                .position(|o| matches!(o, Unit::Step(s) if &s.id == n))
        })
        .collect()
}
