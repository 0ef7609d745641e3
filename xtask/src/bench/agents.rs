//! `cargo xtask bench agents`: enrols N simulated agents with a fresh control plane
//! (a `stella server` child process built in release mode), holds one mTLS session
//! per agent from this process, and reports the server's memory and CPU per agent.
//!
//! Client and server are separate processes, so `/proc` figures of the server contain
//! nothing of the simulation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::server::{self, server_binary, ServerProcess, Snapshot};
use super::sim::{self, hello, per_second, raise_fd_limit, SessionContext, SessionStats, TaskLog};
use crate::cargo::step;
/// The memory budget per agent the bench is held against.
const TARGET_RSS_PER_AGENT_KIB: f64 = 48.0;
/// Heartbeats per agent after which the server's RSS stops growing (measured: the
/// HTTP/2 and gRPC read buffers of a connection are then fully faulted in).
const PLATEAU_HEARTBEATS: f64 = 250.0;
/// How long the server may settle after startup before the first sample.
const SETTLE: Duration = Duration::from_secs(1);

/// Flags of `cargo xtask bench agents`.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// Number of simulated agents.
    #[arg(long)]
    count: usize,
    /// Heartbeat interval the server is configured with (and tells the agents).
    #[arg(long, default_value_t = 5)]
    heartbeat_interval_seconds: u32,
    /// Length of the steady window (all agents connected, heartbeating).
    #[arg(long, default_value_t = 30)]
    duration_seconds: u64,
    /// TLS handshakes and `Connect` calls in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Enrolments (join token + `Enroll`) in flight at once.
    #[arg(long, default_value_t = 64)]
    enrol_concurrency: usize,
    /// Use the `stella` release binary as it is instead of running `cargo build`.
    #[arg(long)]
    no_build: bool,
    /// Bench this `stella` binary instead of the workspace's (to compare two builds);
    /// implies `--no-build`.
    #[arg(long, value_name = "PATH")]
    server_binary: Option<PathBuf>,
    /// Diagnostics: open the mTLS connections but call no `Connect`, to tell the cost
    /// of a connection (TCP, TLS, HTTP/2) from that of a session.
    #[arg(long)]
    connections_only: bool,
    /// Diagnostics: run the server under this command, e.g. `heaptrack` (its output
    /// file lands in the current directory) or `taskset -c 1`.
    #[arg(long, value_name = "COMMAND")]
    server_wrapper: Option<String>,
}

/// Runs the bench: builds, raises the fd limit, then drives the async part.
pub fn run(args: &AgentsArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    if args.heartbeat_interval_seconds == 0 || args.duration_seconds == 0 {
        bail!("--heartbeat-interval-seconds and --duration-seconds must be positive");
    }
    if args.connect_concurrency == 0 || args.enrol_concurrency == 0 {
        bail!("--connect-concurrency and --enrol-concurrency must be positive");
    }
    let fd_limit = raise_fd_limit(args.count)?;
    let binary = match &args.server_binary {
        Some(path) => path.clone(),
        None => server_binary(args.no_build)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime.block_on(bench(args, &binary, fd_limit))?;
    // Thousands of session tasks end with the runtime; no need to wait for each.
    runtime.shutdown_timeout(Duration::from_secs(5));
    report.print();
    Ok(())
}

async fn bench(
    args: &AgentsArgs,
    binary: &std::path::Path,
    fd_limit: u64,
) -> anyhow::Result<Report> {
    let work_dir = tempfile::Builder::new()
        .prefix("stella-bench-agents-")
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
    let result = drive(args, &server, fd_limit).await;
    if result.is_err() {
        eprintln!("server log (last lines):\n{}", server.log_tail());
    }
    server.stop().await;
    drop(work_dir);
    result
}

async fn drive(args: &AgentsArgs, server: &ServerProcess, fd_limit: u64) -> anyhow::Result<Report> {
    let clock_ticks = server::clock_ticks_per_second()?;
    let (gateway, ca_pin) = sim::gateway_of(server).await?;
    tokio::time::sleep(SETTLE).await;
    let startup = Snapshot::take(server)?;

    let labels = HashMap::from([("bench".to_owned(), "agents".to_owned())]);
    let enrolment = sim::enrol_fleet(
        server,
        (&gateway, &ca_pin),
        args.count,
        args.enrol_concurrency,
        &labels,
    )
    .await?;
    let enrolled = enrolment.agents.len();
    let after_enrolment = Snapshot::take(server)?;

    step(&format!(
        "connect {enrolled} sessions ({} handshakes at a time)",
        args.connect_concurrency
    ));
    let context = Arc::new(SessionContext {
        gateway,
        hello: hello(labels, &["docker"]),
        default_heartbeat_interval: Duration::from_secs(u64::from(args.heartbeat_interval_seconds)),
        started: Instant::now(),
        stats: SessionStats::default(),
        tasks: TaskLog::default(),
        shutdown: CancellationToken::new(),
        connections_only: args.connections_only,
        reconnect: None,
    });
    let connect_start = Snapshot::take(server)?;
    let _running = sim::connect_all(enrolment.agents, &context, args.connect_concurrency).await?;
    let stats = &context.stats;
    let connect_end = Snapshot::take(server)?;
    let connected = stats.welcomed.load(Ordering::Relaxed);
    let connect_seconds =
        Duration::from_micros(stats.last_welcome_micros.load(Ordering::Relaxed)).as_secs_f64();
    println!(
        "connected {connected}/{enrolled} in {connect_seconds:.1} s ({} failed)",
        stats.failed.load(Ordering::Relaxed)
    );
    if let Some(error) = stats.first_error() {
        println!("first session error: {error}");
    }
    if connected == 0 {
        bail!("no session could be opened");
    }

    step(&format!(
        "steady heartbeats for {} s",
        args.duration_seconds
    ));
    // Let the gauge catch up with the last sessions before the window opens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_sample = Snapshot::take(server)?;
    let metrics_start = server.metrics().await?;
    let window_start = Instant::now();
    let heartbeats_start = metrics_start
        .value("stella_heartbeats_total")
        .unwrap_or(0.0);
    let sent_start = stats.heartbeats_sent.load(Ordering::Relaxed);
    sim::watch_window(
        server,
        window_start + Duration::from_secs(args.duration_seconds),
        &stats.open,
    )
    .await;
    let metrics_end = server.metrics().await?;
    let window = window_start.elapsed().as_secs_f64();
    let heartbeats_end = metrics_end.value("stella_heartbeats_total").unwrap_or(0.0);
    let sent_end = stats.heartbeats_sent.load(Ordering::Relaxed);
    let steady_end = Snapshot::take(server)?;
    context.shutdown.cancel();

    Ok(Report {
        requested: args.count,
        heartbeat_interval_seconds: args.heartbeat_interval_seconds,
        fd_limit,
        enrolled,
        enrol_seconds: enrolment.seconds,
        connected,
        connect_failed: stats.failed.load(Ordering::Relaxed),
        connect_seconds,
        sessions_lost: stats.lost.load(Ordering::Relaxed),
        server_sessions: metrics_end.value("stella_agent_sessions"),
        startup,
        after_enrolment,
        connected_sample,
        steady_end,
        connect_start,
        connect_end,
        steady_seconds: window,
        heartbeats_per_second: (heartbeats_end - heartbeats_start) / window,
        heartbeats_sent_per_second: (sent_end - sent_start) as f64 / window,
        clock_ticks,
    })
}

/// Every figure of one run.
#[derive(Debug)]
struct Report {
    requested: usize,
    heartbeat_interval_seconds: u32,
    fd_limit: u64,
    enrolled: usize,
    enrol_seconds: f64,
    connected: usize,
    connect_failed: usize,
    connect_seconds: f64,
    sessions_lost: usize,
    server_sessions: Option<f64>,
    startup: Snapshot,
    after_enrolment: Snapshot,
    connected_sample: Snapshot,
    steady_end: Snapshot,
    connect_start: Snapshot,
    connect_end: Snapshot,
    steady_seconds: f64,
    heartbeats_per_second: f64,
    heartbeats_sent_per_second: f64,
    clock_ticks: u64,
}

impl Report {
    /// Server RSS growth per connected agent between two snapshots.
    fn rss_per_agent_kib(&self, before: &Snapshot, after: &Snapshot) -> f64 {
        (after.server.rss_kib as f64 - before.server.rss_kib as f64) / self.connected.max(1) as f64
    }

    fn print(&self) {
        let ticks = self.clock_ticks;
        let per_agent = self.rss_per_agent_kib(&self.startup, &self.steady_end);
        let per_agent_connected = self.rss_per_agent_kib(&self.startup, &self.connected_sample);
        let per_session = self.rss_per_agent_kib(&self.after_enrolment, &self.steady_end);
        let (connect_start, connect_end) = (&self.connect_start, &self.connect_end);
        let cpu_connect = connect_end
            .server
            .cpu_percent_since(&connect_start.server, ticks);
        let client_cpu_connect = connect_end
            .client
            .cpu_percent_since(&connect_start.client, ticks);
        let (steady_start, steady_end) = (&self.connected_sample, &self.steady_end);
        let cpu_steady = steady_end
            .server
            .cpu_percent_since(&steady_start.server, ticks);
        let client_cpu_steady = steady_end
            .client
            .cpu_percent_since(&steady_start.client, ticks);
        let expected_heartbeats =
            self.connected as f64 / f64::from(self.heartbeat_interval_seconds);
        let mib = |kib: u64| kib as f64 / 1024.0;
        let verdict = if per_agent <= TARGET_RSS_PER_AGENT_KIB {
            "met"
        } else {
            "MISSED"
        };
        let sessions = self
            .server_sessions
            .map_or("?".to_owned(), |v| format!("{v:.0}"));

        let rows = [
            ("agents requested", self.requested.to_string()),
            (
                "agents enrolled",
                format!(
                    "{} in {:.1} s ({:.1} enrolments/s)",
                    self.enrolled,
                    self.enrol_seconds,
                    per_second(self.enrolled, self.enrol_seconds)
                ),
            ),
            (
                "agents connected (got Welcome)",
                format!(
                    "{} in {:.1} s ({:.1}/s), {} failed",
                    self.connected,
                    self.connect_seconds,
                    per_second(self.connected, self.connect_seconds),
                    self.connect_failed
                ),
            ),
            ("server sessions (/metrics)", sessions),
            ("sessions lost", self.sessions_lost.to_string()),
            (
                "server RSS after startup",
                format!("{:.1} MiB", mib(self.startup.server.rss_kib)),
            ),
            (
                "server RSS after enrolment",
                format!("{:.1} MiB", mib(self.after_enrolment.server.rss_kib)),
            ),
            (
                "server RSS all connected",
                format!("{:.1} MiB", mib(self.connected_sample.server.rss_kib)),
            ),
            (
                "server RSS after steady window",
                format!(
                    "{:.1} MiB ({} threads)",
                    mib(steady_end.server.rss_kib),
                    steady_end.server.threads
                ),
            ),
            (
                "server RSS per agent",
                format!(
                    "{per_agent:.1} KiB (target {TARGET_RSS_PER_AGENT_KIB:.0}: {verdict}); \
                     {per_agent_connected:.1} right after connect, \
                     {per_session:.1} for the sessions alone"
                ),
            ),
            (
                "server heartbeats/s",
                format!(
                    "{:.1} over {:.0} s (expected {expected_heartbeats:.1}, sent {:.1})",
                    self.heartbeats_per_second,
                    self.steady_seconds,
                    self.heartbeats_sent_per_second
                ),
            ),
            (
                "server CPU while connecting",
                format!("{cpu_connect:.1} % of one core"),
            ),
            (
                "server CPU steady",
                format!("{cpu_steady:.1} % of one core"),
            ),
            (
                "bench client",
                format!(
                    "{:.1} MiB RSS, CPU {client_cpu_connect:.1} % connecting, \
                     {client_cpu_steady:.1} % steady",
                    mib(steady_end.client.rss_kib)
                ),
            ),
        ];
        println!("\n==> results");
        for (name, value) in rows {
            println!("{name:<32} {value}");
        }
        let heartbeats_per_agent = self.steady_seconds / f64::from(self.heartbeat_interval_seconds);
        if heartbeats_per_agent < PLATEAU_HEARTBEATS {
            println!(
                "note: the server's per-connection read buffers are touched a little more with \
                 every heartbeat, so RSS grows until each agent has sent about \
                 {PLATEAU_HEARTBEATS:.0} heartbeats ({heartbeats_per_agent:.0} here); for the \
                 plateau run `--heartbeat-interval-seconds 1 --duration-seconds 300`"
            );
        }

        let json = serde_json::json!({
            "agents_requested": self.requested,
            "agents_enrolled": self.enrolled,
            "agents_connected": self.connected,
            "connect_failed": self.connect_failed,
            "sessions_lost": self.sessions_lost,
            "server_agent_sessions": self.server_sessions,
            "heartbeat_interval_seconds": self.heartbeat_interval_seconds,
            "steady_seconds": round1(self.steady_seconds),
            "enrol_seconds": round1(self.enrol_seconds),
            "enrolments_per_second": round1(per_second(self.enrolled, self.enrol_seconds)),
            "connect_seconds": round1(self.connect_seconds),
            "server_rss_startup_kib": self.startup.server.rss_kib,
            "server_rss_enrolled_kib": self.after_enrolment.server.rss_kib,
            "server_rss_connected_kib": self.connected_sample.server.rss_kib,
            "server_rss_steady_kib": steady_end.server.rss_kib,
            "server_rss_per_agent_kib": round1(per_agent),
            "server_rss_per_session_kib": round1(per_session),
            "server_heartbeats_per_second": round1(self.heartbeats_per_second),
            "server_cpu_connect_percent": round1(cpu_connect),
            "server_cpu_steady_percent": round1(cpu_steady),
            "server_threads": steady_end.server.threads,
            "client_rss_kib": steady_end.client.rss_kib,
            "client_cpu_connect_percent": round1(client_cpu_connect),
            "client_cpu_steady_percent": round1(client_cpu_steady),
            "fd_limit": self.fd_limit,
        });
        println!("BENCH_JSON {json}");
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}
