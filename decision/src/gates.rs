//! The decision: every gate of an environment over one set of inputs.
//!
//! [`decide`] is a pure function of [`DecisionInputs`] and the documents they name (scan
//! reports, VEX documents, the policy source, by `sha256:` id). The server stores both;
//! replay and evidence verification call the same function on the stored copies and
//! compare bytes, so the same inputs always give the same decision id.
//!
//! Gates, in the order they are reported: `order` (the release ran in the environment
//! before this one), `freeze` (no freeze window is active, or an admin broke the glass),
//! `security` (no unsuppressed finding at or above the block severity, every image
//! scanned unless unscanned images are allowed), `policy` (the Rego module's `deny` is
//! empty and `allow`, when defined, is true) and `approvals` (enough distinct approvers
//! other than the requester, bound to the current plan hash). Every gate is evaluated
//! even after one fails, so the operator sees every reason at once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::canonical::canonical_via_value as canonical_bytes;
use crate::freeze::{active_freeze, FreezeWindow};
use crate::memo::Memo;
use crate::policy::Policy;
use crate::scan::{self, ImageSubject, ScanDocument, ScannedImage, Severity};
use crate::{format_time, sha256_id, DecisionError};

pub use crate::plan::{
    ComponentInput, GateConfig, Plan, ReleaseInput, TargetInput, WorkflowInput, PLAN_SCHEMA,
};

/// Documents by `sha256:<hex>` id: scan reports, VEX documents, policy sources. Shared
/// bytes: a server keeps them cached (they are content-addressed, so never stale) and
/// hands the same ones to every decision.
pub type Documents = BTreeMap<String, std::sync::Arc<[u8]>>;

/// The schema of [`DecisionInputs`].
pub const INPUTS_SCHEMA: &str = "stella.decision-inputs/v1";
/// The schema of [`Decision`].
pub const DECISION_SCHEMA: &str = "stella.decision/v1";
/// The fact the order gate needs: whether the same digests were deployed successfully
/// in the environment before this one, and as which release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFact {
    /// The environment that must come first.
    pub environment: String,
    /// `name@version` of the release with the same digests that succeeded there.
    pub deployed_as: Option<String>,
}

/// An approval or a rejection as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalInput {
    /// Who.
    pub user: String,
    /// `approved` or `rejected`.
    pub verdict: String,
    /// Their roles when they decided.
    pub roles: Vec<String>,
    /// The plan hash it was given for.
    pub plan_hash: String,
    /// When.
    pub at_ms: i64,
    /// Their comment.
    pub comment: Option<String>,
}

/// An admin's override of a freeze window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlass {
    /// Who broke the glass.
    pub by: String,
    /// Why.
    pub reason: String,
    /// Whether they were an admin (only an admin's break-glass counts).
    pub admin: bool,
}

/// Everything a decision is computed from. Stored with the decision; replay recomputes
/// the decision from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionInputs {
    /// [`INPUTS_SCHEMA`].
    pub schema: String,
    /// Evaluation time (UTC ms): freeze windows, approval expiry and the policy's
    /// `time` are read from it.
    pub evaluated_at_ms: i64,
    /// Who asked for the promotion.
    pub requested_by: String,
    /// The plan.
    pub plan: Plan,
    /// Its hash.
    pub plan_hash: String,
    /// The order gate's fact, when the environment has a predecessor.
    pub order: Option<OrderFact>,
    /// Approvals and rejections, in the order recorded.
    pub approvals: Vec<ApprovalInput>,
    /// An admin's break-glass, if given.
    pub break_glass: Option<BreakGlass>,
    /// Scan report ids per image digest.
    pub reports: BTreeMap<String, Vec<String>>,
    /// VEX document ids, in the order imported.
    pub vex: Vec<String>,
}

/// How a gate came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateStatus {
    /// Nothing stands in the way.
    Passed,
    /// The promotion cannot go on.
    Failed,
    /// It waits (for approvals).
    Waiting,
    /// It failed, and an admin overrode it (break-glass).
    Overridden,
    /// The environment does not use this gate.
    NotConfigured,
}

/// One gate's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// `order`, `freeze`, `security`, `policy` or `approvals`.
    pub gate: String,
    /// How it came out.
    pub status: GateStatus,
    /// One line for the operator.
    pub reason: String,
    /// Every further line (findings, policy reasons).
    pub details: Vec<String>,
}

/// What the decision is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Deploy.
    Allowed,
    /// A gate failed.
    Blocked,
    /// Every other gate passed; approvals are missing.
    AwaitingApproval,
    /// An approver rejected it.
    Rejected,
}

impl Outcome {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Blocked => "blocked",
            Outcome::AwaitingApproval => "awaiting_approval",
            Outcome::Rejected => "rejected",
        }
    }
}

/// An image the decision covers (the in-toto subjects).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRef {
    /// Component name.
    pub component: String,
    /// `registry/repository@sha256:<hex>`.
    pub image: String,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// The decision record; its id is `sha256:` of its canonical JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// [`DECISION_SCHEMA`].
    pub schema: String,
    /// `sha256:` of the canonical inputs.
    pub inputs: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// The images.
    pub subjects: Vec<SubjectRef>,
    /// The plan hash approvals are bound to.
    pub plan_hash: String,
    /// Who asked.
    pub requested_by: String,
    /// RFC 3339 evaluation time.
    pub evaluated_at: String,
    /// Every gate.
    pub gates: Vec<GateResult>,
    /// The outcome.
    pub outcome: Outcome,
    /// The admin's break-glass, when it overrode a freeze.
    pub break_glass: Option<BreakGlass>,
}

impl Decision {
    /// The canonical bytes and the id.
    pub fn canonical(&self) -> Result<(Vec<u8>, String), DecisionError> {
        let bytes = canonical_bytes(self)?;
        let id = sha256_id(&bytes);
        Ok((bytes, id))
    }

    /// The gate of this name.
    pub fn gate(&self, name: &str) -> Option<&GateResult> {
        self.gates.iter().find(|g| g.gate == name)
    }
}

/// The decision that follows from `inputs` and the documents they name. Fails only on
/// inputs that cannot be read (a missing or unreadable document, a broken freeze window
/// or policy), never on a gate that says no.
pub fn decide(inputs: &DecisionInputs, documents: &Documents) -> Result<Decision, DecisionError> {
    Ok(decide_canonical(inputs, documents)?.0)
}

/// [`decide`], with the canonical JSON of `inputs` that the decision's `inputs` id is the
/// `sha256:` of (what a decision record stores beside the decision).
pub fn decide_canonical(
    inputs: &DecisionInputs,
    documents: &Documents,
) -> Result<(Decision, Vec<u8>), DecisionError> {
    if inputs.schema != INPUTS_SCHEMA {
        return Err(DecisionError::new(format!(
            "decision inputs: schema `{}` is not `{INPUTS_SCHEMA}`",
            inputs.schema
        )));
    }
    let plan_hash = inputs.plan.hash()?;
    if plan_hash != inputs.plan_hash {
        return Err(DecisionError::new(format!(
            "decision inputs: plan_hash {} is not the plan's hash {plan_hash}",
            inputs.plan_hash
        )));
    }
    let gates = &inputs.plan.gates;
    let order = order_gate(inputs);
    let freeze = freeze_gate(inputs)?;
    let security = security_gate(inputs, documents)?;
    let approvals = approvals_gate(inputs);
    let policy = policy_gate(inputs, documents, &security, &approvals.1)?;
    let security = security.gate.clone();
    let rejected = inputs.approvals.iter().any(|a| {
        a.verdict == "rejected" && a.roles.iter().any(|r| r == "approver" || r == "admin")
    });
    let results = vec![order, freeze, security, policy, approvals.0];
    let outcome = if rejected {
        Outcome::Rejected
    } else if results.iter().any(|g| g.status == GateStatus::Failed) {
        Outcome::Blocked
    } else if results.iter().any(|g| g.status == GateStatus::Waiting) {
        Outcome::AwaitingApproval
    } else {
        Outcome::Allowed
    };
    let overridden = results.iter().any(|g| g.status == GateStatus::Overridden);
    let inputs_bytes = canonical_bytes(inputs)?;
    let decision = Decision {
        schema: DECISION_SCHEMA.to_owned(),
        inputs: sha256_id(&inputs_bytes),
        release: inputs.plan.release.name.clone(),
        version: inputs.plan.release.version.clone(),
        environment: gates.environment.clone(),
        subjects: inputs
            .plan
            .release
            .components
            .iter()
            .map(|c| SubjectRef {
                component: c.name.clone(),
                image: c.image.clone(),
                digest: c.digest.clone(),
            })
            .collect(),
        plan_hash,
        requested_by: inputs.requested_by.clone(),
        evaluated_at: format_time(inputs.evaluated_at_ms),
        gates: results,
        outcome,
        break_glass: if overridden {
            inputs.break_glass.clone()
        } else {
            None
        },
    };
    Ok((decision, inputs_bytes))
}

/// Recomputes the canonical decision bytes from canonical input bytes: what replay and
/// evidence verification compare with the stored decision. Every document given must
/// be one the inputs name: a document nothing depends on is refused rather than
/// carried along unchecked.
pub fn recompute(inputs_json: &[u8], documents: &Documents) -> Result<Vec<u8>, DecisionError> {
    let inputs: DecisionInputs = serde_json::from_slice(inputs_json)
        .map_err(|e| DecisionError::new(format!("decision inputs: {e}")))?;
    let named = inputs.document_ids();
    if let Some(extra) = documents.keys().find(|id| !named.contains(id.as_str())) {
        return Err(DecisionError::new(format!(
            "document {extra} is not an input of the decision"
        )));
    }
    Ok(decide(&inputs, documents)?.canonical()?.0)
}

impl DecisionInputs {
    /// Every document the inputs name: scan reports, VEX documents, the policy.
    pub fn document_ids(&self) -> BTreeSet<&str> {
        self.reports
            .values()
            .flatten()
            .chain(&self.vex)
            .chain(&self.plan.gates.policy)
            .map(String::as_str)
            .collect()
    }
}

fn gate(name: &str, status: GateStatus, reason: String, details: Vec<String>) -> GateResult {
    GateResult {
        gate: name.to_owned(),
        status,
        reason,
        details,
    }
}

fn order_gate(inputs: &DecisionInputs) -> GateResult {
    match (&inputs.plan.gates.after, &inputs.order) {
        (None, _) => gate(
            "order",
            GateStatus::NotConfigured,
            "no environment comes before this one".to_owned(),
            Vec::new(),
        ),
        (Some(after), Some(OrderFact {
            deployed_as: Some(release),
            ..
        })) => gate(
            "order",
            GateStatus::Passed,
            format!("the same digests were deployed successfully to `{after}` (as {release})"),
            Vec::new(),
        ),
        (Some(after), _) => gate(
            "order",
            GateStatus::Failed,
            format!(
                "{}@{} (same digests) was never deployed successfully to `{after}`, which comes before `{}`",
                inputs.plan.release.name, inputs.plan.release.version, inputs.plan.gates.environment
            ),
            Vec::new(),
        ),
    }
}

fn freeze_gate(inputs: &DecisionInputs) -> Result<GateResult, DecisionError> {
    if inputs.plan.gates.freeze.is_empty() {
        return Ok(gate(
            "freeze",
            GateStatus::NotConfigured,
            "no freeze windows".to_owned(),
            Vec::new(),
        ));
    }
    let windows = inputs
        .plan
        .gates
        .freeze
        .iter()
        .map(|spec| {
            static WINDOWS: Memo<FreezeWindow> = Memo::new(1024);
            WINDOWS
                .get_or_try(spec, || spec.parse::<FreezeWindow>())
                .map(|window| (*window).clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(active) = active_freeze(&windows, inputs.evaluated_at_ms) else {
        return Ok(gate(
            "freeze",
            GateStatus::Passed,
            "no freeze window is active".to_owned(),
            Vec::new(),
        ));
    };
    let inside = format!(
        "inside freeze window `{}` (since {}, until {})",
        active.window,
        format_time(active.started_at_ms),
        format_time(active.ends_at_ms)
    );
    Ok(match &inputs.break_glass {
        Some(glass) if glass.admin => gate(
            "freeze",
            GateStatus::Overridden,
            format!("{inside}; break-glass by {}: {}", glass.by, glass.reason),
            Vec::new(),
        ),
        _ => gate(
            "freeze",
            GateStatus::Failed,
            format!("{inside}; an admin may pass --break-glass REASON"),
            Vec::new(),
        ),
    })
}

fn security_gate(
    inputs: &DecisionInputs,
    documents: &Documents,
) -> Result<std::sync::Arc<SecurityMemo>, DecisionError> {
    security_memo(
        &inputs.plan.release,
        &inputs.plan.gates,
        &inputs.reports,
        &inputs.vex,
        documents,
    )
}

/// One security verdict as the memo keeps it: the gate, the verdict, and the findings
/// the policy's input lists (after VEX), already in the policy engine's value form.
struct SecurityMemo {
    gate: GateResult,
    verdict: scan::SecurityVerdict,
    policy_findings: regorus::Value,
}

/// The `security` gate alone: the release's images with the reports listed for their
/// digests (`reports`, by digest) and the VEX documents `vex`, judged by the block
/// severity and `allow_unscanned` of `config`. [`decide`] calls it for a promotion; the
/// server calls it again when a report or VEX document arrives for a release that runs
/// already, so the verdict it stores is the one a promotion would get.
///
/// The result depends on nothing but those inputs, and the documents are named by
/// content id: it is computed once per process for the same inputs.
pub fn security(
    release: &ReleaseInput,
    config: &GateConfig,
    reports: &BTreeMap<String, Vec<String>>,
    vex_ids: &[String],
    documents: &Documents,
) -> Result<(GateResult, scan::SecurityVerdict), DecisionError> {
    let memo = security_memo(release, config, reports, vex_ids, documents)?;
    Ok((memo.gate.clone(), memo.verdict.clone()))
}

/// [`security`], shared: the memo's entry itself.
fn security_memo(
    release: &ReleaseInput,
    config: &GateConfig,
    reports: &BTreeMap<String, Vec<String>>,
    vex_ids: &[String],
    documents: &Documents,
) -> Result<std::sync::Arc<SecurityMemo>, DecisionError> {
    static VERDICTS: Memo<SecurityMemo> = Memo::new(1024);
    let key = serde_json::to_string(&(
        &release.components,
        &config.block_severity,
        config.allow_unscanned,
        reports,
        vex_ids,
    ))
    .map_err(|e| DecisionError::new(format!("security gate inputs: {e}")))?;
    VERDICTS.get_or_try(&key, || {
        let (gate, verdict) = security_of(release, config, reports, vex_ids, documents)?;
        let policy_findings =
            Policy::input_value(&serde_json::Value::Array(policy_findings(&verdict)))?;
        Ok(SecurityMemo {
            gate,
            verdict,
            policy_findings,
        })
    })
}

fn security_of(
    release: &ReleaseInput,
    config: &GateConfig,
    reports: &BTreeMap<String, Vec<String>>,
    vex_ids: &[String],
    documents: &Documents,
) -> Result<(GateResult, scan::SecurityVerdict), DecisionError> {
    let block = scan::parse_block_severity(&config.block_severity)?;
    let mut vex = Vec::with_capacity(vex_ids.len());
    for id in vex_ids {
        match &*parse(id, documents)? {
            ScanDocument::Vex(doc) => vex.push(doc.clone()),
            ScanDocument::Report(_) => {
                return Err(DecisionError::new(format!(
                    "document {id} is listed as VEX but is a scan report"
                )))
            }
        }
    }
    let mut images = Vec::with_capacity(release.components.len());
    for component in &release.components {
        let mut scanned = Vec::new();
        for id in reports.get(&component.digest).into_iter().flatten() {
            match &*parse(id, documents)? {
                ScanDocument::Report(report) => scanned.push(report.clone()),
                ScanDocument::Vex(_) => {
                    return Err(DecisionError::new(format!(
                        "document {id} is listed as a scan report but is a VEX document"
                    )))
                }
            }
        }
        images.push(ScannedImage {
            subject: ImageSubject {
                component: component.name.clone(),
                digest: component.digest.clone(),
                reference: component.image.clone(),
            },
            reports: scanned,
        });
    }
    let verdict = scan::evaluate(&images, &vex, block, config.allow_unscanned);
    let threshold = block.map_or_else(
        || "nothing blocks (block severity none)".to_owned(),
        |s| format!("block at {} and above", severity_name(s)),
    );
    let result = if verdict.passed {
        let findings: usize = verdict.images.iter().map(|i| i.findings.len()).sum();
        let suppressed: usize = verdict
            .images
            .iter()
            .flat_map(|i| &i.findings)
            .filter(|f| f.suppressed_by.is_some())
            .count();
        gate(
            "security",
            GateStatus::Passed,
            format!(
                "{} image{} checked, {findings} finding{} ({suppressed} suppressed by VEX); {threshold}",
                verdict.images.len(),
                if verdict.images.len() == 1 { "" } else { "s" },
                if findings == 1 { "" } else { "s" },
            ),
            verdict.reasons.clone(),
        )
    } else {
        gate(
            "security",
            GateStatus::Failed,
            verdict
                .reasons
                .first()
                .cloned()
                .unwrap_or_else(|| "blocked".to_owned()),
            verdict.reasons.clone(),
        )
    };
    Ok((result, verdict))
}

fn severity_name(severity: Severity) -> String {
    serde_json::to_value(severity)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{severity:?}").to_lowercase())
}

fn parse(id: &str, documents: &Documents) -> Result<std::sync::Arc<ScanDocument>, DecisionError> {
    let bytes = documents
        .get(id)
        .ok_or_else(|| DecisionError::new(format!("document {id} is missing")))?;
    parsed_document(id, bytes)
}

/// The approvals that count: approved, by an approver (or admin) other than the
/// requester, for the current plan, not expired; each user once.
fn approvals_gate(inputs: &DecisionInputs) -> (GateResult, Vec<ApprovalInput>) {
    let config = &inputs.plan.gates;
    let mut counted: Vec<ApprovalInput> = Vec::new();
    let mut void = Vec::new();
    for approval in inputs.approvals.iter().filter(|a| a.verdict == "approved") {
        if approval.user == inputs.requested_by
            || !approval
                .roles
                .iter()
                .any(|r| r == "approver" || r == "admin")
            || counted.iter().any(|c| c.user == approval.user)
        {
            continue;
        }
        if approval.plan_hash != inputs.plan_hash {
            void.push(format!(
                "approval by {} is void: it was given for plan {}",
                approval.user, approval.plan_hash
            ));
            continue;
        }
        if let Some(ttl) = config.approval_ttl_seconds {
            let ttl_ms = i64::try_from(ttl)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000);
            if approval.at_ms.saturating_add(ttl_ms) <= inputs.evaluated_at_ms {
                void.push(format!(
                    "approval by {} expired at {}",
                    approval.user,
                    format_time(approval.at_ms.saturating_add(ttl_ms))
                ));
                continue;
            }
        }
        counted.push(approval.clone());
    }
    // A user whose old approval is void but who approved the current plan again counts.
    void.retain(|line| {
        !counted
            .iter()
            .any(|c| line.starts_with(&format!("approval by {} ", c.user)))
    });
    let need = config.approvals_required as usize;
    let names: Vec<&str> = counted.iter().map(|a| a.user.as_str()).collect();
    let result = if need == 0 {
        gate(
            "approvals",
            GateStatus::NotConfigured,
            "no approvals required".to_owned(),
            void,
        )
    } else if counted.len() >= need {
        gate(
            "approvals",
            GateStatus::Passed,
            format!("{}/{need} approvals ({})", counted.len(), names.join(", ")),
            void,
        )
    } else {
        gate(
            "approvals",
            GateStatus::Waiting,
            format!(
                "{}/{need} approvals{}; needs {} more from approvers other than {}",
                counted.len(),
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", names.join(", "))
                },
                need - counted.len(),
                inputs.requested_by
            ),
            void,
        )
    };
    (result, counted)
}

fn policy_gate(
    inputs: &DecisionInputs,
    documents: &Documents,
    security: &SecurityMemo,
    approvals: &[ApprovalInput],
) -> Result<GateResult, DecisionError> {
    let Some(id) = &inputs.plan.gates.policy else {
        return Ok(gate(
            "policy",
            GateStatus::NotConfigured,
            "no policy".to_owned(),
            Vec::new(),
        ));
    };
    let source = documents
        .get(id)
        .ok_or_else(|| DecisionError::new(format!("policy document {id} is missing")))?;
    let source = std::str::from_utf8(source)
        .map_err(|_| DecisionError::new(format!("policy document {id} is not UTF-8")))?;
    let policy = compiled_policy(id, source)?;
    // The input as `policy_input` gives it, with the findings from the memo: they are
    // the largest part, and the same for every promotion of the same images and reports.
    let mut input = Policy::input_value(&policy_input_without_findings(
        inputs,
        &security.verdict,
        approvals,
    ))?;
    input
        .as_object_mut()
        .map_err(|e| DecisionError::new(format!("policy input: {e}")))?
        .insert(
            regorus::Value::from("findings"),
            security.policy_findings.clone(),
        );
    let outcome = policy.evaluate_value(input, inputs.evaluated_at_ms)?;
    Ok(if outcome.allowed {
        gate(
            "policy",
            GateStatus::Passed,
            format!("policy {id} allows it"),
            Vec::new(),
        )
    } else {
        gate(
            "policy",
            GateStatus::Failed,
            format!(
                "policy {} denies it: {}",
                policy.package(),
                outcome.reasons.join("; ")
            ),
            outcome.reasons,
        )
    })
}

/// Policies compiled once per process, by document id (the sha256 of the source, so an
/// entry can never be stale).
fn compiled_policy(id: &str, source: &str) -> Result<std::sync::Arc<Policy>, DecisionError> {
    static POLICIES: Memo<Policy> = Memo::new(64);
    POLICIES.get_or_try(id, || {
        let policy = Policy::compile(source)?;
        if policy.sha256() != id {
            return Err(DecisionError::new(format!(
                "policy document {id} holds a source whose id is {}",
                policy.sha256()
            )));
        }
        Ok(policy)
    })
}

/// Scan documents parsed once per process, by document id (content-addressed: the id
/// is checked against the bytes once, when the document is first parsed).
fn parsed_document(id: &str, bytes: &[u8]) -> Result<std::sync::Arc<ScanDocument>, DecisionError> {
    static DOCUMENTS: Memo<ScanDocument> = Memo::new(4096);
    DOCUMENTS.get_or_try(id, || {
        if sha256_id(bytes) != id {
            return Err(DecisionError::new(format!(
                "document {id} holds content whose id is {}",
                sha256_id(bytes)
            )));
        }
        scan::parse_document(bytes).map_err(|e| DecisionError::new(format!("document {id}: {e}")))
    })
}

/// The policy's `input` document (docs/governance.md describes it).
pub fn policy_input(
    inputs: &DecisionInputs,
    verdict: &scan::SecurityVerdict,
    approvals: &[ApprovalInput],
) -> serde_json::Value {
    let mut input = policy_input_without_findings(inputs, verdict, approvals);
    input["findings"] = serde_json::Value::Array(policy_findings(verdict));
    input
}

/// `input.findings`: every finding no VEX statement suppresses.
fn policy_findings(verdict: &scan::SecurityVerdict) -> Vec<serde_json::Value> {
    verdict
        .images
        .iter()
        .flat_map(|image| {
            image
                .findings
                .iter()
                .filter(|f| f.suppressed_by.is_none())
                .map(move |f| {
                    serde_json::json!({
                        "component": image.component,
                        "digest": image.digest,
                        "id": f.finding.vulnerability,
                        "severity": severity_name(f.finding.severity),
                        "package": f.finding.package,
                        "installed_version": f.finding.installed_version,
                        "fixed_version": f.finding.fixed_version,
                    })
                })
        })
        .collect()
}

/// [`policy_input`] but `findings`.
fn policy_input_without_findings(
    inputs: &DecisionInputs,
    verdict: &scan::SecurityVerdict,
    approvals: &[ApprovalInput],
) -> serde_json::Value {
    let plan = &inputs.plan;
    serde_json::json!({
        "release": {
            "name": plan.release.name,
            "version": plan.release.version,
            "components": plan.release.components,
            "digests": plan.release.components.iter().map(|c| c.digest.clone()).collect::<Vec<_>>(),
        },
        "environment": {
            "name": plan.gates.environment,
            "after": plan.gates.after,
            "approvals_required": plan.gates.approvals_required,
            "freeze": plan.gates.freeze,
            "block_severity": plan.gates.block_severity,
            "allow_unscanned": plan.gates.allow_unscanned,
        },
        "targets": plan.targets,
        "unscanned": verdict.images.iter().filter(|i| !i.scanned).map(|i| i.component.clone()).collect::<Vec<_>>(),
        "approvals": approvals.iter().map(|a| serde_json::json!({"user": a.user, "at": format_time(a.at_ms), "comment": a.comment})).collect::<Vec<_>>(),
        "requester": inputs.requested_by,
        "break_glass": inputs.break_glass,
        "time": format_time(inputs.evaluated_at_ms),
        "time_ms": inputs.evaluated_at_ms,
    })
}
