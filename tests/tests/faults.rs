//! The short form of the fault suite (`cargo xtask faults` runs the full one): a real
//! `stella server` process broken under load, and what was lost or done twice counted
//! at the targets. See docs/faults.md.

use std::time::Instant;

use stella_tests::faults::disk_full::{self, DiskFullOptions};
use stella_tests::faults::partition::{self, PartitionOptions};
use stella_tests::faults::postgres_restart::{self, PostgresRestartOptions};
use stella_tests::faults::replica_kill::{self, ReplicaKillOptions};
use stella_tests::faults::server_kill::{self, ServerKillOptions};
use stella_tests::{init_tracing, TestDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_killed_during_deployments_loses_none_and_applies_none_twice() -> anyhow::Result<()>
{
    init_tracing();
    let dir = TestDir::new("faults-server-kill");
    let started = Instant::now();
    let figures = server_kill::run(&ServerKillOptions::short(), dir.path()).await?;
    println!(
        "{figures}  runtime            {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(figures.is_clean(), "{figures}");
    assert_eq!(figures.n, 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_longer_than_the_unreachable_threshold_heals_without_duplicates_or_lost_drift(
) -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("faults-partition");
    let started = Instant::now();
    let figures = partition::run(&PartitionOptions::short(), dir.path()).await?;
    println!(
        "{figures}  runtime            {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(figures.is_clean(), "{figures}");
    assert!(
        figures
            .extra
            .iter()
            .any(|(name, _)| name == "unreachable after"),
        "the agents must have been shown unreachable during the cut: {figures}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_writes_with_a_5xx_envelope_and_corrupts_nothing() -> anyhow::Result<()>
{
    init_tracing();
    let dir = TestDir::new("faults-disk-full");
    let started = Instant::now();
    let figures = disk_full::run(&DiskFullOptions::short(), dir.path()).await?;
    println!(
        "{figures}  runtime            {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(figures.is_clean(), "{figures}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_rides_out_a_postgres_restart_and_readyz_tells_the_truth() -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("faults-postgres-restart");
    let started = Instant::now();
    let figures = postgres_restart::run(&PostgresRestartOptions::short(), dir.path()).await?;
    println!(
        "{figures}  runtime            {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(figures.is_clean(), "{figures}");
    assert!(figures.n > 0, "no write was acknowledged: {figures}");
    Ok(())
}

/// Found by the server-kill scenario: every new deployment for an agent re-assigned the
/// tasks it was already running under a new epoch, so the results it sent were discarded
/// as stale and under a steady stream of deployments a finished task waited long for its
/// result to be taken (epochs reached 60 in the 1,000-deployment run).
#[tokio::test]
async fn a_new_deployment_leaves_the_epoch_of_a_task_in_flight_alone() -> anyhow::Result<()> {
    use std::time::Duration;

    use serde_json::json;
    use stella_tests::faults::sim::{Ledger, SimTarget};
    use stella_tests::registry::TestRegistry;
    use stella_tests::{wait_until, TestAgent, TestServer};

    let registry = TestRegistry::start().await?;
    let image = registry
        .push_inert_image("faults/epoch", "1", "epoch")
        .await?;
    let server = TestServer::start().await?;
    let ledger = Ledger::new();
    let sim = SimTarget::new(std::sync::Arc::clone(&ledger));
    let _agent = TestAgent::start_driving(&server, "sim-host", sim.registry()).await?;
    server
        .wait_for_state("sim-host", "connected", Duration::from_secs(20))
        .await?;
    server
        .post(
            "/api/v1/releases",
            json!({"name": "app", "version": "1", "components": {"app": image}}),
        )
        .await?;
    for (environment, apply_ms) in [("slow", "4000"), ("fast", "0")] {
        server
            .post(
                "/api/v1/environments",
                json!({"name": environment, "allow_unscanned": true}),
            )
            .await?;
        server
            .post(
                "/api/v1/targets",
                json!({"name": format!("t-{environment}"), "environment": environment,
                       "kind": "sim", "agent": "sim-host", "settings": {"apply_ms": apply_ms}}),
            )
            .await?;
    }
    let promote = |environment: &'static str| {
        let server = &server;
        async move {
            let reply = server
                .post(
                    "/api/v1/promotions",
                    json!({"release": "app", "version": "1", "environment": environment}),
                )
                .await?;
            reply["deployment_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no deployment id in {reply}"))
        }
    };
    let slow = promote("slow").await?;
    wait_until("the slow task runs", Duration::from_secs(20), || async {
        let logs = server
            .get(&format!("/api/v1/deployments/{slow}/logs"))
            .await
            .ok()?;
        logs.as_array()?
            .iter()
            .any(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("applying"))
            })
            .then_some(())
    })
    .await?;
    // A deployment for the same agent while the slow one runs, and a pending sweep.
    let fast = promote("fast").await?;
    let fast = server
        .wait_deployment(&fast, Duration::from_secs(20))
        .await?;
    assert_eq!(fast["state"], "succeeded", "{fast}");
    let slow = server
        .wait_deployment(&slow, Duration::from_secs(20))
        .await?;
    assert_eq!(slow["state"], "succeeded", "{slow}");
    assert_eq!(
        slow["tasks"][0]["epoch"], 1,
        "the running task was re-assigned: {slow}"
    );
    assert_eq!(ledger.len(), 2);
    assert!(ledger.duplicated().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_during_deployments_loses_none_and_applies_none_twice(
) -> anyhow::Result<()> {
    init_tracing();
    let dir = TestDir::new("faults-replica-kill");
    let started = Instant::now();
    let figures = replica_kill::run(&ReplicaKillOptions::short(), dir.path()).await?;
    println!(
        "{figures}  runtime            {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(figures.is_clean(), "{figures}");
    Ok(())
}
