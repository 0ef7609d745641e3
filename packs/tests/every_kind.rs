//! A pack that uses every step kind (`fixtures/more/release-train.yaml`): it plans,
//! simulates to a pinned response, and runs to the end under the scheduler.

use serde_json::{json, Map, Value};
use stella_packs::schedule::{RunStatus, StepStatus};
use stella_packs::simulate::{ApprovalDecision, SimulationContext};
use stella_packs::{plan_text, schedule, simulate, RunState, StepState};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn inputs() -> Map<String, Value> {
    serde_json::from_str(&fixture("more/release-train.inputs.json"))
        .expect("inputs are a JSON object")
}

#[test]
fn the_release_train_simulates_to_its_pinned_response() {
    let plan = plan_text(&fixture("more/release-train.yaml"), &inputs()).expect("plans");
    let got =
        serde_json::to_value(simulate(&plan, &SimulationContext::default())).expect("serializes");
    if std::env::var_os("STELLA_PACKS_BLESS").is_some() {
        let path = format!(
            "{}/tests/fixtures/more/release-train.simulation.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = serde_json::to_string_pretty(&got).expect("prints") + "\n";
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let want: Value =
        serde_json::from_str(&fixture("more/release-train.simulation.json")).expect("JSON");
    assert_eq!(
        got,
        want,
        "got:\n{}",
        serde_json::to_string_pretty(&got).unwrap_or_default()
    );
}

#[test]
fn the_release_train_plan_resolves_what_the_inputs_decide() {
    let plan = plan_text(&fixture("more/release-train.yaml"), &inputs()).expect("plans");
    let json = serde_json::to_value(&plan.plan).expect("serializes");
    assert_eq!(
        json["pack"],
        json!({"name": "release-train", "version": "3", "description": "Build, scan, gate and roll out a release"})
    );
    assert_eq!(
        json["inputs"]["regions"],
        json!(["eu-west", "us-east"]),
        "defaults applied"
    );
    assert_eq!(
        json["steps"][0]["steps"][0]["with"]["image"],
        json!("registry.example.com/api:1.4.0")
    );
    assert_eq!(
        json["steps"][1]["items"],
        json!([
            "registry.example.com/api:1.4.0",
            "registry.example.com/web:1.4.0"
        ])
    );
    assert_eq!(
        json["steps"][2]["branches"][0]["steps"][1]["message"],
        json!("Release prod")
    );
    assert_eq!(
        json["steps"][3]["steps"][0]["with"]["environment"],
        json!("{{ inputs.environment }}-{{ region }}"),
        "reads an item: left for run time"
    );
    assert_eq!(json["steps"][5]["enabled"], json!(false));
    // A plan read back from storage is the same plan, with the same hash.
    let back: stella_packs::CompiledPlan =
        serde_json::from_str(&serde_json::to_string(&plan).expect("serializes"))
            .expect("reads back");
    assert_eq!(back, plan);
    assert!(back.verify());
    let mut tampered = back;
    tampered
        .plan
        .inputs
        .insert("environment".into(), json!("staging"));
    assert!(!tampered.verify());
}

#[test]
fn the_release_train_runs_to_the_end() {
    let plan = plan_text(&fixture("more/release-train.yaml"), &inputs()).expect("plans");
    let mut run = RunState::default();
    let mut order = Vec::new();
    let mut now = 0;
    for _ in 0..100 {
        let s = schedule(&plan, &run, now);
        for t in &s.transitions {
            let state = run.steps.entry(t.key.clone()).or_insert(StepState {
                status: StepStatus::Pending,
                attempts: 0,
                last_transition_ms: None,
            });
            state.status = t.to;
        }
        if s.run_status == RunStatus::Waiting {
            // Grant whatever the gates wait for.
            for w in &s.waiting {
                run.approvals
                    .insert(w.approval_id.clone(), ApprovalDecision::Approved);
            }
            continue;
        }
        if s.dispatch.is_empty() && s.transitions.is_empty() {
            assert_eq!(s.run_status, RunStatus::Succeeded);
            break;
        }
        now += 1_000;
        for d in &s.dispatch {
            order.push(d.key.clone());
            let outputs = match d.key.as_str() {
                k if k.ends_with(".deploy") => {
                    json!({"url": format!("https://{}.example.com", d.with["environment"].as_str().unwrap_or("?"))})
                }
                k if k.ends_with(".scan") => json!({"critical": 0}),
                _ => json!({}),
            };
            run.steps.insert(
                d.key.clone(),
                StepState {
                    status: StepStatus::Succeeded,
                    attempts: d.attempt,
                    last_transition_ms: Some(now),
                },
            );
            if let Value::Object(o) = outputs {
                run.outputs.insert(d.key.clone(), o);
            }
        }
    }
    assert_eq!(
        order,
        [
            "build-api",
            "build-web",
            "unit-tests",
            "scan-all[0].scan",
            "scan-all[1].scan",
            "prod-policy",
            "rollout[0].deploy",
            "rollout[0].health",
            "rollout[1].deploy",
            "rollout[1].health",
            "smoke",
        ]
    );
    assert_eq!(run.steps["settle"].status, StepStatus::Skipped);
    assert_eq!(run.steps["staging-policy"].status, StepStatus::Skipped);
    assert_eq!(run.steps["open-ticket"].status, StepStatus::Skipped);
    assert_eq!(run.steps["release-approval"].status, StepStatus::Succeeded);
    assert_eq!(run.steps["rollout"].status, StepStatus::Succeeded);
}
