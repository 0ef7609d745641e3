//! A deployment's tasks claimed at once for its agents, the deployment settled on its
//! first failure, and task results stored in batches.

use super::*;

store_suite!(
    a_deployment_fails_with_the_failure_that_finished_first,
    a_new_deployment_is_claimed_at_once_for_the_agents_given,
    a_batch_of_results_keeps_each_once_and_finishes_the_deployment_once,
);

/// A new deployment's pending tasks are claimed in one go for the agents named (those
/// with a session), epochs raised, the deployment running; tasks of other agents stay
/// pending for their own claims, and the assignments are logged in order.
async fn a_new_deployment_is_claimed_at_once_for_the_agents_given(f: &Fixture) {
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
            ("t-1", "web-1", "agent-1"),
            ("t-2", "web-2", "agent-1"),
            ("t-3", "web-3", "agent-2"),
        ],
    )
    .await;
    assert!(store
        .claim_pending_tasks_of_deployment("dep-1", &[], NOW + 1)
        .await
        .ok_or_panic("none")
        .is_empty());
    let claimed = store
        .claim_pending_tasks_of_deployment("dep-1", &["agent-1", "agent-9"], NOW + 1)
        .await
        .ok_or_panic("claim");
    let summary: Vec<_> = claimed
        .iter()
        .map(|t| (t.id.clone(), t.epoch, t.state))
        .collect();
    assert_eq!(
        summary,
        [
            ("t-1".to_owned(), 1, TaskState::Assigned),
            ("t-2".to_owned(), 1, TaskState::Assigned),
        ]
    );
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    // Claimed once: a second claim finds nothing; agent-2's task waits for agent-2.
    assert!(store
        .claim_pending_tasks_of_deployment("dep-1", &["agent-1"], NOW + 2)
        .await
        .ok_or_panic("again")
        .is_empty());
    assert_eq!(
        store.get_task("t-3").await.ok_or_panic("get").state,
        TaskState::Pending
    );
    let lines: Vec<(String, i64, String)> = claimed
        .iter()
        .map(|t| (t.id.clone(), NOW + 3, format!("{}: assigned", t.target)))
        .collect();
    store.append_logs("dep-1", &lines).await.ok_or_panic("logs");
    store
        .append_logs("dep-1", &[])
        .await
        .ok_or_panic("no lines");
    let logged: Vec<(String, String)> = store
        .logs_after("dep-1", 0, 10)
        .await
        .ok_or_panic("read")
        .into_iter()
        .map(|l| (l.task_id, l.message))
        .collect();
    assert_eq!(
        logged,
        [
            ("t-1".to_owned(), "web-1: assigned".to_owned()),
            ("t-2".to_owned(), "web-2: assigned".to_owned()),
        ]
    );
    assert_not_found(
        store.append_logs("dep-9", &lines).await,
        "deployment",
        "dep-9",
    );
}

/// Two tasks fail; the deployment names the one that finished first, though it was
/// created second and its target sorts last.
async fn a_deployment_fails_with_the_failure_that_finished_first(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t-a", "web-1"), ("t-b", "web-2")],
    )
    .await;
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 1)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 2);
    let fail = |id: &'static str, message: &'static str, at: i64| async move {
        store
            .complete_task(id, 1, TaskState::Failed, message, at)
            .await
            .ok_or_panic("complete")
            .unwrap_or_else(|| panic!("{id} completes"))
    };
    fail("t-b", "disk full", NOW + 100).await;
    assert_eq!(
        store.get_deployment("dep-1").await.ok_or_panic("get").state,
        DeploymentState::Running
    );
    fail("t-a", "pull denied", NOW + 200).await;
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Failed);
    assert_eq!(dep.message.as_deref(), Some("web-2: disk full"));
    assert_eq!(dep.finished_at_ms, Some(NOW + 200));
}

/// One batch: results of one deployment with a duplicate, a stale epoch, an unknown
/// task and another agent's task. Each kept result is logged; the deployment settles
/// once, and only the last kept result of a deployment that finished is told so.
async fn a_batch_of_results_keeps_each_once_and_finishes_the_deployment_once(f: &Fixture) {
    let store = &f.store;
    delivery_fixture(store).await;
    deploy(
        store,
        "dep-1",
        "1.0",
        NOW,
        &[("t-a", "web-1"), ("t-b", "web-2")],
    )
    .await;
    let claimed = store
        .claim_tasks_for_agent("agent-1", NOW + 1)
        .await
        .ok_or_panic("claim");
    assert_eq!(claimed.len(), 2);
    let result =
        |agent: &str, id: &str, epoch: i64, state: TaskState, message: &str| TaskResultRecord {
            agent_id: agent.to_owned(),
            task_id: id.to_owned(),
            epoch,
            state,
            message: message.to_owned(),
            output_json: (id == "t-a").then(|| "{\"endpoints\":[]}".to_owned()),
        };
    let batch = [
        result("agent-1", "t-a", 1, TaskState::Succeeded, "ok"),
        result("agent-1", "t-a", 1, TaskState::Failed, "again"),
        result("agent-1", "t-b", 0, TaskState::Failed, "stale epoch"),
        result("agent-1", "t-none", 1, TaskState::Succeeded, ""),
        result("agent-2", "t-b", 1, TaskState::Failed, "not mine"),
        result("agent-1", "t-b", 1, TaskState::Succeeded, ""),
    ];
    let stored = store
        .complete_tasks(&batch, NOW + 10, |task| {
            format!("{}: {}", task.target, task.state)
        })
        .await
        .ok_or_panic("batch");
    let outcomes: Vec<_> = stored
        .iter()
        .map(|s| {
            let outcome = match &s.outcome {
                ResultOutcome::Stored(task) => format!("stored {}", task.id),
                other => format!("{other:?}"),
            };
            (outcome, s.finished_deployment)
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("stored t-a".to_owned(), false),
            ("Finished { epoch: 1 }".to_owned(), false),
            ("OtherEpoch".to_owned(), false),
            ("Unknown".to_owned(), false),
            ("NotYours".to_owned(), false),
            ("stored t-b".to_owned(), true),
        ]
    );
    let dep = store.get_deployment("dep-1").await.ok_or_panic("get");
    assert_eq!(dep.state, DeploymentState::Succeeded);
    assert_eq!(dep.finished_at_ms, Some(NOW + 10));
    let t_a = store.get_task("t-a").await.ok_or_panic("t-a");
    assert_eq!(
        (t_a.state, t_a.message.as_deref()),
        (TaskState::Succeeded, Some("ok"))
    );
    let logged: Vec<(String, String)> = store
        .logs_after("dep-1", 0, 10)
        .await
        .ok_or_panic("read")
        .into_iter()
        .map(|l| (l.task_id, l.message))
        .collect();
    assert_eq!(
        logged,
        [
            ("t-a".to_owned(), "web-1: succeeded".to_owned()),
            ("t-b".to_owned(), "web-2: succeeded".to_owned()),
        ]
    );
    // The same results again change nothing and finish nothing.
    let again = store
        .complete_tasks(&batch, NOW + 20, |task| task.target.clone())
        .await
        .ok_or_panic("again");
    assert!(again
        .iter()
        .all(|s| !matches!(s.outcome, ResultOutcome::Stored(_)) && !s.finished_deployment));
    assert!(store
        .complete_tasks(&[], NOW, |task| task.target.clone())
        .await
        .ok_or_panic("empty")
        .is_empty());
}
