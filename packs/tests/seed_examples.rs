//! Every manifest example of the TaskRunner API contract (seed 004) parses, validates,
//! plans and simulates, and the simulation matches the contract's example response.

use serde_json::{json, Map, Value};
use stella_packs::simulate::{ApprovalDecision, SimulationContext};
use stella_packs::{parse_manifest, plan_text, simulate};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn json_fixture(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).expect("fixture is JSON")
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("expected an object, found {other}"),
    }
}

#[test]
fn scan_deploy_simulates_as_the_contract_example() {
    let inputs = object(json_fixture("scan-deploy.inputs.json"));
    let plan = plan_text(&fixture("scan-deploy.yaml"), &inputs).expect("plans");
    let sim = simulate(&plan, &SimulationContext::default());
    let mut got = serde_json::to_value(&sim).expect("serializes");
    let mut want = json_fixture("scan-deploy.simulation.json");
    // The contract's hash is a placeholder; ours has the contract's pattern.
    let hash = got["planHash"].as_str().expect("hash").to_owned();
    assert!(
        hash.starts_with("sha256:")
            && hash.len() == 71
            && hash[7..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{hash}"
    );
    got["planHash"] = Value::Null;
    want["planHash"] = Value::Null;
    assert_eq!(got, want);
    // The template on inputs is resolved into the plan.
    let step = serde_json::to_value(&plan.plan.steps[0]).expect("serializes");
    assert_eq!(
        step["with"],
        json!({"target": "registry.example.com/app:v1.2.3"})
    );
}

#[test]
fn deploy_app_waits_for_its_approval() {
    let manifest = parse_manifest(&fixture("deploy-app.yaml")).expect("parses");
    assert_eq!(manifest.approvals[0].grants, ["packs.approve"]);
    let plan = stella_packs::compile(&manifest, &Map::new()).expect("plans");
    let sim = simulate(&plan, &SimulationContext::default());
    let got = serde_json::to_value(&sim).expect("serializes");
    assert_eq!(got["hasPendingApprovals"], json!(true));
    assert_eq!(
        got["steps"],
        json!([
            {"id": "build", "templateId": "build", "kind": "Run", "enabled": true, "status": "Pending", "uses": "builtin:build", "children": []},
            {"id": "approval", "templateId": "approval", "kind": "GateApproval", "enabled": true, "status": "RequiresApproval",
             "statusReason": "awaiting-approval", "approvalId": "security-review",
             "gateMessage": "Security review required before deploy", "children": []},
            {"id": "deploy", "templateId": "deploy", "kind": "Run", "enabled": true, "status": "Pending", "uses": "builtin:deploy", "children": []}
        ])
    );

    let mut known = SimulationContext::default();
    known
        .approvals
        .insert("security-review".into(), ApprovalDecision::Approved);
    let sim = simulate(&plan, &known);
    assert!(!sim.has_pending_approvals);
    let mut known = SimulationContext::default();
    known
        .approvals
        .insert("security-review".into(), ApprovalDecision::Rejected);
    let got = serde_json::to_value(simulate(&plan, &known)).expect("serializes");
    assert_eq!(got["steps"][1]["status"], json!("Skipped"));
    assert_eq!(got["steps"][2]["status"], json!("Skipped"));
    assert_eq!(
        got["steps"][2]["statusReason"],
        json!("blocked: approval of `approval` was not granted")
    );
}

#[test]
fn scan_deploy_without_its_required_input_is_a_plan_error() {
    let err = plan_text(&fixture("scan-deploy.yaml"), &Map::new()).expect_err("fails");
    assert_eq!(
        serde_json::to_value(&err).expect("serializes"),
        json!({"errors": [{"path": "$.inputs.target", "message": "required input `target` is missing"}]})
    );
}

#[test]
fn deploy_app_run_state_steps_match_the_contract_example() {
    use stella_packs::schedule::{run_state_steps, schedule, StepStatus};
    use stella_packs::{RunState, StepState};

    let plan = plan_text(&fixture("deploy-app.yaml"), &Map::new()).expect("plans");
    let mut run = RunState::default();
    // 2025-12-06T10:02:00Z: build succeeded on its first attempt.
    run.steps.insert(
        "build".into(),
        StepState {
            status: StepStatus::Succeeded,
            attempts: 1,
            last_transition_ms: Some(1_765_015_320_000),
        },
    );
    let next = schedule(&plan, &run, 1_765_015_321_000);
    for t in &next.transitions {
        run.steps.insert(
            t.key.clone(),
            StepState {
                status: t.to,
                attempts: 0,
                last_transition_ms: None,
            },
        );
    }
    let got = serde_json::to_string(&run_state_steps(&plan, &run))
        .expect("serializes")
        .replace(".000Z", "Z");
    let got: Value = serde_json::from_str(&got).expect("JSON");
    assert_eq!(got, json_fixture("deploy-app.run-state.json")["steps"]);
}
