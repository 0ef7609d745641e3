//! `cargo xtask bench rollout`: what a promotion costs the requests that go through the
//! router while it runs, per strategy. The world is the rollout tests' own (a control
//! plane and an agent in this process, two Docker targets with fixed host ports, a
//! registry, Debian's nginx or HAProxy in front): four clients send GETs through the
//! router, each on a new connection, back to back, from half a second before the
//! promotion until half a second after its deployment ended. p50 and p99 are of the
//! requests answered with a version (a router's error page comes back fast and would
//! make a failing case look quick); failures are counted, and the time from the first
//! failed request to the last is the outage. Before each case the router must answer 20
//! requests in a row, so that one case's outage does not spill into the next (nginx
//! keeps a server that failed out of rotation for `fail_timeout`, 10 s by default).
//! Cases, one run each, in this order on the same world:
//!
//! - `none`: the same load for `--idle-seconds` with no deployment (the floor);
//! - `all-at-once`: v2 over the stable containers (stop-first: fixed host ports);
//! - `blue-green`: v3;
//! - `canary`: v4 at 50 % then 100 %, `--pause 2s` after each route;
//! - `rolling`: v5 one target at a time behind the router (drained, replaced, put back).
//!
//! For the rollouts, each
//! step's time comes from the deployment's `rollout.steps[]` (`started_at`,
//! `finished_at`); a pause step's time beyond its pause is its duration less the pause.

#[path = "../../../routers/tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../../tests/rollouts/world.rs"]
mod world;

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use stella_tests::wait_until;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use world::{send, Load, RouterUnderTest, Tally, Timings, World, DEPLOY_TIMEOUT};

/// The canary's pause after each route.
const CANARY_PAUSE: Duration = Duration::from_secs(2);

struct Args {
    router: RouterUnderTest,
    idle_seconds: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        router: RouterUnderTest::Nginx,
        idle_seconds: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let value = it.next().with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--router" => {
                args.router = match value.as_str() {
                    "nginx" => RouterUnderTest::Nginx,
                    "haproxy" => RouterUnderTest::Haproxy,
                    other => bail!("--router is nginx or haproxy, not {other}"),
                }
            }
            "--idle-seconds" => args.idle_seconds = value.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// One case's figures.
struct Measured {
    case: &'static str,
    tally: Tally,
    latencies_ms: Vec<f64>,
    /// From the promotion to the deployment's end, client side.
    deployment: Option<Duration>,
    /// From the first failed request to the last.
    outage: Option<Duration>,
    /// Each rollout step: what it did, its duration, its time beyond its pause.
    steps: Vec<StepTime>,
}

struct StepTime {
    step: String,
    duration_ms: f64,
    beyond_pause_ms: f64,
}

impl Measured {
    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies_ms, p)
    }

    fn json(&self) -> Value {
        json!({
            "case": self.case,
            "requests": self.tally.total(),
            "failed": self.tally.failed(),
            "failures": self.tally.failures,
            "by_version": self.tally.by_version,
            "p50_ms": round(self.percentile(50.0)),
            "p99_ms": round(self.percentile(99.0)),
            "deployment_ms": self.deployment.map(|d| d.as_millis()),
            "outage_ms": self.outage.map(|d| d.as_millis()),
            "steps": self.steps.iter().map(|s| json!({
                "step": s.step,
                "duration_ms": round(s.duration_ms),
                "beyond_pause_ms": round(s.beyond_pause_ms),
            })).collect::<Vec<_>>(),
        })
    }
}

/// `sorted`'s `p`th percentile (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The answered requests' latencies in ms, sorted, and the outage.
fn figures(timings: Timings) -> (Vec<f64>, Option<Duration>) {
    let mut all: Vec<f64> = timings
        .answered
        .into_iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    all.sort_by(f64::total_cmp);
    let first = timings.failed_at.iter().min();
    let last = timings.failed_at.iter().max();
    let outage = first.zip(last).map(|(first, last)| *last - *first);
    (all, outage)
}

/// Waits until the router answers 20 requests in a row.
async fn settled(world: &World) -> anyhow::Result<()> {
    let url = world.router.url();
    wait_until(
        "the router to answer 20 requests in a row",
        Duration::from_secs(60),
        || async { (send(&url, 20).await.failed() == 0).then_some(()) },
    )
    .await
}

fn instant_of(text: &str) -> anyhow::Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).with_context(|| format!("a timestamp: {text}"))
}

/// Each step of the deployment's rollout, with its time beyond its pause.
fn step_times(deployment: &Value, pause: Duration) -> anyhow::Result<Vec<StepTime>> {
    let mut times = Vec::new();
    for step in deployment["rollout"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let what = step["step"].as_str().unwrap_or_default().to_owned();
        let (Some(started), Some(finished)) =
            (step["started_at"].as_str(), step["finished_at"].as_str())
        else {
            bail!("step {what} did not finish: {step}");
        };
        let duration_ms = (instant_of(finished)? - instant_of(started)?).as_seconds_f64() * 1000.0;
        let paused_ms = if what.starts_with("pause") {
            pause.as_secs_f64() * 1000.0
        } else {
            0.0
        };
        times.push(StepTime {
            step: what,
            duration_ms,
            beyond_pause_ms: duration_ms - paused_ms,
        });
    }
    Ok(times)
}

/// Sets `strategy` on `web`, promotes `version` under load, and measures.
async fn rollout(
    world: &World,
    case: &'static str,
    strategy: &[&str],
    version: &str,
) -> anyhow::Result<Measured> {
    let (status, _, stderr) = world.set_strategy(strategy).await?;
    anyhow::ensure!(status == 0, "env update {strategy:?}: {stderr}");
    settled(world).await?;
    let load = Load::start(&world.router.url());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let id = world.promote(version).await?;
    let done = world.server.wait_deployment(&id, DEPLOY_TIMEOUT).await?;
    let deployment = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (tally, timings) = load.stop_timed().await;
    anyhow::ensure!(
        done["state"] == "succeeded",
        "{case}: the deployment did not succeed: {done:#}"
    );
    let steps = if done.get("rollout").is_some_and(|r| !r.is_null()) {
        step_times(&done, CANARY_PAUSE)?
    } else {
        Vec::new()
    };
    let (latencies_ms, outage) = figures(timings);
    Ok(Measured {
        case,
        tally,
        latencies_ms,
        deployment: Some(deployment),
        outage,
        steps,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let router = match args.router {
        RouterUnderTest::Nginx => "nginx",
        RouterUnderTest::Haproxy => "haproxy",
    };
    let mut world = World::start_with(args.router).await?;
    world.serve_v1().await?;
    for version in ["v2", "v3", "v4", "v5"] {
        world.release(version, true).await?;
    }

    let mut results = Vec::new();
    let load = Load::start(&world.router.url());
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let (tally, timings) = load.stop_timed().await;
    let (latencies_ms, outage) = figures(timings);
    results.push(Measured {
        case: "none",
        tally,
        latencies_ms,
        deployment: None,
        outage,
        steps: Vec::new(),
    });
    results.push(rollout(&world, "all-at-once", &["--strategy", "all-at-once"], "v2").await?);
    results.push(
        rollout(
            &world,
            "blue-green",
            &["--strategy", "blue-green", "--router", "edge"],
            "v3",
        )
        .await?,
    );
    let pause = format!("{}s", CANARY_PAUSE.as_secs());
    results.push(
        rollout(
            &world,
            "canary",
            &[
                "--strategy",
                "canary",
                "--steps",
                "50,100",
                "--pause",
                &pause,
                "--router",
                "edge",
            ],
            "v4",
        )
        .await?,
    );
    results.push(
        rollout(
            &world,
            "rolling",
            &[
                "--strategy",
                "rolling",
                "--batch",
                "1",
                "--max-unavailable",
                "1",
                "--router",
                "edge",
            ],
            "v5",
        )
        .await?,
    );

    println!("\nthrough {router}, 4 clients, a new connection per request\n");
    println!(
        "| strategy | requests | failed | outage (s) | p50 (ms) | p99 (ms) | deployment (s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let seconds = |d: Option<Duration>| {
        d.map_or_else(|| "—".to_owned(), |d| format!("{:.1}", d.as_secs_f64()))
    };
    for m in &results {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {} |",
            m.case,
            m.tally.total(),
            m.tally.failed(),
            seconds(m.outage),
            m.percentile(50.0),
            m.percentile(99.0),
            seconds(m.deployment),
        );
    }
    for m in results.iter().filter(|m| !m.steps.is_empty()) {
        println!("\n{} steps:\n", m.case);
        println!("| step | duration (ms) | beyond its pause (ms) |");
        println!("|---|---|---|");
        for s in &m.steps {
            println!(
                "| {} | {:.0} | {:.0} |",
                s.step, s.duration_ms, s.beyond_pause_ms
            );
        }
        let pauses: Vec<f64> = m
            .steps
            .iter()
            .filter(|s| s.step.starts_with("pause"))
            .map(|s| s.beyond_pause_ms)
            .collect();
        if !pauses.is_empty() {
            println!(
                "\nmedian time beyond a pause: {:.0} ms over {} pauses",
                median(&pauses),
                pauses.len()
            );
        }
    }
    for m in results.iter().filter(|m| m.tally.failed() > 0) {
        println!("{} failures: {:?}", m.case, m.tally.failures);
    }
    println!(
        "BENCH_JSON {}",
        json!({
            "bench": "rollout",
            "router": router,
            "cases": results.iter().map(Measured::json).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
