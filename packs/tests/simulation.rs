//! Simulation semantics: what is decided now, what is left for run time, what is skipped.

use serde_json::{json, Map, Value};
use stella_packs::simulate::{
    ApprovalDecision, SimulationContext, SimulationStatus, SimulationStep,
};
use stella_packs::{parse_manifest, plan_text, simulate};

fn pack(steps: &str) -> String {
    format!(
        "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata: {{name: t, version: '1'}}\nspec:\n  inputs: [{{name: env, type: string, default: dev}}]\n  approvals: [{{id: ok}}]\n  steps:\n{steps}"
    )
}

fn sim(steps: &str, known: &SimulationContext) -> Vec<SimulationStep> {
    let plan = plan_text(&pack(steps), &Map::new()).unwrap_or_else(|e| panic!("{e:?}"));
    simulate(&plan, known).steps
}

fn status(s: &SimulationStep) -> (SimulationStatus, Option<&str>) {
    (s.status, s.status_reason.as_deref())
}

const SCAN_THEN_ROUTE: &str = "    - {id: scan, run: {uses: builtin:scanner, with: {target: x}}}\n    - id: route\n      conditional:\n        branches:\n          - {condition: 'steps.scan.outputs.critical > 0', steps: [{id: hold, run: {uses: builtin:wait, with: {seconds: 1}}}]}\n        else: [{id: ship, when: 'steps.scan.outputs.critical == 0', run: {uses: builtin:deploy}}]\n";

#[test]
fn conditions_on_unknown_outputs_are_decided_at_run_time() {
    let steps = sim(SCAN_THEN_ROUTE, &SimulationContext::default());
    assert_eq!(
        status(&steps[1]),
        (
            SimulationStatus::WillBranch,
            Some("branch decided at run time")
        )
    );
    assert_eq!(
        status(&steps[1].children[0]),
        (SimulationStatus::Pending, None)
    );
    assert_eq!(
        status(&steps[1].children[1]),
        (
            SimulationStatus::Pending,
            Some("condition decided at run time")
        )
    );
}

#[test]
fn known_outputs_decide_conditions() {
    let mut known = SimulationContext::default();
    known.step_outputs.insert(
        "scan".into(),
        json!({"critical": 0})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let steps = sim(SCAN_THEN_ROUTE, &known);
    assert_eq!(
        status(&steps[1]),
        (SimulationStatus::WillBranch, Some("branch: else"))
    );
    assert_eq!(
        status(&steps[1].children[0]),
        (SimulationStatus::Skipped, Some("branch-not-taken"))
    );
    assert_eq!(
        status(&steps[1].children[1]),
        (SimulationStatus::Pending, None)
    );
}

#[test]
fn iterations_are_counted_when_known() {
    let steps = sim(
        "    - {id: none, map: {staticItems: [], step: {id: a, run: {uses: builtin:build}}}}\n    - {id: three, loop: {range: {start: 10, end: 0, step: -4}, steps: [{id: b, run: {uses: builtin:build}}]}}\n    - {id: later, map: {items: '{{ steps.three.outputs.list }}', step: {id: c, run: {uses: builtin:build}}}}\n",
        &SimulationContext::default(),
    );
    assert_eq!(
        status(&steps[0]),
        (SimulationStatus::Skipped, Some("no items"))
    );
    assert_eq!(
        status(&steps[0].children[0]),
        (SimulationStatus::Skipped, Some("no items"))
    );
    assert_eq!(
        status(&steps[1]),
        (SimulationStatus::WillIterate, Some("iterations: 3"))
    );
    assert_eq!(steps[1].children[0].id, "three[*].b");
    assert_eq!(steps[1].children[0].template_id, "b");
    assert_eq!(
        status(&steps[2]),
        (
            SimulationStatus::WillIterate,
            Some("iterations decided at run time")
        )
    );
    let info = serde_json::to_value(&steps[2].loop_info).expect("serializes");
    assert_eq!(
        info,
        json!({"itemsExpression": "{{ steps.three.outputs.list }}", "iterator": "item", "index": "index", "maxIterations": 100, "aggregationMode": "collect"})
    );
}

#[test]
fn a_rejected_gate_inside_a_block_blocks_what_follows() {
    let steps = "    - id: fan\n      parallel:\n        steps:\n          - {id: gate, gate: {approval: {id: ok}}}\n    - {id: after, run: {uses: builtin:deploy}}\n";
    let mut known = SimulationContext::default();
    known
        .approvals
        .insert("ok".into(), ApprovalDecision::Expired);
    let got = sim(steps, &known);
    assert_eq!(
        status(&got[0].children[0]),
        (SimulationStatus::Skipped, Some("approval-rejected"))
    );
    assert_eq!(
        status(&got[1]),
        (
            SimulationStatus::Skipped,
            Some("blocked: approval of `gate` was not granted")
        )
    );
}

#[test]
fn disabled_steps_skip_their_children() {
    let got = sim(
        "    - id: fan\n      when: \"{{ inputs.env == 'prod' }}\"\n      parallel: {maxParallel: 3, steps: [{id: a, run: {uses: builtin:build}}]}\n",
        &SimulationContext::default(),
    );
    assert!(!got[0].enabled);
    assert_eq!(
        status(&got[0]),
        (SimulationStatus::Skipped, Some("condition-false"))
    );
    assert_eq!(
        status(&got[0].children[0]),
        (SimulationStatus::Skipped, Some("parent skipped"))
    );
    assert_eq!(got[0].max_parallel, Some(3));
}

#[test]
fn manifests_read_as_json_and_yaml_alike() {
    let yaml = pack("    - {id: a, run: {uses: builtin:build}}\n");
    let value: Value = serde_yaml_ng::from_str(&yaml).expect("YAML");
    let from_json = parse_manifest(&serde_json::to_string(&value).expect("JSON")).expect("parses");
    assert_eq!(parse_manifest(&yaml).expect("parses"), from_json);
    assert_eq!(from_json.metadata.version, "1");
}
