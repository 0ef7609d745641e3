//! Changing and deleting what is stored (environments, targets), and a migration that repairs data.

use super::*;

store_suite!(
    deleting_an_environment_refuses_dependents_and_removes_history,
    updating_a_target_keeps_its_identity_and_waits_for_unfinished_tasks,
    deleting_a_target_keeps_its_history_and_resolves_its_drift,
    migration_fails_all_but_the_newest_active_deployment,
);

async fn deleting_an_environment_refuses_dependents_and_removes_history(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    // History in both environments: deployments with tasks and logs, drift, variables.
    deploy(store, "dep-s1", "1.0", NOW, &[("ts1", "web-1")]).await;
    claim_and_complete(store, &[("ts1", TaskState::Succeeded, "ok")], NOW + 10).await;
    deploy(store, "dep-s2", "2.0", NOW + 100, &[("ts2", "web-1")]).await;
    claim_and_complete(store, &[("ts2", TaskState::Succeeded, "ok")], NOW + 110).await;
    deploy_to(
        store,
        "production",
        "dep-p1",
        "1.0",
        NOW + 200,
        &[("tp1", "db-1", "agent-2")],
    )
    .await;
    claim_and_complete_for(
        store,
        "agent-2",
        &[("tp1", TaskState::Succeeded, "ok")],
        NOW + 210,
    )
    .await;
    for (deployment_id, task_id) in [("dep-s1", "ts1"), ("dep-p1", "tp1")] {
        store
            .append_log(deployment_id, task_id, Some(1), NOW, "started")
            .await
            .ok_or_panic("log");
    }
    let staging_drift = drift_record("web-1", "web", DriftKind::Missing, NOW + 300);
    let production_drift = DriftRecord {
        environment: "production".to_owned(),
        agent_id: "agent-2".to_owned(),
        ..drift_record("db-1", "db", DriftKind::ImageChanged, NOW + 300)
    };
    for record in [&staging_drift, &production_drift] {
        store.upsert_drift(record).await.ok_or_panic("drift");
    }
    for env in ["staging", "production"] {
        store
            .set_variable(&variable(
                env,
                VariableKind::Var,
                "REGION",
                "eu",
                "alice",
                NOW,
            ))
            .await
            .ok_or_panic("variable");
    }

    assert_not_found(
        store.delete_environment("qa", false).await,
        "environment",
        "qa",
    );
    // Targets first (the first by name), then environments that come after it; history
    // does not lift either.
    for with_history in [false, true] {
        assert_conflict(
            store.delete_environment("staging", with_history).await,
            "target",
            "web-1",
        );
    }
    store
        .delete_target("web-1", NOW + 400)
        .await
        .ok_or_panic("web-1");
    store
        .delete_target("web-2", NOW + 400)
        .await
        .ok_or_panic("web-2");
    for with_history in [false, true] {
        assert_conflict(
            store.delete_environment("staging", with_history).await,
            "environment",
            "production",
        );
    }
    store
        .delete_target("db-1", NOW + 400)
        .await
        .ok_or_panic("db-1");
    // Deployments: the newest is named.
    assert_conflict(
        store.delete_environment("production", false).await,
        "deployment",
        "dep-p1",
    );
    assert_conflict(
        store.delete_environment("staging", false).await,
        "environment",
        "production",
    );
    // Nothing was deleted by the refusals.
    assert_eq!(store.list_environments().await.ok_or_panic("list").len(), 2);
    assert_eq!(
        store
            .list_variables("production")
            .await
            .ok_or_panic("variables")
            .len(),
        1
    );

    store
        .delete_environment("production", true)
        .await
        .ok_or_panic("delete production with its history");
    assert_not_found(
        store.get_environment("production").await,
        "environment",
        "production",
    );
    assert_not_found(store.get_deployment("dep-p1").await, "deployment", "dep-p1");
    assert_not_found(store.get_task("tp1").await, "task", "tp1");
    assert!(store
        .logs_after("dep-p1", 0, 100)
        .await
        .ok_or_panic("logs")
        .is_empty());
    assert!(store
        .list_drift(Some("production"), true)
        .await
        .ok_or_panic("drift")
        .is_empty());
    assert!(store
        .list_variables("production")
        .await
        .ok_or_panic("variables")
        .is_empty());
    // Staging's history is untouched.
    assert_eq!(
        store
            .list_deployments(Some("staging"), 10)
            .await
            .ok_or_panic("staging deployments")
            .len(),
        2
    );
    assert_eq!(
        store
            .logs_after("dep-s1", 0, 100)
            .await
            .ok_or_panic("logs")
            .len(),
        1
    );
    assert_eq!(
        store
            .list_drift(Some("staging"), true)
            .await
            .ok_or_panic("drift")
            .len(),
        1
    );
    assert_eq!(
        store
            .list_variables("staging")
            .await
            .ok_or_panic("variables")
            .len(),
        1
    );

    // Now only staging's own history holds it.
    assert_conflict(
        store.delete_environment("staging", false).await,
        "deployment",
        "dep-s2",
    );
    store
        .delete_environment("staging", true)
        .await
        .ok_or_panic("delete staging with its history");
    assert!(store
        .list_environments()
        .await
        .ok_or_panic("list")
        .is_empty());
    assert!(store
        .list_deployments(None, 10)
        .await
        .ok_or_panic("deployments")
        .is_empty());
    assert!(store
        .list_drift(None, true)
        .await
        .ok_or_panic("drift")
        .is_empty());

    // An environment without history goes without `with_history`.
    store
        .create_environment(&environment("qa", None, NOW))
        .await
        .ok_or_panic("qa");
    store
        .delete_environment("qa", false)
        .await
        .ok_or_panic("delete qa");
    assert_not_found(
        store.delete_environment("qa", false).await,
        "environment",
        "qa",
    );
}

async fn updating_a_target_keeps_its_identity_and_waits_for_unfinished_tasks(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let original = store.get_target("web-1").await.ok_or_panic("get");
    // Only the agent and settings change, whatever else the caller sends.
    let update = Target {
        environment: "production".to_owned(),
        kind: TargetKind::Compose,
        agent_id: "agent-2".to_owned(),
        settings: BTreeMap::from([("project".to_owned(), "shop".to_owned())]),
        created_at_ms: NOW + 999,
        ..original.clone()
    };
    store.update_target(&update).await.ok_or_panic("update");
    let expected = Target {
        agent_id: update.agent_id.clone(),
        settings: update.settings.clone(),
        ..original.clone()
    };
    assert_eq!(store.get_target("web-1").await.ok_or_panic("get"), expected);
    assert_eq!(
        store
            .targets_for_agent("agent-2")
            .await
            .ok_or_panic("agent-2")
            .into_iter()
            .map(|t| t.name)
            .collect::<Vec<_>>(),
        ["db-1", "web-1"]
    );

    assert_not_found(
        store
            .update_target(&target("web-9", "staging", "agent-1"))
            .await,
        "target",
        "web-9",
    );
    assert_not_found(
        store
            .update_target(&Target {
                agent_id: "agent-9".to_owned(),
                ..expected.clone()
            })
            .await,
        "agent",
        "agent-9",
    );
    assert_eq!(store.get_target("web-1").await.ok_or_panic("get"), expected);

    // Pending, then assigned: refused, naming the deployment; finished: allowed.
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-2")]).await;
    let web_2 = store.get_target("web-2").await.ok_or_panic("get");
    let moved = Target {
        agent_id: "agent-2".to_owned(),
        ..web_2.clone()
    };
    assert_conflict(store.update_target(&moved).await, "deployment", "dep-1");
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 10)
        .await
        .ok_or_panic("claim");
    assert_eq!(sorted_ids(&claimed), ["t1"]);
    assert_conflict(store.update_target(&moved).await, "deployment", "dep-1");
    assert_eq!(store.get_target("web-2").await.ok_or_panic("get"), web_2);
    // Another target of the same deployment's environment is not held.
    store
        .update_target(&Target {
            agent_id: "agent-1".to_owned(),
            ..expected
        })
        .await
        .ok_or_panic("update web-1 meanwhile");
    store
        .complete_task("t1", 1, TaskState::Failed, "crashed", NOW + 20)
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("t1 completes"));
    store
        .update_target(&moved)
        .await
        .ok_or_panic("update when finished");
    assert_eq!(store.get_target("web-2").await.ok_or_panic("get"), moved);
}

async fn deleting_a_target_keeps_its_history_and_resolves_its_drift(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1", "web-1"), ("t2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[
            ("t1", TaskState::Succeeded, "ok"),
            ("t2", TaskState::Succeeded, "ok"),
        ],
        NOW + 10,
    )
    .await;
    // web-1: a finding resolved earlier and an open one; web-2: an open one.
    let web_1_old = drift_record("web-1", "web", DriftKind::ImageChanged, NOW + 20);
    store.upsert_drift(&web_1_old).await.ok_or_panic("drift");
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 30)
            .await
            .ok_or_panic("resolve")
            .len(),
        1
    );
    let web_1_open = drift_record("web-1", "web", DriftKind::Missing, NOW + 40);
    let web_2_open = drift_record("web-2", "web", DriftKind::Missing, NOW + 40);
    for record in [&web_1_open, &web_2_open] {
        store.upsert_drift(record).await.ok_or_panic("drift");
    }

    store
        .delete_target("web-1", NOW + 100)
        .await
        .ok_or_panic("delete");
    assert_not_found(store.get_target("web-1").await, "target", "web-1");
    assert_not_found(
        store.delete_target("web-1", NOW + 200).await,
        "target",
        "web-1",
    );
    // Its history stays.
    let t1 = store.get_task("t1").await.ok_or_panic("task history");
    assert_eq!(
        (t1.target.as_str(), t1.state),
        ("web-1", TaskState::Succeeded)
    );
    assert_eq!(
        store
            .tasks_of_deployment("dep-1")
            .await
            .ok_or_panic("tasks")
            .len(),
        2
    );
    // Its open finding is resolved now; the one resolved before keeps its time; another
    // target's is still open.
    let resolved_at = |r: &DriftRecord, at: i64| DriftRecord {
        resolved_at_ms: Some(at),
        ..r.clone()
    };
    assert_eq!(
        store
            .list_drift(Some("staging"), true)
            .await
            .ok_or_panic("drift"),
        [
            resolved_at(&web_1_open, NOW + 100),
            web_2_open.clone(),
            resolved_at(&web_1_old, NOW + 30),
        ]
    );
    // Its agent no longer drives it.
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired")
            .into_iter()
            .map(|d| d.target)
            .collect::<Vec<_>>(),
        ["web-2"]
    );

    // Refused while a task on it is unfinished.
    deploy(store, "dep-2", "2.0", NOW + 300, &[("t3", "web-2")]).await;
    assert_conflict(
        store.delete_target("web-2", NOW + 400).await,
        "deployment",
        "dep-2",
    );
    assert!(store.get_target("web-2").await.is_ok());
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("drift"),
        [web_2_open],
        "a refused delete resolves nothing"
    );
}

async fn migration_fails_all_but_the_newest_active_deployment(f: &Fixture) {
    let url = f.other_database_url().await;
    database_at_0002(&url, f.store.backend()).await;
    // Captured output, shown if the case fails.
    eprintln!("database migrated from 0002: {url}");
    let store = &connect(&url).await;
    let stored_deployment =
        |id: &'static str| async move { store.get_deployment(id).await.ok_or_panic(id) };
    let stored_task = |id: &'static str| async move { store.get_task(id).await.ok_or_panic(id) };

    // The older active deployment of staging is failed, with its open tasks.
    let old = stored_deployment("dep-old").await;
    assert_eq!(old.state, DeploymentState::Failed, "{old:?}");
    assert!(
        old.message
            .as_deref()
            .is_some_and(|m| m.starts_with("superseded")),
        "{old:?}"
    );
    assert!(old.finished_at_ms.is_some(), "{old:?}");
    for id in ["t-old-running", "t-old-waiting"] {
        let t = stored_task(id).await;
        assert_eq!(t.state, TaskState::Failed, "{t:?}");
        assert!(
            t.message
                .as_deref()
                .is_some_and(|m| m.starts_with("superseded")),
            "{t:?}"
        );
        assert!(t.finished_at_ms.is_some(), "{t:?}");
    }
    let old_ok = stored_task("t-old-ok").await;
    assert_eq!(
        (old_ok.state, old_ok.finished_at_ms),
        (TaskState::Succeeded, Some(NOW + 1_500)),
        "a finished task keeps its result"
    );
    // The newer one stays active; production's, alone there, too.
    let new = stored_deployment("dep-new").await;
    assert_eq!(
        (new.state, new.finished_at_ms),
        (DeploymentState::Pending, None)
    );
    assert_eq!(stored_task("t-new").await.state, TaskState::Pending);
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-new".to_owned())
    );
    assert_eq!(
        stored_deployment("dep-prod").await.state,
        DeploymentState::Running
    );
    assert_eq!(stored_task("t-prod").await.state, TaskState::Assigned);
    let done = stored_deployment("dep-done").await;
    assert_eq!(
        (done.state, done.finished_at_ms),
        (DeploymentState::Succeeded, Some(NOW + 500))
    );

    // Generations in creation order (ties by id), carried by the tasks.
    let expected = [
        ("dep-done", 1, &["t-done"][..]),
        (
            "dep-old",
            2,
            &["t-old-ok", "t-old-running", "t-old-waiting"][..],
        ),
        ("dep-prod", 3, &["t-prod"][..]),
        ("dep-new", 4, &["t-new"][..]),
    ];
    for (id, generation, tasks) in expected {
        assert_eq!(stored_deployment(id).await.generation, generation, "{id}");
        for task_id in tasks {
            assert_eq!(
                stored_task(task_id).await.generation,
                generation,
                "{task_id}"
            );
        }
    }
    assert_eq!(
        store
            .latest_succeeded_task("web-1")
            .await
            .ok_or_panic("latest")
            .map(|t| t.id),
        Some("t-old-ok".to_owned())
    );

    // The late result of a superseded task is discarded.
    assert_eq!(
        store
            .complete_task("t-old-running", 1, TaskState::Succeeded, "ok", NOW + 9_000)
            .await
            .ok_or_panic("late result"),
        None
    );
    // New generations follow the migrated ones (PostgreSQL: the sequence starts there),
    // and the index holds from now on.
    store
        .create_environment(&environment("qa", None, NOW))
        .await
        .ok_or_panic("qa");
    assert_eq!(
        store
            .create_deployment(&deployment("dep-5", "qa", "1.0", NOW + 10_000), &[])
            .await
            .ok_or_panic("dep-5"),
        5
    );
    assert_conflict(
        store
            .create_deployment(&deployment("dep-6", "staging", "1.0", NOW + 10_000), &[])
            .await,
        "active deployment",
        "staging",
    );
    store.close().await;
}
