//! The decision over its inputs: every gate both ways, outcome precedence, the plan
//! hash binding approvals, and determinism.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeMap;

use stella_decision::canonical::canonical_bytes;
use stella_decision::gates::{
    decide, recompute, ApprovalInput, BreakGlass, ComponentInput, DecisionInputs, Documents,
    GateConfig, GateStatus, OrderFact, Outcome, Plan, ReleaseInput, TargetInput, WorkflowInput,
    INPUTS_SCHEMA, PLAN_SCHEMA,
};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// 2026-12-02T12:00:00Z, a Wednesday.
const NOON: i64 = 1_796_212_800_000;

fn plan() -> Plan {
    Plan {
        schema: PLAN_SCHEMA.to_owned(),
        release: ReleaseInput {
            name: "web".to_owned(),
            version: "1".to_owned(),
            components: vec![ComponentInput {
                name: "web".to_owned(),
                image: format!("registry.example/web@{DIGEST}"),
                digest: DIGEST.to_owned(),
            }],
        },
        gates: GateConfig {
            environment: "prod".to_owned(),
            after: None,
            approvals_required: 0,
            approval_ttl_seconds: None,
            freeze: Vec::new(),
            block_severity: "critical".to_owned(),
            allow_unscanned: true,
            policy: None,
        },
        targets: vec![TargetInput {
            name: "web-1".to_owned(),
            kind: "docker".to_owned(),
            agent: "host-a".to_owned(),
            settings: BTreeMap::from([("ports".to_owned(), "8080:80".to_owned())]),
        }],
        secrets: BTreeMap::new(),
        workflow: None,
        rollout: None,
    }
}

fn inputs(plan: Plan) -> DecisionInputs {
    DecisionInputs {
        schema: INPUTS_SCHEMA.to_owned(),
        evaluated_at_ms: NOON,
        requested_by: "alice".to_owned(),
        plan_hash: plan.hash().unwrap(),
        plan,
        order: None,
        approvals: Vec::new(),
        break_glass: None,
        reports: BTreeMap::new(),
        vex: Vec::new(),
    }
}

fn approval(user: &str, roles: &[&str], plan_hash: &str, at_ms: i64) -> ApprovalInput {
    ApprovalInput {
        user: user.to_owned(),
        verdict: "approved".to_owned(),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        plan_hash: plan_hash.to_owned(),
        at_ms,
        comment: None,
    }
}

fn status(inputs: &DecisionInputs, gate: &str) -> (GateStatus, String) {
    let decision = decide(inputs, &Documents::new()).unwrap();
    let gate = decision.gate(gate).unwrap();
    (gate.status, gate.reason.clone())
}

#[test]
fn nothing_configured_is_allowed_and_every_gate_is_reported() {
    let decision = decide(&inputs(plan()), &Documents::new()).unwrap();
    assert_eq!(decision.outcome, Outcome::Allowed);
    let names: Vec<&str> = decision.gates.iter().map(|g| g.gate.as_str()).collect();
    assert_eq!(
        names,
        ["order", "freeze", "security", "policy", "approvals"]
    );
}

#[test]
fn order_needs_the_same_digests_deployed_before() {
    let mut plan = plan();
    plan.gates.after = Some("stage".to_owned());
    let mut missing = inputs(plan);
    missing.order = Some(OrderFact {
        environment: "stage".to_owned(),
        deployed_as: None,
    });
    let (gate, reason) = status(&missing, "order");
    assert_eq!(gate, GateStatus::Failed);
    assert!(
        reason.contains("never deployed successfully to `stage`"),
        "{reason}"
    );
    assert_eq!(
        decide(&missing, &Documents::new()).unwrap().outcome,
        Outcome::Blocked
    );

    let mut present = missing;
    present.order = Some(OrderFact {
        environment: "stage".to_owned(),
        deployed_as: Some("web@1".to_owned()),
    });
    assert_eq!(status(&present, "order").0, GateStatus::Passed);
}

#[test]
fn freeze_blocks_inside_a_window_and_only_an_admin_breaks_the_glass() {
    let mut plan = plan();
    // Every day from 11:00 UTC for two hours: noon is inside, until 13:00.
    plan.gates.freeze = vec!["0 11 * * */2h".to_owned()];
    let frozen = inputs(plan);
    let (gate, reason) = status(&frozen, "freeze");
    assert_eq!(gate, GateStatus::Failed);
    assert!(reason.contains("0 11 * * */2h"), "{reason}");
    assert!(
        reason.contains("until 2026-12-02T13:00:00.000Z"),
        "{reason}"
    );

    let mut not_admin = frozen.clone();
    not_admin.break_glass = Some(BreakGlass {
        by: "olivia".to_owned(),
        reason: "hotfix".to_owned(),
        admin: false,
    });
    assert_eq!(status(&not_admin, "freeze").0, GateStatus::Failed);

    let mut admin = frozen.clone();
    admin.break_glass = Some(BreakGlass {
        by: "root".to_owned(),
        reason: "CVE hotfix".to_owned(),
        admin: true,
    });
    let decision = decide(&admin, &Documents::new()).unwrap();
    assert_eq!(decision.outcome, Outcome::Allowed);
    assert_eq!(
        decision.gate("freeze").unwrap().status,
        GateStatus::Overridden
    );
    assert_eq!(decision.break_glass.as_ref().unwrap().reason, "CVE hotfix");

    let mut later = frozen;
    later.evaluated_at_ms = NOON + 2 * 3_600_000;
    assert_eq!(status(&later, "freeze").0, GateStatus::Passed);
}

#[test]
fn approvals_count_distinct_approvers_other_than_the_requester_for_this_plan() {
    let mut plan = plan();
    plan.gates.approvals_required = 2;
    let mut waiting = inputs(plan);
    let hash = waiting.plan_hash.clone();
    waiting.approvals = vec![
        approval("alice", &["admin"], &hash, NOON - 10),
        approval("bob", &["approver"], &hash, NOON - 9),
        approval("bob", &["approver"], &hash, NOON - 8),
        approval("olivia", &["operator"], &hash, NOON - 7),
    ];
    let decision = decide(&waiting, &Documents::new()).unwrap();
    assert_eq!(decision.outcome, Outcome::AwaitingApproval);
    let gate = decision.gate("approvals").unwrap();
    assert!(
        gate.reason.starts_with("1/2 approvals (bob)"),
        "{}",
        gate.reason
    );

    let mut enough = waiting.clone();
    enough
        .approvals
        .push(approval("carol", &["approver"], &hash, NOON - 5));
    assert_eq!(
        decide(&enough, &Documents::new()).unwrap().outcome,
        Outcome::Allowed
    );

    // Given for another plan: void, and said.
    let mut stale = waiting;
    stale
        .approvals
        .push(approval("carol", &["approver"], "sha256:old", NOON - 5));
    let decision = decide(&stale, &Documents::new()).unwrap();
    assert_eq!(decision.outcome, Outcome::AwaitingApproval);
    let gate = decision.gate("approvals").unwrap();
    assert!(
        gate.details
            .iter()
            .any(|d| d.contains("approval by carol is void")),
        "{:?}",
        gate.details
    );
}

#[test]
fn approvals_expire_with_their_ttl() {
    let mut plan = plan();
    plan.gates.approvals_required = 1;
    plan.gates.approval_ttl_seconds = Some(60);
    let mut fresh = inputs(plan);
    let hash = fresh.plan_hash.clone();
    fresh.approvals = vec![approval("bob", &["approver"], &hash, NOON - 59_000)];
    assert_eq!(
        decide(&fresh, &Documents::new()).unwrap().outcome,
        Outcome::Allowed
    );
    let mut expired = fresh;
    expired.approvals[0].at_ms = NOON - 61_000;
    let decision = decide(&expired, &Documents::new()).unwrap();
    assert_eq!(decision.outcome, Outcome::AwaitingApproval);
    assert!(decision.gate("approvals").unwrap().details[0].contains("expired"));
}

#[test]
fn a_rejection_ends_it_and_a_failed_gate_outranks_waiting() {
    let mut plan = plan();
    plan.gates.approvals_required = 1;
    let mut rejected = inputs(plan.clone());
    let hash = rejected.plan_hash.clone();
    let mut no = approval("bob", &["approver"], &hash, NOON - 1);
    no.verdict = "rejected".to_owned();
    rejected.approvals = vec![no];
    assert_eq!(
        decide(&rejected, &Documents::new()).unwrap().outcome,
        Outcome::Rejected
    );

    plan.gates.allow_unscanned = false;
    let blocked = inputs(plan);
    let decision = decide(&blocked, &Documents::new()).unwrap();
    assert_eq!(decision.outcome, Outcome::Blocked);
    let security = decision.gate("security").unwrap();
    assert!(
        security.reason.starts_with("no verdict"),
        "{}",
        security.reason
    );
}

#[test]
fn the_plan_hash_changes_with_settings_and_says_what_changed() {
    let before = plan();
    let mut after = plan();
    after.targets[0]
        .settings
        .insert("ports".to_owned(), "9090:80".to_owned());
    assert_ne!(before.hash().unwrap(), after.hash().unwrap());
    assert_eq!(
        after.changes_since(&before),
        ["target `web-1` settings changed"]
    );
    let mut gates = plan();
    gates.gates.freeze = vec!["0 18 * * FRI/64h".to_owned()];
    assert_eq!(
        gates.changes_since(&before),
        ["the gate configuration of `prod` changed (freeze windows)"]
    );
}

#[test]
fn the_same_inputs_give_the_same_bytes_and_inputs_must_match_their_plan() {
    let one = decide(&inputs(plan()), &Documents::new())
        .unwrap()
        .canonical()
        .unwrap();
    let two = decide(&inputs(plan()), &Documents::new())
        .unwrap()
        .canonical()
        .unwrap();
    assert_eq!(one, two);
    let json = canonical_bytes(&inputs(plan())).unwrap();
    assert_eq!(recompute(&json, &Documents::new()).unwrap(), one.0);

    // A document nothing names is refused, not carried along.
    let extra = Documents::from([("sha256:abc".to_owned(), std::sync::Arc::from(&b"{}"[..]))]);
    let error = recompute(&json, &extra).unwrap_err();
    assert!(error.0.contains("not an input"), "{error}");

    let mut lying = inputs(plan());
    lying.plan_hash = "sha256:0".to_owned();
    assert!(decide(&lying, &Documents::new()).is_err());
}

/// A workflow compiled for `plan`: its plan hash is what approvals and the decision
/// bind, and it covers the deployment plan, so a change to either is a new hash.
#[test]
fn a_workflow_plan_hash_binds_the_deployment_plan_and_the_steps() {
    let bare = plan();
    let deployment = bare.hash().unwrap();
    let compiled = |bound: &str, script: &str| {
        serde_json::json!({
            "schema": "stella.pack-plan.v1",
            "inputs": {"promotion": {"deploymentPlanHash": bound, "release": "web"}},
            "steps": [{"id": "verify", "kind": "Run", "uses": "builtin:script", "with": {"script": script}}]
        })
    };
    let with = |plan_json: serde_json::Value| Plan {
        workflow: Some(WorkflowInput {
            id: "sha256:manifest".to_owned(),
            plan: plan_json,
        }),
        ..plan()
    };
    let flowed = with(compiled(&deployment, "true"));
    assert_eq!(flowed.deployment_hash().unwrap(), deployment);
    let hash = flowed.hash().unwrap();
    assert_ne!(hash, deployment);
    // The workflow's own plan hash, as the task runner computes it.
    let expected =
        stella_decision::sha256_id(&canonical_bytes(&compiled(&deployment, "true")).unwrap());
    assert_eq!(hash, expected);
    assert_ne!(with(compiled(&deployment, "false")).hash().unwrap(), hash);
    let error = with(compiled("sha256:other", "true")).hash().unwrap_err();
    assert!(
        error
            .to_string()
            .contains("binds deployment plan sha256:other"),
        "{error}"
    );
    assert_eq!(
        flowed.changes_since(&bare),
        vec!["a promotion workflow was set".to_owned()]
    );
    // Inputs bound to the workflow hash decide; the decision carries it.
    let decision = decide(&inputs(flowed), &BTreeMap::new()).unwrap();
    assert_eq!(decision.plan_hash, hash);
}

#[test]
fn the_policy_sees_exactly_the_documented_input() {
    // A policy that denies with its whole input as the reason: what `decide` hands the
    // engine (the findings shared from the security memo) must be what `policy_input`
    // documents, for a release with a Trivy report and a VEX document.
    let policy =
        "package stella.echo\n\ndeny contains msg if {\n    msg := json.marshal(input)\n}\n";
    let policy_id = stella_decision::sha256_id(policy.as_bytes());
    let trivy = include_bytes!("fixtures/scan/trivy-0.55-web-debian12.json");
    let vex = include_bytes!("fixtures/scan/vex-vexctl-0.2-web.json");
    let (trivy_id, vex_id) = (
        stella_decision::sha256_id(trivy),
        stella_decision::sha256_id(vex),
    );
    let documents: Documents = [
        (policy_id.clone(), policy.as_bytes()),
        (trivy_id.clone(), &trivy[..]),
        (vex_id.clone(), &vex[..]),
    ]
    .into_iter()
    .map(|(id, bytes)| (id, std::sync::Arc::from(bytes)))
    .collect();
    let mut plan = plan();
    plan.gates.policy = Some(policy_id);
    plan.gates.block_severity = "none".to_owned();
    let mut inputs = inputs(plan);
    inputs.reports = BTreeMap::from([(DIGEST.to_owned(), vec![trivy_id])]);
    inputs.vex = vec![vex_id];

    let decision = decide(&inputs, &documents).unwrap();
    let seen = &decision.gate("policy").unwrap().details;
    assert_eq!(seen.len(), 1, "one reason: the input");
    let seen: serde_json::Value = serde_json::from_str(&seen[0]).unwrap();

    let (_, verdict) = stella_decision::gates::security(
        &inputs.plan.release,
        &inputs.plan.gates,
        &inputs.reports,
        &inputs.vex,
        &documents,
    )
    .unwrap();
    let documented = stella_decision::gates::policy_input(&inputs, &verdict, &[]);
    let findings = documented["findings"].as_array().unwrap();
    assert!(
        !findings.is_empty(),
        "the report's findings are in the input"
    );
    assert_eq!(seen, documented);
}
