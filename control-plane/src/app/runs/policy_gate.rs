//! `gate.policy` steps: a Rego policy (v1, the same contract as an environment's
//! `--policy`: the `deny` set must be empty, and `allow`, when defined, true) evaluated by
//! the decision crate over the step's rendered `parameters`.
//!
//! `policy.id` names the policy: `sha256:…`, a policy stored by content (the id `stella
//! env show` prints), or `environment/NAME`, the policy an environment has now.
//! `policy.version`, when given, pins it: the policy's `sha256:` id, or at least 8 hex
//! digits of it. A denial fails the step with the reasons; the gate's `failureAction`
//! (abort, warn, requestOverride, branch) and `retryCount` decide what follows.

use serde_json::{json, Map, Value};
use stella_packs::schedule::Dispatch;

use super::executor::StepContext;
use crate::app::now_ms;
use crate::domain::NewRunLog;

/// The shortest version prefix accepted.
const MIN_VERSION_DIGITS: usize = 8;

/// Evaluates the policy of a `gate.policy` dispatch.
pub(super) async fn evaluate(
    context: &StepContext,
    dispatch: &Dispatch,
    logs: &mut Vec<NewRunLog>,
) -> Result<Map<String, Value>, String> {
    let app = &context.app;
    let id = dispatch.policy_id.as_deref().unwrap_or_default();
    let document_id = match id.strip_prefix("environment/") {
        Some(environment) => {
            let env = app
                .environment(environment)
                .await
                .map_err(|e| format!("policy `{id}`: {}", e.message))?;
            env.gates.policy_id.ok_or_else(|| {
                format!("policy `{id}`: environment `{environment}` has no policy (stella env update {environment} --policy FILE.rego)")
            })?
        }
        None if id.starts_with("sha256:") => id.to_owned(),
        None => {
            return Err(format!(
                "unknown policy `{id}`: name a stored policy by its sha256: id (as `stella env show` prints it) or an environment's with environment/NAME"
            ))
        }
    };
    if let Some(version) = dispatch.policy_version.as_deref() {
        let digits = version.strip_prefix("sha256:").unwrap_or(version);
        let pinned = digits.len() >= MIN_VERSION_DIGITS
            && document_id
                .strip_prefix("sha256:")
                .is_some_and(|hex| hex.starts_with(digits));
        if !pinned {
            return Err(format!(
                "policy `{id}` is at version {document_id}, not the pinned {version}"
            ));
        }
    }
    let source = app
        .store
        .get_document(&document_id)
        .await
        .map_err(|e| format!("policy `{id}`: {e}"))?;
    if source.kind != "rego" {
        return Err(format!(
            "policy `{id}`: {document_id} is a {} document, not a Rego policy",
            source.kind
        ));
    }
    let policy = stella_decision::policy::Policy::compile(&source.content)
        .map_err(|e| format!("policy `{id}`: {e}"))?;
    let input = json!({
        "parameters": Value::Object(dispatch.with.clone()),
        "run": {
            "id": context.run.id,
            "tenant": context.run.tenant,
            "planHash": context.run.plan_hash,
            "step": dispatch.key,
        },
    });
    let outcome = policy
        .evaluate(&input, now_ms())
        .map_err(|e| format!("policy `{id}`: {e}"))?;
    if !outcome.allowed {
        return Err(format!(
            "policy `{id}` ({document_id}) denies: {}",
            outcome.reasons.join("; ")
        ));
    }
    logs.push(
        NewRunLog::info("step.output", format!("policy `{id}` allows"))
            .step(&dispatch.key)
            .meta("policyVersion", document_id.clone()),
    );
    Ok(Map::from_iter([
        ("allowed".to_owned(), json!(true)),
        ("policyVersion".to_owned(), json!(document_id)),
    ]))
}
