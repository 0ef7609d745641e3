//! Reading steps: every step kind and its fields.

use serde_json::{Map, Value};

use super::{at, idx, kind_name, Reader};
use crate::manifest::{
    AggregationMode, Branch, Conditional, FailureAction, ItemsSource, Iteration, PolicyGate, Step,
    StepBody, DEFAULT_MAX_ITERATIONS, MAX_ITERATIONS_LIMIT,
};

impl Reader {
    pub(super) fn steps(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Vec<Step> {
        let base = at(path, key);
        let mut out = Vec::new();
        for (i, v) in self.array(m, key, path).iter().enumerate() {
            if let Some(step) = self.step(v, &idx(&base, i)) {
                out.push(step);
            }
        }
        out
    }

    pub(super) fn step(&mut self, v: &Value, p: &str) -> Option<Step> {
        const BODIES: [&str; 6] = ["run", "gate", "parallel", "map", "loop", "conditional"];
        let m = self.object(
            v,
            p,
            &[
                "id",
                "name",
                "when",
                "continueOnError",
                "needs",
                "run",
                "gate",
                "parallel",
                "map",
                "loop",
                "conditional",
            ],
        )?;
        let id = self.string(m, "id", p, true);
        let name = self.string(m, "name", p, false);
        let when = self.string(m, "when", p, false);
        let continue_on_error = self.boolean(m, "continueOnError", p);
        let needs = self.strings(m, "needs", p);
        let present: Vec<&str> = BODIES
            .iter()
            .copied()
            .filter(|k| m.contains_key(*k))
            .collect();
        let body = match present.as_slice() {
            [one] => {
                let bp = at(p, one);
                let value = m.get(*one)?;
                match *one {
                    "run" => self.run(value, &bp),
                    "gate" => self.gate(value, &bp),
                    "parallel" => self.parallel(value, &bp),
                    "map" => self.iteration(value, &bp, true).map(StepBody::Map),
                    "loop" => self.iteration(value, &bp, false).map(StepBody::Loop),
                    _ => self.conditional(value, &bp),
                }
            }
            [] => {
                self.err(p, format!("a step needs one of: {}", BODIES.join(", ")));
                None
            }
            many => {
                self.err(
                    p,
                    format!(
                        "a step has exactly one of {}; found {}",
                        BODIES.join(", "),
                        many.join(", ")
                    ),
                );
                None
            }
        };
        Some(Step {
            id: id?,
            name,
            when,
            continue_on_error,
            needs,
            body: body?,
            path: p.to_owned(),
        })
    }

    fn run(&mut self, v: &Value, p: &str) -> Option<StepBody> {
        let m = self.object(v, p, &["uses", "with"])?;
        let uses = self.string(m, "uses", p, true);
        let with = self.params(m, "with", p);
        Some(StepBody::Run { uses: uses?, with })
    }

    fn gate(&mut self, v: &Value, p: &str) -> Option<StepBody> {
        let m = self.object(v, p, &["approval", "policy"])?;
        match (m.get("approval"), m.get("policy")) {
            (Some(a), None) => {
                let ap = at(p, "approval");
                let a = self.object(a, &ap, &["id", "message"])?;
                let approval_id = self.string(a, "id", &ap, true);
                let message = self.string(a, "message", &ap, false);
                Some(StepBody::GateApproval {
                    approval_id: approval_id?,
                    message,
                })
            }
            (None, Some(g)) => self.policy(g, &at(p, "policy")).map(StepBody::GatePolicy),
            _ => {
                self.err(p, "a gate has exactly one of: approval, policy");
                None
            }
        }
    }

    fn policy(&mut self, v: &Value, p: &str) -> Option<PolicyGate> {
        let m = self.object(
            v,
            p,
            &[
                "id",
                "version",
                "message",
                "parameters",
                "failureAction",
                "retryCount",
                "overrideApproval",
                "onFailure",
            ],
        )?;
        let policy_id = self.string(m, "id", p, true);
        let policy_version = self.version(m, "version", p, false);
        let message = self.string(m, "message", p, false);
        let parameters = self.params(m, "parameters", p);
        let failure_action = match self.string(m, "failureAction", p, false).as_deref() {
            None | Some("abort") => FailureAction::Abort,
            Some("warn") => FailureAction::Warn,
            Some("requestOverride") => FailureAction::RequestOverride,
            Some("branch") => FailureAction::Branch,
            Some(other) => {
                self.err(at(p, "failureAction"), format!("unknown failure action `{other}`; expected one of: abort, warn, requestOverride, branch"));
                FailureAction::Abort
            }
        };
        let retry_count = self.uint32(m, "retryCount", p, 0, 100).unwrap_or(0);
        let override_approval = self.string(m, "overrideApproval", p, false);
        let on_failure = self.steps(m, "onFailure", p);
        match failure_action {
            FailureAction::RequestOverride if override_approval.is_none() => {
                self.err(
                    at(p, "overrideApproval"),
                    "failure action requestOverride needs an overrideApproval",
                );
            }
            FailureAction::Branch if on_failure.is_empty() => {
                self.err(
                    at(p, "onFailure"),
                    "failure action branch needs at least one onFailure step",
                );
            }
            _ => {}
        }
        if failure_action != FailureAction::RequestOverride && override_approval.is_some() {
            self.err(
                at(p, "overrideApproval"),
                "only meaningful with failure action requestOverride",
            );
        }
        if failure_action != FailureAction::Branch && m.contains_key("onFailure") {
            self.err(
                at(p, "onFailure"),
                "only meaningful with failure action branch",
            );
        }
        Some(PolicyGate {
            policy_id: policy_id?,
            policy_version,
            message,
            parameters,
            failure_action,
            retry_count,
            override_approval,
            on_failure,
        })
    }

    fn parallel(&mut self, v: &Value, p: &str) -> Option<StepBody> {
        let m = self.object(v, p, &["maxParallel", "steps"])?;
        let max_parallel = self.max_parallel(m, p);
        let steps = self.steps(m, "steps", p);
        if steps.is_empty() {
            self.err(at(p, "steps"), "must hold at least one step");
        }
        Some(StepBody::Parallel {
            max_parallel,
            steps,
        })
    }

    fn max_parallel(&mut self, m: &Map<String, Value>, p: &str) -> Option<u32> {
        match m.get("maxParallel") {
            Some(Value::Number(n))
                if n.as_u64() == Some(0) || n.as_i64().is_some_and(|i| i < 0) =>
            {
                self.err(at(p, "maxParallel"), "must be at least 1");
                None
            }
            _ => self.uint32(m, "maxParallel", p, 1, 1_000),
        }
    }

    fn iteration(&mut self, v: &Value, p: &str, is_map: bool) -> Option<Iteration> {
        let mut keys = vec![
            "items",
            "range",
            "staticItems",
            "iterator",
            "index",
            "maxIterations",
            "aggregation",
        ];
        keys.push(if is_map { "step" } else { "steps" });
        if is_map {
            keys.push("maxParallel");
        }
        let m = self.object(v, p, &keys)?;
        let sources: Vec<&str> = ["items", "range", "staticItems"]
            .into_iter()
            .filter(|k| m.contains_key(*k))
            .collect();
        let items = match sources.as_slice() {
            ["items"] => self
                .string(m, "items", p, true)
                .map(ItemsSource::Expression),
            ["staticItems"] => match m.get("staticItems") {
                Some(Value::Array(items)) => Some(ItemsSource::Static(items.clone())),
                Some(other) => {
                    self.err(
                        at(p, "staticItems"),
                        format!("expected an array, found {}", kind_name(other)),
                    );
                    None
                }
                None => None,
            },
            ["range"] => self.range(m, p),
            _ => {
                self.err(p, "exactly one of items, range, staticItems is required");
                None
            }
        };
        let iterator = self
            .string(m, "iterator", p, false)
            .unwrap_or_else(|| "item".to_owned());
        let index = self
            .string(m, "index", p, false)
            .unwrap_or_else(|| "index".to_owned());
        for (key, name) in [("iterator", &iterator), ("index", &index)] {
            if !crate::expr::is_variable_name(name) {
                self.err(at(p, key), format!("`{name}` is not a variable name (a letter or `_`, then letters, digits or `_`)"));
            }
        }
        if iterator == index {
            self.err(at(p, "index"), "iterator and index need different names");
        }
        let max_iterations = self
            .uint32(m, "maxIterations", p, 1, u64::from(MAX_ITERATIONS_LIMIT))
            .unwrap_or(DEFAULT_MAX_ITERATIONS);
        let max_parallel = if is_map {
            self.max_parallel(m, p)
        } else {
            None
        };
        let aggregation = match self.string(m, "aggregation", p, false).as_deref() {
            None | Some("collect") => AggregationMode::Collect,
            Some("merge") => AggregationMode::Merge,
            Some("last") => AggregationMode::Last,
            Some("first") => AggregationMode::First,
            Some("none") => AggregationMode::None,
            Some(other) => {
                self.err(at(p, "aggregation"), format!("unknown aggregation `{other}`; expected one of: collect, merge, last, first, none"));
                AggregationMode::Collect
            }
        };
        let steps = if is_map {
            match m.get("step") {
                Some(s) => self.step(s, &at(p, "step")).into_iter().collect(),
                None => {
                    self.err(at(p, "step"), "is required");
                    Vec::new()
                }
            }
        } else {
            let steps = self.steps(m, "steps", p);
            if steps.is_empty() {
                self.err(at(p, "steps"), "must hold at least one step");
            }
            steps
        };
        Some(Iteration {
            items: items?,
            iterator,
            index,
            max_iterations,
            max_parallel,
            aggregation,
            steps,
        })
    }

    fn range(&mut self, m: &Map<String, Value>, p: &str) -> Option<ItemsSource> {
        let rp = at(p, "range");
        let r = self.object(m.get("range")?, &rp, &["start", "end", "step"])?;
        let mut int = |key: &str, default: Option<i64>| match r.get(key) {
            None => {
                if default.is_none() {
                    self.err(at(&rp, key), "is required");
                }
                default
            }
            Some(v) => {
                let n = v.as_i64();
                if n.is_none() {
                    self.err(at(&rp, key), format!("expected an integer, found {v}"));
                }
                n
            }
        };
        let start = int("start", Some(0));
        let end = int("end", None);
        let step = int("step", Some(1));
        if step == Some(0) {
            self.err(at(&rp, "step"), "must not be 0");
            return None;
        }
        Some(ItemsSource::Range {
            start: start?,
            end: end?,
            step: step?,
        })
    }

    fn conditional(&mut self, v: &Value, p: &str) -> Option<StepBody> {
        let m = self.object(v, p, &["branches", "else", "outputUnion"])?;
        let mut branches = Vec::new();
        let bp = at(p, "branches");
        for (i, b) in self.array(m, "branches", p).iter().enumerate() {
            let ip = idx(&bp, i);
            let Some(bm) = self.object(b, &ip, &["condition", "steps"]) else {
                continue;
            };
            let condition = self.string(bm, "condition", &ip, true);
            let steps = self.steps(bm, "steps", &ip);
            if steps.is_empty() {
                self.err(at(&ip, "steps"), "must hold at least one step");
            }
            if let Some(condition) = condition {
                branches.push(Branch { condition, steps });
            }
        }
        if !m.contains_key("branches")
            || branches.is_empty() && self.array(m, "branches", p).is_empty()
        {
            self.err(bp, "a conditional needs at least one branch");
        }
        let else_steps = self.steps(m, "else", p);
        let output_union = self.boolean(m, "outputUnion", p).unwrap_or(false);
        Some(StepBody::Conditional(Conditional {
            branches,
            else_steps,
            output_union,
        }))
    }
}
