//! Slots (RFC 0005) on the agent: a slot deploy is neither the desired state nor a
//! sticker; a kind without slots refuses one before anything runs; `retire` tasks run once,
//! are journaled and re-sent like deploys.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use stella_agent_core::{RetireTask, TargetRegistry, TargetSpec};
use stella_proto::v1;
use support::{
    agent_config, assignment, deploy_task, init_tracing, wait_for, CountingTarget, DataDir,
    FakeDriftTarget, RunningAgent, ScriptedControlPlane, DEADLINE,
};

fn registry_with(target: &Arc<CountingTarget>) -> TargetRegistry {
    let mut registry = TargetRegistry::new();
    registry.register(Arc::clone(target) as Arc<dyn stella_agent_core::Target>);
    registry
}

async fn connected(control_plane: &ScriptedControlPlane, sessions: usize) {
    wait_for("a welcomed session", DEADLINE, || {
        (control_plane.script.hellos().len() >= sessions
            && control_plane.script.open_sessions() == 1)
            .then_some(())
    })
    .await;
}

async fn result_of(control_plane: &ScriptedControlPlane, task_id: &str) -> v1::TaskResult {
    results(control_plane, task_id, 1).await.remove(0)
}

async fn results(
    control_plane: &ScriptedControlPlane,
    task_id: &str,
    count: usize,
) -> Vec<v1::TaskResult> {
    wait_for(&format!("{count} results of {task_id}"), DEADLINE, || {
        let results = control_plane.script.results(task_id);
        (results.len() >= count).then(|| results.into_iter().map(|(_, r)| r).collect())
    })
    .await
}

fn push(control_plane: &ScriptedControlPlane, task_id: &str, kind: &str, payload_json: Vec<u8>) {
    control_plane
        .script
        .push(&v1::server_message::Body::TaskAssignment(
            v1::TaskAssignment {
                task_id: task_id.to_owned(),
                epoch: 1,
                kind: kind.to_owned(),
                payload_json,
                deadline_unix_ms: 0,
            },
        ));
}

/// A deploy payload of version 2.0.0 of `web-1` (of `kind`) to `slot`.
fn slot_payload(kind: &str, slot: &str) -> Vec<u8> {
    let mut task = deploy_task("web-1", kind, &[("api", 'b')]);
    task.version = "2.0.0".to_owned();
    task.deployment_id = "dep-canary".to_owned();
    let mut json = serde_json::to_value(&task).expect("json");
    json["slot"] = serde_json::json!(slot);
    serde_json::to_vec(&json).expect("payload")
}

fn retire_payload(kind: &str, slot: &str) -> Vec<u8> {
    serde_json::to_vec(&RetireTask {
        deployment_id: "dep-canary".to_owned(),
        target: TargetSpec {
            name: "web-1".to_owned(),
            kind: kind.to_owned(),
            settings: Default::default(),
        },
        slot: slot.to_owned(),
    })
    .expect("payload")
}

/// The versions `desired.json` holds, by target.
fn desired_versions(data_dir: &DataDir) -> serde_json::Value {
    let json = std::fs::read(data_dir.path().join("desired.json")).expect("desired.json");
    let desired: serde_json::Value = serde_json::from_slice(&json).expect("desired json");
    let targets = desired["targets"].as_object().expect("targets").clone();
    targets
        .into_iter()
        .map(|(name, task)| {
            assert!(task.get("slot").is_none(), "{task}");
            (name, task["version"].clone())
        })
        .collect()
}

#[tokio::test]
async fn a_slot_deploy_is_not_the_desired_state_and_reports_no_sticker() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::with_slots("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    control_plane
        .script
        .push(&assignment("stable-1", 1, "docker"));
    let stable = result_of(&control_plane, "stable-1").await;
    assert_eq!(stable.state, v1::TaskState::Succeeded as i32);
    assert_eq!(
        desired_versions(&data_dir),
        serde_json::json!({"web-1": "1.0.0"})
    );
    wait_for("the stable sticker", DEADLINE, || {
        (control_plane.script.sticker_reports().len() == 1).then_some(())
    })
    .await;

    push(
        &control_plane,
        "canary-1",
        "deploy",
        slot_payload("docker", "canary"),
    );
    let canary = result_of(&control_plane, "canary-1").await;
    assert_eq!(canary.state, v1::TaskState::Succeeded as i32, "{canary:?}");
    let output: serde_json::Value = serde_json::from_slice(&canary.output_json).expect("output");
    assert_eq!(output["slot"], "canary");
    assert_eq!(output["stickers"], serde_json::json!([]), "{output}");
    let applied = target.last_task.lock().expect("lock").clone();
    assert_eq!(
        applied.and_then(|task| task.slot).as_deref(),
        Some("canary")
    );
    let updates = control_plane.script.updates("canary-1");
    assert!(
        updates
            .iter()
            .any(|u| u == "planning shop@2.0.0 in slot canary of web-1 (docker)"),
        "{updates:?}"
    );

    // Results and sticker reports share one ordered stream: once a later task's result is
    // in, a sticker of the slot deploy would have been too.
    push(
        &control_plane,
        "retire-1",
        "retire",
        retire_payload("docker", "canary"),
    );
    let retired = result_of(&control_plane, "retire-1").await;
    assert_eq!(retired.state, v1::TaskState::Succeeded as i32);
    assert_eq!(control_plane.script.sticker_reports().len(), 1);
    assert_eq!(
        desired_versions(&data_dir),
        serde_json::json!({"web-1": "1.0.0"}),
        "the slot deploy is not the desired state"
    );
    assert_eq!(target.applies.load(Ordering::SeqCst), 2);
    agent.stop().await;
}

#[tokio::test]
async fn slot_deploys_are_refused_for_kinds_without_slots_and_bad_names() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    push(
        &control_plane,
        "canary-1",
        "deploy",
        slot_payload("docker", "canary"),
    );
    let refused = result_of(&control_plane, "canary-1").await;
    assert_eq!(refused.state, v1::TaskState::Failed as i32);
    assert_eq!(
        refused.message,
        "targets of kind docker have no slots: cannot deploy shop@2.0.0 to slot canary of web-1"
    );
    assert_eq!(target.plans.load(Ordering::SeqCst), 0, "nothing planned");
    assert_eq!(target.applies.load(Ordering::SeqCst), 0, "nothing applied");

    push(
        &control_plane,
        "bad-1",
        "deploy",
        slot_payload("docker", "Bad!"),
    );
    let bad = result_of(&control_plane, "bad-1").await;
    assert_eq!(bad.state, v1::TaskState::Failed as i32);
    assert!(
        bad.message.starts_with("invalid deploy payload: ")
            && bad
                .message
                .contains("slot \"Bad!\" is not a valid slot name"),
        "{}",
        bad.message
    );
    assert_eq!(target.plans.load(Ordering::SeqCst), 0);

    // "stable" is the target's own deployment: an ordinary deploy.
    push(
        &control_plane,
        "stable-1",
        "deploy",
        slot_payload("docker", "stable"),
    );
    let stable = result_of(&control_plane, "stable-1").await;
    assert_eq!(stable.state, v1::TaskState::Succeeded as i32, "{stable:?}");
    let applied = target.last_task.lock().expect("lock").clone();
    assert_eq!(applied.map(|task| task.slot), Some(None));
    assert_eq!(
        desired_versions(&data_dir),
        serde_json::json!({"web-1": "2.0.0"})
    );
    agent.stop().await;
}

#[tokio::test]
async fn retire_tasks_run_once_and_are_resent_until_acknowledged() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::with_slots("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    push(
        &control_plane,
        "retire-1",
        "retire",
        retire_payload("docker", "canary"),
    );
    let first = result_of(&control_plane, "retire-1").await;
    assert_eq!(first.state, v1::TaskState::Succeeded as i32, "{first:?}");
    assert_eq!(first.message, "retired slot canary: removed 1 container");
    let output: serde_json::Value = serde_json::from_slice(&first.output_json).expect("output");
    assert_eq!(output["slot"], "canary");
    assert_eq!(output["stickers"], serde_json::json!([]));
    assert!(output.get("endpoints").is_none(), "{output}");
    let updates = control_plane.script.updates("retire-1");
    assert!(
        updates
            .iter()
            .any(|u| u == "retiring slot canary of web-1 (docker)"),
        "{updates:?}"
    );

    // Assigned again: answered from the journal, not run again.
    push(
        &control_plane,
        "retire-1",
        "retire",
        retire_payload("docker", "canary"),
    );
    let both = results(&control_plane, "retire-1", 2).await;
    assert_eq!(both[1], both[0]);
    assert_eq!(target.retired.lock().expect("lock").len(), 1);

    // Not acknowledged: in flight after a reconnect, and sent again.
    control_plane.script.drop_sessions();
    connected(&control_plane, 2).await;
    let (_, hello) = control_plane.script.hellos().remove(1);
    assert!(
        hello.in_flight.contains(&v1::TaskStatus {
            task_id: "retire-1".to_owned(),
            epoch: 1,
            state: v1::TaskState::Succeeded as i32,
        }),
        "{:?}",
        hello.in_flight
    );
    let all = results(&control_plane, "retire-1", 3).await;
    assert_eq!(all[2], first);
    assert_eq!(target.retired.lock().expect("lock").len(), 1);

    // The stable deployment is not a slot; a payload that is not a retire task is refused.
    push(
        &control_plane,
        "retire-2",
        "retire",
        retire_payload("docker", "stable"),
    );
    let stable = result_of(&control_plane, "retire-2").await;
    assert_eq!(stable.state, v1::TaskState::Failed as i32);
    assert_eq!(
        stable.message,
        "cannot retire: \"stable\" names the target's own deployment, not a slot"
    );
    push(
        &control_plane,
        "retire-3",
        "retire",
        b"{\"slot\":1}".to_vec(),
    );
    let garbage = result_of(&control_plane, "retire-3").await;
    assert_eq!(garbage.state, v1::TaskState::Failed as i32);
    assert!(
        garbage.message.starts_with("invalid retire payload: "),
        "{}",
        garbage.message
    );
    assert_eq!(target.retired.lock().expect("lock").len(), 1);
    agent.stop().await;
}

#[tokio::test]
async fn retiring_on_a_kind_without_slots_fails_with_a_clear_message() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = FakeDriftTarget::new();
    let agent = RunningAgent::start(agent_config(&control_plane, &data_dir), target.registry());
    connected(&control_plane, 1).await;

    push(
        &control_plane,
        "retire-1",
        "retire",
        retire_payload("fake", "canary"),
    );
    let refused = result_of(&control_plane, "retire-1").await;
    assert_eq!(refused.state, v1::TaskState::Failed as i32);
    assert_eq!(
        refused.message,
        "targets of kind fake have no slots: cannot retire slot canary of web-1"
    );
    agent.stop().await;
}
