//! `stella pack …` and `stella run …`: task packs simulated and run through the
//! TaskRunner API (`/v1/task-runner/…`), and the runs themselves.

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use super::{print, rows, Context};

/// `stella pack …`
#[derive(Debug, Subcommand)]
pub enum PackCommand {
    /// Plan a pack and show what a run would do, executing nothing.
    Simulate(PackArgs),
    /// Start a run of a pack; prints its id.
    Run {
        #[command(flatten)]
        pack: PackArgs,
        /// The run's id (a new one when absent).
        #[arg(long)]
        run_id: Option<String>,
        /// Wait until the run has finished (fails unless it succeeded).
        #[arg(long)]
        wait: bool,
    },
}

/// A pack file and its inputs.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The manifest (YAML or JSON).
    pub file: std::path::PathBuf,
    /// An input value, `NAME=VALUE` (VALUE is read as JSON when it is JSON, else as a
    /// string); repeatable.
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
}

/// `stella run …`
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// The tenant's runs, newest first (`--tenant`).
    List,
    /// A run and its steps.
    Show(RunRef),
    /// A run's log; `--follow` until it finishes.
    Logs {
        #[command(flatten)]
        run: RunRef,
        /// Keep printing lines as they come, until the run finishes.
        #[arg(long, short)]
        follow: bool,
    },
    /// Approve a gate of a run (for the run's current plan).
    Approve(Decision),
    /// Reject a gate of a run: the run fails at it.
    Reject(Decision),
    /// Cancel a run: pending steps are skipped, running ones stopped.
    Cancel(RunRef),
}

/// A run by id.
#[derive(Debug, Args)]
pub struct RunRef {
    /// Run id.
    pub id: String,
}

/// An approval decision.
#[derive(Debug, Args)]
pub struct Decision {
    #[command(flatten)]
    pub run: RunRef,
    /// The approval id (from the pack's `spec.approvals`).
    pub approval: String,
    /// Why.
    #[arg(long)]
    pub summary: Option<String>,
}

fn inputs(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut map = Map::new();
    for pair in pairs {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--input {pair}: expected NAME=VALUE");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        map.insert(name.trim().to_owned(), value);
    }
    Ok(map)
}

fn manifest(args: &PackArgs) -> anyhow::Result<String> {
    std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))
}

/// `stella pack …`.
pub async fn pack(context: &Context, command: PackCommand) -> anyhow::Result<()> {
    match command {
        PackCommand::Simulate(args) => {
            let body = json!({"manifest": manifest(&args)?, "inputs": inputs(&args.inputs)?});
            let simulation = context
                .client
                .request_at(Method::POST, "/v1/task-runner/simulations", Some(body))
                .await?;
            print(context.format, &simulation, |v| {
                println!("plan {}", v["planHash"].as_str().unwrap_or_default());
                let mut flat = Vec::new();
                flatten(&v["steps"], &mut flat);
                rows(
                    &Value::Array(flat),
                    &["step", "kind", "status", "reason"],
                    &["/id", "/kind", "/status", "/statusReason"],
                );
            });
            Ok(())
        }
        PackCommand::Run { pack, run_id, wait } => {
            let mut body = json!({"manifest": manifest(&pack)?, "inputs": inputs(&pack.inputs)?});
            if let Some(id) = run_id {
                body["runId"] = json!(id);
            }
            let created = context
                .client
                .request_at(Method::POST, "/v1/task-runner/runs", Some(body))
                .await?;
            let id = created["runId"].as_str().unwrap_or_default().to_owned();
            if !wait {
                print(context.format, &created, |_| println!("{id}"));
                return Ok(());
            }
            context.note(&format!("run {id} started; waiting for it to finish"));
            let finished = wait_finished(context, &id).await?;
            print(context.format, &finished, show_table);
            match finished["status"].as_str() {
                Some("Succeeded") => Ok(()),
                other => bail!("run {id} ended {}", other.unwrap_or("unknown")),
            }
        }
    }
}

fn flatten(steps: &Value, out: &mut Vec<Value>) {
    for step in steps.as_array().into_iter().flatten() {
        out.push(step.clone());
        flatten(&step["children"], out);
    }
}

async fn wait_finished(context: &Context, id: &str) -> anyhow::Result<Value> {
    let path = format!("/v1/task-runner/runs/{}", super::path(id));
    let mut last_status = String::new();
    loop {
        let state = context.client.request_at(Method::GET, &path, None).await?;
        let status = state["status"].as_str().unwrap_or_default().to_owned();
        if matches!(status.as_str(), "Succeeded" | "Failed" | "Cancelled") {
            return Ok(state);
        }
        if status != last_status {
            context.note(&format!("run {id}: {status}"));
            last_status = status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn show_table(v: &Value) {
    println!(
        "run {} ({}) plan {}",
        v["runId"].as_str().unwrap_or_default(),
        v["status"].as_str().unwrap_or_default(),
        v["planHash"].as_str().unwrap_or_default()
    );
    rows(
        &v["steps"],
        &["step", "kind", "status", "attempts", "reason"],
        &["/stepId", "/kind", "/status", "/attempts", "/statusReason"],
    );
}

/// `stella run …`.
pub async fn run(context: &Context, command: RunCommand) -> anyhow::Result<()> {
    let client = &context.client;
    match command {
        RunCommand::List => {
            let list = client
                .request_at(Method::GET, "/v1/task-runner/runs", None)
                .await?;
            print(context.format, &list, |v| {
                rows(
                    v,
                    &["run", "status", "created", "by", "plan"],
                    &["/runId", "/status", "/createdAt", "/createdBy", "/planHash"],
                );
            });
        }
        RunCommand::Show(run) => {
            let path = format!("/v1/task-runner/runs/{}", super::path(&run.id));
            let state = client.request_at(Method::GET, &path, None).await?;
            print(context.format, &state, show_table);
        }
        RunCommand::Logs { run, follow } => {
            let path = format!("/v1/task-runner/runs/{}/logs", super::path(&run.id));
            let mut printed = 0_usize;
            loop {
                let text = client.text_at(&path).await?;
                for line in text.lines().skip(printed) {
                    printed += 1;
                    print_log_line(context, line);
                }
                if !follow {
                    break;
                }
                let state_path = format!("/v1/task-runner/runs/{}", super::path(&run.id));
                let state = client.request_at(Method::GET, &state_path, None).await?;
                if matches!(
                    state["status"].as_str(),
                    Some("Succeeded" | "Failed" | "Cancelled")
                ) {
                    let text = client.text_at(&path).await?;
                    for line in text.lines().skip(printed) {
                        print_log_line(context, line);
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        RunCommand::Approve(decision) => decide(context, decision, "approved").await?,
        RunCommand::Reject(decision) => decide(context, decision, "rejected").await?,
        RunCommand::Cancel(run) => {
            let path = format!("/v1/task-runner/runs/{}/cancel", super::path(&run.id));
            let answer = client.request_at(Method::POST, &path, None).await?;
            print(context.format, &answer, |_| {
                println!("cancellation of run {} requested", run.id);
            });
        }
    }
    Ok(())
}

fn print_log_line(context: &Context, line: &str) {
    if context.format == crate::output::Format::Json {
        println!("{line}");
        return;
    }
    let Ok(entry) = serde_json::from_str::<Value>(line) else {
        return;
    };
    let step = entry["stepId"]
        .as_str()
        .map(|s| format!(" [{s}]"))
        .unwrap_or_default();
    println!(
        "{} {:5} {}{step} {}",
        entry["timestamp"].as_str().unwrap_or_default(),
        entry["level"].as_str().unwrap_or_default(),
        entry["eventType"].as_str().unwrap_or_default(),
        entry["message"].as_str().unwrap_or_default()
    );
}

async fn decide(context: &Context, decision: Decision, verdict: &str) -> anyhow::Result<()> {
    let run_path = format!("/v1/task-runner/runs/{}", super::path(&decision.run.id));
    let state = context
        .client
        .request_at(Method::GET, &run_path, None)
        .await?;
    let mut body = json!({"decision": verdict, "planHash": state["planHash"]});
    if let Some(summary) = decision.summary {
        body["summary"] = json!(summary);
    }
    let path = format!("{run_path}/approvals/{}", super::path(&decision.approval));
    let answer = context
        .client
        .request_at(Method::POST, &path, Some(body))
        .await?;
    print(context.format, &answer, |v| {
        println!(
            "{} {} of run {}{}",
            decision.approval,
            v["status"].as_str().unwrap_or(verdict),
            decision.run.id,
            if v["resumed"] == true {
                "; the run goes on"
            } else {
                ""
            }
        );
    });
    Ok(())
}
