//! `cargo xtask bench runs`: task-pack runs per second and step-dispatch latency, on
//! SQLite and on PostgreSQL.
//!
//! A control plane runs in this process, reached over its REST API (TLS) as a client
//! would. Each run is a pack of 20 no-op steps (`builtin:wait` of 0 s) in sequence; all
//! runs are created at once (through `--concurrency` connections) and the clock stops
//! when the last one has succeeded. A step's dispatch latency is the time from the end
//! of the step before it to its own start, both as the run's log stamps them (ms).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::stream::{self, StreamExt as _};
use serde_json::{json, Value};
use stella_tests::task_runner::{create_run, logs, pack, run_state};
use stella_tests::TestServer;

const STEPS: usize = 20;

struct Args {
    runs: usize,
    concurrency: usize,
    backends: Vec<&'static str>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 200,
        concurrency: 8,
        backends: vec!["sqlite", "postgres"],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--runs" => args.runs = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--backend" => {
                args.backends = match value()?.as_str() {
                    "sqlite" => vec!["sqlite"],
                    "postgres" => vec!["postgres"],
                    "both" => vec!["sqlite", "postgres"],
                    other => bail!("--backend sqlite|postgres|both, not {other}"),
                }
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    println!(
        "runs: {} per backend of {STEPS} no-op steps, created through {} connections",
        args.runs, args.concurrency
    );
    for backend in &args.backends {
        run(backend, &args).await?;
    }
    Ok(())
}

/// Milliseconds since midnight of an RFC 3339 UTC stamp (`…THH:MM:SS.mmmZ`); a bench
/// run does not cross midnight, and differences are all it needs.
fn ms_of_day(stamp: &str) -> Option<i64> {
    let time = stamp.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours: i64 = parts.next()?.parse().ok()?;
    let minutes: i64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some((hours * 3600 + minutes * 60) * 1000 + (seconds * 1000.0).round() as i64)
}

async fn run(backend: &str, args: &Args) -> anyhow::Result<()> {
    let database_url = match backend {
        "postgres" => Some(stella_tests::postgres::fresh_database_url().await?),
        _ => None,
    };
    let server = TestServer::start_with(|config| config.database_url = database_url).await?;
    let mut steps = String::new();
    for n in 0..STEPS {
        steps.push_str(&format!(
            "    - id: s{n:02}\n      run:\n        uses: builtin:wait\n        with: {{seconds: 0}}\n"
        ));
    }
    let manifest = pack("bench-noop", "", &steps);
    let ids: Vec<String> = (0..args.runs)
        .map(|n| format!("bench-{n}-{}", uuid::Uuid::new_v4().simple()))
        .collect();

    let started = Instant::now();
    let created: Vec<anyhow::Result<Value>> = stream::iter(ids.iter())
        .map(|id| create_run(&server, json!({"runId": id, "manifest": manifest})))
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    for result in created {
        result?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pending: Vec<&String> = ids.iter().collect();
    while !pending.is_empty() {
        if Instant::now() > deadline {
            bail!("{} runs still unfinished after 10 minutes", pending.len());
        }
        let mut still = Vec::new();
        for id in pending {
            let state = run_state(&server, id).await?;
            match state["status"].as_str() {
                Some("Succeeded") => {}
                Some("Failed" | "Cancelled") => bail!("run {id} ended {}", state["status"]),
                _ => still.push(id),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let elapsed = started.elapsed();

    let mut latencies = Vec::new();
    for id in &ids {
        let events = logs(&server, id).await?;
        let mut previous_end: Option<i64> = None;
        for event in &events {
            let at = event["timestamp"].as_str().and_then(ms_of_day);
            match event["eventType"].as_str() {
                Some("step.started") => {
                    if let (Some(end), Some(at)) = (previous_end, at) {
                        latencies.push(at - end);
                    }
                }
                Some("step.completed") => previous_end = at,
                _ => {}
            }
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| -> i64 {
        if latencies.is_empty() {
            return 0;
        }
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[index.min(latencies.len() - 1)]
    };
    println!(
        "{backend}: {} runs of {STEPS} steps in {:.2} s: {:.1} runs/s ({:.0} steps/s); step dispatch p50 {} ms, p99 {} ms ({} dispatches)",
        ids.len(),
        elapsed.as_secs_f64(),
        ids.len() as f64 / elapsed.as_secs_f64(),
        (ids.len() * STEPS) as f64 / elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        latencies.len()
    );
    Ok(())
}
