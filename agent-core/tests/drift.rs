//! The desired state and the drift loop, against a fake target kind that keeps the default
//! `detect_drift`.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use stella_agent_core::{AgentConfig, ObservedComponent, Sticker};
use stella_proto::v1;
use support::{
    agent_config, credential, deploy_task, desired_state, digest, init_tracing, wait_for, DataDir,
    FakeDriftTarget, RunningAgent, ScriptedControlPlane, DEADLINE,
};
use tokio::time::Instant;

async fn connected(control_plane: &ScriptedControlPlane, sessions: usize) {
    wait_for("a welcomed session", DEADLINE, || {
        (control_plane.script.hellos().len() >= sessions
            && control_plane.script.open_sessions() == 1)
            .then_some(())
    })
    .await;
}

fn config(control_plane: &ScriptedControlPlane, data_dir: &DataDir, interval: u64) -> AgentConfig {
    let mut config = agent_config(control_plane, data_dir);
    config.drift_interval_seconds = interval;
    config
}

/// The drift reports received so far, from index `from` on.
fn reports_from(control_plane: &ScriptedControlPlane, from: usize) -> Vec<v1::DriftReport> {
    control_plane
        .script
        .drift_reports()
        .into_iter()
        .skip(from)
        .map(|(_, report)| report)
        .collect()
}

/// Waits for a report matching `wanted` among those from index `from` on; returns its
/// index.
async fn report_matching(
    control_plane: &ScriptedControlPlane,
    from: usize,
    what: &str,
    timeout: Duration,
    wanted: impl Fn(&v1::DriftReport) -> bool,
) -> usize {
    wait_for(what, timeout, || {
        reports_from(control_plane, from)
            .iter()
            .position(&wanted)
            .map(|index| from + index)
    })
    .await
}

fn kinds_of(reports: &[v1::DriftReport]) -> BTreeSet<(String, String, String)> {
    reports
        .iter()
        .map(|r| (r.target.clone(), r.component.clone(), r.kind.clone()))
        .collect()
}

fn finding(target: &str, component: &str, kind: &str) -> (String, String, String) {
    (target.to_owned(), component.to_owned(), kind.to_owned())
}

#[tokio::test]
async fn the_desired_state_is_stored_without_credentials_and_survives_a_restart() {
    const PASSWORD: &str = "pw-desired-Q7";
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let mut desired = deploy_task("web-1", "fake", &[("api", 'a')]);
    // The server sends none, but a stray credential must not reach the disk either.
    desired.registry_auth = vec![credential(PASSWORD)];
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&desired]));
    let target = FakeDriftTarget::new();
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 1).await;

    let stored = data_dir.path().join("desired.json");
    let json: serde_json::Value = wait_for("desired.json", DEADLINE, || {
        std::fs::read(&stored)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    })
    .await;
    assert_eq!(json["targets"]["web-1"]["release"], "shop");
    assert_eq!(
        json["targets"]["web-1"]["components"][0]["image"],
        format!("registry.local/shop/api@{}", digest('a'))
    );
    assert!(
        json["targets"]["web-1"].get("registry_auth").is_none(),
        "{json}"
    );
    let text = std::fs::read_to_string(&stored).expect("read");
    assert!(!text.contains(PASSWORD));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&stored)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Nothing runs on the fake target: the component is missing.
    report_matching(&control_plane, 0, "a missing report", DEADLINE, |r| {
        r.target == "web-1" && r.component == "api" && r.kind == "missing"
    })
    .await;
    agent.stop().await;

    // Restarted, and this time the server says nothing about the desired state.
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = None;
    let before = control_plane.script.drift_reports().len();
    let target = FakeDriftTarget::new();
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 2).await;
    let index = report_matching(
        &control_plane,
        before,
        "a missing report after the restart",
        DEADLINE,
        |r| r.target == "web-1" && r.component == "api" && r.kind == "missing",
    )
    .await;
    let (session, _) = control_plane.script.drift_reports().remove(index);
    assert_eq!(session, 1, "reported on the new session");
    assert!(target.inspections("web-1") >= 1);
    agent.stop().await;
}

#[tokio::test]
async fn the_drift_loop_reports_each_kind_every_interval_then_resolved() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let desired = deploy_task("web-1", "fake", &[("api", 'a'), ("web", 'b'), ("db", 'c')]);
    let target = FakeDriftTarget::new();
    target.converge(&desired);
    // api runs another image (its sticker is intact).
    // web does not run at all.
    // db's sticker was edited after it was written.
    // cache runs but was never deployed.
    let mut observed: Vec<ObservedComponent> = Vec::new();
    let sticker_of = |name: &str| {
        let component = desired
            .components
            .iter()
            .find(|c| c.name == name)
            .expect("component");
        desired.sticker(component, "agent")
    };
    let api = sticker_of("api");
    observed.push(ObservedComponent {
        component: "api".to_owned(),
        image_digest: digest('d'),
        sticker_digest: Some(api.sticker_digest.clone()),
    });
    target.set_sticker("web-1", api);
    let db = sticker_of("db");
    observed.push(ObservedComponent {
        component: "db".to_owned(),
        image_digest: digest('c'),
        sticker_digest: Some(db.sticker_digest.clone()),
    });
    let mut tampered: Sticker = db;
    tampered.version = "9.9.9".to_owned();
    target.set_sticker("web-1", tampered);
    observed.push(ObservedComponent {
        component: "cache".to_owned(),
        image_digest: digest('e'),
        sticker_digest: None,
    });
    target.set_observed("web-1", observed);

    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&desired]));
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 1), target.registry());
    connected(&control_plane, 1).await;

    let expected = BTreeSet::from([
        finding("web-1", "api", "image_changed"),
        finding("web-1", "web", "missing"),
        finding("web-1", "db", "sticker_tampered"),
        finding("web-1", "cache", "unexpected"),
    ]);
    // Findings are re-sent every round: wait for two rounds' worth. (The first round
    // after a start also resolves, one by one, the kinds it does not find.)
    let reports = wait_for("two rounds of findings", DEADLINE, || {
        let reports: Vec<v1::DriftReport> = reports_from(&control_plane, 0)
            .into_iter()
            .filter(|r| r.kind != "resolved")
            .collect();
        (reports.len() >= 2 * expected.len()).then_some(reports)
    })
    .await;
    let first_round = &reports[..expected.len()];
    assert_eq!(kinds_of(first_round), expected, "{first_round:#?}");
    assert!(first_round.iter().all(|r| r.observed_at_unix_ms
        == first_round[0].observed_at_unix_ms
        && r.observed_at_unix_ms > 0));
    assert_eq!(
        kinds_of(&reports[expected.len()..2 * expected.len()]),
        expected
    );
    let detail = |component: &str| {
        first_round
            .iter()
            .find(|r| r.component == component)
            .map(|r| r.detail.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        detail("api"),
        format!("runs {}, desired {}", digest('d'), digest('a'))
    );
    assert!(detail("db").contains("sticker_digest"), "{}", detail("db"));

    // Someone puts things right; the next round says so, once.
    target.converge(&desired);
    let resolved = report_matching(&control_plane, 0, "resolved", DEADLINE, |r| {
        r.kind == "resolved" && r.resolved_kind.is_empty()
    })
    .await;
    let report = &reports_from(&control_plane, resolved)[0];
    assert_eq!(
        (report.target.as_str(), report.component.as_str()),
        ("web-1", "")
    );
    // Two more interval rounds pass (the interval is 1 s) without another report.
    let inspections = target.inspections("web-1");
    wait_for("two more rounds", DEADLINE, || {
        (target.inspections("web-1") >= inspections + 2).then_some(())
    })
    .await;
    let after: Vec<v1::DriftReport> = reports_from(&control_plane, resolved + 1);
    assert!(after.is_empty(), "{after:#?}");
    agent.stop().await;
}

#[tokio::test]
async fn a_watch_notification_triggers_a_round_long_before_the_interval() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let desired = deploy_task("web-1", "fake", &[("api", 'a')]);
    let target = FakeDriftTarget::new();
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&desired]));
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 1).await;
    assert!(
        target.is_watched(),
        "the agent handed the kind a notify sender"
    );
    // The round after Welcome and DesiredState finds nothing running.
    report_matching(&control_plane, 0, "missing", DEADLINE, |r| {
        r.kind == "missing"
    })
    .await;

    // Twice, so the first answer cannot come from a round that was pending anyway.
    for (change, wanted) in [("fixed", "resolved"), ("broken", "missing")] {
        let from = control_plane.script.drift_reports().len();
        if change == "fixed" {
            target.converge(&desired);
        } else {
            target.set_observed("web-1", Vec::new());
        }
        let notified = Instant::now();
        target.notify("web-1");
        report_matching(
            &control_plane,
            from,
            &format!("{wanted} after the notification"),
            Duration::from_secs(2),
            |r| r.kind == wanted,
        )
        .await;
        assert!(notified.elapsed() < Duration::from_secs(2));
    }
    agent.stop().await;
}

#[tokio::test]
async fn no_drift_check_while_a_deploy_changes_the_target_and_one_right_after() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let web1 = deploy_task("web-1", "fake", &[("api", 'a')]);
    let web2 = deploy_task("web-2", "fake", &[("api", 'a')]);
    let target = FakeDriftTarget::gated();
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&web1, &web2]));
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 1).await;
    for name in ["web-1", "web-2"] {
        report_matching(&control_plane, 0, "missing", DEADLINE, |r| {
            r.target == name && r.kind == "missing"
        })
        .await;
    }

    // Deploy a new version to web-1 and hold it in `apply`.
    let next = deploy_task("web-1", "fake", &[("api", 'f')]);
    control_plane
        .script
        .push(&v1::server_message::Body::TaskAssignment(
            v1::TaskAssignment {
                task_id: "deploy-1".to_owned(),
                epoch: 1,
                kind: "deploy".to_owned(),
                payload_json: serde_json::to_vec(&next).expect("payload"),
                deadline_unix_ms: 0,
            },
        ));
    wait_for("apply to start", DEADLINE, || {
        (target.applies.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let web1_inspections = target.inspections("web-1");
    let from = control_plane.script.drift_reports().len();
    target.notify("web-1");
    target.notify("web-2");
    // web-2's report shows the round ran; web-1 was left alone.
    report_matching(&control_plane, from, "web-2 checked", DEADLINE, |r| {
        r.target == "web-2"
    })
    .await;
    assert_eq!(target.inspections("web-1"), web1_inspections);
    assert!(reports_from(&control_plane, from)
        .iter()
        .all(|r| r.target != "web-1"));

    // Once the deploy is done, web-1 is checked against what was deployed, and matches.
    target.release();
    wait_for("the deploy result", DEADLINE, || {
        (!control_plane.script.results("deploy-1").is_empty()).then_some(())
    })
    .await;
    report_matching(&control_plane, from, "web-1 resolved", DEADLINE, |r| {
        r.target == "web-1" && r.kind == "resolved"
    })
    .await;
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.path().join("desired.json")).expect("desired.json"),
    )
    .expect("json");
    assert_eq!(
        json["targets"]["web-1"]["components"][0]["image"],
        format!("registry.local/shop/api@{}", digest('f')),
        "the deployment became web-1's desired state"
    );
    agent.stop().await;
}

#[tokio::test]
async fn drift_found_while_disconnected_is_not_queued_but_found_again() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let desired = deploy_task("web-1", "fake", &[("api", 'a')]);
    let target = FakeDriftTarget::new();
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&desired]));
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 1).await;
    report_matching(&control_plane, 0, "missing", DEADLINE, |r| {
        r.kind == "missing"
    })
    .await;

    // Offline, with a change the watch reports, for longer than the debounce.
    let script = &control_plane.script;
    script.refuse_connects.store(true, Ordering::SeqCst);
    let connects = script.connects.load(Ordering::SeqCst);
    script.drop_sessions();
    wait_for("a refused reconnect", DEADLINE, || {
        (script.connects.load(Ordering::SeqCst) > connects).then_some(())
    })
    .await;
    target.converge(&desired);
    target.notify("web-1");
    let notified = Instant::now();
    wait_for("the debounce to pass while offline", DEADLINE, || {
        (notified.elapsed() >= Duration::from_secs(1)
            && script.connects.load(Ordering::SeqCst) > connects + 1)
            .then_some(())
    })
    .await;
    let online_again_ms = unix_ms_now();
    script.refuse_connects.store(false, Ordering::SeqCst);
    connected(&control_plane, 2).await;

    let reports = wait_for("a report on the new session", DEADLINE, || {
        let reports: Vec<v1::DriftReport> = script
            .drift_reports()
            .into_iter()
            .filter(|(session, _)| *session == 1)
            .map(|(_, report)| report)
            .collect();
        (!reports.is_empty()).then_some(reports)
    })
    .await;
    assert_eq!(reports[0].kind, "resolved", "{reports:#?}");
    assert!(
        reports
            .iter()
            .all(|r| r.observed_at_unix_ms >= online_again_ms),
        "nothing observed while offline was sent: {reports:#?}"
    );
    agent.stop().await;
}

fn unix_ms_now() -> i64 {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    i64::try_from(elapsed.as_millis()).expect("ms")
}

/// `(component, resolved_kind)` of the per-finding `resolved` reports among `reports`.
fn resolved_findings(reports: &[v1::DriftReport]) -> BTreeSet<(String, String)> {
    reports
        .iter()
        .filter(|r| r.kind == "resolved" && !r.resolved_kind.is_empty())
        .map(|r| (r.component.clone(), r.resolved_kind.clone()))
        .collect()
}

#[tokio::test]
async fn a_finding_that_ends_while_others_last_is_resolved_on_its_own() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let desired = deploy_task("web-1", "fake", &[("api", 'a'), ("web", 'b')]);
    let target = FakeDriftTarget::new();
    // api runs another image; web is missing.
    target.converge(&desired);
    let sticker = desired.sticker(&desired.components[0], "agent");
    target.set_observed(
        "web-1",
        vec![ObservedComponent {
            component: "api".to_owned(),
            image_digest: digest('d'),
            sticker_digest: Some(sticker.sticker_digest.clone()),
        }],
    );
    target.set_sticker("web-1", sticker.clone());
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&desired]));
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 1).await;

    // The first round after a start cannot know what the server holds open: every kind
    // it does not find on a desired component is resolved on its own, before the
    // findings, and the target as a whole is not.
    let first = report_matching(&control_plane, 0, "web missing", DEADLINE, |r| {
        r.component == "web" && r.kind == "missing"
    })
    .await;
    let round = reports_from(&control_plane, 0);
    let before_findings = &round[..=first];
    let resolved = resolved_findings(before_findings);
    for kind in [
        "missing",
        "sticker_tampered",
        "unexpected",
        "config_changed",
    ] {
        assert!(
            resolved.contains(&("api".to_owned(), kind.to_owned())),
            "api {kind}: {round:#?}"
        );
    }
    assert!(!resolved.contains(&("api".to_owned(), "image_changed".to_owned())));
    assert!(!resolved.contains(&("web".to_owned(), "missing".to_owned())));
    assert!(
        round
            .iter()
            .all(|r| !(r.kind == "resolved" && r.resolved_kind.is_empty())),
        "{round:#?}"
    );

    // web comes back; api still runs the wrong image: web's `missing` alone is resolved.
    let from = control_plane.script.drift_reports().len();
    let web = desired.sticker(&desired.components[1], "agent");
    target.set_observed(
        "web-1",
        vec![
            ObservedComponent {
                component: "api".to_owned(),
                image_digest: digest('d'),
                sticker_digest: Some(sticker.sticker_digest.clone()),
            },
            ObservedComponent {
                component: "web".to_owned(),
                image_digest: digest('b'),
                sticker_digest: Some(web.sticker_digest.clone()),
            },
        ],
    );
    target.set_sticker("web-1", web);
    target.notify("web-1");
    let image_changed = report_matching(&control_plane, from, "api image_changed", DEADLINE, |r| {
        r.component == "api" && r.kind == "image_changed"
    })
    .await;
    let round = reports_from(&control_plane, from);
    let upto = &round[..=image_changed - from];
    assert_eq!(
        resolved_findings(upto),
        BTreeSet::from([("web".to_owned(), "missing".to_owned())]),
        "{round:#?}"
    );
    let resolution = upto
        .iter()
        .find(|r| r.kind == "resolved")
        .expect("a resolution");
    assert_eq!(resolution.target, "web-1");
    assert!(resolution.observed_at_unix_ms > 0);

    // And when the target is clean, one report resolves it as a whole.
    let from = control_plane.script.drift_reports().len();
    target.converge(&desired);
    target.notify("web-1");
    let clean = report_matching(&control_plane, from, "resolved", DEADLINE, |r| {
        r.kind == "resolved"
    })
    .await;
    let report = &reports_from(&control_plane, clean)[0];
    assert_eq!(
        (report.component.as_str(), report.resolved_kind.as_str()),
        ("", "")
    );
    agent.stop().await;
}

/// What a server sends when it builds a desired state before it stored the result the
/// agent just reported: the target's previous deployment, under its older generation.
#[tokio::test]
async fn a_stale_desired_state_from_the_server_does_not_undo_a_deploy() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let mut old = deploy_task("web-1", "fake", &[("api", 'a')]);
    old.generation = 1;
    // A second target with drift: its report shows that a round ran.
    let witness = deploy_task("web-2", "fake", &[("api", 'a')]);
    let target = FakeDriftTarget::new();
    target.converge(&old);
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&old, &witness]));
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 1).await;

    let mut next = deploy_task("web-1", "fake", &[("api", 'f')]);
    next.deployment_id = "dep-next".to_owned();
    next.generation = 2;
    control_plane
        .script
        .push(&v1::server_message::Body::TaskAssignment(
            v1::TaskAssignment {
                task_id: "deploy-next".to_owned(),
                epoch: 1,
                kind: "deploy".to_owned(),
                payload_json: serde_json::to_vec(&next).expect("payload"),
                deadline_unix_ms: 0,
            },
        ));
    wait_for("the deploy result", DEADLINE, || {
        (!control_plane.script.results("deploy-next").is_empty()).then_some(())
    })
    .await;
    let from = control_plane.script.drift_reports().len();
    control_plane
        .script
        .push(&v1::server_message::Body::DesiredState(desired_state(&[
            &old, &witness,
        ])));
    target.notify("web-1");
    target.notify("web-2");
    report_matching(&control_plane, from, "a round over web-2", DEADLINE, |r| {
        r.target == "web-2" && r.kind == "missing"
    })
    .await;
    let web1: Vec<_> = reports_from(&control_plane, from)
        .into_iter()
        .filter(|r| r.target == "web-1" && r.kind != "resolved")
        .collect();
    assert!(web1.is_empty(), "false drift on web-1: {web1:?}");
    agent.stop().await;
}

#[tokio::test]
async fn a_target_the_server_stops_listing_is_forgotten_by_its_kind_and_no_longer_checked() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let kept = deploy_task("web-1", "fake", &[("api", 'a')]);
    let dropped = deploy_task("web-2", "fake", &[("api", 'a')]);
    let target = FakeDriftTarget::new();
    target.converge(&kept);
    target.converge(&dropped);
    *control_plane
        .script
        .desired_on_welcome
        .lock()
        .expect("lock") = Some(desired_state(&[&kept, &dropped]));
    let agent = RunningAgent::start(config(&control_plane, &data_dir, 60), target.registry());
    connected(&control_plane, 1).await;
    wait_for("a round over both targets", DEADLINE, || {
        (target.inspections("web-1") > 0 && target.inspections("web-2") > 0).then_some(())
    })
    .await;
    assert!(target.forgotten().is_empty(), "{:?}", target.forgotten());

    control_plane
        .script
        .push(&v1::server_message::Body::DesiredState(desired_state(&[
            &kept,
        ])));
    wait_for("web-2 forgotten", DEADLINE, || {
        (target.forgotten() == vec!["web-2".to_owned()]).then_some(())
    })
    .await;
    // Rounds after that look at web-1 only.
    let web2 = target.inspections("web-2");
    let web1 = target.inspections("web-1");
    target.notify("web-1");
    target.notify("web-2");
    wait_for("another round over web-1", DEADLINE, || {
        (target.inspections("web-1") > web1).then_some(())
    })
    .await;
    assert_eq!(
        target.inspections("web-2"),
        web2,
        "a forgotten target was checked"
    );
    assert_eq!(
        target.forgotten(),
        vec!["web-2".to_owned()],
        "forgotten once"
    );
    agent.stop().await;
}
