//! Developer tasks for the Stella workspace, run as `cargo xtask <task>`.
//!
//! - `test`: provisions the Debian packages the tests use, builds the binaries, the
//!   Debian packages and images made of them, and runs every test of the workspace.
//! - `lint`: `cargo fmt --check` and clippy with warnings denied, as CI runs them.
//! - `dist`: the Debian packages (cargo-deb); `dist images`: the container images.
//! - `fuzz`: the fuzz targets of `fuzz/`, each for a time limit.
//! - `faults`: the fault suite (server killed, partitions, disk full, database restarts).
//! - `bench agents`: how many agents one control plane holds, and at what cost.
//! - `bench fleet`: simulated agents that run tasks: plateau, dispatch latency, fan-out,
//!   dead-agent detection and a reconnect storm.

mod bench;
mod cargo;
mod dist;
mod faults;
mod fuzz;
mod lint;
mod test;

use clap::{Parser, Subcommand};

/// Stella's developer tasks.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for the Stella workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Provision test dependencies, build the binaries and run every test.
    Test(test::TestArgs),
    /// `cargo fmt --check` and `cargo clippy -D warnings` over the whole workspace.
    Lint,
    /// The Debian packages `stella` and `stella-agent` (`dist images`: the container
    /// images `stella/server` and `stella/agent`), with their SHA-256.
    Dist(dist::DistArgs),
    /// Runs the fuzz targets of `fuzz/` with libFuzzer, each for `--seconds` (600).
    Fuzz(fuzz::FuzzArgs),
    /// The fault suite: the server killed, partitioned, out of disk, its database
    /// restarted, under load; prints what was lost or duplicated.
    Faults(faults::FaultsArgs),
    /// Benchmarks against a real control plane.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Test(args) => test::run(&args),
        Task::Lint => lint::run(),
        Task::Dist(args) => dist::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Faults(args) => faults::run(&args),
        Task::Bench(command) => bench::run(command),
    }
}
