//! Phases 2 and 3: dispatch latency at a promotion rate, and the fan-out of one
//! promotion to a target on each agent.
//!
//! The API answers a promotion after the decision, the deployment and its tasks are
//! committed, and the server dispatches the tasks as it commits: the frames usually
//! reach the agents before the answer reaches the client. So the client measures from
//! the request sent (the whole promotion: gates, signed decision, commit, dispatch) to
//! the frame read by the agent, and the server's own histogram
//! `stella_task_dispatch_latency_seconds` (deployment accepted → task written to the
//! agent's stream) gives the accept → stream part. A task on a stream was durable
//! before it was sent. "Stored" results are those the server acknowledged with
//! `TaskAck`, which it sends after committing the result.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

use super::estate::{self, TargetPlan};
use super::{round1, round2, summary, Fleet};
use crate::bench::sim::TaskFrame;
use crate::cargo::step;

/// The server's histogram of deployment accepted → task on the agent's stream.
const DISPATCH_HISTOGRAM: &str = "stella_task_dispatch_latency_seconds";
/// How long tasks may take to reach their agents after the last promotion.
const FRAMES_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the fan-out's results may take to be stored.
const FANOUT_TIMEOUT: Duration = Duration::from_secs(600);
/// Targets of the fan-out: at most this many seconds of API polling between looks.
const POLL: Duration = Duration::from_millis(250);

/// One promotion of the dispatch phase.
struct Promotion {
    deployment: anyhow::Result<String>,
    sent: Instant,
    answered: Instant,
}

pub async fn latency(fleet: &mut Fleet<'_>) -> anyhow::Result<()> {
    let args = fleet.args;
    let count = usize::try_from(u64::from(args.rate) * args.dispatch_seconds).unwrap_or(0);
    step(&format!(
        "dispatch: {count} promotions at {} /s (at most {} in flight), one target each",
        args.rate, args.dispatch_concurrency
    ));
    let environments: Vec<String> = (1..=count).map(|i| format!("d-{i:05}")).collect();
    let alive = alive_agents(fleet);
    let targets: Vec<TargetPlan> = environments
        .iter()
        .enumerate()
        .map(|(index, environment)| TargetPlan {
            environment: environment.clone(),
            name: format!("t-{environment}"),
            agent: alive[index % alive.len()].clone(),
        })
        .collect();
    estate::create(&fleet.server, &environments, &targets).await?;

    let frames_before = fleet.context.tasks.len();
    let histogram_before = fleet.server.metrics().await?.buckets(DISPATCH_HISTOGRAM);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rate)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let paced = futures::stream::unfold(ticker, |mut ticker| async move {
        ticker.tick().await;
        Some(((), ticker))
    });
    let server = &fleet.server;
    let started = Instant::now();
    let promotions: Vec<Promotion> = futures::stream::iter(&environments)
        .zip(paced)
        .map(|(environment, ())| async move {
            let sent = Instant::now();
            let deployment = estate::promote(server, environment).await;
            Promotion {
                deployment,
                sent,
                answered: Instant::now(),
            }
        })
        .buffer_unordered(args.dispatch_concurrency.max(1))
        .collect()
        .await;
    let last_answer = promotions
        .iter()
        .map(|p| p.answered)
        .max()
        .unwrap_or(started);
    let accepted: Vec<&Promotion> = promotions.iter().filter(|p| p.deployment.is_ok()).collect();
    let failed = promotions.len() - accepted.len();
    if let Some(Err(error)) = promotions
        .iter()
        .map(|p| &p.deployment)
        .find(|d| d.is_err())
    {
        println!("  first failed promotion: {error:#}");
    }
    let wanted = accepted.len();
    let frames = wait_frames(fleet, frames_before, |frames| {
        first_frames(frames).len() >= wanted
    })
    .await;
    let firsts = first_frames(&frames);
    let mut from_request = Vec::with_capacity(wanted);
    let mut answers = Vec::with_capacity(wanted);
    let mut before_answer = 0;
    let mut missing = 0;
    for promotion in &accepted {
        let Ok(id) = &promotion.deployment else {
            continue;
        };
        answers.push(ms(promotion.answered - promotion.sent));
        let Some(at) = firsts.get(id.as_str()) else {
            missing += 1;
            continue;
        };
        if *at < promotion.answered {
            before_answer += 1;
        }
        from_request.push(ms(at.saturating_duration_since(promotion.sent)));
    }
    let histogram_after = fleet.server.metrics().await?.buckets(DISPATCH_HISTOGRAM);
    let server_side = bucket_quantiles(&histogram_before, &histogram_after);
    let seconds = last_answer.duration_since(started).as_secs_f64();
    let rate = if seconds > 0.0 {
        wanted as f64 / seconds
    } else {
        0.0
    };
    let (request_p50, request_p99, request_max) = summary(&mut from_request);
    let (answer_p50, answer_p99, _) = summary(&mut answers);
    fleet.figure(
        "dispatch_promotions_per_second",
        "dispatch: promotions accepted/s",
        json!(round1(rate)),
        format!(
            "{rate:.1} (asked {}; {wanted} accepted in {seconds:.1} s, {failed} refused or failed)",
            args.rate
        ),
    );
    fleet.figure(
        "dispatch_request_to_frame_ms",
        "dispatch: request → frame at agent",
        json!({"p50": round1(request_p50), "p99": round1(request_p99), "max": round1(request_max)}),
        format!(
            "p50 {request_p50:.1} ms, p99 {request_p99:.1} ms, max {request_max:.1} ms \
             ({before_answer} of {wanted} frames before the API's answer; {missing} never came)"
        ),
    );
    fleet.figure(
        "dispatch_answer_ms",
        "dispatch: request → API answer",
        json!({"p50": round1(answer_p50), "p99": round1(answer_p99)}),
        format!("p50 {answer_p50:.1} ms, p99 {answer_p99:.1} ms"),
    );
    let (text, value) = match server_side {
        Some((p50, p99, observed)) => (
            format!(
                "p50 ≤ {p50:.0} ms, p99 ≤ {p99:.0} ms ({observed:.0} tasks; histogram bucket \
                 bounds)"
            ),
            json!({"p50_le": p50, "p99_le": p99}),
        ),
        None => ("no observations".to_owned(), serde_json::Value::Null),
    };
    fleet.figure(
        "dispatch_accept_to_stream_ms",
        "dispatch: accepted → on stream (server)",
        value,
        text,
    );
    Ok(())
}

/// The p50 and p99 (upper bounds of their buckets, in ms) and the count of what a
/// cumulative histogram observed between two readings.
fn bucket_quantiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |&(_, c)| c);
            (le, count - earlier)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let bound = |q: f64| {
        delta
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or(f64::INFINITY, |(le, _)| le * 1000.0)
    };
    Some((bound(0.50), bound(0.99), total))
}

pub async fn fanout(fleet: &mut Fleet<'_>) -> anyhow::Result<()> {
    let alive = alive_agents(fleet);
    let count = fleet.args.fanout_targets.min(alive.len());
    step(&format!(
        "fan-out: one promotion to {count} targets on {count} agents"
    ));
    let environment = "fanout".to_owned();
    let targets: Vec<TargetPlan> = alive
        .iter()
        .take(count)
        .enumerate()
        .map(|(index, agent)| TargetPlan {
            environment: environment.clone(),
            name: format!("f-{:05}", index + 1),
            agent: agent.clone(),
        })
        .collect();
    estate::create(&fleet.server, std::slice::from_ref(&environment), &targets).await?;

    let tasks = &fleet.context.tasks;
    let frames_before = tasks.len();
    let acks_before = tasks.acks.load(Ordering::Relaxed);
    let sent = Instant::now();
    let id = estate::promote(&fleet.server, &environment).await?;
    let accepted = Instant::now();
    let accepted_micros = fleet.context.micros();
    let frames = wait_frames(fleet, frames_before, |frames| {
        frames.iter().filter(|f| f.deployment_id == id).count() >= count
    })
    .await;
    let ours: Vec<&TaskFrame> = frames.iter().filter(|f| f.deployment_id == id).collect();
    let first_frame = ours.iter().map(|f| f.at).min().unwrap_or(accepted);
    let last_frame = ours.iter().map(|f| f.at).max().unwrap_or(accepted);
    let sent_micros = accepted_micros
        .saturating_sub(u64::try_from((accepted - sent).as_micros()).unwrap_or(u64::MAX));
    let on_streams = ours.len();

    // Results: acknowledged to the agents (stored), and the deployment `succeeded`. The
    // deployment (with its 10,000 tasks) is read only once every result is acknowledged,
    // when it can have succeeded, and otherwise every 5 s: reading it every poll cost
    // the server a tenth of its CPU while it stored the results.
    let deadline = accepted + FANOUT_TIMEOUT;
    let mut succeeded_after = None;
    let mut state = String::new();
    let mut last_read: Option<Instant> = None;
    while Instant::now() < deadline {
        let acked = tasks.acks.load(Ordering::Relaxed) - acks_before;
        let read_now =
            acked >= count || last_read.is_none_or(|at| at.elapsed() >= Duration::from_secs(5));
        if succeeded_after.is_none() && read_now {
            last_read = Some(Instant::now());
            match estate::deployment_state(&fleet.server, &id).await {
                Ok(now) if now == "succeeded" => succeeded_after = Some(sent.elapsed()),
                Ok(now) => state = now,
                Err(error) => state = format!("{error:#}"),
            }
        }
        if acked >= count && succeeded_after.is_some() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let acked = tasks.acks.load(Ordering::Relaxed) - acks_before;
    let last_ack = Duration::from_micros(
        tasks
            .last_ack_micros
            .load(Ordering::Relaxed)
            .saturating_sub(sent_micros),
    );
    fleet.figure(
        "fanout_answer_ms",
        "fan-out: promotion answered",
        json!(round1(ms(accepted - sent))),
        format!("{:.1} ms after the request", ms(accepted - sent)),
    );
    fleet.figure(
        "fanout_on_streams_seconds",
        "fan-out: every task on its stream",
        json!(round2(
            last_frame.saturating_duration_since(sent).as_secs_f64()
        )),
        format!(
            "{:.2} s after the request ({on_streams}/{count} tasks, the first after {:.2} s; \
             target 2 s)",
            last_frame.saturating_duration_since(sent).as_secs_f64(),
            first_frame.saturating_duration_since(sent).as_secs_f64()
        ),
    );
    fleet.figure(
        "fanout_stored_seconds",
        "fan-out: every result stored (acked)",
        json!(round2(last_ack.as_secs_f64())),
        format!(
            "{:.2} s after the request ({acked}/{count} acknowledged; target 5 s)",
            last_ack.as_secs_f64()
        ),
    );
    let succeeded = match succeeded_after {
        Some(after) => format!(
            "{:.2} s after the request (polled every {POLL:?})",
            after.as_secs_f64()
        ),
        None => format!("not within {FANOUT_TIMEOUT:?} (state {state})"),
    };
    fleet.figure(
        "fanout_succeeded_seconds",
        "fan-out: deployment `succeeded` (API)",
        json!(succeeded_after.map(|d| round2(d.as_secs_f64()))),
        succeeded,
    );
    Ok(())
}

/// Names of the agents not killed, in enrolment order.
fn alive_agents(fleet: &Fleet<'_>) -> Vec<String> {
    fleet
        .agents
        .iter()
        .enumerate()
        .filter(|(index, _)| !fleet.killed.contains(index))
        .map(|(_, agent)| agent.name.clone())
        .collect()
}

/// Waits until `done` holds for the frames received since `from`, or a timeout; returns
/// those frames.
async fn wait_frames(
    fleet: &Fleet<'_>,
    from: usize,
    done: impl Fn(&[TaskFrame]) -> bool,
) -> Vec<TaskFrame> {
    let deadline = Instant::now() + FRAMES_TIMEOUT;
    loop {
        let frames = fleet.context.tasks.frames_from(from);
        if done(&frames) || Instant::now() >= deadline {
            return frames;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first frame of each deployment.
fn first_frames(frames: &[TaskFrame]) -> HashMap<&str, Instant> {
    let mut firsts: HashMap<&str, Instant> = HashMap::new();
    for frame in frames {
        firsts
            .entry(frame.deployment_id.as_str())
            .and_modify(|at| *at = (*at).min(frame.at))
            .or_insert(frame.at);
    }
    firsts
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
