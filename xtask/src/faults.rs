//! `cargo xtask faults`: the fault suite at full size against a real `stella server`
//! process (the debug build, which this task builds first), with agents in this process
//! driving simulated targets. Each scenario prints its figures in one block; the task
//! fails if any lost or duplicated something. The scenarios live in `stella-tests`
//! (`faults`), whose test `faults.rs` runs a short form of each on every
//! `cargo xtask test`. See docs/faults.md.

use std::time::Instant;

use anyhow::bail;
use clap::Args;
use stella_tests::faults::disk_full::{self, DiskFullOptions};
use stella_tests::faults::partition::{self, PartitionOptions};
use stella_tests::faults::postgres_restart::{self, PostgresRestartOptions};
use stella_tests::faults::replica_kill::{self, ReplicaKillOptions};
use stella_tests::faults::server_kill::{self, ServerKillOptions};
use stella_tests::faults::Figures;

use crate::cargo::{cargo, run_checked, step};

/// The scenarios, by the name `--only` takes.
const SCENARIOS: &[&str] = &[
    "server-kill",
    "partition",
    "disk-full",
    "postgres-restart",
    "replica-kill",
];

/// Flags of `cargo xtask faults`.
#[derive(Debug, Args)]
pub struct FaultsArgs {
    /// Deployments in flight when the server is killed.
    #[arg(long, default_value_t = 1000)]
    deployments: usize,
    /// Agents the simulated targets are spread over.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Run only these scenarios (comma-separated): server-kill, partition, disk-full,
    /// postgres-restart, replica-kill.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Keep each scenario's directory (server data, agents, logs) and print where.
    #[arg(long)]
    keep: bool,
}

/// Builds the `stella` binary, then runs the scenarios one after the other.
pub fn run(args: &FaultsArgs) -> anyhow::Result<()> {
    for name in &args.only {
        if !SCENARIOS.contains(&name.as_str()) {
            bail!(
                "unknown scenario {name}: use one of {}",
                SCENARIOS.join(", ")
            );
        }
    }
    let selected = |name: &str| args.only.is_empty() || args.only.iter().any(|n| n == name);
    step("build the stella binary the scenarios start");
    run_checked(cargo().args(["build", "--package", "stella-cli", "--bin", "stella"]))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut all = Vec::new();
    if selected("server-kill") {
        step("server-kill: SIGKILL of the server during in-flight deployments");
        let options = ServerKillOptions {
            deployments: args.deployments,
            agents: args.agents,
            ..ServerKillOptions::full()
        };
        let dir = scenario_dir("server-kill", args.keep)?;
        let started = Instant::now();
        let figures = runtime.block_on(server_kill::run(&options, dir.path()))?;
        report(&figures, started);
        all.push(figures);
    }
    if selected("partition") {
        step("partition: the agents cut from the gateway past the unreachable threshold");
        let dir = scenario_dir("partition", args.keep)?;
        let started = Instant::now();
        let figures = runtime.block_on(partition::run(&PartitionOptions::full(), dir.path()))?;
        report(&figures, started);
        all.push(figures);
    }
    if selected("disk-full") {
        step("disk-full: the SQLite data dir out of space, then freed");
        let dir = scenario_dir("disk-full", args.keep)?;
        let started = Instant::now();
        let figures = runtime.block_on(disk_full::run(&DiskFullOptions::full(), dir.path()))?;
        report(&figures, started);
        all.push(figures);
    }
    if selected("postgres-restart") {
        step("postgres-restart: PostgreSQL stopped and started again under write load");
        let dir = scenario_dir("postgres-restart", args.keep)?;
        let started = Instant::now();
        let figures = runtime.block_on(postgres_restart::run(
            &PostgresRestartOptions::full(),
            dir.path(),
        ))?;
        report(&figures, started);
        all.push(figures);
    }
    if selected("replica-kill") {
        step("replica-kill: SIGKILL of one of three replicas over PostgreSQL");
        let dir = scenario_dir("replica-kill", args.keep)?;
        let started = Instant::now();
        let figures =
            runtime.block_on(replica_kill::run(&ReplicaKillOptions::full(), dir.path()))?;
        report(&figures, started);
        all.push(figures);
    }
    println!("\n==> summary");
    for figures in &all {
        println!(
            "{:<70} N {:>5}  lost {}  duplicated {}  recovered {}",
            figures.scenario,
            figures.n,
            figures.lost,
            figures.duplicated,
            figures
                .recovered_after
                .map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        );
    }
    let failed: Vec<&str> = all
        .iter()
        .filter(|f| !f.is_clean())
        .map(|f| f.scenario.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "scenarios that lost or duplicated work: {}",
            failed.join("; ")
        );
    }
    Ok(())
}

fn scenario_dir(name: &str, keep: bool) -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("stella-faults-{name}-"))
        .tempdir()?;
    if keep {
        dir.disable_cleanup(true);
        println!("{name}: kept in {}", dir.path().display());
    }
    Ok(dir)
}

fn report(figures: &Figures, started: Instant) {
    println!();
    print!("{figures}");
    println!(
        "  runtime            {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
