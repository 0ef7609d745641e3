//! Phase 5: the server killed with SIGKILL and started again on the same data dir and
//! ports under every live agent. The agents see their sessions fail and reconnect with
//! agent-core's backoff (exponential from a 0.5 s ceiling to 30 s, full jitter), as
//! `stella-agent` does; they never give up, so one not back by the deadline counts as
//! given up.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{round1, Fleet};
use crate::bench::sim::PROGRESS_INTERVAL;
use crate::cargo::step;

/// How long the agents may take to come back.
const TIMEOUT: Duration = Duration::from_secs(180);

pub async fn run(fleet: &mut Fleet<'_>) -> anyhow::Result<()> {
    let alive = fleet.alive();
    step(&format!(
        "storm: kill and restart the server under {alive} agents"
    ));
    let context = fleet.context.clone();
    let stats = &context.stats;
    let welcomed_before = stats.welcomed.load(Ordering::Relaxed);
    let errors_before = stats.attempt_errors.load(Ordering::Relaxed);
    let lost_before = stats.lost.load(Ordering::Relaxed);
    stats.clear_first_errors();
    let killed_micros = context.micros();
    let killed_at = Instant::now();
    let restart = fleet.server.kill_and_restart().await?;
    let restarted_micros = context.micros();
    println!(
        "  server started again {:.2} s after the kill (pid {})",
        restart.as_secs_f64(),
        fleet.server.pid()
    );
    let mut last_progress = Instant::now();
    loop {
        let open = stats.open.load(Ordering::Relaxed);
        let reconnected = stats.welcomed.load(Ordering::Relaxed) - welcomed_before;
        if (open >= alive && reconnected >= alive) || killed_at.elapsed() >= TIMEOUT {
            break;
        }
        if last_progress.elapsed() >= PROGRESS_INTERVAL / 2 {
            println!(
                "  +{:>4.1} s: {open} sessions open, {} failed attempts",
                killed_at.elapsed().as_secs_f64(),
                stats.attempt_errors.load(Ordering::Relaxed) - errors_before
            );
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let open = stats.open.load(Ordering::Relaxed);
    let reconnected = stats.welcomed.load(Ordering::Relaxed) - welcomed_before;
    let last_welcome = stats.last_welcome_micros.load(Ordering::Relaxed);
    let all_back = Duration::from_micros(last_welcome.saturating_sub(killed_micros));
    let handshake_window =
        Duration::from_micros(last_welcome.saturating_sub(restarted_micros)).as_secs_f64();
    let handshakes_per_second = if handshake_window > 0.0 {
        reconnected as f64 / handshake_window
    } else {
        0.0
    };
    let errors = stats.attempt_errors.load(Ordering::Relaxed) - errors_before;
    let cut = stats.lost.load(Ordering::Relaxed) - lost_before;
    let gave_up = alive.saturating_sub(open);
    let healthy = fleet.server.wait_healthy().await.is_ok();
    let sessions = fleet
        .server
        .metrics()
        .await
        .ok()
        .and_then(|m| m.value("stella_agent_sessions"))
        .unwrap_or(0.0);
    // The counter restarted with the server.
    let timeouts = handshake_failures(fleet).await;
    let verdict = if gave_up == 0 && all_back.as_secs_f64() <= 15.0 {
        "met"
    } else {
        "MISSED"
    };
    fleet.figure(
        "storm_all_back_seconds",
        "storm: every agent back",
        json!(round1(all_back.as_secs_f64())),
        format!(
            "{:.1} s after the kill ({open}/{alive} sessions open, server sees {sessions:.0}; \
             server process up after {:.1} s{}; target 15 s: {verdict})",
            all_back.as_secs_f64(),
            restart.as_secs_f64(),
            if healthy {
                ""
            } else {
                ", /healthz not answering"
            }
        ),
    );
    fleet.figure(
        "storm_handshakes_per_second",
        "storm: handshakes/s",
        json!(round1(handshakes_per_second)),
        format!(
            "{handshakes_per_second:.0} ({reconnected} sessions opened in {handshake_window:.1} s \
             from the server's start; {timeouts:.0} gateway TLS handshakes failed or timed out \
             on the server)"
        ),
    );
    fleet.figure(
        "storm_errors",
        "storm: errors seen by agents",
        json!({"sessions_cut": cut, "failed_attempts": errors, "gave_up": gave_up,
               "server_handshake_failures": timeouts}),
        format!(
            "{cut} sessions cut, {errors} failed attempts to reconnect, {gave_up} gave up; \
             first failed attempt: {}",
            stats
                .first_attempt_error()
                .unwrap_or_else(|| "none".to_owned())
        ),
    );
    Ok(())
}

/// `stella_gateway_tls_handshake_failures_total` of the running server, 0 if unknown.
async fn handshake_failures(fleet: &Fleet<'_>) -> f64 {
    fleet
        .server
        .metrics()
        .await
        .ok()
        .and_then(|m| m.value("stella_gateway_tls_handshake_failures_total"))
        .unwrap_or(0.0)
}
