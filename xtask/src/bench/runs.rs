//! `cargo xtask bench runs`: task-pack runs (20 no-op steps each) per second and the
//! step-dispatch latency, on SQLite and on PostgreSQL. The measuring program is
//! `stella-tests`' `bench-runs` (it runs the control plane in its own process and
//! drives it over the REST API, with the test harness's private PostgreSQL).

use clap::Args;

use crate::cargo::{cargo, step};

/// Flags of `cargo xtask bench runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Runs per backend.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Connections the runs are created through.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// `sqlite`, `postgres` or `both`.
    #[arg(long, default_value = "both", value_parser = ["sqlite", "postgres", "both"])]
    backend: String,
}

/// Builds and runs the measuring program in release mode.
pub fn run(args: &RunsArgs) -> anyhow::Result<()> {
    step("bench runs: release build and run");
    let status = cargo()
        .args([
            "run",
            "--release",
            "--package",
            "stella-tests",
            "--bin",
            "bench-runs",
            "--",
            "--runs",
            &args.runs.to_string(),
            "--concurrency",
            &args.concurrency.to_string(),
            "--backend",
            &args.backend,
        ])
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(status.success(), "bench-runs failed ({status})");
    Ok(())
}
