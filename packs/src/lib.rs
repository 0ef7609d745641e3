//! Task packs for the workflow engine: what a pack says, what a run of it would do, and
//! which of its steps may start next.
//!
//! Pure: no store, no network, no clock (every time is an input, in UTC milliseconds).
//! The server calls it to plan, simulate and drive runs; the CLI can link the same code,
//! so a plan hash computed offline is the server's plan hash.
//!
//! The flow, one module per concern:
//!
//! - [`manifest`]: the `stellaops.io/pack.v1` `TaskPack` manifest, parsed from YAML or
//!   JSON into typed steps, every structural error reported at once with its JSON path.
//! - [`expr`]: the expression language of `{{ … }}` templates, conditions and item lists.
//! - [`validate`]: the checks that need the whole manifest (executors, step ids,
//!   references, cycles, input values).
//! - [`plan`]: manifest + inputs → [`plan::CompiledPlan`], whose `planHash` is the
//!   `sha256:` of the plan's RFC 8785 canonical JSON.
//! - [`simulate`](mod@simulate): the TaskRunner simulation response of a plan, executing nothing.
//! - [`schedule`](mod@schedule): the scheduler core of a run: given step states, what to dispatch,
//!   what waits, what is skipped, and when a retry may start.
//!
//! docs/task-packs.md is the contract: manifest reference, expression language, plan
//! hash, simulation semantics and failure policy.

pub mod expr;
pub mod manifest;
pub mod plan;
pub mod schedule;
pub mod simulate;
pub mod validate;

use serde::{Deserialize, Serialize};

pub use manifest::{parse_manifest, Manifest};
pub use plan::{compile, plan_hash, plan_text, CompiledPlan, Plan};
pub use schedule::{cancel, run_state_steps, schedule, RunState, Schedule, StepState, StepStatus};
pub use simulate::{simulate, SimulationContext, SimulationResponse};

/// One thing wrong with a manifest or its inputs: where (a JSON path such as
/// `$.spec.steps[2].run.with.image`) and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlanError {
    /// JSON path of the offending value: rooted at the manifest document (`$.spec…`), or
    /// at the request for input values (`$.inputs.<name>`).
    pub path: String,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl PlanError {
    /// An error at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> PlanError {
        PlanError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every error found in a manifest and its inputs; serializes as the TaskRunner
/// `PlanErrorResponse` (`{"errors":[{"path","message"}]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{} plan error(s); first at {}: {}", errors.len(), first_path(errors), first_message(errors))]
pub struct PlanErrors {
    /// The errors, in document order of their paths (then by message).
    pub errors: Vec<PlanError>,
}

impl PlanErrors {
    /// The errors, sorted and with exact duplicates removed, so two runs report the same
    /// list in the same order.
    pub fn new(mut errors: Vec<PlanError>) -> PlanErrors {
        errors.sort_by(|a, b| path_order(&a.path, &b.path).then_with(|| a.message.cmp(&b.message)));
        errors.dedup();
        PlanErrors { errors }
    }

    /// One error.
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> PlanErrors {
        PlanErrors::new(vec![PlanError::new(path, message)])
    }
}

fn first_path(errors: &[PlanError]) -> &str {
    errors.first().map_or("$", |e| e.path.as_str())
}

fn first_message(errors: &[PlanError]) -> &str {
    errors.first().map_or("", |e| e.message.as_str())
}

/// Paths in document order: array indexes compare as numbers (`[2]` before `[10]`).
fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(p: &str) -> Vec<Result<u64, &str>> {
        p.split(['.', '[', ']'])
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u64>().map_err(|_| s))
            .collect()
    }
    parts(a).cmp(&parts(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_sort_in_document_order() {
        let errors = PlanErrors::new(vec![
            PlanError::new("$.spec.steps[10].id", "b"),
            PlanError::new("$.spec.steps[2].id", "a"),
            PlanError::new("$.spec.steps[2].id", "a"),
            PlanError::new("$.metadata.name", "c"),
        ]);
        let paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "$.metadata.name",
                "$.spec.steps[2].id",
                "$.spec.steps[10].id"
            ]
        );
    }

    #[test]
    fn errors_serialize_as_plan_error_response() {
        let errors = PlanErrors::one("$.spec.steps[0].run.uses", "unknown executor");
        let json = serde_json::to_value(&errors).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"errors":[{"path":"$.spec.steps[0].run.uses","message":"unknown executor"}]})
        );
    }
}
