//! The Rego policy gate (`stella env create prod --policy FILE.rego`), evaluated with
//! regorus.
//!
//! # Contract
//!
//! A policy is one Rego module in **v1 syntax** (`if` before rule bodies, `contains` for
//! multi-value rules). Stella evaluates the rule `deny` in the module's own package: a
//! set of strings, each a reason shown to the user. The promotion is denied when the set
//! is non-empty, and also when the module defines `allow` and it is not `true` (false,
//! any other value, or undefined for the input). An undefined `deny` (a rule whose
//! conditions do not hold) denies nothing.
//!
//! ```rego
//! package stella.gate
//!
//! deny contains msg if {
//!     some f in input.findings
//!     f.severity == "critical"
//!     msg := sprintf("%s has %s", [f.image, f.id])
//! }
//!
//! default allow := false
//! allow if count(input.approvals) >= 1
//! ```
//!
//! A module in v0 syntax (`deny[msg] { … }`) is refused when compiled: regorus parses
//! Rego v1 by default, and the error says the module looks like v0 and how v1 spells
//! it. Accepting both would let two syntaxes drift apart in stored policies; v0 is the
//! older one and OPA 1.0 dropped it as the default.
//!
//! # Determinism
//!
//! Decisions are replayed byte for byte later, so evaluation reads nothing but the
//! policy, the input and the evaluation time passed in:
//!
//! - `time.now_ns()` returns the evaluation time given to [`Policy::evaluate`] (an
//!   extension that takes precedence over the builtin, which reads the clock).
//! - `rand.intn` fails evaluation ("not available") instead of drawing a random number.
//! - `http.send`, `uuid.rfc4122`, `opa.runtime` and `net.lookup_ip_addr` do not exist:
//!   the regorus features that provide them are not enabled (see `Cargo.toml`); a
//!   policy calling them fails at evaluation with "could not find function".
//! - A string literal `"Local"` is refused when compiled: as a time zone argument of the
//!   `time.*` builtins it means the host's zone, which differs between the server and a
//!   machine replaying the decision. Name the zone (`"Europe/Berlin"`) or use `"UTC"`.
//! - `print` output is gathered and dropped, never written to stderr.
//! - No execution time limit is set: a limit would make the outcome depend on the
//!   speed of the machine.
//!
//! # Cost
//!
//! [`Policy::compile`] parses and analyses the module once. [`Policy::evaluate`] clones
//! the prepared engine (its modules are shared, not copied), sets the input and
//! evaluates `deny` and `allow`; it takes `&self`, so one compiled policy serves any
//! number of threads.

use std::collections::BTreeSet;
use std::fmt;

use regorus::{Engine, Value};
use serde::{Deserialize, Serialize};

use crate::DecisionError;

/// The name the module is given inside regorus; it appears in no message of ours.
const SOURCE_NAME: &str = "policy.rego";

/// The reason added when `allow` is defined and not `true`.
pub const ALLOW_NOT_TRUE: &str = "policy `allow` is not true";

/// A compiled policy module, ready to evaluate many times.
#[derive(Clone)]
pub struct Policy {
    source: String,
    sha256: String,
    package: String,
    deny_path: String,
    allow_path: Option<String>,
    /// Parsed, analysed, with `rand.intn` disabled and prints gathered; cloned for each
    /// evaluation, which then adds its own `time.now_ns`.
    engine: Engine,
}

/// What a policy decided for one input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOutcome {
    /// True when `deny` is empty and `allow`, if the module defines it, is `true`.
    pub allowed: bool,
    /// Every reason to deny, sorted and without duplicates: the strings of `deny`, and
    /// [`ALLOW_NOT_TRUE`] when `allow` is defined and not `true`.
    pub reasons: Vec<String>,
}

impl Policy {
    /// Parses a Rego v1 module and prepares it for evaluation. Refuses a parse error
    /// (with its line and column), a v0 module, a module without a `deny` rule and the
    /// time zone `"Local"`.
    pub fn compile(source: &str) -> Result<Policy, DecisionError> {
        let mut engine = Engine::new();
        engine.set_gather_prints(true);
        if let Err(error) = engine.add_policy(SOURCE_NAME.to_string(), source.to_string()) {
            let message = one_line(&error.to_string());
            return Err(DecisionError::new(if parses_as_rego_v0(source) {
                format!(
                    "policy: {message} (the module is Rego v0 syntax; Stella takes Rego v1: `deny contains msg if {{ … }}`, `allow if {{ … }}`)"
                )
            } else {
                format!("policy: {message}")
            }));
        }
        let components = engine
            .get_policy_package_components()
            .ok()
            .and_then(|packages| packages.into_iter().next())
            .map(|package| package.components)
            .ok_or_else(|| DecisionError::new("policy: the module declares no package"))?;
        let package = components.join(".");
        let data_path = rule_path(&components);

        let rules = contract_rules(&mut engine).map_err(|(line, column, what)| {
            DecisionError::new(format!(
                "policy `{package}` line {line}, column {column}: {what}"
            ))
        })?;
        if !rules.deny {
            return Err(DecisionError::new(format!(
                "policy `{package}` defines no `deny` rule"
            )));
        }
        let allow_path = rules.allow.then(|| format!("{data_path}.allow"));
        let deny_path = format!("{data_path}.deny");

        if let Some((line, column)) = local_time_zone_literal(source) {
            return Err(DecisionError::new(format!(
                "policy `{package}` line {line}, column {column}: the time zone \"Local\" is the host's, so the decision would depend on the machine; name the zone (\"Europe/Berlin\") or use \"UTC\""
            )));
        }

        engine
            .add_extension(
                "rand.intn".to_string(),
                2,
                Box::new(|_: Vec<Value>| {
                    Err(DecisionError::new(
                        "rand.intn is not available: a policy decision must be reproducible",
                    )
                    .into())
                }),
            )
            .map_err(|error| {
                DecisionError::new(format!(
                    "policy `{package}`: {}",
                    one_line(&error.to_string())
                ))
            })?;
        // Analyse and schedule the module now, once, rather than in every evaluation;
        // this reports what the analysis finds (`x := 1; x := 2`). regorus finds unsafe
        // variables and recursion only when evaluating.
        engine
            .compile_with_entrypoint(&deny_path.as_str().into())
            .map_err(|error| {
                DecisionError::new(format!(
                    "policy `{package}`: {}",
                    one_line(&error.to_string())
                ))
            })?;

        Ok(Policy {
            source: source.to_string(),
            sha256: crate::sha256_id(source.as_bytes()),
            package,
            deny_path,
            allow_path,
            engine,
        })
    }

    /// `sha256:<hex>` of the source bytes: the policy's version in decisions.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The module's package, dotted (`stella.gate`).
    pub fn package(&self) -> &str {
        &self.package
    }

    /// The module's source, as compiled.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the module defines `allow`.
    pub fn defines_allow(&self) -> bool {
        self.allow_path.is_some()
    }

    /// Evaluates `deny` (and `allow`, when defined) for `input`, with `time.now_ns()`
    /// returning `now_ms`. A runtime error (conflicting rule values, a failing builtin)
    /// and a `deny` that is not a set or array of strings are errors, not denials.
    pub fn evaluate(
        &self,
        input: &serde_json::Value,
        now_ms: i64,
    ) -> Result<PolicyOutcome, DecisionError> {
        self.evaluate_value(Policy::input_value(input)?, now_ms)
    }

    /// An input document in the engine's own value form, for [`Policy::evaluate_value`].
    pub fn input_value(input: &serde_json::Value) -> Result<Value, DecisionError> {
        Value::deserialize(input).map_err(|error| {
            DecisionError::new(format!("the policy input cannot be read: {error}"))
        })
    }

    /// [`Policy::evaluate`] with the input already in the engine's value form (parts of
    /// it may be shared with other evaluations: values are reference-counted).
    pub fn evaluate_value(
        &self,
        input: Value,
        now_ms: i64,
    ) -> Result<PolicyOutcome, DecisionError> {
        let package = &self.package;
        let fail = |what: String| DecisionError::new(format!("policy `{package}`: {what}"));

        let mut engine = self.engine.clone();
        let now_ns = now_ms.checked_mul(1_000_000);
        engine
            .add_extension(
                "time.now_ns".to_string(),
                0,
                Box::new(move |_: Vec<Value>| match now_ns {
                    Some(ns) => Ok(Value::from(ns)),
                    None => Err(DecisionError::new(format!(
                        "time.now_ns: the evaluation time {now_ms} ms is out of range"
                    ))
                    .into()),
                }),
            )
            .map_err(|error| fail(one_line(&error.to_string())))?;
        engine.set_input(input);

        let deny = engine
            .eval_rule(self.deny_path.clone())
            .map_err(|error| fail(one_line(&error.to_string())))?;
        let mut reasons = deny_reasons(&deny).map_err(fail)?;

        let mut allowed = reasons.is_empty();
        if let Some(allow_path) = &self.allow_path {
            let allow = engine
                .eval_rule(allow_path.clone())
                .map_err(|error| fail(one_line(&error.to_string())))?;
            if allow != Value::Bool(true) {
                allowed = false;
                reasons.insert(ALLOW_NOT_TRUE.to_string());
            }
        }
        Ok(PolicyOutcome {
            allowed,
            reasons: reasons.into_iter().collect(),
        })
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("package", &self.package)
            .field("sha256", &self.sha256)
            .field("defines_allow", &self.allow_path.is_some())
            .finish_non_exhaustive()
    }
}

/// Which of the rules of the contract a module defines.
struct ContractRules {
    deny: bool,
    allow: bool,
}

/// Finds `deny` and `allow` among the module's rules, refusing forms that would not
/// evaluate to a value of their own: a function (`deny(x) := …`) or a rule below them
/// (`deny.high := …`, `deny[x] := …`). The error is (line, column, message).
fn contract_rules(engine: &mut Engine) -> Result<ContractRules, (u32, u32, String)> {
    use regorus::unstable::{Expr, Rule, RuleHead};
    let mut found = ContractRules {
        deny: false,
        allow: false,
    };
    for module in engine.get_modules().iter() {
        for rule in &module.policy {
            let (span, head, is_function) = match &**rule {
                Rule::Spec { span, head, .. } => match head {
                    RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => {
                        (span, refr, false)
                    }
                    RuleHead::Func { refr, .. } => (span, refr, true),
                },
                Rule::Default {
                    span, refr, args, ..
                } => (span, refr, !args.is_empty()),
            };
            // The head is a reference such as `deny`, `deny.high` or `deny[x]`; its
            // root variable is the rule's name in the package.
            let mut root = &**head;
            let mut nested = false;
            let name = loop {
                match root {
                    Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => {
                        root = &**refr;
                        nested = true;
                    }
                    Expr::Var { span, .. } => break span.text(),
                    _ => break "",
                }
            };
            if name != "deny" && name != "allow" {
                continue;
            }
            let example = if name == "deny" {
                "`deny contains msg if { … }`"
            } else {
                "`allow if { … }`"
            };
            if is_function {
                return Err((
                    span.line,
                    span.col,
                    format!(
                        "`{name}` is a function; Stella evaluates the rule `{name}` ({example})"
                    ),
                ));
            }
            if nested {
                return Err((
                    span.line,
                    span.col,
                    format!(
                        "this rule defines part of `{name}` (as `{name}.x := …` or `{name}[x] := …` do); Stella evaluates `{name}` as one rule ({example})"
                    ),
                ));
            }
            if name == "deny" {
                found.deny = true;
            } else {
                found.allow = true;
            }
        }
    }
    Ok(found)
}

/// The strings of `deny`; an undefined `deny` holds none.
fn deny_reasons(deny: &Value) -> Result<BTreeSet<String>, String> {
    let items: Vec<&Value> = match deny {
        Value::Undefined => return Ok(BTreeSet::new()),
        Value::Set(set) => set.iter().collect(),
        Value::Array(array) => array.iter().collect(),
        other => {
            return Err(format!(
                "`deny` is {}, expected a set of strings",
                describe(other)
            ))
        }
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(reason) => Ok(reason.to_string()),
            other => Err(format!(
                "`deny` holds {}; each reason must be a string",
                describe(other)
            )),
        })
        .collect()
}

/// A value's type with the value itself, shortened: "a number (`3`)".
fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Set(_) => "a set",
        Value::Object(_) => "an object",
        Value::Undefined => "undefined",
    };
    let mut text = value
        .to_json_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if text.chars().count() > 60 {
        text = text.chars().take(57).collect::<String>() + "...";
    }
    format!("{kind} (`{text}`)")
}

/// `data.a.b` for package `a.b`; components that are not identifiers in brackets.
fn rule_path(components: &[String]) -> String {
    let mut path = String::from("data");
    for component in components {
        let mut chars = component.chars();
        let identifier = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if identifier {
            path.push('.');
            path.push_str(component);
        } else {
            // A JSON string literal is a valid Rego string literal.
            let quoted = serde_json::to_string(component).unwrap_or_default();
            path.push('[');
            path.push_str(&quoted);
            path.push(']');
        }
    }
    path
}

fn parses_as_rego_v0(source: &str) -> bool {
    let mut engine = Engine::new();
    engine.set_rego_v0(true);
    engine
        .add_policy(SOURCE_NAME.to_string(), source.to_string())
        .is_ok()
}

/// Where the first string literal `"Local"` (or `` `Local` ``) is, as line and column.
fn local_time_zone_literal(source: &str) -> Option<(u32, u32)> {
    use regorus::unstable::{Lexer, TokenKind};
    let source =
        regorus::Source::from_contents(SOURCE_NAME.to_string(), source.to_string()).ok()?;
    let mut lexer = Lexer::new(&source);
    // The module parsed, so it lexes; a lexer error just ends the scan.
    while let Ok(token) = lexer.next_token() {
        match token.0 {
            TokenKind::Eof => return None,
            TokenKind::String | TokenKind::RawString if token.1.text() == "Local" => {
                return Some((token.1.line, token.1.col));
            }
            _ => {}
        }
    }
    None
}

/// regorus messages span several lines (`--> policy.rego:3:11`, the source line, a
/// caret, `error: …`, sometimes further located lines); one line reads
/// `line 3, column 11: …`.
fn one_line(message: &str) -> String {
    let location = message.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("--> ")?;
        let mut parts = rest.rsplitn(3, ':');
        let column: u32 = parts.next()?.parse().ok()?;
        let line: u32 = parts.next()?.parse().ok()?;
        Some((line, column))
    });
    let body = match (location, message.find("error: ")) {
        (Some(_), Some(start)) => &message[start + "error: ".len()..],
        _ => message,
    };
    let text = body
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('|') || is_source_echo(line) {
                return None;
            }
            Some(match line.strip_prefix("--> ") {
                Some(place) => format!("at {place}"),
                None => line.to_string(),
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
        .replace(&format!("{SOURCE_NAME}:"), "line ");
    match location {
        Some((line, column)) => format!("line {line}, column {column}: {text}"),
        None => text,
    }
}

/// `12 | allow if {`: a source line regorus quotes under a location.
fn is_source_echo(line: &str) -> bool {
    line.split_once(" |")
        .is_some_and(|(number, _)| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
}
