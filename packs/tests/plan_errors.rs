//! Plan errors: every problem at once, each with its JSON path, shaped as the TaskRunner
//! `PlanErrorResponse`.

use serde_json::{json, Map, Value};
use stella_packs::{parse_manifest, plan_text, PlanErrors};

fn errors(yaml: &str, inputs: &Value) -> Vec<(String, String)> {
    let inputs: Map<String, Value> = inputs.as_object().cloned().unwrap_or_default();
    let err: PlanErrors = plan_text(yaml, &inputs).expect_err("the manifest has errors");
    err.errors
        .into_iter()
        .map(|e| (e.path, e.message))
        .collect()
}

fn show(errors: &[(String, String)]) -> String {
    errors.iter().map(|(p, m)| format!("{p}: {m}\n")).collect()
}

#[test]
fn structural_errors_are_all_reported() {
    let yaml = r#"
apiVersion: stellaops.io/pack.v2
kind: TaskPack
metadata: {name: broken}
spec:
  inputs:
    - {name: target, type: strin}
  sandbox: {mode: sealed, egressAllowlist: [example.com], cpuLimitMillicores: 0}
  failure: {maxAttempts: 0}
  colour: blue
  steps:
    - {id: a, run: {uses: builtin:build}, gate: {approval: {id: x}}}
    - {id: b}
    - {run: {uses: builtin:build}}
    - id: fan
      parallel: {maxParallel: 0, steps: []}
    - id: l
      loop: {items: "{{ inputs.x }}", range: {end: 3}, iterator: "1x", steps: [{id: s, run: {uses: builtin:build, with: [1]}}]}
    - id: p
      gate: {policy: {id: pol, failureAction: branch, overrideApproval: o}}
"#;
    let got = errors(yaml, &json!({}));
    let want = [
        ("$.apiVersion", "unsupported apiVersion `stellaops.io/pack.v2`; expected `stellaops.io/pack.v1`"),
        ("$.metadata.version", "is required"),
        ("$.spec.colour", "unknown field `colour`; expected one of: inputs, sandbox, slo, approvals, failure, outputs, steps"),
        ("$.spec.failure.maxAttempts", "expected an integer of at least 1, found 0"),
        ("$.spec.inputs[0].type", "unknown input type `strin`; expected one of: string, number, integer, boolean, object, array"),
        ("$.spec.sandbox.cpuLimitMillicores", "expected an integer of at least 1, found 0"),
        ("$.spec.sandbox.egressAllowlist", "must be empty in a sealed sandbox; use mode restricted to allow egress"),
        ("$.spec.steps[0]", "a step has exactly one of run, gate, parallel, map, loop, conditional; found run, gate"),
        ("$.spec.steps[1]", "a step needs one of: run, gate, parallel, map, loop, conditional"),
        ("$.spec.steps[2].id", "is required"),
        ("$.spec.steps[3].parallel.maxParallel", "must be at least 1"),
        ("$.spec.steps[3].parallel.steps", "must hold at least one step"),
        ("$.spec.steps[4].loop", "exactly one of items, range, staticItems is required"),
        ("$.spec.steps[4].loop.iterator", "`1x` is not a variable name (a letter or `_`, then letters, digits or `_`)"),
        ("$.spec.steps[4].loop.steps[0].run.with", "expected an object, found an array"),
        ("$.spec.steps[5].gate.policy.onFailure", "failure action branch needs at least one onFailure step"),
        ("$.spec.steps[5].gate.policy.overrideApproval", "only meaningful with failure action requestOverride"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(got, want, "got:\n{}", show(&got));
}

#[test]
fn semantic_errors_are_all_reported() {
    let yaml = r#"
apiVersion: stellaops.io/pack.v1
kind: TaskPack
metadata: {name: broken, version: 1.0.0}
spec:
  inputs:
    - {name: target, type: string, required: true}
    - {name: target, type: string}
    - {name: count, type: integer, default: three}
  approvals: [{id: a}, {id: a}]
  outputs:
    - {name: report, type: object, expression: "{{ steps.ghost.outputs.x }}"}
  steps:
    - {id: build, run: {uses: builtin:build, with: {image: 42, colour: red}}}
    - {id: build, run: {uses: builtin:nope}}
    - id: deploy
      run: {uses: builtin:deploy, with: {image: "{{ steps.later.outputs.image }}", environment: "{{ inputs.missing }}"}}
    - {id: later, run: {uses: builtin:scanner}}
    - id: fan
      parallel:
        steps:
          - {id: x, needs: [y], run: {uses: builtin:wait, with: {seconds: 1}}}
          - {id: y, needs: [x], run: {uses: builtin:wait, with: {seconds: 1}}}
          - {id: z, needs: [deploy, z], run: {uses: builtin:wait, with: {seconds: "{{ item }}"}}}
    - {id: gate, gate: {approval: {id: unknown-approval}}}
    - {id: bad-when, when: "inputs.target ==", needs: [gate], run: {uses: builtin:wait, with: {seconds: 1}}}
    - id: each
      map: {staticItems: [1, 2, 3], maxIterations: 2, step: {id: one, run: {uses: builtin:script, with: {script: "{{ nope(item) }}"}}}}
    - {id: after, run: {uses: builtin:script, with: {script: "{{ steps.one.outputs.x }} {{ steps.each.outputs.x }}"}}}
"#;
    let got = errors(yaml, &json!({"target": 7, "extra": true}));
    let want = [
        ("$.inputs.extra", "unknown input `extra`; declared: count, target"),
        ("$.inputs.target", "input `target` must be of type string, found 7"),
        ("$.spec.approvals[1].id", "duplicate approval id `a` (first at $.spec.approvals[0].id)"),
        ("$.spec.inputs[1].name", "duplicate input name `target` (first at $.spec.inputs[0].name)"),
        ("$.spec.inputs[2].default", "default \"three\" is not of type integer"),
        ("$.spec.outputs[0].expression", "unknown step `ghost`"),
        ("$.spec.steps[0].run.with.colour", "`builtin:build` has no parameter `colour`; known: context, dockerfile, image, target, args"),
        ("$.spec.steps[0].run.with.image", "parameter `image` of `builtin:build` must be a string, found 42"),
        ("$.spec.steps[1].id", "duplicate step id `build` (first at $.spec.steps[0].id)"),
        ("$.spec.steps[1].run.uses", "unknown executor `builtin:nope`; known: builtin:scanner, builtin:build, builtin:script, builtin:deploy, builtin:promotion, builtin:http-check, builtin:wait"),
        ("$.spec.steps[2].run.with.environment", "unknown input `inputs.missing`"),
        ("$.spec.steps[2].run.with.image", "step `later` does not finish before this expression is evaluated"),
        ("$.spec.steps[3].run.with.target", "`builtin:scanner` needs parameter `target`"),
        ("$.spec.steps[4].parallel.steps[0].needs", "needs form a cycle: x → y → x"),
        ("$.spec.steps[4].parallel.steps[2].needs[0]", "needs `deploy`, which is not a sibling in this parallel block"),
        ("$.spec.steps[4].parallel.steps[2].needs[1]", "step `z` cannot need itself"),
        ("$.spec.steps[4].parallel.steps[2].run.with.seconds", "unknown name `item`; expected inputs.<name>, steps.<id>.outputs.<name>, or an item variable inside a map or loop"),
        ("$.spec.steps[5].gate.approval.id", "approval `unknown-approval` is not declared in spec.approvals"),
        ("$.spec.steps[6].needs", "needs orders the children of a parallel block; steps of a list already run in order"),
        ("$.spec.steps[6].when", "invalid expression: unexpected end of expression"),
        ("$.spec.steps[7].map.staticItems", "3 items, more than maxIterations 2"),
        ("$.spec.steps[7].map.step.run.with.script", "invalid expression: unknown function `nope`; known: len, contains, startsWith, endsWith, lower, upper, default, join, toJson"),
        ("$.spec.steps[8].run.with.script", "step `one` does not finish before this expression is evaluated"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
        .collect();
    assert_eq!(got, want, "got:\n{}", show(&got));
}

#[test]
fn text_that_is_not_yaml_or_json_is_one_error_at_the_root() {
    let err = parse_manifest("{\"apiVersion\": ").expect_err("fails");
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].path, "$");
    assert!(
        err.errors[0]
            .message
            .starts_with("manifest is not valid JSON"),
        "{}",
        err.errors[0].message
    );
    let err = parse_manifest("a: [").expect_err("fails");
    assert!(
        err.errors[0]
            .message
            .starts_with("manifest is not valid YAML"),
        "{}",
        err.errors[0].message
    );
    let err = parse_manifest("- 1\n- 2\n").expect_err("fails");
    assert_eq!(
        (err.errors[0].path.as_str(), err.errors[0].message.as_str()),
        ("$", "expected an object, found an array")
    );
}

#[test]
fn plan_time_evaluation_errors_name_their_path() {
    let yaml = r#"
apiVersion: stellaops.io/pack.v1
kind: TaskPack
metadata: {name: t, version: "1"}
spec:
  inputs: [{name: regions, type: string, default: eu}, {name: n, type: array, default: [1]}]
  steps:
    - id: each
      loop: {items: "{{ inputs.regions }}", steps: [{id: s, run: {uses: builtin:build}}]}
    - {id: w, when: "inputs.n < 2", run: {uses: builtin:build}}
"#;
    let got = errors(yaml, &json!({}));
    assert_eq!(
        got,
        [
            (
                "$.spec.steps[0].loop.items".to_owned(),
                "items must be an array, found \"eu\"".to_owned()
            ),
            (
                "$.spec.steps[1].when".to_owned(),
                "cannot evaluate: cannot order [1] and 2: both must be numbers or both strings"
                    .to_owned()
            ),
        ]
    );
}
