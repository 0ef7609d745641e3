//! Delivery hardening: one active deployment, generations, cancel, expiry, log lines, timeouts.

use super::*;

store_suite!(
    one_deployment_is_active_per_environment_under_concurrency,
    a_taken_deployment_id_is_a_deployment_conflict,
    generations_grow_with_every_deployment_and_tasks_carry_them,
    desired_state_is_the_succeeded_task_of_the_highest_generation,
    generations_keep_growing_after_history_is_deleted,
    cancelling_stops_unfinished_tasks_and_discards_late_results,
    deployments_are_found_by_id_or_unique_prefix,
    numbered_log_lines_are_stored_once,
    expiry_names_each_agent_and_open_work_is_listed,
    succeeded_deployment_of_version_is_the_highest_generation,
    environment_deployment_timeout_round_trips,
);

async fn one_deployment_is_active_per_environment_under_concurrency(f: &Fixture) {
    const CONTENDERS: usize = 16;
    let store = &f.store;
    delivery_fixture(store).await;
    // Sixteen deployments to staging and sixteen to production, all at once; each with a
    // task, so a loser that left anything behind would show.
    let attempts: Vec<_> = (0..2 * CONTENDERS)
        .map(|i| {
            let store = store.clone();
            let (environment, target, agent) = if i % 2 == 0 {
                ("staging", "web-1", "agent-1")
            } else {
                ("production", "db-1", "agent-2")
            };
            let id = format!("dep-{i:02}");
            let deployment = deployment(&id, environment, "1.0", NOW + i as i64);
            let task = task(&format!("task-{i:02}"), &id, target, agent, i as i64, "{}");
            tokio::spawn(async move {
                let outcome = store.create_deployment(&deployment, &[task]).await;
                (deployment, outcome)
            })
        })
        .collect();
    let mut winners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut losers = Vec::new();
    for attempt in attempts {
        let (deployment, outcome) = attempt.await.unwrap_or_else(|e| panic!("task: {e}"));
        match outcome {
            Ok(_) => winners
                .entry(deployment.environment)
                .or_default()
                .push(deployment.id),
            Err(StoreError::Conflict {
                entity: "active deployment",
                key,
            }) => {
                assert_eq!(key, deployment.environment, "{}", deployment.id);
                losers.push(deployment.id);
            }
            Err(other) => panic!("creating {}: {}", deployment.id, chain(&other)),
        }
    }
    assert_eq!(
        winners
            .iter()
            .map(|(e, w)| (e.as_str(), w.len()))
            .collect::<Vec<_>>(),
        [("production", 1), ("staging", 1)],
        "one winner per environment: {winners:?}"
    );
    assert_eq!(losers.len(), 2 * CONTENDERS - 2);

    // Stored: the winners, each with its task, and nothing of the losers.
    let staging_winner = winners["staging"][0].clone();
    let production_winner = winners["production"][0].clone();
    for (environment, winner) in [
        ("staging", &staging_winner),
        ("production", &production_winner),
    ] {
        let listed: Vec<_> = store
            .list_deployments(Some(environment), 100)
            .await
            .ok_or_panic("list")
            .into_iter()
            .map(|d| (d.id, d.state))
            .collect();
        assert_eq!(listed, [(winner.clone(), DeploymentState::Pending)]);
        assert_eq!(
            store
                .active_deployment(environment)
                .await
                .ok_or_panic("active")
                .map(|d| d.id)
                .as_ref(),
            Some(winner)
        );
        assert_eq!(
            store
                .tasks_of_deployment(winner)
                .await
                .ok_or_panic("tasks")
                .len(),
            1
        );
    }
    for loser in &losers {
        assert_not_found(store.get_deployment(loser).await, "deployment", loser);
        assert!(store
            .tasks_of_deployment(loser)
            .await
            .ok_or_panic("tasks")
            .is_empty());
    }
    let open = store
        .open_tasks_created_before(i64::MAX)
        .await
        .ok_or_panic("open tasks");
    let mut expected: Vec<_> = [&staging_winner, &production_winner]
        .iter()
        .map(|id| id.replace("dep-", "task-"))
        .collect();
    expected.sort_unstable();
    assert_eq!(sorted_ids(&open), expected, "no orphan tasks");

    // Still refused while active; accepted once the active one finished.
    assert_conflict(
        store
            .create_deployment(&deployment("dep-late", "staging", "2.0", NOW + 100), &[])
            .await,
        "active deployment",
        "staging",
    );
    let staging_task = staging_winner.replace("dep-", "task-");
    claim_and_complete(
        store,
        &[(staging_task.as_str(), TaskState::Succeeded, "ok")],
        NOW + 200,
    )
    .await;
    assert_eq!(
        store
            .get_deployment(&staging_winner)
            .await
            .ok_or_panic("get")
            .state,
        DeploymentState::Succeeded
    );
    deploy(
        store,
        "dep-next",
        "2.0",
        NOW + 300,
        &[("task-next", "web-1")],
    )
    .await;
    // A failed one frees its environment too.
    claim_and_complete(
        store,
        &[("task-next", TaskState::Failed, "crashed")],
        NOW + 400,
    )
    .await;
    deploy(store, "dep-after-failure", "2.0", NOW + 500, &[]).await;

    // And a cancelled one.
    assert_conflict(
        store
            .create_deployment(&deployment("dep-late", "production", "2.0", NOW + 100), &[])
            .await,
        "active deployment",
        "production",
    );
    store
        .cancel_deployment(&production_winner, "cancelled by alice", NOW + 600)
        .await
        .ok_or_panic("cancel");
    deploy_to(
        store,
        "production",
        "dep-late",
        "2.0",
        NOW + 700,
        &[("task-late", "db-1", "agent-2")],
    )
    .await;
    assert_eq!(
        store
            .active_deployment("production")
            .await
            .ok_or_panic("active")
            .map(|d| d.id),
        Some("dep-late".to_owned())
    );
}

async fn a_taken_deployment_id_is_a_deployment_conflict(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(store, "dep-1", "1.0", NOW, &[("t1", "web-1")]).await;
    claim_and_complete(store, &[("t1", TaskState::Succeeded, "ok")], NOW + 10).await;
    // No deployment is active anywhere: a unique violation here is the id, and must be
    // reported as such, not as an active deployment of the environment.
    for environment in ["staging", "production"] {
        assert_conflict(
            store
                .create_deployment(&deployment("dep-1", environment, "2.0", NOW + 20), &[])
                .await,
            "deployment",
            "dep-1",
        );
    }
    let stored = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(
        (stored.version.as_str(), stored.state),
        ("1.0", DeploymentState::Succeeded)
    );
    assert!(store
        .active_deployment("staging")
        .await
        .ok_or_panic("active")
        .is_none());
}

async fn generations_grow_with_every_deployment_and_tasks_carry_them(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    // The caller's generations are ignored: the store assigns them.
    let dep_1 = Deployment {
        generation: 999,
        ..deployment("dep-1", "staging", "1.0", NOW)
    };
    let dep_1_tasks = [
        Task {
            generation: 999,
            ..task("t1-web-1", "dep-1", "web-1", "agent-1", 0, "{}")
        },
        task("t1-web-2", "dep-1", "web-2", "agent-1", 1, "{}"),
    ];
    let g1 = store
        .create_deployment(&dep_1, &dep_1_tasks)
        .await
        .ok_or_panic("dep-1");
    assert!(g1 > 0, "{g1}");
    let g2 = deploy_to(
        store,
        "production",
        "dep-2",
        "1.0",
        NOW + 10,
        &[("t2-db-1", "db-1", "agent-2")],
    )
    .await;
    assert!(g2 > g1, "across environments: {g1} then {g2}");
    // A refused deployment takes no generation that a later one could be below.
    assert_conflict(
        store
            .create_deployment(&deployment("dep-x", "staging", "2.0", NOW + 15), &[])
            .await,
        "active deployment",
        "staging",
    );
    claim_and_complete(
        store,
        &[
            ("t1-web-1", TaskState::Succeeded, "ok"),
            ("t1-web-2", TaskState::Succeeded, "ok"),
        ],
        NOW + 20,
    )
    .await;
    // Created with an earlier time than dep-1 (another replica's clock): its generation
    // still follows the order the store saw them in.
    let g3 = deploy(store, "dep-3", "2.0", NOW - 1_000, &[("t3-web-1", "web-1")]).await;
    assert!(g3 > g2, "{g2} then {g3}");

    for (id, generation) in [("dep-1", g1), ("dep-2", g2), ("dep-3", g3)] {
        assert_eq!(
            store.get_deployment(id).await.ok_or_panic("get").generation,
            generation,
            "{id}"
        );
        let tasks = store.tasks_of_deployment(id).await.ok_or_panic("tasks");
        assert!(!tasks.is_empty());
        for t in &tasks {
            assert_eq!(t.generation, generation, "{}", t.id);
            assert_eq!(
                store.get_task(&t.id).await.ok_or_panic("get").generation,
                generation
            );
        }
    }
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 30)
        .await
        .ok_or_panic("claim");
    assert_eq!(
        claimed
            .iter()
            .map(|t| (t.id.as_str(), t.generation))
            .collect::<Vec<_>>(),
        [("t3-web-1", g3)]
    );
    let listed: Vec<_> = store
        .list_deployments(None, 10)
        .await
        .ok_or_panic("list")
        .into_iter()
        .map(|d| (d.id, d.generation))
        .collect();
    assert_eq!(
        listed,
        [
            ("dep-2".to_owned(), g2),
            ("dep-1".to_owned(), g1),
            ("dep-3".to_owned(), g3),
        ]
    );
}

async fn desired_state_is_the_succeeded_task_of_the_highest_generation(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let g1 = deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t1-web-1", "web-1"), ("t1-web-2", "web-2")],
    )
    .await;
    // dep-1's results are stored with a clock far ahead of dep-2's: finish times and
    // generations disagree, and the generation must win.
    claim_and_complete(
        store,
        &[
            ("t1-web-1", TaskState::Succeeded, "ok"),
            ("t1-web-2", TaskState::Succeeded, "ok"),
        ],
        NOW + 50_000,
    )
    .await;
    let g2 = deploy(store, "dep-2", "2.0", NOW + 1_000, &[("t2-web-1", "web-1")]).await;
    claim_and_complete(
        store,
        &[("t2-web-1", TaskState::Succeeded, "ok")],
        NOW + 20_000,
    )
    .await;
    assert!(g2 > g1);
    let t1 = store.get_task("t1-web-1").await.ok_or_panic("get");
    let t2 = store.get_task("t2-web-1").await.ok_or_panic("get");
    assert!(
        t1.finished_at_ms > t2.finished_at_ms,
        "the older generation finished later: {t1:?} {t2:?}"
    );

    let expected = [
        DesiredPayload {
            target: "web-1".to_owned(),
            deployed: Some((payload("2.0", "web-1"), g2)),
        },
        DesiredPayload {
            target: "web-2".to_owned(),
            deployed: Some((payload("1.0", "web-2"), g1)),
        },
    ];
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired"),
        expected
    );
    let latest = store
        .latest_succeeded_task("web-1")
        .await
        .ok_or_panic("latest")
        .unwrap_or_else(|| panic!("web-1 has succeeded tasks"));
    assert_eq!((latest.id.as_str(), latest.generation), ("t2-web-1", g2));

    // A newer generation that fails, or is cancelled, changes nothing.
    deploy(store, "dep-3", "3.0", NOW + 2_000, &[("t3-web-1", "web-1")]).await;
    claim_and_complete(
        store,
        &[("t3-web-1", TaskState::Failed, "crashed")],
        NOW + 60_000,
    )
    .await;
    deploy(store, "dep-4", "3.0", NOW + 3_000, &[("t4-web-1", "web-1")]).await;
    store
        .cancel_deployment("dep-4", "cancelled", NOW + 70_000)
        .await
        .ok_or_panic("cancel");
    assert_eq!(
        store
            .desired_payloads_for_agent("agent-1")
            .await
            .ok_or_panic("desired"),
        expected
    );
    assert_eq!(
        store
            .latest_succeeded_task("web-1")
            .await
            .ok_or_panic("latest")
            .map(|t| t.id),
        Some("t2-web-1".to_owned())
    );
    assert_eq!(
        store
            .latest_succeeded_task("db-1")
            .await
            .ok_or_panic("latest"),
        None
    );
}

async fn generations_keep_growing_after_history_is_deleted(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    store
        .create_environment(&environment("qa", None, NOW))
        .await
        .ok_or_panic("qa");
    let g1 = deploy(store, "dep-1", "1.0", NOW, &[]).await;
    store
        .cancel_deployment("dep-1", "cancelled", NOW + 1)
        .await
        .ok_or_panic("cancel");
    // The newest generation belongs to qa, whose history then goes.
    let g2 = deploy_to(store, "qa", "dep-2", "1.0", NOW + 2, &[]).await;
    store
        .cancel_deployment("dep-2", "cancelled", NOW + 3)
        .await
        .ok_or_panic("cancel");
    store
        .delete_environment("qa", true)
        .await
        .ok_or_panic("delete qa");
    assert!(g2 > g1);
    // An agent may still hold generation g2 for a target of qa; a later deployment must
    // not be taken for an older one.
    let g3 = deploy(store, "dep-3", "2.0", NOW + 4, &[]).await;
    assert!(
        g3 > g2,
        "generation {g3} after {g2} was deleted: generations went back"
    );
}

async fn cancelling_stops_unfinished_tasks_and_discards_late_results(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    store
        .create_target(&target("web-3", "staging", "agent-2"))
        .await
        .ok_or_panic("web-3");
    deploy_to(
        store,
        "staging",
        "dep-1",
        "1.0",
        NOW,
        &[
            ("t-done", "web-1", "agent-1"),
            ("t-running", "web-2", "agent-1"),
            ("t-waiting", "web-3", "agent-2"),
        ],
    )
    .await;
    // web-1 succeeds, web-2 is assigned, web-3's agent never claimed its task.
    claim_and_complete(
        store,
        &[("t-done", TaskState::Succeeded, "ok")],
        NOW + 1_000,
    )
    .await;
    let running = store.get_task("t-running").await.ok_or_panic("get");
    assert_eq!(running.state, TaskState::Assigned);

    let cancelled = store
        .cancel_deployment("dep-1", "cancelled by alice", NOW + 5_000)
        .await
        .ok_or_panic("cancel");
    assert_eq!(sorted_ids(&cancelled), ["t-running", "t-waiting"]);
    for t in &cancelled {
        assert_eq!(t.state, TaskState::Cancelled, "{t:?}");
        assert_eq!(t.message.as_deref(), Some("cancelled by alice"));
        assert_eq!(t.finished_at_ms, Some(NOW + 5_000));
        assert_eq!(&store.get_task(&t.id).await.ok_or_panic("get"), t);
    }
    let done = store.get_task("t-done").await.ok_or_panic("get");
    assert_eq!(
        (done.state, done.finished_at_ms),
        (TaskState::Succeeded, Some(NOW + 1_000))
    );
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Cancelled);
    assert_eq!(dep.message.as_deref(), Some("cancelled by alice"));
    assert_eq!(dep.finished_at_ms, Some(NOW + 5_000));
    assert_eq!(
        store
            .active_deployment("staging")
            .await
            .ok_or_panic("active"),
        None
    );

    // The agent's result arrives afterwards: discarded, nothing changes.
    assert_eq!(
        store
            .complete_task(
                "t-running",
                running.epoch,
                TaskState::Succeeded,
                "ok",
                NOW + 6_000
            )
            .await
            .ok_or_panic("late result"),
        None
    );
    assert_eq!(
        store.get_task("t-running").await.ok_or_panic("get").state,
        TaskState::Cancelled
    );
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get"),
        dep,
        "the deployment stays cancelled"
    );
    // Cancelled tasks are neither claimed nor expired.
    assert!(store
        .claim_tasks_for_agent("agent-2", NOW + 6_000)
        .await
        .ok_or_panic("claim")
        .is_empty());
    assert!(store
        .expire_tasks(NOW + TASK_DEADLINE_MS, unanswered)
        .await
        .ok_or_panic("expire")
        .is_empty());

    // Replicas learn of them by time; `since` is exclusive.
    let since = store
        .cancelled_tasks_since(NOW + 4_999)
        .await
        .ok_or_panic("since");
    assert_eq!(sorted_ids(&since), ["t-running", "t-waiting"]);
    assert!(store
        .cancelled_tasks_since(NOW + 5_000)
        .await
        .ok_or_panic("since")
        .is_empty());

    assert_conflict(
        store.cancel_deployment("dep-1", "again", NOW + 7_000).await,
        "finished deployment",
        "cancelled",
    );
    assert_not_found(
        store.cancel_deployment("dep-9", "nothing", NOW).await,
        "deployment",
        "dep-9",
    );

    // Succeeded and failed deployments are finished too, and stay as they are.
    deploy(store, "dep-2", "2.0", NOW + 10_000, &[("t2", "web-1")]).await;
    claim_and_complete(store, &[("t2", TaskState::Succeeded, "ok")], NOW + 11_000).await;
    deploy(store, "dep-3", "3.0", NOW + 20_000, &[("t3", "web-1")]).await;
    claim_and_complete(store, &[("t3", TaskState::Failed, "crashed")], NOW + 21_000).await;
    for (id, state) in [("dep-2", "succeeded"), ("dep-3", "failed")] {
        let before = store.get_deployment(id).await.ok_or_panic("get");
        assert_conflict(
            store.cancel_deployment(id, "too late", NOW + 30_000).await,
            "finished deployment",
            state,
        );
        assert_eq!(store.get_deployment(id).await.ok_or_panic("get"), before);
    }
    assert_eq!(
        sorted_ids(&store.cancelled_tasks_since(NOW).await.ok_or_panic("since")),
        ["t-running", "t-waiting"]
    );
}

async fn deployments_are_found_by_id_or_unique_prefix(f: &Fixture) {
    const A1: &str = "0190aaaa-1111-7000-8000-000000000001";
    const A2: &str = "0190aaaa-1111-7000-8000-000000000002";
    const B: &str = "0190bbbb-2222-7000-8000-000000000003";
    let store = &f.store;
    delivery_fixture(store).await;
    for (i, id) in [A1, A2, B].into_iter().enumerate() {
        deploy(store, id, "1.0", NOW + i as i64, &[]).await;
        store
            .cancel_deployment(id, "cancelled", NOW + i as i64)
            .await
            .ok_or_panic("cancel");
    }
    let found = |query: &'static str| async move {
        store
            .find_deployment(query)
            .await
            .map(|d| d.id)
            .unwrap_or_else(|e| panic!("finding {query}: {}", chain(&e)))
    };
    assert_eq!(found(A1).await, A1);
    assert_eq!(found(A2).await, A2);
    assert_eq!(found(B).await, B);
    assert_eq!(found("0190bbbb").await, B);
    assert_eq!(found("0190bbbb-2222-7").await, B);
    assert_eq!(found("0190BBBB-2222").await, B, "prefixes ignore case");

    for ambiguous in ["0190aaaa", "0190aaaa-1111-7000-8000-00000000000"] {
        assert_conflict(
            store.find_deployment(ambiguous).await,
            "deployment id prefix",
            ambiguous,
        );
    }
    for missing in [
        // Too short to be a prefix, though it starts an id.
        "0190bbb",
        "",
        "0190cccc",
        // Not wildcards: `_` and `%` would match both A ids in a LIKE pattern.
        "0190aaaa-1111-7000-8000-00000000000_",
        "0190aaa%",
        "dep-unknown",
    ] {
        assert_not_found(store.find_deployment(missing).await, "deployment", missing);
    }
}

async fn numbered_log_lines_are_stored_once(f: &Fixture) {
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
    let lines: [(&str, Option<i64>, &str); 9] = [
        ("", None, "requested by alice"),
        ("t1", Some(1), "pulling"),
        ("t1", Some(2), "starting"),
        // Re-sent after a reconnect: already stored, the first text is kept.
        ("t1", Some(1), "pulling (re-sent)"),
        ("t1", Some(2), "starting"),
        // Another task numbers its own lines.
        ("t2", Some(1), "pulling web-2"),
        // Unnumbered lines are never taken for duplicates.
        ("", None, "requested by alice"),
        ("t1", None, "note"),
        ("t1", None, "note"),
    ];
    for (i, (task_id, line, message)) in lines.into_iter().enumerate() {
        store
            .append_log("dep-1", task_id, line, NOW + i as i64, message)
            .await
            .ok_or_panic("append");
    }
    let stored: Vec<_> = store
        .logs_after("dep-1", 0, 100)
        .await
        .ok_or_panic("logs")
        .into_iter()
        .map(|l| (l.task_id, l.at_ms - NOW, l.message))
        .collect();
    let expected: Vec<_> = [
        ("", 0, "requested by alice"),
        ("t1", 1, "pulling"),
        ("t1", 2, "starting"),
        ("t2", 5, "pulling web-2"),
        ("", 6, "requested by alice"),
        ("t1", 7, "note"),
        ("t1", 8, "note"),
    ]
    .into_iter()
    .map(|(t, at, m)| (t.to_owned(), at, m.to_owned()))
    .collect();
    assert_eq!(stored, expected);
    assert_not_found(
        store.append_log("dep-9", "t9", Some(1), NOW, "lost").await,
        "deployment",
        "dep-9",
    );
}

async fn expiry_names_each_agent_and_open_work_is_listed(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let early = |t: Task| Task {
        deadline_at_ms: NOW + 1_000,
        ..t
    };
    store
        .create_deployment(
            &deployment("dep-1", "staging", "1.0", NOW),
            &[
                early(task("k1", "dep-1", "web-1", "agent-1", 0, "{}")),
                task("k2", "dep-1", "web-2", "agent-1", 1, "{}"),
            ],
        )
        .await
        .ok_or_panic("dep-1");
    store
        .create_deployment(
            &deployment("dep-2", "production", "1.0", NOW),
            &[early(task("k3", "dep-2", "db-1", "agent-2", 2, "{}"))],
        )
        .await
        .ok_or_panic("dep-2");

    let agents = |now_ms: i64| async move {
        let mut agents = store
            .agents_with_expired_tasks(now_ms)
            .await
            .ok_or_panic("agents with expired tasks");
        agents.sort_unstable();
        agents
    };
    assert!(agents(NOW + 999).await.is_empty());
    assert_eq!(agents(NOW + 1_000).await, ["agent-1", "agent-2"]);

    // Open work by creation time, oldest first; `before` is exclusive.
    let open = |before_ms: i64| async move {
        store
            .open_tasks_created_before(before_ms)
            .await
            .ok_or_panic("open tasks")
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert!(open(NOW).await.is_empty());
    assert_eq!(open(NOW + 1).await, ["k1"]);
    assert_eq!(open(NOW + 3).await, ["k1", "k2", "k3"]);

    let expired = store
        .expire_tasks(NOW + 1_000, |agent| format!("agent {agent} is unreachable"))
        .await
        .ok_or_panic("expire");
    assert_eq!(
        expired
            .iter()
            .map(|t| (t.id.as_str(), t.state, t.message.as_deref()))
            .collect::<Vec<_>>(),
        [
            (
                "k1",
                TaskState::Failed,
                Some("deadline passed: agent agent-1 is unreachable")
            ),
            (
                "k3",
                TaskState::Failed,
                Some("deadline passed: agent agent-2 is unreachable")
            ),
        ]
    );
    let dep_2 = store.get_deployment("dep-2").await.ok_or_panic("get");
    assert_eq!(dep_2.state, DeploymentState::Failed);
    assert_eq!(
        dep_2.message.as_deref(),
        Some("db-1: deadline passed: agent agent-2 is unreachable")
    );
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    assert!(agents(NOW + 1_000).await.is_empty());
    assert_eq!(open(NOW + 3).await, ["k2"]);

    // Assigned tasks are open work too.
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 2_000)
        .await
        .ok_or_panic("claim");
    assert_eq!(sorted_ids(&claimed), ["k2"]);
    let still_open = store
        .open_tasks_created_before(NOW + 3)
        .await
        .ok_or_panic("open");
    assert_eq!(
        still_open
            .iter()
            .map(|t| (t.id.as_str(), t.state))
            .collect::<Vec<_>>(),
        [("k2", TaskState::Assigned)]
    );
}

async fn succeeded_deployment_of_version_is_the_highest_generation(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    let version_of = |version: &'static str| async move {
        store
            .succeeded_deployment_of_version("staging", version)
            .await
            .ok_or_panic("succeeded deployment of version")
            .map(|d| d.id)
    };
    assert_eq!(version_of("1.0").await, None);
    // 1.0, then 2.0, then back to 1.0 (finished earlier by the clock than the first),
    // then 3.0, which fails.
    for (id, version, finished_at_ms, state) in [
        ("dep-1", "1.0", NOW + 50_000, TaskState::Succeeded),
        ("dep-2", "2.0", NOW + 20_000, TaskState::Succeeded),
        ("dep-3", "1.0", NOW + 30_000, TaskState::Succeeded),
        ("dep-4", "3.0", NOW + 40_000, TaskState::Failed),
    ] {
        let task_id = format!("t-{id}");
        deploy(store, id, version, NOW, &[(task_id.as_str(), "web-1")]).await;
        claim_and_complete(store, &[(task_id.as_str(), state, "")], finished_at_ms).await;
    }
    assert_eq!(version_of("1.0").await.as_deref(), Some("dep-3"));
    assert_eq!(version_of("2.0").await.as_deref(), Some("dep-2"));
    assert_eq!(version_of("3.0").await, None, "3.0 never succeeded");
    assert_eq!(version_of("9.9").await, None);
    assert_eq!(
        store
            .succeeded_deployment_of_version("production", "1.0")
            .await
            .ok_or_panic("production"),
        None
    );
}

async fn environment_deployment_timeout_round_trips(f: &Fixture) {
    let store = &f.store;
    let staging = Environment {
        deployment_timeout_seconds: Some(900),
        ..environment("staging", None, NOW)
    };
    let production = environment("production", Some("staging"), NOW + 1);
    store
        .create_environment(&staging)
        .await
        .ok_or_panic("staging");
    store
        .create_environment(&production)
        .await
        .ok_or_panic("production");
    assert_eq!(
        store.get_environment("staging").await.ok_or_panic("get"),
        staging
    );
    assert_eq!(
        store.list_environments().await.ok_or_panic("list"),
        [staging.clone(), production.clone()]
    );

    // Set where there was none, and cleared where there was one.
    let production = Environment {
        deployment_timeout_seconds: Some(3 * 3_600),
        ..production
    };
    let staging = Environment {
        deployment_timeout_seconds: None,
        ..staging
    };
    store
        .update_environment(&production)
        .await
        .ok_or_panic("update production");
    store
        .update_environment(&staging)
        .await
        .ok_or_panic("update staging");
    assert_eq!(
        store.list_environments().await.ok_or_panic("list"),
        [staging, production]
    );
}
