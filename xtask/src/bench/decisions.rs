//! `cargo xtask bench decisions`: promotions decided (every gate, signed, chained,
//! stored) per second on SQLite and on PostgreSQL, and the time of one decision. The
//! measuring program is `stella-tests`' `bench-decisions` (it runs the control plane in
//! its own process, with the test harness's private PostgreSQL).

use clap::Args;

use crate::cargo::{cargo, step};

/// Flags of `cargo xtask bench decisions`.
#[derive(Debug, Args)]
pub struct DecisionsArgs {
    /// Decisions per backend.
    #[arg(long, default_value_t = 20_000)]
    decisions: usize,
    /// Promotions requested at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// `sqlite`, `postgres` or `both`.
    #[arg(long, default_value = "both", value_parser = ["sqlite", "postgres", "both"])]
    backend: String,
}

/// Builds and runs the measuring program in release mode.
pub fn run(args: &DecisionsArgs) -> anyhow::Result<()> {
    step("bench decisions: release build and run");
    let status = cargo()
        .args([
            "run",
            "--release",
            "--package",
            "stella-tests",
            "--bin",
            "bench-decisions",
            "--",
            "--decisions",
            &args.decisions.to_string(),
            "--concurrency",
            &args.concurrency.to_string(),
            "--backend",
            &args.backend,
        ])
        .env("RUST_LOG", "warn")
        .status()?;
    anyhow::ensure!(status.success(), "bench-decisions failed ({status})");
    Ok(())
}
