//! `stella deployment …` and `stella rollback`: deployments, their logs, and
//! following one until it finishes.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{print, query, rows};
use crate::client::Client;

/// How often `--wait` and `logs --follow` poll the deployment.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
use crate::output::{self, cell, Format};

/// `stella deployment …`
#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// List deployments, newest first.
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
    },
    /// Show a deployment and its tasks.
    Show {
        /// Id.
        id: String,
    },
    /// Print a deployment's log.
    Logs {
        /// Id.
        id: String,
        /// Keep printing until the deployment finishes.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

/// `stella rollback --env E [--to VERSION]`
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Version to go back to (default: the one before the current).
    #[arg(long)]
    to: Option<String>,
    /// Follow the deployment; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

/// Exit status of a finished deployment.
pub(super) fn finish(deployment: &Value) -> anyhow::Result<()> {
    match deployment["state"].as_str() {
        Some("succeeded") => Ok(()),
        _ => bail!(
            "deployment {} failed: {}",
            cell(deployment, "/id"),
            cell(deployment, "/message")
        ),
    }
}

/// Where followed log lines go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Lines {
    /// Standard output (`deployment logs --follow`).
    Stdout,
    /// Standard error, so that stdout keeps one document (`--wait`).
    Stderr,
    /// Nowhere (`-o json`).
    Hidden,
}

/// Prints log lines until the deployment is terminal and every line is out; returns it.
pub(super) async fn follow(client: &Client, id: &str, lines: Lines) -> anyhow::Result<Value> {
    let id = super::path(id);
    let mut after = 0;
    loop {
        // State first: lines written before a terminal state are all read below.
        let deployment = client.get(&format!("/deployments/{id}")).await?;
        let batch = client
            .get(&format!("/deployments/{id}/logs?after={after}"))
            .await?;
        let batch = batch.as_array().cloned().unwrap_or_default();
        for line in &batch {
            after = line["seq"].as_i64().unwrap_or(after).max(after);
            let text = format!("{}  {}", cell(line, "/at"), cell(line, "/message"));
            match lines {
                Lines::Stdout => println!("{text}"),
                Lines::Stderr => eprintln!("{text}"),
                Lines::Hidden => {}
            }
        }
        if batch.is_empty() && matches!(deployment["state"].as_str(), Some("succeeded" | "failed"))
        {
            return Ok(deployment);
        }
        if batch.is_empty() {
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

pub(super) fn waiting_lines(format: Format) -> Lines {
    match format {
        Format::Table => Lines::Stderr,
        Format::Json => Lines::Hidden,
    }
}

fn deployment_details(value: &Value) {
    output::details(
        value,
        &[
            ("id", "/id"),
            ("kind", "/kind"),
            ("environment", "/environment"),
            ("release", "/release"),
            ("version", "/version"),
            ("state", "/state"),
            ("message", "/message"),
            ("decision", "/decision_id"),
            ("by", "/created_by"),
            ("created", "/created_at"),
            ("finished", "/finished_at"),
        ],
    );
    if value["tasks"].as_array().is_some_and(|t| !t.is_empty()) {
        rows(
            &value["tasks"],
            &["target", "state", "epoch", "message"],
            &["/target", "/state", "/epoch", "/message"],
        );
    }
}

pub async fn deployment(
    client: &Client,
    format: Format,
    command: DeploymentCommand,
) -> anyhow::Result<()> {
    match command {
        DeploymentCommand::List { env } => {
            let list = client
                .get(&format!(
                    "/deployments{}",
                    query(&[("environment", env.as_deref())])
                ))
                .await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &[
                        "id",
                        "kind",
                        "environment",
                        "release",
                        "version",
                        "state",
                        "created",
                    ],
                    &[
                        "/id",
                        "/kind",
                        "/environment",
                        "/release",
                        "/version",
                        "/state",
                        "/created_at",
                    ],
                );
            });
        }
        DeploymentCommand::Show { id } => {
            let value = client
                .get(&format!("/deployments/{}", super::path(&id)))
                .await?;
            print(format, &value, deployment_details);
        }
        DeploymentCommand::Logs { id, follow: true } => {
            let lines = if format == Format::Table {
                Lines::Stdout
            } else {
                Lines::Hidden
            };
            let deployment = follow(client, &id, lines).await?;
            if format == Format::Json {
                output::json(&deployment);
            }
        }
        DeploymentCommand::Logs { id, follow: false } => {
            let lines = client
                .get(&format!("/deployments/{}/logs", super::path(&id)))
                .await?;
            print(format, &lines, |v| {
                for line in v.as_array().into_iter().flatten() {
                    println!("{}  {}", cell(line, "/at"), cell(line, "/message"));
                }
            });
        }
    }
    Ok(())
}

pub async fn rollback(client: &Client, format: Format, args: RollbackArgs) -> anyhow::Result<()> {
    let deployment = client
        .post(
            &format!("/environments/{}/rollback", super::path(&args.env)),
            json!({"to_version": args.to}),
        )
        .await?;
    let id = cell(&deployment, "/id");
    if !args.wait {
        print(format, &deployment, |v| println!("{}", cell(v, "/id")));
        return Ok(());
    }
    let finished = follow(client, &id, waiting_lines(format)).await?;
    print(format, &finished, |v| println!("{}", cell(v, "/id")));
    finish(&finished)
}
