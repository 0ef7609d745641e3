//! Reading a manifest: the JSON value walked by hand, every error kept with its path.

use serde_json::{Map, Value};

use super::{
    ApprovalDecl, FailurePolicy, InputDecl, InputType, Manifest, Metadata, OutputDecl, OutputType,
    Sandbox, SandboxMode, Slo, API_VERSION, KIND,
};
use crate::{PlanError, PlanErrors};

mod steps;

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
}
