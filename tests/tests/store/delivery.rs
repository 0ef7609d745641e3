//! Deployments and their tasks: claims and epochs, state, expiry, desired payloads, listing, logs, drift.

use super::*;

store_suite!(
    claims_raise_the_epoch_and_stale_results_are_discarded,
    pending_claims_leave_assigned_tasks_alone,
    deployment_state_follows_its_tasks,
    expired_tasks_fail_their_deployment,
    desired_payloads_pick_the_latest_succeeded_task,
    deployments_are_listed_newest_first,
    logs_after_paginates_in_order,
    drift_is_upserted_resolved_and_listed,
    a_drift_finding_is_resolved_on_its_own,
    concurrent_results_finish_the_deployment_once,
);

async fn pending_claims_leave_assigned_tasks_alone(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("task-a", "web-1")]).await;
    let first = store
        .claim_pending_tasks_for_agent("agent-1", NOW + 1_000)
        .await
        .ok_or_panic("claim");
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].epoch, first[0].state), (1, TaskState::Assigned));
    // An open session is sent only what it has not had: the assigned task keeps its epoch.
    // (In another environment: one deployment runs per environment at a time.)
    deploy_to(
        store,
        "production",
        "dep-2",
        "1.0",
        NOW + 1_500,
        &[("task-b", "db-1", "agent-1")],
    )
    .await;
    let second = store
        .claim_pending_tasks_for_agent("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("claim pending");
    let ids: Vec<(&str, i64)> = second.iter().map(|t| (t.id.as_str(), t.epoch)).collect();
    assert_eq!(ids, [("task-b", 1)]);
    assert_eq!(store.get_task("task-a").await.ok_or_panic("get").epoch, 1);
    // A new session re-claims both.
    let third = store
        .claim_tasks_for_agent("agent-1", NOW + 3_000)
        .await
        .ok_or_panic("claim all");
    assert_eq!(third.len(), 2);
    assert!(third.iter().all(|t| t.epoch == 2));
}

async fn claims_raise_the_epoch_and_stale_results_are_discarded(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("task-b", "web-2"), ("task-a", "web-1")],
    )
    .await;
    let stored = store.get_task("task-a").await.ok_or_panic("get task");
    assert_eq!((stored.epoch, stored.state), (0, TaskState::Pending));
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Pending
    );
    assert_not_found(store.get_task("task-z").await, "task", "task-z");

    // Oldest first (task-b was created first), epoch 1, assigned.
    let first = store
        .claim_tasks_for_agent("agent-1", NOW + 1_000)
        .await
        .ok_or_panic("claim");
    let summary = |tasks: &[Task]| {
        tasks
            .iter()
            .map(|t| (t.id.clone(), t.epoch, t.state))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        summary(&first),
        [
            ("task-b".to_owned(), 1, TaskState::Assigned),
            ("task-a".to_owned(), 1, TaskState::Assigned),
        ]
    );
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    // Another agent has nothing to claim.
    assert!(store
        .claim_tasks_for_agent("agent-2", NOW + 1_000)
        .await
        .ok_or_panic("claim")
        .is_empty());

    // A reconnecting agent claims the same tasks again under a new epoch.
    let second = store
        .claim_tasks_for_agent("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("claim again");
    assert_eq!(
        summary(&second),
        [
            ("task-b".to_owned(), 2, TaskState::Assigned),
            ("task-a".to_owned(), 2, TaskState::Assigned),
        ]
    );
    assert_eq!(
        store.get_task("task-a").await.ok_or_panic("get").epoch,
        2,
        "claims are stored"
    );

    // A result under the old epoch is stale: ignored, nothing changes.
    let stale = store
        .complete_task("task-a", 1, TaskState::Succeeded, "ok", NOW + 3_000)
        .await
        .ok_or_panic("stale");
    assert_eq!(stale, None);
    assert_eq!(
        store.get_task("task-a").await.ok_or_panic("get").state,
        TaskState::Assigned
    );

    let done = store
        .complete_task(
            "task-a",
            2,
            TaskState::Succeeded,
            "started web",
            NOW + 3_000,
        )
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("current epoch must be accepted"));
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.epoch, 2);
    assert_eq!(done.message.as_deref(), Some("started web"));
    assert_eq!(done.finished_at_ms, Some(NOW + 3_000));
    assert_eq!(store.get_task("task-a").await.ok_or_panic("get"), done);

    // The same result again, or a late one: duplicates are ignored; so are unknown tasks.
    for (epoch, state) in [
        (2, TaskState::Succeeded),
        (2, TaskState::Failed),
        (3, TaskState::Failed),
    ] {
        let again = store
            .complete_task("task-a", epoch, state, "again", NOW + 4_000)
            .await
            .ok_or_panic("duplicate");
        assert_eq!(again, None);
    }
    assert_eq!(store.get_task("task-a").await.ok_or_panic("get"), done);
    assert_eq!(
        store
            .complete_task("task-z", 1, TaskState::Succeeded, "", NOW)
            .await
            .ok_or_panic("unknown"),
        None
    );

    // Finished tasks are not claimed again.
    let third = store
        .claim_tasks_for_agent("agent-1", NOW + 5_000)
        .await
        .ok_or_panic("claim");
    assert_eq!(
        summary(&third),
        [("task-b".to_owned(), 3, TaskState::Assigned)]
    );
    // Nor are tasks past their deadline.
    assert!(store
        .claim_tasks_for_agent("agent-1", NOW + TASK_DEADLINE_MS)
        .await
        .ok_or_panic("claim late")
        .is_empty());
    assert_eq!(store.get_task("task-b").await.ok_or_panic("get").epoch, 3);
}

async fn deployment_state_follows_its_tasks(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;

    // Both succeed: running after the first, succeeded after the second.
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1-web-1", "web-1"), ("t1-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[("t1-web-1", TaskState::Succeeded, "ok")],
        NOW + 1_000,
    )
    .await;
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(
        (dep.state, dep.finished_at_ms),
        (DeploymentState::Running, None)
    );
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-1".to_owned())
    );
    claim_and_complete(
        store,
        &[("t1-web-2", TaskState::Succeeded, "")],
        NOW + 2_000,
    )
    .await;
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Succeeded);
    assert_eq!(dep.finished_at_ms, Some(NOW + 2_000));
    assert_eq!(dep.message, None);
    assert_eq!(
        store.get_task("t1-web-2").await.ok_or_panic("get").message,
        None,
        "an empty message is no message"
    );
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None
    );

    // One fails: the deployment fails with that task's target and message, once every
    // task has finished.
    deploy(
        store,
        "dep-2",
        "2.0",
        NOW + 10_000,
        &[("t2-web-1", "web-1"), ("t2-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[("t2-web-2", TaskState::Failed, "pull denied")],
        NOW + 11_000,
    )
    .await;
    assert_eq!(
        store.get_deployment("dep-2").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    claim_and_complete(
        store,
        &[("t2-web-1", TaskState::Succeeded, "ok")],
        NOW + 12_000,
    )
    .await;
    let dep = store.get_deployment("dep-2").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Failed);
    assert_eq!(dep.message.as_deref(), Some("web-2: pull denied"));
    assert_eq!(dep.finished_at_ms, Some(NOW + 12_000));

    let tasks = store
        .tasks_of_deployment("dep-2")
        .await
        .ok_or_panic("tasks");
    let states: Vec<_> = tasks
        .iter()
        .map(|t| (t.target.as_str(), t.state, t.message.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            ("web-1", TaskState::Succeeded, Some("ok")),
            ("web-2", TaskState::Failed, Some("pull denied")),
        ]
    );
    assert!(store
        .tasks_of_deployment("dep-9")
        .await
        .ok_or_panic("none")
        .is_empty());

    // Only dep-1 succeeded.
    let succeeded: Vec<_> = store
        .succeeded_deployments("staging", 10)
        .await
        .ok_or_panic("succeeded")
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(succeeded, ["dep-1"]);
}

async fn expired_tasks_fail_their_deployment(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let late = Task {
        deadline_at_ms: NOW + 1_000,
        ..task("late", "dep-1", "web-1", "agent-1", 0, "{}")
    };
    let on_time = task("on-time", "dep-1", "web-2", "agent-1", 1, "{}");
    store
        .create_deployment(
            &deployment("dep-1", "staging", "1.0", NOW),
            &[late, on_time],
        )
        .await
        .ok_or_panic("create");
    assert!(store
        .expire_tasks(NOW + 999, unanswered)
        .await
        .ok_or_panic("expire early")
        .is_empty());

    // The deadline is inclusive: at NOW + 1000 it has passed.
    let expired = store
        .expire_tasks(NOW + 1_000, unanswered)
        .await
        .ok_or_panic("expire");
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].id, "late");
    assert_eq!(expired[0].state, TaskState::Failed);
    assert_eq!(
        expired[0].message.as_deref(),
        Some("deadline passed: agent-1 did not answer")
    );
    assert_eq!(expired[0].finished_at_ms, Some(NOW + 1_000));
    assert_eq!(store.get_task("late").await.ok_or_panic("get"), expired[0]);
    // The other task is unfinished, so the deployment is still going.
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    assert!(store
        .expire_tasks(NOW + 2_000, unanswered)
        .await
        .ok_or_panic("again")
        .is_empty());

    // The agent claims and starts the other task but never answers.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "on-time");
    let expired = store
        .expire_tasks(NOW + TASK_DEADLINE_MS + 5, unanswered)
        .await
        .ok_or_panic("expire");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].id, "on-time");
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Failed);
    assert_eq!(
        dep.message.as_deref(),
        Some("web-1: deadline passed: agent-1 did not answer")
    );
    assert_eq!(dep.finished_at_ms, Some(NOW + TASK_DEADLINE_MS + 5));
    // A result arriving after expiry is discarded.
    assert_eq!(
        store
            .complete_task("on-time", claimed[0].epoch, TaskState::Succeeded, "ok", NOW)
            .await
            .ok_or_panic("late result"),
        None
    );
}

async fn desired_payloads_pick_the_latest_succeeded_task(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    // Every target of the agent is listed, with nothing deployed yet.
    let nothing = |target: &str| DesiredPayload {
        target: target.to_owned(),
        deployed: None,
    };
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired"),
        [nothing("web-1"), nothing("web-2")]
    );
    assert_eq!(
        store
            .latest_succeeded_task("web-1")
            .await
            .ok_or_panic("latest"),
        None
    );

    let generation_1 = deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1-web-1", "web-1"), ("t1-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[
            ("t1-web-1", TaskState::Succeeded, "ok"),
            ("t1-web-2", TaskState::Succeeded, "ok"),
        ],
        NOW + 1_000,
    )
    .await;
    // 2.0 reaches web-1 only; 3.0 fails on web-1.
    let generation_2 = deploy(
        store,
        "dep-2",
        "2.0",
        NOW + 10_000,
        &[("t2-web-1", "web-1"), ("t2-web-2", "web-2")],
    )
    .await;
    claim_and_complete(
        store,
        &[
            ("t2-web-1", TaskState::Succeeded, "ok"),
            ("t2-web-2", TaskState::Failed, "no space left"),
        ],
        NOW + 11_000,
    )
    .await;
    deploy(
        store,
        "dep-3",
        "3.0",
        NOW + 20_000,
        &[("t3-web-1", "web-1")],
    )
    .await;
    claim_and_complete(
        store,
        &[("t3-web-1", TaskState::Failed, "crashed")],
        NOW + 21_000,
    )
    .await;

    let desired = store
        .desired_payloads_for_agent("agent-1")
        .await
        .ok_or_panic("desired");
    assert_eq!(
        desired
            .iter()
            .map(|d| (
                d.target.as_str(),
                d.deployed.as_ref().map(|(p, g)| (p.as_str(), *g))
            ))
            .collect::<Vec<_>>(),
        [
            (
                "web-1",
                Some((r#"{"version":"2.0","target":"web-1"}"#, generation_2))
            ),
            (
                "web-2",
                Some((r#"{"version":"1.0","target":"web-2"}"#, generation_1))
            ),
        ]
    );
    let latest = store
        .latest_succeeded_task("web-1")
        .await
        .ok_or_panic("latest")
        .unwrap_or_else(|| panic!("web-1 has succeeded tasks"));
    assert_eq!(latest.id, "t2-web-1");
    assert_eq!(latest.deployment_id, "dep-2");
    // agent-2's target never had a deployment: listed, with nothing to run.
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-2")
            .await
            .ok_or_panic("desired"),
        [nothing("db-1")]
    );
    assert!(store
        .desired_payloads_for_agent("agent-9")
        .await
        .ok_or_panic("desired")
        .is_empty());
}

async fn deployments_are_listed_newest_first(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-1".to_owned())
    );
    // dep-1 finishes last (its replica's clock runs ahead): it is still listed by
    // creation, and first by finish time.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 5)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 1);
    store
        .complete_task("t1", 1, TaskState::Succeeded, "ok", NOW + 300)
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("t1 completes"));
    deploy(store, "dep-2", "2.0", NOW + 10, &[("t2", "web-1")]).await;
    let prod = Deployment {
        kind: DeploymentKind::Rollback,
        message: Some("back to 1.0".to_owned()),
        ..deployment("dep-3", "production", "1.0", NOW + 20)
    };
    let prod_generation = store
        .create_deployment(&prod, &[task("t3", "dep-3", "db-1", "agent-2", 20, "{}")])
        .await
        .ok_or_panic("prod");
    assert_eq!(
        store.get_deployment("dep-3").await.ok_or_panic("get"),
        Deployment {
            generation: prod_generation,
            ..prod
        }
    );
    assert_not_found(store.get_deployment("dep-9").await, "deployment", "dep-9");

    let ids =
        |deployments: Vec<Deployment>| deployments.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_deployments(None, 10).await.ok_or_panic("all")),
        ["dep-3", "dep-2", "dep-1"]
    );
    assert_eq!(
        ids(store.list_deployments(None, 2).await.ok_or_panic("limited")),
        ["dep-3", "dep-2"]
    );
    assert_eq!(
        ids(store
            .list_deployments(Some("staging"), 10)
            .await
            .ok_or_panic("staging")),
        ["dep-2", "dep-1"]
    );
    // The pending or running one is active.
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-2".to_owned())
    );

    // dep-2 finishes before dep-1 did: newest by finish time first.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 100)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 1);
    store
        .complete_task("t2", 1, TaskState::Succeeded, "ok", NOW + 200)
        .await
        .ok_or_panic("complete")
        .unwrap_or_else(|| panic!("t2 completes"));
    assert_eq!(
        ids(store
            .succeeded_deployments("staging", 10)
            .await
            .ok_or_panic("succeeded")),
        ["dep-1", "dep-2"]
    );
    assert_eq!(
        ids(store
            .succeeded_deployments("staging", 1)
            .await
            .ok_or_panic("succeeded")),
        ["dep-1"]
    );
    assert!(store
        .succeeded_deployments("production", 10)
        .await
        .ok_or_panic("prod")
        .is_empty());
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None
    );

    // A deployment needs its environment and release; task ids are unique; nothing is
    // written when any of it fails. (A taken deployment id: its own case.)
    assert_not_found(
        store
            .create_deployment(&deployment("dep-4", "qa", "1.0", NOW), &[])
            .await,
        "environment",
        "qa",
    );
    assert_not_found(
        store
            .create_deployment(&deployment("dep-4", "staging", "9.9", NOW), &[])
            .await,
        "release",
        "app@9.9",
    );
    assert_conflict(
        store
            .create_deployment(
                &deployment("dep-4", "staging", "1.0", NOW + 50),
                &[
                    task("t4", "dep-4", "web-1", "agent-1", 50, "{}"),
                    task("t1", "dep-4", "web-2", "agent-1", 50, "{}"),
                ],
            )
            .await,
        "task",
        "t1",
    );
    assert_not_found(store.get_deployment("dep-4").await, "deployment", "dep-4");
    assert_not_found(store.get_task("t4").await, "task", "t4");
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None,
        "a refused deployment leaves the environment free"
    );
}

async fn logs_after_paginates_in_order(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    deploy_to(
        store,
        "production",
        "dep-2",
        "2.0",
        NOW,
        &[("t2", "db-1", "agent-2")],
    )
    .await;
    // Interleaved with another deployment's lines.
    for i in 0..5_i64 {
        store
            .append_log(
                "dep-1",
                if i == 0 { "" } else { "t1" },
                None,
                NOW + i,
                &format!("line {i}"),
            )
            .await
            .ok_or_panic("append");
        store
            .append_log("dep-2", "t2", None, NOW + i, &format!("other {i}"))
            .await
            .ok_or_panic("append other");
    }
    assert_not_found(
        store.append_log("dep-9", "", None, NOW, "lost").await,
        "deployment",
        "dep-9",
    );

    let mut after = 0;
    let mut pages = Vec::new();
    loop {
        let page = store
            .logs_after("dep-1", after, 2)
            .await
            .ok_or_panic("logs");
        let Some(last) = page.last() else { break };
        after = last.seq;
        pages.push(page.iter().map(|l| l.message.clone()).collect::<Vec<_>>());
        assert!(page.iter().all(|l| l.deployment_id == "dep-1"));
        assert!(page.windows(2).all(|w| w[0].seq < w[1].seq));
    }
    assert_eq!(
        pages,
        [
            vec!["line 0", "line 1"],
            vec!["line 2", "line 3"],
            vec!["line 4"],
        ]
    );
    let all = store.logs_after("dep-1", 0, 100).await.ok_or_panic("all");
    assert_eq!(all.len(), 5);
    assert_eq!((all[0].task_id.as_str(), all[0].at_ms), ("", NOW));
    assert_eq!((all[4].task_id.as_str(), all[4].at_ms), ("t1", NOW + 4));
    // Following from the middle.
    let rest = store
        .logs_after("dep-1", all[2].seq, 100)
        .await
        .ok_or_panic("rest");
    assert_eq!(rest, all[3..]);
    assert!(store
        .logs_after("dep-9", 0, 100)
        .await
        .ok_or_panic("none")
        .is_empty());
}

async fn drift_is_upserted_resolved_and_listed(f: &Fixture) {
    let store = &f.store;
    let web_missing = drift_record("web-1", "web", DriftKind::Missing, NOW);
    let web_image = drift_record("web-1", "web", DriftKind::ImageChanged, NOW + 10);
    let db_config = DriftRecord {
        environment: "production".to_owned(),
        agent_id: "agent-2".to_owned(),
        ..drift_record("db-1", "", DriftKind::ConfigChanged, NOW + 20)
    };
    for record in [&web_missing, &web_image, &db_config] {
        store.upsert_drift(record).await.ok_or_panic("upsert");
    }
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("list"),
        [db_config.clone(), web_image.clone(), web_missing.clone()]
    );
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("staging"),
        [web_image.clone(), web_missing.clone()]
    );

    // Reported again: one finding, refreshed; first seen kept.
    let again = DriftRecord {
        detail: "still missing".to_owned(),
        agent_id: "agent-3".to_owned(),
        first_seen_at_ms: NOW + 30,
        last_seen_at_ms: NOW + 30,
        ..web_missing.clone()
    };
    store.upsert_drift(&again).await.ok_or_panic("refresh");
    let refreshed = DriftRecord {
        first_seen_at_ms: NOW,
        ..again.clone()
    };
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("staging"),
        [refreshed.clone(), web_image.clone()]
    );

    // The target is clean again: both its findings resolve, the other target's stays.
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 40)
            .await
            .ok_or_panic("resolve")
            .len(),
        2
    );
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 50)
            .await
            .ok_or_panic("resolve again")
            .len(),
        0
    );
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("open"),
        [db_config]
    );
    let resolved = |r: &DriftRecord| DriftRecord {
        resolved_at_ms: Some(NOW + 40),
        ..r.clone()
    };
    assert_eq!(
        store
            .list_drift(Some("staging"), true)
            .await
            .ok_or_panic("with resolved"),
        [resolved(&refreshed), resolved(&web_image)]
    );
    assert_eq!(
        store.list_drift(None, true).await.ok_or_panic("all").len(),
        3
    );

    // Reported after resolution: open again, as a new finding.
    let back = drift_record("web-1", "web", DriftKind::Missing, NOW + 60);
    store.upsert_drift(&back).await.ok_or_panic("reopen");
    assert_eq!(
        store
            .list_drift(Some("staging"), false)
            .await
            .ok_or_panic("reopened"),
        [back]
    );
    assert!(store
        .list_drift(Some("qa"), true)
        .await
        .ok_or_panic("qa")
        .is_empty());
}

async fn a_drift_finding_is_resolved_on_its_own(f: &Fixture) {
    let store = &f.store;
    let web_missing = drift_record("web-1", "web", DriftKind::Missing, NOW);
    let web_image = drift_record("web-1", "web", DriftKind::ImageChanged, NOW + 10);
    let api_missing = drift_record("web-1", "api", DriftKind::Missing, NOW + 20);
    let other = drift_record("web-2", "web", DriftKind::Missing, NOW + 30);
    for record in [&web_missing, &web_image, &api_missing, &other] {
        store.upsert_drift(record).await.ok_or_panic("upsert");
    }

    // The container came back with the wrong image: `missing` ends, the rest stays.
    assert_eq!(
        store
            .resolve_drift_finding("web-1", "web", DriftKind::Missing, NOW + 40)
            .await
            .ok_or_panic("resolve"),
        1
    );
    assert_eq!(
        store
            .resolve_drift_finding("web-1", "web", DriftKind::Missing, NOW + 50)
            .await
            .ok_or_panic("resolve again"),
        0,
        "already resolved"
    );
    assert_eq!(
        store
            .resolve_drift_finding("web-1", "web", DriftKind::Unexpected, NOW + 50)
            .await
            .ok_or_panic("resolve unknown"),
        0,
        "never reported"
    );
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("open"),
        [other.clone(), api_missing.clone(), web_image.clone()]
    );
    let all = store.list_drift(None, true).await.ok_or_panic("all");
    let resolved: Vec<&DriftRecord> = all.iter().filter(|r| r.resolved_at_ms.is_some()).collect();
    assert_eq!(
        resolved,
        [&DriftRecord {
            resolved_at_ms: Some(NOW + 40),
            ..web_missing.clone()
        }]
    );

    // Reported again: open again, as a new finding; the target-wide resolution still
    // ends every finding of the target.
    let back = drift_record("web-1", "web", DriftKind::Missing, NOW + 60);
    store.upsert_drift(&back).await.ok_or_panic("reopen");
    assert_eq!(
        store
            .resolve_drift("web-1", NOW + 70)
            .await
            .ok_or_panic("resolve target")
            .len(),
        3
    );
    assert_eq!(
        store.list_drift(None, false).await.ok_or_panic("open"),
        [other]
    );
}

async fn concurrent_results_finish_the_deployment_once(f: &Fixture) {
    const TASKS: usize = 8;
    let store = &f.store;
    delivery_fixture(store).await;
    let ids: Vec<String> = (0..TASKS).map(|i| format!("task-{i}")).collect();
    let tasks: Vec<Task> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| task(id, "dep-1", &format!("web-{i}"), "agent-1", 0, "{}"))
        .collect();
    store
        .create_deployment(&deployment("dep-1", "staging", "1.0", NOW), &tasks)
        .await
        .ok_or_panic("create");
    assert_eq!(
        store
            .claim_tasks_for_agent("agent-1", NOW)
            .await
            .ok_or_panic("claim")
            .len(),
        TASKS
    );
    // Every result at once, each twice: each task completes once, and whichever result
    // comes last sees all the others and finishes the deployment.
    let results: Vec<_> = ids
        .iter()
        .chain(&ids)
        .enumerate()
        .map(|(i, id)| {
            let store = store.clone();
            let id = id.clone();
            tokio::spawn(async move {
                store
                    .complete_task(&id, 1, TaskState::Succeeded, "ok", NOW + i as i64)
                    .await
            })
        })
        .collect();
    let mut completed = 0;
    for result in results {
        let outcome = result
            .await
            .unwrap_or_else(|e| panic!("task: {e}"))
            .ok_or_panic("complete");
        completed += usize::from(outcome.is_some());
    }
    assert_eq!(completed, TASKS);
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Succeeded, "{dep:?}");
    assert!(dep.finished_at_ms.is_some());
}
