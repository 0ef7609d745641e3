//! Phase 4: `--kill` agents' connections dropped at once, without `Goodbye`: their
//! session tasks end and drop the connection, so the kernel closes the sockets as it
//! does for a process killed with SIGKILL (the server sees the stream end, not a clean
//! shutdown, and has to notice the silence: three missed heartbeats). The API is polled
//! until it shows each of them `unreachable`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::{estate, round1, summary, Fleet};
use crate::cargo::step;

/// How often the agents' states are read (the resolution of the figures).
const POLL: Duration = Duration::from_millis(500);
/// How long the phase waits for the last agent.
const TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(fleet: &mut Fleet<'_>) -> anyhow::Result<()> {
    let alive: Vec<usize> = (0..fleet.agents.len())
        .filter(|index| !fleet.killed.contains(index))
        .collect();
    let count = fleet.args.kill.min(alive.len());
    step(&format!(
        "detect: drop {count} agents' connections at once; wait until each is unreachable"
    ));
    // The last agents: the fan-out's targets are on the first ones.
    let victims: Vec<usize> = alive[alive.len() - count..].to_vec();
    let names: HashMap<String, usize> = victims
        .iter()
        .map(|&index| (fleet.agents[index].name.clone(), index))
        .collect();
    let killed_at = Instant::now();
    for &index in &victims {
        fleet.agents[index].kill.cancel();
    }
    fleet.killed.extend(&victims);

    let mut seen: HashMap<String, Duration> = HashMap::new();
    let mut others_unreachable = 0;
    let mut polls = 0u32;
    let mut slowest_poll = Duration::ZERO;
    while seen.len() < count && killed_at.elapsed() < TIMEOUT {
        tokio::time::sleep(POLL).await;
        let asked = Instant::now();
        let states = match estate::agent_states(&fleet.server).await {
            Ok(states) => states,
            Err(error) => {
                println!("  reading agent states: {error:#}");
                continue;
            }
        };
        polls += 1;
        slowest_poll = slowest_poll.max(asked.elapsed());
        // A transition seen in this answer happened before the answer came.
        let at = killed_at.elapsed();
        others_unreachable = 0;
        for (name, state) in states {
            if state != "unreachable" {
                continue;
            }
            if names.contains_key(&name) {
                seen.entry(name).or_insert(at);
            } else {
                others_unreachable += 1;
            }
        }
    }
    let mut times: Vec<f64> = seen.values().map(Duration::as_secs_f64).collect();
    let (p50, p99, max) = summary(&mut times);
    let verdict = if seen.len() == count && p99 <= 15.0 {
        "met"
    } else {
        "MISSED"
    };
    fleet.figure(
        "detect_unreachable_seconds",
        "detect: killed agents shown unreachable",
        json!({"count": seen.len(), "p50": round1(p50), "p99": round1(p99), "max": round1(max)}),
        format!(
            "{}/{count}: p50 {p50:.1} s, p99 {p99:.1} s, all {max:.1} s after the kill \
             (target p99 15 s: {verdict}; polled every {POLL:?}, {polls} polls, slowest \
             {:.2} s)",
            seen.len(),
            slowest_poll.as_secs_f64()
        ),
    );
    fleet.figure(
        "detect_false_unreachable",
        "detect: live agents shown unreachable",
        json!(others_unreachable),
        others_unreachable.to_string(),
    );
    Ok(())
}
