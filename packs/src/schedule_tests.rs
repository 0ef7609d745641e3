use serde_json::{json, Map, Value};

use super::*;
use crate::plan::plan_text;

fn plan(yaml: &str) -> CompiledPlan {
    plan_text(yaml, &Map::new()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn pack(failure: &str, approvals: &str, steps: &str) -> String {
    format!(
        "apiVersion: stellaops.io/pack.v1\nkind: TaskPack\nmetadata: {{name: t, version: 1.0.0}}\nspec:\n  inputs:\n    - {{name: regions, type: array, default: [eu, us, ap]}}\n  failure: {failure}\n  approvals: {approvals}\n  steps:\n{steps}"
    )
}

fn apply(run: &mut RunState, s: &Schedule, now: i64) {
    for t in &s.transitions {
        let state = run.steps.entry(t.key.clone()).or_insert(StepState {
            status: StepStatus::Pending,
            attempts: 0,
            last_transition_ms: None,
        });
        state.status = t.to;
        state.last_transition_ms = Some(now);
    }
    for d in &s.dispatch {
        let state = run.steps.entry(d.key.clone()).or_insert(StepState {
            status: StepStatus::Pending,
            attempts: 0,
            last_transition_ms: None,
        });
        assert_eq!(d.attempt, state.attempts + 1, "{}", d.key);
        state.status = StepStatus::Running;
        state.attempts += 1;
        state.last_transition_ms = Some(now);
    }
}

fn finish(run: &mut RunState, key: &str, ok: bool, outputs: Value, now: i64) {
    let state = run
        .steps
        .get_mut(key)
        .unwrap_or_else(|| panic!("{key} not started"));
    assert_eq!(state.status, StepStatus::Running, "{key}");
    state.status = if ok {
        StepStatus::Succeeded
    } else {
        StepStatus::Failed
    };
    state.last_transition_ms = Some(now);
    if let Value::Object(o) = outputs {
        run.outputs.insert(key.to_owned(), o);
    }
}

fn keys(s: &Schedule) -> Vec<&str> {
    s.dispatch.iter().map(|d| d.key.as_str()).collect()
}

/// Runs to the end, every dispatched step finishing at once with `outcome`.
fn drive(
    plan: &CompiledPlan,
    run: &mut RunState,
    mut outcome: impl FnMut(&Dispatch) -> (bool, Value),
) -> (RunStatus, Vec<String>) {
    let mut now = 0;
    let mut order = Vec::new();
    for _ in 0..200 {
        let s = schedule(plan, run, now);
        assert_eq!(
            s,
            schedule(plan, run, now),
            "the same inputs give the same schedule"
        );
        apply(run, &s, now);
        if s.dispatch.is_empty() {
            match (s.run_status, s.next_retry_at_ms) {
                (RunStatus::Running, Some(t)) => {
                    now = t;
                    continue;
                }
                (RunStatus::Running, None) if !s.transitions.is_empty() => continue,
                (status, _) => return (status, order),
            }
        }
        now += 1_000;
        for d in &s.dispatch {
            order.push(d.key.clone());
            let (ok, outputs) = outcome(d);
            finish(run, &d.key, ok, outputs, now);
        }
    }
    panic!("the run did not end");
}

const SEQ: &str = "    - {id: build, run: {uses: builtin:build}}\n    - id: approval\n      gate: {approval: {id: security-review, message: go?}}\n    - {id: deploy, run: {uses: builtin:deploy}}\n";

#[test]
fn a_list_runs_in_order_and_waits_at_its_gate() {
    let p = plan(&pack("{}", "[{id: security-review}]", SEQ));
    let mut run = RunState::default();
    let s = schedule(&p, &run, 0);
    assert_eq!(keys(&s), ["build"]);
    assert_eq!(s.run_status, RunStatus::Running);
    apply(&mut run, &s, 0);
    finish(&mut run, "build", true, json!({}), 10);
    let s = schedule(&p, &run, 20);
    assert!(s.dispatch.is_empty());
    assert_eq!(s.run_status, RunStatus::Waiting);
    assert_eq!(
        s.waiting,
        [GateWait {
            key: "approval".into(),
            approval_id: "security-review".into(),
            message: Some("go?".into()),
            reason: "awaiting-approval".into()
        }]
    );
    assert_eq!(
        s.transitions,
        [Transition {
            key: "approval".into(),
            to: StepStatus::Waiting,
            reason: "awaiting-approval".into()
        }]
    );
    apply(&mut run, &s, 20);
    run.approvals
        .insert("security-review".into(), ApprovalDecision::Approved);
    let s = schedule(&p, &run, 30);
    assert_eq!(keys(&s), ["deploy"]);
    assert_eq!(s.transitions[0].to, StepStatus::Succeeded);
    apply(&mut run, &s, 30);
    finish(&mut run, "deploy", true, json!({}), 40);
    assert_eq!(schedule(&p, &run, 50).run_status, RunStatus::Succeeded);
}

#[test]
fn a_rejected_approval_fails_the_run() {
    let p = plan(&pack("{}", "[{id: security-review}]", SEQ));
    let mut run = RunState::default();
    run.approvals
        .insert("security-review".into(), ApprovalDecision::Rejected);
    let (status, order) = drive(&p, &mut run, |_| (true, json!({})));
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(order, ["build"]);
    assert_eq!(run.steps["approval"].status, StepStatus::Failed);
}

#[test]
fn parallel_honours_max_parallel_and_needs() {
    let steps = "    - id: fan\n      parallel:\n        maxParallel: 2\n        steps:\n          - {id: a, run: {uses: builtin:wait, with: {seconds: 1}}}\n          - {id: b, run: {uses: builtin:wait, with: {seconds: 1}}}\n          - {id: c, needs: [a, b], run: {uses: builtin:wait, with: {seconds: 1}}}\n          - {id: d, run: {uses: builtin:wait, with: {seconds: 1}}}\n    - {id: after, run: {uses: builtin:build}}\n";
    let p = plan(&pack("{}", "[]", steps));
    let mut run = RunState::default();
    let s = schedule(&p, &run, 0);
    assert_eq!(keys(&s), ["a", "b"]);
    assert_eq!(
        s.transitions,
        [Transition {
            key: "fan".into(),
            to: StepStatus::Running,
            reason: "started".into()
        }]
    );
    apply(&mut run, &s, 0);
    assert!(
        schedule(&p, &run, 1).dispatch.is_empty(),
        "both slots are taken"
    );
    finish(&mut run, "a", true, json!({}), 1);
    let s = schedule(&p, &run, 2);
    assert_eq!(keys(&s), ["d"], "c still needs b");
    apply(&mut run, &s, 2);
    finish(&mut run, "b", true, json!({}), 3);
    let s = schedule(&p, &run, 4);
    assert_eq!(keys(&s), ["c"]);
    apply(&mut run, &s, 4);
    finish(&mut run, "c", true, json!({}), 5);
    finish(&mut run, "d", true, json!({}), 5);
    let s = schedule(&p, &run, 6);
    assert_eq!(keys(&s), ["after"]);
    assert_eq!(
        s.transitions[0],
        Transition {
            key: "fan".into(),
            to: StepStatus::Succeeded,
            reason: "children finished".into()
        }
    );
}

#[test]
fn a_failure_in_parallel_starts_nothing_more_and_fails_once_the_rest_stop() {
    let steps = "    - id: fan\n      parallel:\n        maxParallel: 1\n        steps:\n          - {id: a, run: {uses: builtin:build}}\n          - {id: b, run: {uses: builtin:build}}\n";
    let p = plan(&pack("{}", "[]", steps));
    let mut run = RunState::default();
    let (status, order) = drive(&p, &mut run, |_| (false, json!({})));
    assert_eq!(
        (status, order.as_slice()),
        (RunStatus::Failed, ["a".to_owned()].as_slice())
    );
}

#[test]
fn retries_wait_for_a_doubling_backoff() {
    let p = plan(&pack(
        "{maxAttempts: 3, backoffSeconds: 10}",
        "[]",
        "    - {id: flaky, run: {uses: builtin:build}}\n",
    ));
    let mut run = RunState::default();
    let s = schedule(&p, &run, 0);
    apply(&mut run, &s, 0);
    finish(&mut run, "flaky", false, json!({}), 1_000);
    let s = schedule(&p, &run, 5_000);
    assert!(s.dispatch.is_empty());
    assert_eq!(
        (s.run_status, s.next_retry_at_ms),
        (RunStatus::Running, Some(11_000))
    );
    let s = schedule(&p, &run, 11_000);
    assert_eq!(s.dispatch[0].attempt, 2);
    apply(&mut run, &s, 11_000);
    finish(&mut run, "flaky", false, json!({}), 20_000);
    assert_eq!(schedule(&p, &run, 20_000).next_retry_at_ms, Some(40_000));
    let s = schedule(&p, &run, 40_000);
    assert_eq!(s.dispatch[0].attempt, 3);
    apply(&mut run, &s, 40_000);
    finish(&mut run, "flaky", false, json!({}), 41_000);
    let s = schedule(&p, &run, 1_000_000);
    assert_eq!((s.run_status, s.dispatch.len()), (RunStatus::Failed, 0));
}

#[test]
fn backoff_doubles_and_saturates() {
    assert_eq!(
        [1, 2, 3, 4].map(|a| backoff_ms(30, a)),
        [30_000, 60_000, 120_000, 240_000]
    );
    assert_eq!(backoff_ms(0, 5), 0);
    assert_eq!(backoff_ms(u64::MAX, 100), i64::MAX);
}

#[test]
fn continue_on_error_lets_the_run_go_on() {
    let steps = "    - {id: lint, continueOnError: true, run: {uses: builtin:build}}\n    - {id: deploy, run: {uses: builtin:deploy}}\n";
    let p = plan(&pack("{}", "[]", steps));
    let mut run = RunState::default();
    let (status, order) = drive(&p, &mut run, |d| (d.key != "lint", json!({})));
    assert_eq!((status, order.len()), (RunStatus::Succeeded, 2));
    let p = plan(&pack("{continueOnError: true}", "[]", steps));
    let (status, _) = drive(&p, &mut RunState::default(), |_| (false, json!({})));
    assert_eq!(status, RunStatus::Succeeded, "the pack-wide default");
}

#[test]
fn cancel_skips_what_has_not_run() {
    let p = plan(&pack("{}", "[{id: security-review}]", SEQ));
    let mut run = RunState::default();
    let s = schedule(&p, &run, 0);
    apply(&mut run, &s, 0);
    run.cancelled = true;
    let s = schedule(&p, &run, 1);
    assert_eq!(s.run_status, RunStatus::Running, "build is still running");
    let skipped: Vec<&str> = s.transitions.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(skipped, ["approval", "deploy"]);
    assert!(s
        .transitions
        .iter()
        .all(|t| t.to == StepStatus::Skipped && t.reason == "cancelled"));
    apply(&mut run, &s, 1);
    finish(&mut run, "build", true, json!({}), 2);
    let s = schedule(&p, &run, 3);
    assert_eq!(
        (s.run_status, s.transitions.len()),
        (RunStatus::Cancelled, 0)
    );
}

#[test]
fn conditions_and_branches_read_step_outputs() {
    let steps = "    - {id: scan, run: {uses: builtin:scanner, with: {target: x}}}\n    - id: notify\n      when: steps.scan.outputs.critical > 0\n      run: {uses: builtin:http-check, with: {url: 'https://hooks.example/{{ steps.scan.outputs.critical }}'}}\n    - id: route\n      conditional:\n        branches:\n          - condition: \"{{ steps.scan.outputs.critical == 0 }}\"\n            steps: [{id: ship, run: {uses: builtin:deploy}}]\n        else: [{id: hold, run: {uses: builtin:wait, with: {seconds: 5}}}]\n";
    let p = plan(&pack("{}", "[]", steps));
    let mut run = RunState::default();
    let (status, order) = drive(&p, &mut run, |d| {
        (
            true,
            if d.key == "scan" {
                json!({"critical": 0})
            } else {
                json!({})
            },
        )
    });
    assert_eq!(
        (status, order),
        (
            RunStatus::Succeeded,
            vec!["scan".to_owned(), "ship".to_owned()]
        )
    );
    assert_eq!(run.steps["notify"].status, StepStatus::Skipped);
    assert_eq!(run.steps["hold"].status, StepStatus::Skipped);
    assert_eq!(run.steps["route"].status, StepStatus::Succeeded);

    let mut run = RunState::default();
    let mut with = Vec::new();
    let (_, order) = drive(&p, &mut run, |d| {
        with.push(d.with.clone());
        (
            true,
            if d.key == "scan" {
                json!({"critical": 2})
            } else {
                json!({})
            },
        )
    });
    assert_eq!(order, ["scan", "notify", "hold"]);
    assert_eq!(with[1]["url"], json!("https://hooks.example/2"));
}

#[test]
fn map_iterations_bind_items_and_honour_max_parallel() {
    let steps = "    - id: per-region\n      map:\n        items: \"{{ inputs.regions }}\"\n        iterator: region\n        maxParallel: 2\n        step: {id: roll, run: {uses: builtin:deploy, with: {environment: 'prod-{{ region }}-{{ index }}'}}}\n    - {id: report, run: {uses: builtin:script, with: {script: 'echo {{ toJson(steps.per-region.outputs.url) }}'}}}\n";
    let p = plan(&pack("{}", "[]", steps));
    let mut run = RunState::default();
    let s = schedule(&p, &run, 0);
    assert_eq!(keys(&s), ["per-region[0].roll", "per-region[1].roll"]);
    assert_eq!(s.dispatch[1].with["environment"], json!("prod-us-1"));
    apply(&mut run, &s, 0);
    finish(
        &mut run,
        "per-region[1].roll",
        true,
        json!({"url": "us"}),
        1,
    );
    let s = schedule(&p, &run, 2);
    assert_eq!(keys(&s), ["per-region[2].roll"]);
    apply(&mut run, &s, 2);
    finish(
        &mut run,
        "per-region[0].roll",
        true,
        json!({"url": "eu"}),
        3,
    );
    finish(
        &mut run,
        "per-region[2].roll",
        true,
        json!({"url": "ap"}),
        3,
    );
    let s = schedule(&p, &run, 4);
    assert_eq!(keys(&s), ["report"]);
    assert_eq!(
        s.dispatch[0].with["script"],
        json!("echo [\"eu\",\"us\",\"ap\"]")
    );
}

#[test]
fn loops_run_iterations_one_after_the_other() {
    let steps = "    - id: waves\n      loop:\n        range: {start: 1, end: 4}\n        aggregation: last\n        steps:\n          - {id: roll, run: {uses: builtin:deploy, with: {replicas: '{{ item }}'}}}\n          - {id: check, run: {uses: builtin:http-check, with: {url: 'https://svc/{{ steps.roll.outputs.n }}'}}}\n";
    let p = plan(&pack("{}", "[]", steps));
    let mut run = RunState::default();
    let mut seen = Vec::new();
    let (status, order) = drive(&p, &mut run, |d| {
        seen.push(d.with.clone());
        (true, json!({"n": d.key.clone()}))
    });
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(
        order,
        [
            "waves[0].roll",
            "waves[0].check",
            "waves[1].roll",
            "waves[1].check",
            "waves[2].roll",
            "waves[2].check"
        ]
    );
    assert_eq!(
        seen[0]["replicas"],
        json!(1),
        "a lone template keeps the item's type"
    );
    assert_eq!(
        seen[3]["url"],
        json!("https://svc/waves[1].roll"),
        "outputs of the same iteration"
    );
}

#[test]
fn policy_gates_follow_their_failure_action() {
    let gate = |action: &str, extra: &str| {
        pack(
            "{}",
            "[{id: override}]",
            &format!("    - id: policy\n      gate:\n        policy: {{id: prod, version: '3', failureAction: {action}, retryCount: 1{extra}}}\n    - {{id: deploy, run: {{uses: builtin:deploy}}}}\n"),
        )
    };
    let fail_policy = |d: &Dispatch| (d.kind != StepKind::GatePolicy, json!({}));

    let (status, order) = drive(
        &plan(&gate("abort", "")),
        &mut RunState::default(),
        fail_policy,
    );
    assert_eq!(
        (status, order),
        (
            RunStatus::Failed,
            vec!["policy".to_owned(), "policy".to_owned()]
        ),
        "retryCount 1: two evaluations"
    );

    let (status, order) = drive(
        &plan(&gate("warn", "")),
        &mut RunState::default(),
        fail_policy,
    );
    assert_eq!(
        (status, order.last().map(String::as_str)),
        (RunStatus::Succeeded, Some("deploy"))
    );

    let p = plan(&gate("requestOverride", ", overrideApproval: override"));
    let mut run = RunState::default();
    let (status, _) = drive(&p, &mut run, fail_policy);
    assert_eq!(status, RunStatus::Waiting);
    assert_eq!(schedule(&p, &run, 0).waiting[0].reason, "awaiting-override");
    run.approvals
        .insert("override".into(), ApprovalDecision::Approved);
    assert_eq!(drive(&p, &mut run, fail_policy).0, RunStatus::Succeeded);

    let p = plan(&gate("branch", ", onFailure: [{id: open-ticket, run: {uses: builtin:http-check, with: {url: 'https://t'}}}]"));
    let (status, order) = drive(&p, &mut RunState::default(), fail_policy);
    assert_eq!(
        (status, order),
        (
            RunStatus::Succeeded,
            vec![
                "policy".into(),
                "policy".into(),
                "open-ticket".into(),
                "deploy".into()
            ]
        )
    );
    let mut run = RunState::default();
    let (_, order) = drive(&p, &mut run, |_| (true, json!({})));
    assert_eq!(order, ["policy", "deploy"]);
    assert_eq!(run.steps["open-ticket"].status, StepStatus::Skipped);
}

/// Property-style: over many pseudo-random outcomes, the schedule is deterministic,
/// never runs more than maxParallel children, never starts a child before its needs,
/// and every run ends.
#[test]
fn random_outcomes_keep_the_invariants() {
    let steps = "    - id: fan\n      parallel:\n        maxParallel: 2\n        steps:\n          - {id: a, continueOnError: true, run: {uses: builtin:build}}\n          - {id: b, run: {uses: builtin:build}}\n          - {id: c, needs: [a], run: {uses: builtin:build}}\n          - {id: d, needs: [b, c], run: {uses: builtin:build}}\n    - id: m\n      map: {staticItems: [1, 2, 3], maxParallel: 1, step: {id: x, run: {uses: builtin:build}}}\n";
    let p = plan(&pack("{maxAttempts: 2, backoffSeconds: 1}", "[]", steps));
    let mut seed: u64 = 0x5eed;
    for _ in 0..300 {
        let mut run = RunState::default();
        let mut now = 0;
        for _ in 0..100 {
            let s = schedule(&p, &run, now);
            apply(&mut run, &s, now);
            let running = |run: &RunState, keys: &[&str]| {
                keys.iter()
                    .filter(|k| {
                        run.steps
                            .get(**k)
                            .is_some_and(|s| s.status == StepStatus::Running)
                    })
                    .count()
            };
            assert!(running(&run, &["a", "b", "c", "d"]) <= 2);
            assert!(running(&run, &["m[0].x", "m[1].x", "m[2].x"]) <= 1);
            for d in &s.dispatch {
                let needs: &[&str] = match d.key.as_str() {
                    "c" => &["a"],
                    "d" => &["b", "c"],
                    _ => &[],
                };
                for n in needs {
                    assert!(
                        matches!(
                            run.steps[*n].status,
                            StepStatus::Succeeded | StepStatus::Failed
                        ),
                        "{} before {n}",
                        d.key
                    );
                }
            }
            let leaf_running = run.steps.iter().any(|(k, s)| {
                s.status == StepStatus::Running && !["fan", "m"].contains(&k.as_str())
            });
            if s.dispatch.is_empty()
                && s.next_retry_at_ms.is_none()
                && s.transitions.is_empty()
                && !leaf_running
            {
                assert_ne!(s.run_status, RunStatus::Running);
                break;
            }
            now = s.next_retry_at_ms.unwrap_or(now).max(now) + 500;
            // Finish some running steps, pseudo-randomly, well or badly.
            let running_keys: Vec<String> = run
                .steps
                .iter()
                .filter(|(_, s)| s.status == StepStatus::Running)
                .map(|(k, _)| k.clone())
                .filter(|k| !["fan", "m"].contains(&k.as_str()))
                .collect();
            for key in running_keys {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                match seed >> 61 {
                    0 => {}
                    1 => finish(&mut run, &key, false, Value::Object(Map::new()), now),
                    _ => finish(&mut run, &key, true, Value::Object(Map::new()), now),
                }
            }
        }
        let end = schedule(&p, &run, now);
        assert!(
            matches!(end.run_status, RunStatus::Succeeded | RunStatus::Failed),
            "{:?}",
            end.run_status
        );
    }
}
