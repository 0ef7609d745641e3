//! Checks that need the whole manifest and its inputs: input values and their types,
//! executors and their parameters, step ids, approvals, `needs` and their cycles, and
//! every reference of every expression. All errors are collected, never just the first.
//!
//! Reference rule: `steps.<id>.outputs.<name>` may name only a step that finishes before
//! the expression is evaluated: an earlier step of the same list, an earlier step of an
//! enclosing list, or a `needs` of a `parallel` child. Steps inside a `map` or `loop`
//! are seen from outside only through the map or loop step's aggregated outputs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::expr::{self, Reference, Template};
use crate::manifest::{InputDecl, ItemsSource, Manifest, Step, StepBody};
use crate::{PlanError, PlanErrors};

/// The executors a `run` step may use.
pub const EXECUTORS: [&str; 7] = [
    "builtin:scanner",
    "builtin:build",
    "builtin:script",
    "builtin:deploy",
    "builtin:promotion",
    "builtin:http-check",
    "builtin:wait",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    String,
    Integer,
    Object,
    Array,
}

/// Parameters of each executor: (name, type, required).
fn executor_params(uses: &str) -> Option<&'static [(&'static str, Param, bool)]> {
    use Param::{Array, Integer, Object, String};
    Some(match uses {
        "builtin:scanner" => &[
            ("target", String, true),
            ("severity", String, false),
            ("format", String, false),
            ("failOn", String, false),
        ],
        "builtin:build" => &[
            ("context", String, false),
            ("dockerfile", String, false),
            ("image", String, false),
            ("target", String, false),
            ("args", Object, false),
        ],
        "builtin:script" => &[
            ("script", String, true),
            ("shell", String, false),
            ("env", Object, false),
            ("args", Array, false),
        ],
        "builtin:deploy" => &[
            ("release", String, false),
            ("version", String, false),
            ("image", String, false),
            ("environment", String, false),
            ("strategy", String, false),
            ("replicas", Integer, false),
            ("timeoutSeconds", Integer, false),
        ],
        "builtin:promotion" => &[("timeoutSeconds", Integer, false)],
        "builtin:http-check" => &[
            ("url", String, true),
            ("method", String, false),
            ("expectStatus", Integer, false),
            ("timeoutSeconds", Integer, false),
            ("retries", Integer, false),
        ],
        "builtin:wait" => &[("seconds", Integer, true)],
        _ => return None,
    })
}

/// Check the manifest and the given input values; on success, the effective inputs
/// (given values, then defaults; absent optional inputs are `null`).
pub fn validate(
    manifest: &Manifest,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, PlanErrors> {
    let mut v = Validator::default();
    let inputs = v.inputs(&manifest.inputs, given);
    v.input_names = manifest.inputs.iter().map(|i| i.name.clone()).collect();
    v.approval_ids = duplicates(
        &mut v.errors,
        manifest
            .approvals
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.as_str(), format!("$.spec.approvals[{i}].id"))),
        "approval id",
    );
    collect_ids(&manifest.steps, &mut v.step_ids, &mut v.errors);
    let scope = Scope::default();
    v.step_list(&manifest.steps, &scope, false);
    let visible = top_level_visible(&manifest.steps);
    let output_scope = Scope {
        visible,
        variables: Vec::new(),
    };
    duplicates(
        &mut v.errors,
        manifest
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), format!("{}.name", o.path))),
        "output name",
    );
    for o in &manifest.outputs {
        if let Some(p) = &o.path_expression {
            v.template(p, &format!("{}.path", o.path), &output_scope);
        }
        if let Some(e) = &o.value_expression {
            v.template(e, &format!("{}.expression", o.path), &output_scope);
        }
    }
    if v.errors.is_empty() {
        Ok(inputs)
    } else {
        Err(PlanErrors::new(v.errors))
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<PlanError>,
    input_names: BTreeSet<String>,
    approval_ids: BTreeSet<String>,
    step_ids: BTreeMap<String, String>,
}

/// What an expression may see at one place of the manifest.
#[derive(Debug, Clone, Default)]
struct Scope {
    /// Steps that finish before this place.
    visible: BTreeSet<String>,
    /// Item variables bound here.
    variables: Vec<String>,
}

fn duplicates<'a>(
    errors: &mut Vec<PlanError>,
    items: impl Iterator<Item = (&'a str, String)>,
    what: &str,
) -> BTreeSet<String> {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (name, path) in items {
        match seen.get(name) {
            Some(first) => errors.push(PlanError::new(
                path,
                format!("duplicate {what} `{name}` (first at {first})"),
            )),
            None => {
                seen.insert(name, path);
            }
        }
    }
    seen.into_keys().map(str::to_owned).collect()
}

fn is_step_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Every step id of the pack, with its path; duplicates and malformed ids are errors.
fn collect_ids(steps: &[Step], ids: &mut BTreeMap<String, String>, errors: &mut Vec<PlanError>) {
    for step in steps {
        let path = format!("{}.id", step.path);
        if !is_step_id(&step.id) {
            errors.push(PlanError::new(&path, format!("step id `{}` must be letters, digits, `-` or `_`, starting with a letter or digit", step.id)));
        }
        match ids.get(&step.id) {
            Some(first) => errors.push(PlanError::new(
                &path,
                format!("duplicate step id `{}` (first at {first})", step.id),
            )),
            None => {
                ids.insert(step.id.clone(), path);
            }
        }
        for (list, _) in step.child_lists() {
            collect_ids(list, ids, errors);
        }
    }
}

/// The ids a finished step makes visible: itself and, unless it iterates, its
/// descendants.
fn finished_ids(step: &Step, out: &mut BTreeSet<String>) {
    out.insert(step.id.clone());
    if matches!(step.body, StepBody::Map(_) | StepBody::Loop(_)) {
        return;
    }
    for (list, _) in step.child_lists() {
        for child in list {
            finished_ids(child, out);
        }
    }
}

fn top_level_visible(steps: &[Step]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in steps {
        finished_ids(s, &mut out);
    }
    out
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(PlanError::new(path, message));
    }

    fn inputs(&mut self, decls: &[InputDecl], given: &Map<String, Value>) -> Map<String, Value> {
        duplicates(
            &mut self.errors,
            decls
                .iter()
                .map(|d| (d.name.as_str(), format!("{}.name", d.path))),
            "input name",
        );
        let mut out = Map::new();
        for d in decls {
            if let Some(default) = &d.default {
                if !d.ty.accepts(default) {
                    self.err(
                        format!("{}.default", d.path),
                        format!("default {default} is not of type {}", d.ty.name()),
                    );
                }
            }
            let path = format!("$.inputs.{}", d.name);
            match given.get(&d.name).filter(|v| !v.is_null()) {
                Some(value) if !d.ty.accepts(value) => {
                    self.err(
                        path,
                        format!(
                            "input `{}` must be of type {}, found {value}",
                            d.name,
                            d.ty.name()
                        ),
                    );
                }
                Some(value) => {
                    out.insert(d.name.clone(), value.clone());
                }
                None => match &d.default {
                    Some(default) => {
                        out.insert(d.name.clone(), default.clone());
                    }
                    None if d.required => {
                        self.err(path, format!("required input `{}` is missing", d.name));
                    }
                    None => {
                        out.insert(d.name.clone(), Value::Null);
                    }
                },
            }
        }
        let declared: BTreeSet<&str> = decls.iter().map(|d| d.name.as_str()).collect();
        for name in given.keys() {
            if !declared.contains(name.as_str()) {
                let known = if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.iter().copied().collect::<Vec<_>>().join(", ")
                };
                self.err(
                    format!("$.inputs.{name}"),
                    format!("unknown input `{name}`; declared: {known}"),
                );
            }
        }
        out
    }

    /// A list of steps run one after the other (`in_parallel`: children of a
    /// `parallel` block, which run at once unless ordered by `needs`).
    fn step_list(&mut self, steps: &[Step], scope: &Scope, in_parallel: bool) {
        if in_parallel {
            self.parallel_list(steps, scope);
            return;
        }
        let mut scope = scope.clone();
        for step in steps {
            if !step.needs.is_empty() {
                self.err(format!("{}.needs", step.path), "needs orders the children of a parallel block; steps of a list already run in order");
            }
            self.step(step, &scope);
            finished_ids(step, &mut scope.visible);
        }
    }

    fn parallel_list(&mut self, steps: &[Step], scope: &Scope) {
        let siblings: BTreeMap<&str, &Step> = steps.iter().map(|s| (s.id.as_str(), s)).collect();
        for step in steps {
            for (i, need) in step.needs.iter().enumerate() {
                let path = format!("{}.needs[{i}]", step.path);
                if need == &step.id {
                    self.err(path, format!("step `{need}` cannot need itself"));
                } else if !siblings.contains_key(need.as_str()) {
                    let what = if self.step_ids.contains_key(need) {
                        "is not a sibling in this parallel block"
                    } else {
                        "is not a step"
                    };
                    self.err(path, format!("needs `{need}`, which {what}"));
                }
            }
        }
        self.cycles(steps, &siblings);
        for step in steps {
            let mut inner = scope.clone();
            let mut stack: Vec<&str> = step.needs.iter().map(String::as_str).collect();
            let mut seen = BTreeSet::new();
            while let Some(id) = stack.pop() {
                if id == step.id || !seen.insert(id) {
                    continue;
                }
                if let Some(s) = siblings.get(id) {
                    finished_ids(s, &mut inner.visible);
                    stack.extend(s.needs.iter().map(String::as_str));
                }
            }
            self.step(step, &inner);
        }
    }

    /// Report each cycle of `needs` once, at the first step of it in list order.
    fn cycles(&mut self, steps: &[Step], siblings: &BTreeMap<&str, &Step>) {
        let mut reported: BTreeSet<&str> = BTreeSet::new();
        for step in steps {
            if reported.contains(step.id.as_str()) {
                continue;
            }
            if let Some(cycle) = find_cycle(step.id.as_str(), siblings) {
                // A step that needs itself is reported as such, not as a cycle.
                if cycle.len() < 2 || cycle.iter().any(|id| reported.contains(id)) {
                    continue;
                }
                reported.extend(cycle.iter().copied());
                let mut shown = cycle.clone();
                shown.push(step.id.as_str());
                self.err(
                    format!("{}.needs", step.path),
                    format!("needs form a cycle: {}", shown.join(" → ")),
                );
            }
        }
    }

    fn step(&mut self, step: &Step, scope: &Scope) {
        let p = &step.path;
        if let Some(when) = &step.when {
            self.condition(when, &format!("{p}.when"), scope);
        }
        match &step.body {
            StepBody::Run { uses, with } => {
                let wp = format!("{p}.run.with");
                match executor_params(uses) {
                    None => self.err(
                        format!("{p}.run.uses"),
                        format!("unknown executor `{uses}`; known: {}", EXECUTORS.join(", ")),
                    ),
                    Some(params) => self.executor_params(uses, params, with, &wp),
                }
                for (key, value) in with {
                    self.value_templates(value, &format!("{wp}.{key}"), scope);
                }
            }
            StepBody::GateApproval {
                approval_id,
                message,
            } => {
                if let Some(m) = message {
                    self.template(m, &format!("{p}.gate.approval.message"), scope);
                }
                if !self.approval_ids.contains(approval_id) {
                    self.err(
                        format!("{p}.gate.approval.id"),
                        format!("approval `{approval_id}` is not declared in spec.approvals"),
                    );
                }
            }
            StepBody::GatePolicy(g) => {
                let gp = format!("{p}.gate.policy");
                if let Some(m) = &g.message {
                    self.template(m, &format!("{gp}.message"), scope);
                }
                if let Some(a) = &g.override_approval {
                    if !self.approval_ids.contains(a) {
                        self.err(
                            format!("{gp}.overrideApproval"),
                            format!("approval `{a}` is not declared in spec.approvals"),
                        );
                    }
                }
                for (key, value) in &g.parameters {
                    self.value_templates(value, &format!("{gp}.parameters.{key}"), scope);
                }
                self.step_list(&g.on_failure, scope, false);
            }
            StepBody::Parallel { steps, .. } => self.step_list(steps, scope, true),
            StepBody::Map(it) | StepBody::Loop(it) => {
                let key = if matches!(step.body, StepBody::Map(_)) {
                    "map"
                } else {
                    "loop"
                };
                let ip = format!("{p}.{key}");
                match &it.items {
                    ItemsSource::Expression(text) => {
                        self.template(text, &format!("{ip}.items"), scope);
                    }
                    ItemsSource::Range {
                        start,
                        end,
                        step: inc,
                    } => {
                        let count = range_len(*start, *end, *inc);
                        if count > u64::from(it.max_iterations) {
                            self.err(
                                format!("{ip}.range"),
                                format!(
                                    "range has {count} items, more than maxIterations {}",
                                    it.max_iterations
                                ),
                            );
                        }
                    }
                    ItemsSource::Static(items) => {
                        if items.len() > it.max_iterations as usize {
                            self.err(
                                format!("{ip}.staticItems"),
                                format!(
                                    "{} items, more than maxIterations {}",
                                    items.len(),
                                    it.max_iterations
                                ),
                            );
                        }
                    }
                }
                let mut inner = scope.clone();
                inner.variables.push(it.iterator.clone());
                inner.variables.push(it.index.clone());
                self.step_list(&it.steps, &inner, false);
            }
            StepBody::Conditional(c) => {
                for (i, b) in c.branches.iter().enumerate() {
                    self.condition(
                        &b.condition,
                        &format!("{p}.conditional.branches[{i}].condition"),
                        scope,
                    );
                    self.step_list(&b.steps, scope, false);
                }
                self.step_list(&c.else_steps, scope, false);
            }
        }
    }

    fn executor_params(
        &mut self,
        uses: &str,
        params: &[(&str, Param, bool)],
        with: &Map<String, Value>,
        wp: &str,
    ) {
        for (name, ty, required) in params {
            match with.get(*name) {
                None | Some(Value::Null) if *required => self.err(
                    format!("{wp}.{name}"),
                    format!("`{uses}` needs parameter `{name}`"),
                ),
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if expr::is_template(s) => {}
                Some(value) => {
                    let ok = match ty {
                        Param::String => value.is_string(),
                        Param::Integer => value.is_u64() || value.is_i64(),
                        Param::Object => value.is_object(),
                        Param::Array => value.is_array(),
                    };
                    if !ok {
                        let want = match ty {
                            Param::String => "a string",
                            Param::Integer => "an integer",
                            Param::Object => "an object",
                            Param::Array => "an array",
                        };
                        self.err(
                            format!("{wp}.{name}"),
                            format!("parameter `{name}` of `{uses}` must be {want}, found {value}"),
                        );
                    }
                }
            }
        }
        for key in with.keys() {
            if !params.iter().any(|(name, _, _)| name == key) {
                let known: Vec<&str> = params.iter().map(|(n, _, _)| *n).collect();
                self.err(
                    format!("{wp}.{key}"),
                    format!(
                        "`{uses}` has no parameter `{key}`; known: {}",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// Templates anywhere inside a parameter value.
    fn value_templates(&mut self, value: &Value, path: &str, scope: &Scope) {
        match value {
            Value::String(s) if expr::is_template(s) => self.template(s, path, scope),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.value_templates(item, &format!("{path}[{i}]"), scope);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    self.value_templates(item, &format!("{path}.{k}"), scope);
                }
            }
            _ => {}
        }
    }

    fn template(&mut self, text: &str, path: &str, scope: &Scope) {
        match Template::parse(text) {
            Ok(t) => self.references(&t.references(), path, scope),
            Err(e) => self.err(path, format!("invalid expression: {e}")),
        }
    }

    fn condition(&mut self, text: &str, path: &str, scope: &Scope) {
        match expr::parse_condition(text) {
            Ok(e) => self.references(&e.references(), path, scope),
            Err(e) => self.err(path, format!("invalid expression: {e}")),
        }
    }

    fn references(&mut self, refs: &[Reference], path: &str, scope: &Scope) {
        for r in refs {
            let message = match r {
                Reference::Input { name } if !self.input_names.contains(name) => {
                    format!("unknown input `inputs.{name}`")
                }
                Reference::StepOutput { step, .. } if !self.step_ids.contains_key(step) => {
                    format!("unknown step `{step}`")
                }
                Reference::StepOutput { step, .. } if !scope.visible.contains(step) => {
                    format!("step `{step}` does not finish before this expression is evaluated")
                }
                Reference::Variable { name } if !scope.variables.contains(name) => {
                    format!("unknown name `{name}`; expected inputs.<name>, steps.<id>.outputs.<name>, or an item variable inside a map or loop")
                }
                Reference::Invalid { text, reason } => {
                    format!("invalid reference `{text}`: {reason}")
                }
                _ => continue,
            };
            self.err(path, message);
        }
    }
}

/// A cycle through `start` following `needs`, as the ids from `start` around.
fn find_cycle<'a>(start: &'a str, siblings: &BTreeMap<&'a str, &'a Step>) -> Option<Vec<&'a str>> {
    fn walk<'a>(
        id: &'a str,
        start: &'a str,
        siblings: &BTreeMap<&'a str, &'a Step>,
        path: &mut Vec<&'a str>,
        seen: &mut BTreeSet<&'a str>,
    ) -> bool {
        path.push(id);
        if let Some(step) = siblings.get(id) {
            for need in &step.needs {
                if need == start {
                    return true;
                }
                if seen.insert(need.as_str()) && walk(need.as_str(), start, siblings, path, seen) {
                    return true;
                }
            }
        }
        path.pop();
        false
    }
    let mut path = Vec::new();
    let mut seen = BTreeSet::new();
    walk(start, start, siblings, &mut path, &mut seen).then_some(path)
}

/// How many items a range gives.
pub fn range_len(start: i64, end: i64, step: i64) -> u64 {
    let (span, inc) = match step {
        s if s > 0 && end > start => (i128::from(end) - i128::from(start), i128::from(s)),
        s if s < 0 && end < start => (i128::from(start) - i128::from(end), -i128::from(s)),
        _ => return 0,
    };
    u64::try_from((span + inc - 1) / inc).unwrap_or(u64::MAX)
}
