//! `cargo xtask bench fleet`: a fleet of simulated agents (as in `bench agents`) that
//! also drive `sim` targets, against a real `stella server` release child process on
//! SQLite. Phases, each printing its figures:
//!
//! 1. `plateau`: N agents held with heartbeats; server RSS per agent, heartbeats/s and
//!    the server CPU they cost.
//! 2. `dispatch`: promotions at a fixed rate, one `sim` target per environment; the
//!    latency from the API's answer (the deployment and its tasks committed) to the
//!    task frame read by the agent.
//! 3. `fanout`: one promotion to one environment of a target on each agent; time until
//!    every task is on its stream, and until every result is stored.
//! 4. `detect`: connections of some agents dropped without `Goodbye`; time until the
//!    API shows each `unreachable`.
//! 5. `storm`: the server killed (SIGKILL) and started again on the same data and
//!    ports; time until every agent is back, handshakes/s, errors agents saw.
//!
//! The agents answer each task with a `succeeded` result at once and count the server's
//! `TaskAck`s (sent once a result is stored). A lost session is reopened with
//! agent-core's backoff (exponential, full jitter: 0.5 s first ceiling, 30 s largest).

mod detect;
mod dispatch;
mod estate;
mod plateau;
mod storm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use stella_agent_core::BackoffConfig;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::server::{self, server_binary, ServerProcess, Snapshot};
use super::sim::{
    self, hello, raise_fd_limit, RunningAgent, SessionContext, SessionStats, TaskLog,
};
use crate::cargo::step;

/// How long the server may settle after startup before the first sample.
const SETTLE: Duration = Duration::from_secs(1);

/// A phase of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    /// Hold the agents with heartbeats; memory and CPU.
    Plateau,
    /// Promotions at `--rate`; dispatch latency.
    Dispatch,
    /// One promotion to a target on each of `--fanout-targets` agents.
    Fanout,
    /// Drop `--kill` agents' connections; time until `unreachable`.
    Detect,
    /// Kill and restart the server; time until all agents are back.
    Storm,
}

/// Flags of `cargo xtask bench fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Number of simulated agents.
    #[arg(long, default_value_t = 15_000)]
    count: usize,
    /// Phases to run, in the order above (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Phase>,
    /// Length of the plateau (all agents connected, heartbeating).
    #[arg(long, default_value_t = 300)]
    plateau_seconds: u64,
    /// Heartbeat interval the server is configured with (and tells the agents).
    #[arg(long, default_value_t = 5)]
    heartbeat_interval_seconds: u32,
    /// Promotions per second of the dispatch phase.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Length of the dispatch phase (rate × seconds environments are created).
    #[arg(long, default_value_t = 10)]
    dispatch_seconds: u64,
    /// Promotions of the dispatch phase in flight at once, at most.
    #[arg(long, default_value_t = 256)]
    dispatch_concurrency: usize,
    /// Targets (one per agent) of the fan-out promotion; at most `--count`.
    #[arg(long, default_value_t = 10_000)]
    fanout_targets: usize,
    /// Agents whose connections the detection phase drops.
    #[arg(long, default_value_t = 1_000)]
    kill: usize,
    /// TLS handshakes and `Connect` calls in flight at once while connecting first.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Enrolments (join token + `Enroll`) in flight at once.
    #[arg(long, default_value_t = 64)]
    enrol_concurrency: usize,
    /// Use the `stella` release binary as it is instead of running `cargo build`.
    #[arg(long)]
    no_build: bool,
    /// Bench this `stella` binary instead of the workspace's; implies `--no-build`.
    #[arg(long, value_name = "PATH")]
    server_binary: Option<PathBuf>,
    /// Diagnostics: run the server under this command, e.g. `perf record -g` or
    /// `taskset -c 1` (as in `bench agents`).
    #[arg(long, value_name = "COMMAND")]
    server_wrapper: Option<String>,
}

impl FleetArgs {
    fn runs(&self, phase: Phase) -> bool {
        self.only.is_empty() || self.only.contains(&phase)
    }
}

/// What every phase works with.
pub struct Fleet<'a> {
    args: &'a FleetArgs,
    server: ServerProcess,
    context: Arc<SessionContext>,
    /// The agents by number (from 1), as enrolled.
    agents: Vec<RunningAgent>,
    /// Agents killed by a phase, by index into `agents`.
    killed: Vec<usize>,
    startup: Snapshot,
    clock_ticks: u64,
    /// `name value` lines for the summary, in order.
    figures: Vec<(String, String)>,
    json: serde_json::Map<String, serde_json::Value>,
}

impl Fleet<'_> {
    /// Records a figure for the summary and the JSON line.
    fn figure(&mut self, key: &str, label: &str, value: serde_json::Value, text: String) {
        println!("  {label}: {text}");
        self.figures.push((label.to_owned(), text));
        self.json.insert(key.to_owned(), value);
    }

    /// Agents alive (not killed by a phase).
    fn alive(&self) -> usize {
        self.agents.len() - self.killed.len()
    }
}

/// Runs the bench: builds, raises the fd limit, then drives the async part.
pub fn run(args: &FleetArgs) -> anyhow::Result<()> {
    if args.count == 0 || args.heartbeat_interval_seconds == 0 || args.rate == 0 {
        bail!("--count, --heartbeat-interval-seconds and --rate must be positive");
    }
    if args.connect_concurrency == 0 || args.enrol_concurrency == 0 {
        bail!("--connect-concurrency and --enrol-concurrency must be positive");
    }
    raise_fd_limit(args.count)?;
    let binary = match &args.server_binary {
        Some(path) => path.clone(),
        None => server_binary(args.no_build)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = runtime.block_on(bench(args, &binary));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn bench(args: &FleetArgs, binary: &Path) -> anyhow::Result<()> {
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-fleet-")
        .tempdir()
        .context("cannot create a temp dir")?;
    step("start the control plane");
    // The bench client speaks plain HTTP to the loopback API (the server serves TLS
    // by default).
    let config = format!(
        "heartbeat_interval_seconds = {}\napi_plain_http = true\n",
        args.heartbeat_interval_seconds
    );
    let server = ServerProcess::start(
        binary,
        work_dir.path(),
        &config,
        args.server_wrapper.as_deref(),
    )
    .await?;
    println!(
        "server pid {} (log: {})",
        server.pid(),
        server.log_path().display()
    );
    let mut fleet = match start_fleet(args, server).await {
        Ok(fleet) => fleet,
        Err((error, server)) => {
            eprintln!("server log (last lines):\n{}", server.log_tail());
            server.stop().await;
            return Err(error);
        }
    };
    let result = run_phases(&mut fleet).await;
    fleet.context.shutdown.cancel();
    if result.is_err() {
        eprintln!("server log (last lines):\n{}", fleet.server.log_tail());
    }
    print_summary(&fleet);
    let log_path = fleet.server.log_path().to_owned();
    fleet.server.stop().await;
    // The work dir goes; the server's log stays for a look at what it did.
    let kept = std::env::temp_dir().join("stella-bench-fleet-server.log");
    if std::fs::copy(&log_path, &kept).is_ok() {
        println!("server log: {}", kept.display());
    }
    drop(work_dir);
    result
}

async fn run_phases(fleet: &mut Fleet<'_>) -> anyhow::Result<()> {
    let args = fleet.args;
    if args.runs(Phase::Plateau) {
        plateau::run(fleet).await?;
    }
    if args.runs(Phase::Dispatch) || args.runs(Phase::Fanout) {
        step("release of one inert image");
        estate::create_release(&fleet.server).await?;
    }
    if args.runs(Phase::Dispatch) {
        dispatch::latency(fleet).await?;
    }
    if args.runs(Phase::Fanout) {
        dispatch::fanout(fleet).await?;
    }
    if args.runs(Phase::Detect) {
        detect::run(fleet).await?;
    }
    if args.runs(Phase::Storm) {
        storm::run(fleet).await?;
    }
    Ok(())
}

/// Enrols and connects the agents; on failure hands the server back to be stopped.
async fn start_fleet(
    args: &FleetArgs,
    server: ServerProcess,
) -> Result<Fleet<'_>, (anyhow::Error, ServerProcess)> {
    match enrol_and_connect(args, &server).await {
        Ok((context, agents, startup, clock_ticks)) => Ok(Fleet {
            args,
            server,
            context,
            agents,
            killed: Vec::new(),
            startup,
            clock_ticks,
            figures: Vec::new(),
            json: serde_json::Map::new(),
        }),
        Err(error) => Err((error, server)),
    }
}

async fn enrol_and_connect(
    args: &FleetArgs,
    server: &ServerProcess,
) -> anyhow::Result<(Arc<SessionContext>, Vec<RunningAgent>, Snapshot, u64)> {
    let clock_ticks = server::clock_ticks_per_second()?;
    let (gateway, ca_pin) = sim::gateway_of(server).await?;
    tokio::time::sleep(SETTLE).await;
    let startup = Snapshot::take(server)?;

    let labels = HashMap::from([("bench".to_owned(), "fleet".to_owned())]);
    let enrolment = sim::enrol_fleet(
        server,
        (&gateway, &ca_pin),
        args.count,
        args.enrol_concurrency,
        &labels,
    )
    .await?;
    let enrolled = enrolment.agents.len();
    if enrolled < args.count {
        bail!("only {enrolled} of {} agents could enrol", args.count);
    }
    let mut agents = enrolment.agents;
    agents.sort_by(|a, b| a.name.cmp(&b.name));

    step(&format!(
        "connect {enrolled} sessions ({} handshakes at a time)",
        args.connect_concurrency
    ));
    let context = Arc::new(SessionContext {
        gateway,
        hello: hello(labels, &["sim"]),
        default_heartbeat_interval: Duration::from_secs(u64::from(args.heartbeat_interval_seconds)),
        started: Instant::now(),
        stats: SessionStats::default(),
        tasks: TaskLog::default(),
        shutdown: CancellationToken::new(),
        connections_only: false,
        reconnect: Some(BackoffConfig::default()),
    });
    let running = sim::connect_all(agents, &context, args.connect_concurrency).await?;
    let stats = &context.stats;
    let connected = stats.open.load(Ordering::Relaxed);
    let seconds =
        Duration::from_micros(stats.last_welcome_micros.load(Ordering::Relaxed)).as_secs_f64();
    println!(
        "connected {connected}/{enrolled} in {seconds:.1} s ({} failed attempts)",
        stats.attempt_errors.load(Ordering::Relaxed)
    );
    if let Some(error) = stats.first_error() {
        println!("first session error: {error}");
    }
    if connected < enrolled {
        bail!("only {connected} of {enrolled} agents connected");
    }
    Ok((context, running, startup, clock_ticks))
}

fn print_summary(fleet: &Fleet<'_>) {
    println!("\n==> results ({} agents)", fleet.agents.len());
    for (label, value) in &fleet.figures {
        println!("{label:<44} {value}");
    }
    println!(
        "BENCH_JSON {}",
        serde_json::Value::Object(fleet.json.clone())
    );
}

/// The `q` quantile (0–1) of sorted `values`, nearest rank; 0 for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `values` and returns (p50, p99, max).
fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        quantile(values, 0.50),
        quantile(values, 0.99),
        values.last().copied().unwrap_or(0.0),
    )
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(summary(&mut values), (50.0, 99.0, 100.0));
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }
}
