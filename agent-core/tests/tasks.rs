//! Task assignments, the journal and exactly-once execution.

mod support;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use stella_agent_core::journal::{EntryState, JournalEntry};
use stella_agent_core::{Journal, Sticker, TargetRegistry};
use stella_proto::v1;
use support::{
    agent_config, assignment, credential, deploy_task, init_tracing, wait_for, CountingTarget,
    DataDir, RunningAgent, ScriptedControlPlane, DEADLINE,
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

#[tokio::test]
async fn the_same_task_assigned_twice_executes_once_with_the_same_answer() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    control_plane
        .script
        .push(&assignment("task-1", 1, "docker"));
    let first = results(&control_plane, "task-1", 1).await;
    control_plane
        .script
        .push(&assignment("task-1", 1, "docker"));
    let both = results(&control_plane, "task-1", 2).await;

    assert_eq!(target.applies.load(Ordering::SeqCst), 1, "executed once");
    assert_eq!(target.plans.load(Ordering::SeqCst), 1);
    assert_eq!(both[0], first[0]);
    assert_eq!(both[1], both[0], "the second answer is the stored result");
    assert_eq!(both[0].state, v1::TaskState::Succeeded as i32);
    assert_eq!(both[0].message, "applied 1.0.0 (apply #1)");
    let output: serde_json::Value =
        serde_json::from_slice(&both[0].output_json).expect("output json");
    assert_eq!(output["stickers"][0]["component"], "api");

    // Progress lines and the sticker reached the server.
    let updates = control_plane.script.updates("task-1");
    assert!(updates.iter().any(|u| u == "plan: run api as registry.local/shop/api@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), "{updates:?}");
    assert!(updates.iter().any(|u| u == "apply #1"), "{updates:?}");
    let stickers = wait_for("a sticker report", DEADLINE, || {
        let reports = control_plane.script.sticker_reports();
        (!reports.is_empty()).then_some(reports)
    })
    .await;
    let sticker = Sticker::from_json(&stickers[0].sticker_json).expect("sticker json");
    assert!(sticker.verify());
    assert_eq!(sticker.release, "shop");
    assert_eq!(sticker.target, "web-1");

    // A re-assignment under a newer lease epoch is answered under that epoch, still
    // without running again.
    control_plane
        .script
        .push(&assignment("task-1", 2, "docker"));
    let all = results(&control_plane, "task-1", 3).await;
    assert_eq!(all[2].epoch, 2);
    assert_eq!(all[2].message, all[0].message);
    assert_eq!(target.applies.load(Ordering::SeqCst), 1);

    let journal = Journal::inspect(&data_dir.path());
    let entry = journal.get("task-1").expect("get").expect("entry");
    assert_eq!(entry.state, EntryState::Finished);
    agent.stop().await;
}

#[tokio::test]
async fn a_duplicate_assignment_while_running_does_not_start_a_second_run() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::gated("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    control_plane
        .script
        .push(&assignment("task-2", 1, "docker"));
    wait_for("apply to start", DEADLINE, || {
        (target.applies.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    control_plane
        .script
        .push(&assignment("task-2", 2, "docker"));
    // The duplicate is handled in order on the stream: once a later message is
    // answered, it has been seen.
    control_plane.script.push(&assignment("probe", 1, "docker"));
    wait_for("the probe to start", DEADLINE, || {
        (target.applies.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    target.release();
    target.release();
    let result = results(&control_plane, "task-2", 1).await;
    assert_eq!(result[0].epoch, 2, "answered under the newest epoch");
    results(&control_plane, "probe", 1).await;
    assert_eq!(control_plane.script.results("task-2").len(), 1);
    assert_eq!(
        target.applies.load(Ordering::SeqCst),
        2,
        "task-2 once, probe once"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_task_left_running_by_a_crash_runs_again() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let config = agent_config(&control_plane, &data_dir);
    stella_agent_core::enrol(&config).await.expect("enrol");
    // What a crash in the middle of `apply` leaves behind.
    let journal = Journal::open(&data_dir.path()).expect("journal");
    journal
        .put(&JournalEntry::running("task-3", 4, "deploy"))
        .expect("put");

    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(config, registry_with(&target));
    connected(&control_plane, 1).await;
    let (_, hello) = control_plane.script.hellos().remove(0);
    assert_eq!(
        hello.in_flight,
        vec![v1::TaskStatus {
            task_id: "task-3".to_owned(),
            epoch: 4,
            state: v1::TaskState::Running as i32,
        }],
        "the interrupted task is reported in flight"
    );

    control_plane
        .script
        .push(&assignment("task-3", 5, "docker"));
    let result = results(&control_plane, "task-3", 1).await;
    assert_eq!(result[0].state, v1::TaskState::Succeeded as i32);
    assert_eq!(result[0].epoch, 5);
    assert_eq!(target.applies.load(Ordering::SeqCst), 1, "ran again, once");
    let entry = journal.get("task-3").expect("get").expect("entry");
    assert_eq!(entry.state, EntryState::Finished);
    agent.stop().await;
}

#[tokio::test]
async fn an_unknown_target_kind_fails_with_a_clear_message() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    control_plane.script.push(&assignment("task-4", 1, "nomad"));
    let result = results(&control_plane, "task-4", 1).await;
    assert_eq!(result[0].state, v1::TaskState::Failed as i32);
    assert_eq!(
        result[0].message,
        "this agent cannot drive targets of kind \"nomad\" (it drives: docker)"
    );

    control_plane
        .script
        .push(&v1::server_message::Body::TaskAssignment(
            v1::TaskAssignment {
                task_id: "task-5".to_owned(),
                epoch: 1,
                kind: "reboot".to_owned(),
                payload_json: Vec::new(),
                deadline_unix_ms: 0,
            },
        ));
    let result = results(&control_plane, "task-5", 1).await;
    assert_eq!(result[0].state, v1::TaskState::Failed as i32);
    assert!(result[0].message.contains("unknown task kind \"reboot\""));
    assert_eq!(target.applies.load(Ordering::SeqCst), 0);
    agent.stop().await;
}

#[tokio::test]
async fn cancel_task_cancels_a_running_task() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::gated("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    control_plane
        .script
        .push(&assignment("task-6", 1, "docker"));
    wait_for("apply to start", DEADLINE, || {
        (target.applies.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    control_plane
        .script
        .push(&v1::server_message::Body::CancelTask(v1::CancelTask {
            task_id: "task-6".to_owned(),
            reason: "operator asked".to_owned(),
        }));
    let result = results(&control_plane, "task-6", 1).await;
    assert_eq!(result[0].state, v1::TaskState::Cancelled as i32);
    assert_eq!(result[0].message, "cancelled: operator asked");
    assert_eq!(target.finished_applies.load(Ordering::SeqCst), 0);
    agent.stop().await;
}

#[tokio::test]
async fn an_unacknowledged_result_is_resent_after_reconnect() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    control_plane
        .script
        .push(&assignment("task-7", 1, "docker"));
    let first = results(&control_plane, "task-7", 1).await;
    // The script does not acknowledge it: after a reconnect it is in flight and sent again.
    control_plane.script.drop_sessions();
    connected(&control_plane, 2).await;
    let (_, hello) = control_plane.script.hellos().remove(1);
    assert_eq!(
        hello.in_flight,
        vec![v1::TaskStatus {
            task_id: "task-7".to_owned(),
            epoch: 1,
            state: v1::TaskState::Succeeded as i32,
        }]
    );
    let all = wait_for("the result again, on the new session", DEADLINE, || {
        let results = control_plane.script.results("task-7");
        (results.len() >= 2).then_some(results)
    })
    .await;
    assert_eq!(all[1].0, 1, "sent on the second session");
    assert_eq!(all[1].1, first[0]);
    assert_eq!(target.applies.load(Ordering::SeqCst), 1);
    agent.stop().await;
}

#[tokio::test]
async fn an_acknowledged_result_is_not_resent_after_reconnect() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    *control_plane
        .script
        .heartbeat_interval_seconds
        .lock()
        .expect("lock") = 1;
    let data_dir = DataDir::new();
    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    control_plane
        .script
        .push(&assignment("task-8", 1, "docker"));
    results(&control_plane, "task-8", 1).await;
    let journal = Journal::inspect(&data_dir.path());
    assert!(
        !journal
            .get("task-8")
            .expect("get")
            .expect("entry")
            .acknowledged
    );
    control_plane.script.ack("task-8", 1);
    wait_for("the journal to record the ack", DEADLINE, || {
        journal
            .get("task-8")
            .ok()
            .flatten()
            .filter(|entry| entry.acknowledged)
    })
    .await;

    control_plane.script.drop_sessions();
    connected(&control_plane, 2).await;
    let (_, hello) = control_plane.script.hellos().remove(1);
    assert!(hello.in_flight.is_empty(), "{:?}", hello.in_flight);
    // Results are re-sent right after Welcome, before the first heartbeat: once a
    // heartbeat arrived on the new session, a re-sent result would have arrived too.
    wait_for("a heartbeat on the new session", DEADLINE, || {
        control_plane
            .script
            .received()
            .iter()
            .any(|r| r.session == 1 && matches!(r.message, v1::agent_message::Body::Heartbeat(_)))
            .then_some(())
    })
    .await;
    assert_eq!(
        control_plane.script.results("task-8").len(),
        1,
        "not re-sent"
    );
    agent.stop().await;
}

#[tokio::test]
async fn the_server_acking_every_result_keeps_nothing_in_flight() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    control_plane.script.auto_ack.store(true, Ordering::SeqCst);
    let data_dir = DataDir::new();
    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;
    for task_id in ["task-9", "task-10"] {
        control_plane.script.push(&assignment(task_id, 3, "docker"));
    }
    results(&control_plane, "task-10", 1).await;
    let journal = Journal::inspect(&data_dir.path());
    wait_for("both acks recorded", DEADLINE, || {
        journal.in_flight().ok().filter(Vec::is_empty)
    })
    .await;
    control_plane.script.drop_sessions();
    connected(&control_plane, 2).await;
    let (_, hello) = control_plane.script.hellos().remove(1);
    assert!(hello.in_flight.is_empty(), "{:?}", hello.in_flight);
    agent.stop().await;
}

/// Collects every log line of the test's thread (the current-thread runtime runs the
/// agent there too).
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else {
            let bytes = std::fs::read(&path).expect("read");
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn registry_credentials_reach_the_target_but_no_file_and_no_log_line() {
    const PASSWORD: &str = "pw-Z9q8-never-on-disk";
    init_tracing();
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let target = CountingTarget::new("docker");
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry_with(&target),
    );
    connected(&control_plane, 1).await;

    let mut task = deploy_task("web-1", "docker", &[("api", 'a')]);
    task.registry_auth = vec![credential(PASSWORD)];
    let debug = format!("{task:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
    control_plane
        .script
        .push(&v1::server_message::Body::TaskAssignment(
            v1::TaskAssignment {
                task_id: "task-11".to_owned(),
                epoch: 1,
                kind: "deploy".to_owned(),
                payload_json: serde_json::to_vec(&task).expect("payload"),
                deadline_unix_ms: 0,
            },
        ));
    let result = results(&control_plane, "task-11", 1).await;
    assert_eq!(result[0].state, v1::TaskState::Succeeded as i32);
    let applied = target
        .last_task
        .lock()
        .expect("lock")
        .clone()
        .expect("applied");
    let used = applied
        .credential_for(&applied.components[0].image)
        .expect("the target gets the credential");
    assert_eq!(used.password, PASSWORD);

    // A malformed `registry_auth` fails the task without quoting it.
    let mut payload =
        serde_json::to_value(deploy_task("web-1", "docker", &[("api", 'a')])).expect("payload");
    payload["registry_auth"] = serde_json::Value::String(PASSWORD.to_owned());
    control_plane
        .script
        .push(&v1::server_message::Body::TaskAssignment(
            v1::TaskAssignment {
                task_id: "task-12".to_owned(),
                epoch: 1,
                kind: "deploy".to_owned(),
                payload_json: payload.to_string().into_bytes(),
                deadline_unix_ms: 0,
            },
        ));
    let result = results(&control_plane, "task-12", 1).await;
    assert_eq!(result[0].state, v1::TaskState::Failed as i32);
    assert!(
        result[0].message.contains("registry_auth"),
        "{}",
        result[0].message
    );
    assert!(
        !result[0].message.contains(PASSWORD),
        "{}",
        result[0].message
    );
    agent.stop().await;

    let journal = Journal::open(&data_dir.path()).expect("journal");
    assert_eq!(
        journal.get("task-11").expect("get").expect("entry").state,
        EntryState::Finished
    );
    assert!(data_dir.path().join("desired.json").is_file());
    let leaked = files_containing(&data_dir.path(), PASSWORD);
    assert!(leaked.is_empty(), "the password is on disk in {leaked:?}");
    let logs = logs.text();
    assert!(logs.contains("task finished"), "logs were captured");
    assert!(!logs.contains(PASSWORD), "the password is in the logs");
}
