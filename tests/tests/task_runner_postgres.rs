//! Task-pack runs on PostgreSQL: the runs store's SQL on the second backend, and a
//! replica taking over a run whose replica stopped gracefully (the stopping driver hands
//! its running step back as pending and releases the lease; the other replica claims the
//! run under a new epoch and finishes it; finished steps are not run again, and the
//! handed-over one runs again without spending an attempt — a crash is covered by the
//! sandbox suite's SIGKILL test).

use std::time::Duration;

use serde_json::json;
use stella_tests::task_runner::{create_run, logs, pack, run_state, step, wait_run};
use stella_tests::{wait_until, TestServer};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_replica_takes_over_a_run_on_postgresql_and_finishes_it() -> anyhow::Result<()> {
    let url = stella_tests::postgres::fresh_database_url().await?;
    let mut first = TestServer::start_with(|config| {
        config.database_url = Some(url);
        config.run_lease_ms = 2_000;
        config.run_poll_interval_ms = 200;
    })
    .await?;
    let steps = "    - id: first\n      run:\n        uses: builtin:wait\n        with: {seconds: 0}\n    - id: long\n      run:\n        uses: builtin:wait\n        with: {seconds: 3}\n    - id: last\n      run:\n        uses: builtin:wait\n        with: {seconds: 0}\n";
    let id = format!("takeover-{}", uuid::Uuid::new_v4().simple());
    create_run(
        &first,
        json!({"runId": id, "manifest": pack(
            "takeover",
            "  failure:\n    maxAttempts: 1\n    backoffSeconds: 0\n",
            steps
        )}),
    )
    .await?;
    // Only the first replica exists while the run starts, so it is the one driving it.
    wait_until("the long step runs", RUN_TIMEOUT, || async {
        let state = run_state(&first, &id).await.ok()?;
        (step(&state, "first")["status"] == "Succeeded"
            && step(&state, "long")["status"] == "Running")
            .then_some(())
    })
    .await?;
    let second = first.start_replica().await?;
    first.stop().await;

    let state = wait_run(&second, &id, &["Succeeded", "Failed"], RUN_TIMEOUT).await?;
    let events = logs(&second, &id).await?;
    assert_eq!(state["status"], "Succeeded", "{state}\n{events:#?}");
    for key in ["first", "long", "last"] {
        assert_eq!(step(&state, key)["status"], "Succeeded", "{key}: {state}");
    }
    // The step that finished before the takeover ran once; the one interrupted ran again.
    let started = |key: &str| {
        events
            .iter()
            .filter(|e| e["eventType"] == "step.started" && e["stepId"] == key)
            .count()
    };
    assert_eq!(started("first"), 1, "{events:?}");
    // Handed over once, then run again as the same (only) attempt.
    assert_eq!(started("long"), 2, "{events:?}");
    assert_eq!(step(&state, "long")["attempts"], 1, "{state}");
    assert!(
        events
            .iter()
            .any(|e| e["eventType"] == "step.handed-over" && e["stepId"] == "long"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["eventType"] == "run.resumed"),
        "the replica says it resumed the run: {events:?}"
    );
    Ok(())
}
