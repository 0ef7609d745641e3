//! The short form of the fault suite (`cargo xtask faults` runs the full one): a real
//! `stella server` process broken under load, and what was lost or done twice counted
//! at the targets. See docs/faults.md.

use std::time::Instant;

use stella_tests::faults::disk_full::{self, DiskFullOptions};
use stella_tests::faults::partition::{self, PartitionOptions};
use stella_tests::faults::postgres_restart::{self, PostgresRestartOptions};
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
