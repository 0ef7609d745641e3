//! Reading a manifest: the JSON value walked by hand, every error kept with its path.

use serde_json::{Map, Value};

use super::{
    AggregationMode, ApprovalDecl, Branch, Conditional, FailureAction, FailurePolicy, InputDecl,
    InputType, ItemsSource, Iteration, Manifest, Metadata, OutputDecl, OutputType, PolicyGate,
    Sandbox, SandboxMode, Slo, Step, StepBody, API_VERSION, DEFAULT_MAX_ITERATIONS, KIND,
    MAX_ITERATIONS_LIMIT,
};
use crate::{PlanError, PlanErrors};

/// Parse a manifest from YAML or JSON text (JSON when the first non-blank character is
/// `{`). Every structural error is reported, each with its JSON path.
pub fn parse_manifest(text: &str) -> Result<Manifest, PlanErrors> {
    let value: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| PlanErrors::one("$", format!("manifest is not valid JSON: {e}")))?
    } else {
        serde_yaml_ng::from_str(text)
            .map_err(|e| PlanErrors::one("$", format!("manifest is not valid YAML: {e}")))?
    };
    manifest_from_value(&value)
}

/// Read a manifest from a JSON value (the parsed text).
pub fn manifest_from_value(value: &Value) -> Result<Manifest, PlanErrors> {
    let mut r = Reader::default();
    let manifest = r.manifest(value);
    match manifest {
        Some(m) if r.errors.is_empty() => Ok(m),
        _ => Err(PlanErrors::new(r.errors)),
    }
}

/// Collects errors while walking the value.
#[derive(Default)]
struct Reader {
    errors: Vec<PlanError>,
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn at(path: &str, key: &str) -> String {
    format!("{path}.{key}")
}

fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

impl Reader {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(PlanError::new(path, message));
    }

    fn object<'a>(
        &mut self,
        v: &'a Value,
        path: &str,
        allowed: &[&str],
    ) -> Option<&'a Map<String, Value>> {
        let Some(map) = v.as_object() else {
            self.err(path, format!("expected an object, found {}", kind_name(v)));
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.err(
                    at(path, key),
                    format!(
                        "unknown field `{key}`; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(map)
    }

    fn array<'a>(&mut self, m: &'a Map<String, Value>, key: &str, path: &str) -> &'a [Value] {
        match m.get(key) {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(v) => {
                self.err(
                    at(path, key),
                    format!("expected an array, found {}", kind_name(v)),
                );
                &[]
            }
        }
    }

    fn string(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<String> {
        match m.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.err(at(path, key), "is required");
                }
                None
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.err(at(path, key), "must not be empty");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(v) => {
                self.err(
                    at(path, key),
                    format!("expected a string, found {}", kind_name(v)),
                );
                None
            }
        }
    }

    /// A string, or a number kept as its text (`version: 2`).
    fn version(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        required: bool,
    ) -> Option<String> {
        if let Some(Value::Number(n)) = m.get(key) {
            return Some(n.to_string());
        }
        self.string(m, key, path, required)
    }

    fn uint(&mut self, m: &Map<String, Value>, key: &str, path: &str, min: u64) -> Option<u64> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= min => Some(n),
                _ => {
                    self.err(
                        at(path, key),
                        format!("expected an integer of at least {min}, found {v}"),
                    );
                    None
                }
            },
        }
    }

    fn uint32(
        &mut self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        min: u64,
        max: u64,
    ) -> Option<u32> {
        let n = self.uint(m, key, path, min)?;
        match u32::try_from(n) {
            Ok(n) if u64::from(n) <= max => Some(n),
            _ => {
                self.err(at(path, key), format!("must be at most {max}"));
                None
            }
        }
    }

    fn boolean(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Option<bool> {
        match m.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(v) => {
                self.err(
                    at(path, key),
                    format!("expected a boolean, found {}", kind_name(v)),
                );
                None
            }
        }
    }

    fn strings(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, v) in self.array(m, key, path).iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.err(
                    idx(&at(path, key), i),
                    format!("expected a string, found {}", kind_name(v)),
                ),
            }
        }
        out
    }

    fn params(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Map<String, Value> {
        match m.get(key) {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(v) => {
                self.err(
                    at(path, key),
                    format!("expected an object, found {}", kind_name(v)),
                );
                Map::new()
            }
        }
    }

    fn manifest(&mut self, v: &Value) -> Option<Manifest> {
        let root = self.object(v, "$", &["apiVersion", "kind", "metadata", "spec"])?;
        match self.string(root, "apiVersion", "$", true) {
            Some(a) if a != API_VERSION => self.err(
                "$.apiVersion",
                format!("unsupported apiVersion `{a}`; expected `{API_VERSION}`"),
            ),
            _ => {}
        }
        match self.string(root, "kind", "$", true) {
            Some(k) if k != KIND => self.err(
                "$.kind",
                format!("unsupported kind `{k}`; expected `{KIND}`"),
            ),
            _ => {}
        }
        let metadata = match root.get("metadata") {
            Some(m) => self.metadata(m),
            None => {
                self.err("$.metadata", "is required");
                None
            }
        };
        let Some(spec_value) = root.get("spec") else {
            self.err("$.spec", "is required");
            return None;
        };
        let spec = self.object(
            spec_value,
            "$.spec",
            &[
                "inputs",
                "sandbox",
                "slo",
                "approvals",
                "failure",
                "outputs",
                "steps",
            ],
        )?;
        let p = "$.spec";
        let inputs = self.inputs(spec);
        let sandbox = spec
            .get("sandbox")
            .map_or_else(Sandbox::default, |s| self.sandbox(s));
        let slo = spec.get("slo").and_then(|s| self.slo(s));
        let approvals = self.approvals(spec);
        let failure = spec
            .get("failure")
            .map_or_else(FailurePolicy::default, |f| self.failure(f));
        let outputs = self.outputs(spec);
        if !spec.contains_key("steps") {
            self.err(at(p, "steps"), "is required");
        }
        let steps = self.steps(spec, "steps", p);
        if steps.is_empty() && spec.contains_key("steps") {
            self.err(at(p, "steps"), "must hold at least one step");
        }
        Some(Manifest {
            metadata: metadata?,
            inputs,
            sandbox,
            slo,
            approvals,
            failure,
            outputs,
            steps,
        })
    }

    fn metadata(&mut self, v: &Value) -> Option<Metadata> {
        let p = "$.metadata";
        let m = self.object(v, p, &["name", "version", "description"])?;
        let name = self.string(m, "name", p, true);
        let version = self.version(m, "version", p, true);
        let description = self.string(m, "description", p, false);
        Some(Metadata {
            name: name?,
            version: version?,
            description,
        })
    }

    fn inputs(&mut self, spec: &Map<String, Value>) -> Vec<InputDecl> {
        let base = "$.spec.inputs";
        let mut out = Vec::new();
        for (i, v) in self.array(spec, "inputs", "$.spec").iter().enumerate() {
            let p = idx(base, i);
            let Some(m) = self.object(
                v,
                &p,
                &["name", "type", "required", "default", "description"],
            ) else {
                continue;
            };
            let name = self.string(m, "name", &p, true);
            let ty = match self.string(m, "type", &p, true) {
                Some(t) => match InputType::parse(&t) {
                    Some(ty) => Some(ty),
                    None => {
                        self.err(at(&p, "type"), format!("unknown input type `{t}`; expected one of: string, number, integer, boolean, object, array"));
                        None
                    }
                },
                None => None,
            };
            let required = self.boolean(m, "required", &p).unwrap_or(false);
            let default = m.get("default").filter(|d| !d.is_null()).cloned();
            let description = self.string(m, "description", &p, false);
            if let (Some(name), Some(ty)) = (name, ty) {
                out.push(InputDecl {
                    name,
                    ty,
                    required,
                    default,
                    description,
                    path: p,
                });
            }
        }
        out
    }

    fn sandbox(&mut self, v: &Value) -> Sandbox {
        let p = "$.spec.sandbox";
        let Some(m) = self.object(
            v,
            p,
            &[
                "mode",
                "egressAllowlist",
                "cpuLimitMillicores",
                "memoryLimitMiB",
                "quotaSeconds",
            ],
        ) else {
            return Sandbox::default();
        };
        let mode = match self.string(m, "mode", p, false).as_deref() {
            None | Some("sealed") => SandboxMode::Sealed,
            Some("restricted") => SandboxMode::Restricted,
            Some(other) => {
                self.err(
                    at(p, "mode"),
                    format!("unknown sandbox mode `{other}`; expected sealed or restricted"),
                );
                SandboxMode::Sealed
            }
        };
        let mut egress_allowlist = self.strings(m, "egressAllowlist", p);
        egress_allowlist.sort();
        egress_allowlist.dedup();
        match mode {
            SandboxMode::Sealed if !egress_allowlist.is_empty() => {
                self.err(
                    at(p, "egressAllowlist"),
                    "must be empty in a sealed sandbox; use mode restricted to allow egress",
                );
            }
            SandboxMode::Restricted if egress_allowlist.is_empty() => {
                self.err(
                    at(p, "egressAllowlist"),
                    "a restricted sandbox needs at least one host",
                );
            }
            _ => {}
        }
        Sandbox {
            mode,
            egress_allowlist,
            cpu_limit_millicores: self.uint(m, "cpuLimitMillicores", p, 1),
            memory_limit_mib: self.uint(m, "memoryLimitMiB", p, 1),
            quota_seconds: self.uint(m, "quotaSeconds", p, 1),
        }
    }

    fn slo(&mut self, v: &Value) -> Option<Slo> {
        let p = "$.spec.slo";
        let m = self.object(
            v,
            p,
            &["runP95Seconds", "approvalP95Seconds", "maxQueueDepth"],
        )?;
        Some(Slo {
            run_p95_seconds: self.uint(m, "runP95Seconds", p, 1),
            approval_p95_seconds: self.uint(m, "approvalP95Seconds", p, 1),
            max_queue_depth: self.uint(m, "maxQueueDepth", p, 1),
        })
    }

    fn approvals(&mut self, spec: &Map<String, Value>) -> Vec<ApprovalDecl> {
        let mut out = Vec::new();
        for (i, v) in self.array(spec, "approvals", "$.spec").iter().enumerate() {
            let p = idx("$.spec.approvals", i);
            let Some(m) = self.object(v, &p, &["id", "grants", "expiresAfterSeconds"]) else {
                continue;
            };
            let id = self.string(m, "id", &p, true);
            let mut grants = self.strings(m, "grants", &p);
            grants.sort();
            grants.dedup();
            let expires_after_seconds = self.uint(m, "expiresAfterSeconds", &p, 1);
            if let Some(id) = id {
                out.push(ApprovalDecl {
                    id,
                    grants,
                    expires_after_seconds,
                });
            }
        }
        out
    }

    fn failure(&mut self, v: &Value) -> FailurePolicy {
        let p = "$.spec.failure";
        let Some(m) = self.object(v, p, &["maxAttempts", "backoffSeconds", "continueOnError"])
        else {
            return FailurePolicy::default();
        };
        let d = FailurePolicy::default();
        FailurePolicy {
            max_attempts: self
                .uint32(m, "maxAttempts", p, 1, 100)
                .unwrap_or(d.max_attempts),
            backoff_seconds: self
                .uint(m, "backoffSeconds", p, 0)
                .unwrap_or(d.backoff_seconds),
            continue_on_error: self
                .boolean(m, "continueOnError", p)
                .unwrap_or(d.continue_on_error),
        }
    }

    fn outputs(&mut self, spec: &Map<String, Value>) -> Vec<OutputDecl> {
        let mut out = Vec::new();
        for (i, v) in self.array(spec, "outputs", "$.spec").iter().enumerate() {
            let p = idx("$.spec.outputs", i);
            let Some(m) = self.object(v, &p, &["name", "type", "path", "expression"]) else {
                continue;
            };
            let name = self.string(m, "name", &p, true);
            let path_expression = self.string(m, "path", &p, false);
            let value_expression = self.string(m, "expression", &p, false);
            let ty = match self.string(m, "type", &p, true).as_deref() {
                Some("file") => {
                    if path_expression.is_none() {
                        self.err(at(&p, "path"), "a file output needs a path");
                    }
                    Some(OutputType::File)
                }
                Some("object") => {
                    if value_expression.is_none() {
                        self.err(at(&p, "expression"), "an object output needs an expression");
                    }
                    Some(OutputType::Object)
                }
                Some(other) => {
                    self.err(
                        at(&p, "type"),
                        format!("unknown output type `{other}`; expected file or object"),
                    );
                    None
                }
                None => None,
            };
            if let (Some(name), Some(ty)) = (name, ty) {
                out.push(OutputDecl {
                    name,
                    ty,
                    path_expression,
                    value_expression,
                    path: p,
                });
            }
        }
        out
    }

    fn steps(&mut self, m: &Map<String, Value>, key: &str, path: &str) -> Vec<Step> {
        let base = at(path, key);
        let mut out = Vec::new();
        for (i, v) in self.array(m, key, path).iter().enumerate() {
            if let Some(step) = self.step(v, &idx(&base, i)) {
                out.push(step);
            }
        }
        out
    }

    fn step(&mut self, v: &Value, p: &str) -> Option<Step> {
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
