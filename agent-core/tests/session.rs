//! The `Connect` session: Hello, heartbeats, reconnects, refusals.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use stella_agent_core::{Identity, TargetRegistry};
use support::{
    agent_config, init_tracing, wait_for, CountingTarget, DataDir, RunningAgent,
    ScriptedControlPlane, DEADLINE,
};

fn registry(kinds: &[&'static str]) -> TargetRegistry {
    let mut registry = TargetRegistry::new();
    for kind in kinds {
        registry.register(CountingTarget::new(kind));
    }
    registry
}

#[tokio::test]
async fn hello_carries_capabilities_labels_and_host_facts() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry(&["docker", "compose", "ssh"]),
    );

    let (_, hello) = wait_for("Hello", DEADLINE, || {
        control_plane.script.hellos().into_iter().next()
    })
    .await;
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.capabilities, vec!["compose", "docker", "ssh"]);
    assert_eq!(hello.labels.get("zone").map(String::as_str), Some("a"));
    let host = hello.host.expect("host facts");
    assert!(!host.hostname.is_empty());
    assert!(!host.os_name.is_empty() || !host.kernel_version.is_empty());
    assert_eq!(host.arch, std::env::consts::ARCH);
    assert!(host.cpu_count > 0);
    assert!(host.memory_total_bytes > 0);
    assert!(host.boot_time_unix_seconds > 0);
    assert!(hello.in_flight.is_empty());

    // The session is attributed to the identity in the certificate.
    let identity = Identity::load(&data_dir.path())
        .expect("load")
        .expect("enrolled");
    let received = control_plane.script.received();
    assert!(received.iter().all(|r| r.agent_id == identity.agent_id));
    agent.stop().await;
}

#[tokio::test]
async fn heartbeats_arrive_at_the_welcome_interval() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    *control_plane
        .script
        .heartbeat_interval_seconds
        .lock()
        .expect("lock") = 1;
    let data_dir = DataDir::new();
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry(&["docker"]),
    );

    let beats = wait_for("4 heartbeats", DEADLINE, || {
        let beats = control_plane.script.heartbeats();
        (beats.len() >= 4).then_some(beats)
    })
    .await;
    let sequences: Vec<u64> = beats.iter().map(|(_, b)| b.sequence).collect();
    assert_eq!(sequences[..4], [1, 2, 3, 4]);
    for pair in beats.windows(2).take(3) {
        let gap = pair[1].0.duration_since(pair[0].0);
        // One second apart, with room for a busy 2-core machine.
        assert!(
            gap >= Duration::from_millis(700) && gap <= Duration::from_millis(1_800),
            "heartbeat gap {gap:?}"
        );
    }
    assert!(beats.iter().all(|(_, b)| b.sent_at_unix_ms > 0));
    agent.stop().await;
}

#[tokio::test]
async fn the_agent_reconnects_after_the_server_drops_the_stream() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let agent = RunningAgent::start(
        agent_config(&control_plane, &data_dir),
        registry(&["docker"]),
    );
    wait_for("first session", DEADLINE, || {
        (control_plane.script.hellos().len() == 1).then_some(())
    })
    .await;

    for round in 2..=3 {
        control_plane.script.drop_sessions();
        wait_for("a new session", DEADLINE, || {
            (control_plane.script.hellos().len() >= round
                && control_plane.script.open_sessions() == 1)
                .then_some(())
        })
        .await;
    }
    let hellos = control_plane.script.hellos();
    let sessions: Vec<usize> = hellos.iter().map(|(session, _)| *session).collect();
    assert_eq!(sessions, vec![0, 1, 2], "one Hello per session");
    assert_eq!(control_plane.script.connects.load(Ordering::SeqCst), 3);
    agent.stop().await;
}

#[tokio::test]
async fn a_revoked_agent_stops_with_a_clear_error_instead_of_retrying() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let config = agent_config(&control_plane, &data_dir);
    let agent = RunningAgent::start(config, registry(&["docker"]));
    wait_for("first session", DEADLINE, || {
        (control_plane.script.open_sessions() == 1).then_some(())
    })
    .await;
    let identity = Identity::load(&data_dir.path())
        .expect("load")
        .expect("enrolled");

    control_plane.script.revoke(&identity.agent_id);
    control_plane.script.drop_sessions();
    let error = agent
        .finished()
        .await
        .expect_err("a revoked agent stops with an error");
    assert!(
        error.is_revoked(),
        "{}",
        stella_agent_core::error_chain(&error)
    );
    let message = error.to_string();
    assert!(
        message.contains("revoked") && message.contains("join token"),
        "one line that says what happened and what to do: {message}"
    );
    // It stopped after the first refusal it could read. In TLS 1.3 the server refuses
    // the client's certificate after the client's side of the handshake is done, so
    // the alert can be lost to a write that fails first (a broken pipe): that attempt
    // is retried at once, and one attempt may cost two handshakes. So at most two
    // attempts, four handshakes — not a retry loop.
    let failures = control_plane
        .script
        .handshake_failure_times
        .lock()
        .expect("lock")
        .len();
    assert!(failures <= 4, "{failures} refused handshakes");
    assert_eq!(control_plane.script.connects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_enrolled_agent_reconnects_after_a_restart_without_a_token() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let config = agent_config(&control_plane, &data_dir);
    let agent = RunningAgent::start(config.clone(), registry(&["docker"]));
    wait_for("first session", DEADLINE, || {
        (control_plane.script.hellos().len() == 1).then_some(())
    })
    .await;
    agent.stop().await;

    let mut restarted = config;
    restarted.join_token = None;
    let agent = RunningAgent::start(restarted, registry(&["docker"]));
    wait_for("second session", DEADLINE, || {
        (control_plane.script.hellos().len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        control_plane.script.enrolments.lock().expect("lock").len(),
        1,
        "enrolled once"
    );
    agent.stop().await;
}
