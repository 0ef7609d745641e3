//! Phase 1: every agent connected and heartbeating for `--plateau-seconds`; the
//! server's RSS per agent (as `bench agents` counts it: growth since startup over the
//! agents connected), heartbeats handled per second and the CPU they cost.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{round1, Fleet};
use crate::bench::server::Snapshot;
use crate::bench::sim;
use crate::cargo::step;

/// The RSS budget per agent at the plateau.
const TARGET_RSS_PER_AGENT_KIB: f64 = 40.0;

pub async fn run(fleet: &mut Fleet<'_>) -> anyhow::Result<()> {
    let seconds = fleet.args.plateau_seconds;
    step(&format!(
        "plateau: {} agents for {seconds} s",
        fleet.alive()
    ));
    let server = &fleet.server;
    // Let the gauge catch up with the last sessions before the window opens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Snapshot::take(server)?;
    let heartbeats_start = server
        .metrics()
        .await?
        .value("stella_heartbeats_total")
        .unwrap_or(0.0);
    let window_start = Instant::now();
    sim::watch_window(
        server,
        window_start + Duration::from_secs(seconds),
        &fleet.context.stats.open,
    )
    .await;
    let metrics = server.metrics().await?;
    let window = window_start.elapsed().as_secs_f64();
    let end = Snapshot::take(server)?;
    let heartbeats = metrics.value("stella_heartbeats_total").unwrap_or(0.0) - heartbeats_start;
    let held = fleet.context.stats.open.load(Ordering::Relaxed);
    let sessions = metrics.value("stella_agent_sessions").unwrap_or(0.0);
    let per_agent =
        (end.server.rss_kib as f64 - fleet.startup.server.rss_kib as f64) / held.max(1) as f64;
    let cpu = end
        .server
        .cpu_percent_since(&start.server, fleet.clock_ticks);
    let client_cpu = end
        .client
        .cpu_percent_since(&start.client, fleet.clock_ticks);
    let per_second = heartbeats / window;
    let verdict = if per_agent <= TARGET_RSS_PER_AGENT_KIB {
        "met"
    } else {
        "MISSED"
    };
    fleet.figure(
        "plateau_agents_held",
        "plateau: agents held",
        json!(held),
        format!("{held} (server sessions {sessions:.0}) after {window:.0} s"),
    );
    fleet.figure(
        "plateau_server_rss_per_agent_kib",
        "plateau: server RSS per agent",
        json!(round1(per_agent)),
        format!(
            "{per_agent:.1} KiB (RSS {:.1} MiB, {:.1} at startup; target \
             {TARGET_RSS_PER_AGENT_KIB:.0} KiB: {verdict})",
            end.server.rss_kib as f64 / 1024.0,
            fleet.startup.server.rss_kib as f64 / 1024.0
        ),
    );
    fleet.figure(
        "plateau_heartbeats_per_second",
        "plateau: heartbeats handled/s",
        json!(round1(per_second)),
        format!(
            "{per_second:.1} (expected {:.1})",
            held as f64 / f64::from(fleet.args.heartbeat_interval_seconds)
        ),
    );
    fleet.figure(
        "plateau_server_cpu_percent",
        "plateau: server CPU",
        json!(round1(cpu)),
        format!(
            "{cpu:.1} % of one core ({:.1} µs per heartbeat); bench client {client_cpu:.1} %",
            if per_second > 0.0 {
                cpu / 100.0 / per_second * 1e6
            } else {
                0.0
            }
        ),
    );
    Ok(())
}
