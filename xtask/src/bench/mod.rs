//! `cargo xtask bench …`: measurements against a real control plane started as a
//! child process from release binaries. One module per bench.

mod agents;
mod api;
mod decisions;
mod deploy;
mod deploy_compose;
mod deploy_ecs;
mod deploy_nomad;
mod deploy_ssh;
mod deploy_winrm;
mod fleet;
mod offline;
mod rollout;
mod runs;
mod server;
mod sim;
mod ui;

use clap::Subcommand;

use crate::cargo::{cargo, step};

/// Set in the environment of the release build of xtask that [`run`] starts.
const IN_RELEASE_ENV: &str = "STELLA_XTASK_BENCH_RELEASE";

/// The benches.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// How many agents (mTLS sessions with heartbeats) one control plane holds, and its
    /// memory and CPU per agent.
    Agents(agents::AgentsArgs),
    /// A fleet of simulated agents driving `sim` targets: memory and CPU at a plateau,
    /// dispatch latency, fan-out, dead-agent detection and a reconnect storm.
    Fleet(fleet::FleetArgs),
    /// One container deployed through Stella versus `docker run` of the same digest.
    Deploy(deploy::DeployArgs),
    /// Promotions decided (every gate, signed, chained, stored) per second, SQLite and
    /// PostgreSQL.
    Decisions(decisions::DecisionsArgs),
    /// Authentication's cost per request: no token, API token, OAuth2 JWT (p50, p99).
    Api(api::ApiArgs),
    /// An offline kit of a five-image release: its size against the images' compressed
    /// layers, and bundle and import times.
    Offline(offline::OfflineArgs),
    /// Requests through the router while a promotion runs, per strategy (none, all at
    /// once, blue-green, canary): failures, outage, p50/p99, and each rollout step's time.
    Rollout(rollout::RolloutArgs),
    /// Task-pack runs of 20 no-op steps per second, and step-dispatch latency, SQLite
    /// and PostgreSQL.
    Runs(runs::RunsArgs),
    /// The web console's dashboard over 200 releases × 10 environments × 1,000 targets:
    /// server time, page weight, first contentful paint in headless Chromium.
    Ui(ui::UiArgs),
}

/// Runs one bench, in a release build of xtask.
pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    // The bench client does thousands of TLS handshakes on the same two cores as the
    // server; unoptimised, it would be the bottleneck and steal CPU from what is measured.
    if cfg!(debug_assertions) && std::env::var_os(IN_RELEASE_ENV).is_none() {
        return rerun_in_release();
    }
    match command {
        BenchCommand::Agents(args) => agents::run(&args),
        BenchCommand::Fleet(args) => fleet::run(&args),
        BenchCommand::Deploy(args) => deploy::run(&args),
        BenchCommand::Decisions(args) => decisions::run(&args),
        BenchCommand::Api(args) => api::run(&args),
        BenchCommand::Rollout(args) => rollout::run(&args),
        BenchCommand::Runs(args) => runs::run(&args),
        BenchCommand::Offline(args) => offline::run(&args),
        BenchCommand::Ui(args) => ui::run(&args),
    }
}

fn rerun_in_release() -> anyhow::Result<()> {
    step("bench client: release build of xtask");
    let status = cargo()
        .args(["run", "--release", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .env(IN_RELEASE_ENV, "1")
        .status()?;
    // The release run printed its own error; only its exit status is left to pass on.
    std::process::exit(status.code().unwrap_or(1));
}
