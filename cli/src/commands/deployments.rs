//! `stella deployment …` (alias `deployments`) and `stella rollback`: deployments, the
//! components each target runs, their logs, and waiting for one to finish.

use std::collections::BTreeMap;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{path, query, rows, Context};
use crate::client::ClientError;
use crate::follow::{self, Observer};
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
    /// Show a deployment, its tasks and the component digests each target runs.
    Show {
        /// Id (or a unique prefix of at least 8 characters, where the server takes one).
        id: String,
    },
    /// Print a deployment's log (`-o json`: one array; with `--follow`: one JSON object
    /// per line).
    Logs {
        /// Id (or a unique prefix of at least 8 characters, where the server takes one).
        id: String,
        /// Keep printing until the deployment finishes.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Cancel a deployment that has not finished: its tasks stop on their agents; what
    /// a task already changed on its target stays (drift shows it).
    Cancel {
        /// Id (or a unique prefix of at least 8 characters).
        id: String,
    },
    /// Rollout: end the current pause (a `--pause manual` step, or a timed one early).
    Promote {
        /// Id (or a unique prefix of at least 8 characters).
        id: String,
    },
    /// Rollout: start no further step until `resume`.
    Pause {
        /// Id (or a unique prefix of at least 8 characters).
        id: String,
    },
    /// Rollout: go on after `pause`.
    Resume {
        /// Id (or a unique prefix of at least 8 characters).
        id: String,
    },
    /// Rollout: roll back what it changed, now (traffic back to the old version first).
    Abort {
        /// Id (or a unique prefix of at least 8 characters).
        id: String,
    },
}

/// `stella rollback --env E [--to VERSION]`
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Environment.
    #[arg(long)]
    env: String,
    /// Version to go back to (default: the one deployed before the current one).
    #[arg(long, value_name = "VERSION")]
    to: Option<String>,
    /// Follow the deployment with progress on stderr; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

/// `stella deployment …`.
pub async fn deployment(context: &Context, command: DeploymentCommand) -> anyhow::Result<()> {
    let client = &context.client;
    match command {
        DeploymentCommand::List { env } => {
            let list = client
                .get(&format!(
                    "/deployments{}",
                    query(&[("environment", env.as_deref())])
                ))
                .await?;
            context.print(&list, |list| {
                output::table(
                    &["id", "kind", "environment", "release", "state", "created"],
                    list.as_array()
                        .into_iter()
                        .flatten()
                        .map(|d| {
                            vec![
                                cell(d, "/id"),
                                cell(d, "/kind"),
                                cell(d, "/environment"),
                                release_at(d),
                                cell(d, "/state"),
                                cell(d, "/created_at"),
                            ]
                        })
                        .collect(),
                );
            });
        }
        DeploymentCommand::Show { id } => {
            let value = client.get(&format!("/deployments/{}", path(&id))).await?;
            if context.format == Format::Json {
                output::json(&value);
            } else {
                let components = task_components(context, &value).await;
                deployment_details(&value, &components);
            }
        }
        DeploymentCommand::Cancel { id } => {
            let value = client
                .post(&format!("/deployments/{}/cancel", path(&id)), json!({}))
                .await?;
            context.print(&value, |value| {
                println!(
                    "deployment {} {}: {}",
                    cell(value, "/id"),
                    cell(value, "/state"),
                    cell(value, "/message")
                );
            });
        }
        DeploymentCommand::Promote { id } => move_rollout(context, &id, "promote").await?,
        DeploymentCommand::Pause { id } => move_rollout(context, &id, "pause").await?,
        DeploymentCommand::Resume { id } => move_rollout(context, &id, "resume").await?,
        DeploymentCommand::Abort { id } => move_rollout(context, &id, "abort").await?,
        DeploymentCommand::Logs { id, follow: true } => {
            let mut printer = LogPrinter {
                format: context.format,
            };
            follow::follow(client, &id, &mut printer).await?;
        }
        DeploymentCommand::Logs { id, follow: false } => {
            let deployment = client.get(&format!("/deployments/{}", path(&id))).await?;
            let full_id = deployment["id"].as_str().unwrap_or(&id).to_owned();
            let targets = follow::targets_by_task(&deployment);
            let lines: Vec<Value> = follow::all_lines(client, &full_id)
                .await?
                .into_iter()
                .map(|line| with_target(line, &targets))
                .collect();
            context.print(&Value::Array(lines), |lines| {
                for line in lines.as_array().into_iter().flatten() {
                    println!("{}", log_text(line));
                }
            });
        }
    }
    Ok(())
}

/// `stella deployment promote|pause|resume|abort ID`: the request is recorded and its
/// rollout's driver acts on it within a second (the deployment's log says when).
async fn move_rollout(context: &Context, id: &str, action: &str) -> anyhow::Result<()> {
    let value = context
        .client
        .post(&format!("/deployments/{}/{action}", path(id)), json!({}))
        .await?;
    context.print(&value, |value| {
        println!(
            "deployment {}: {action} requested; rollout {} at step {}",
            cell(value, "/id"),
            cell(value, "/rollout/state"),
            cell(value, "/rollout/current_step"),
        );
    });
    Ok(())
}

/// `stella rollback`: prints the new deployment's id (or, with `-o json`, the
/// deployment) and, on stderr, the version the server chose.
pub async fn rollback(context: &Context, args: RollbackArgs) -> anyhow::Result<()> {
    let deployment = context
        .client
        .post(
            &format!("/environments/{}/rollback", path(&args.env)),
            json!({"to_version": args.to}),
        )
        .await?;
    let id = deployment["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no deployment id"))?
        .to_owned();
    if context.format == Format::Table {
        context.note(&format!(
            "rolling back {} to {}: deployment {id}",
            cell(&deployment, "/environment"),
            release_at(&deployment)
        ));
    }
    if !args.wait {
        context.print(&deployment, |d| println!("{}", cell(d, "/id")));
        return Ok(());
    }
    let finished = wait(context, &id).await?;
    context.print(&finished, |d| println!("{}", cell(d, "/id")));
    succeeded(&finished)
}

/// Follows a deployment with progress on stderr until it is finished; returns it.
pub(super) async fn wait(context: &Context, id: &str) -> Result<Value, ClientError> {
    let mut progress = context.progress();
    follow::follow(&context.client, id, &mut progress).await
}

/// The exit status of a finished deployment: an error naming the reason if it failed.
pub(super) fn succeeded(deployment: &Value) -> anyhow::Result<()> {
    match deployment["state"].as_str() {
        Some("succeeded") => Ok(()),
        _ => bail!(
            "deployment {} failed: {}",
            cell(deployment, "/id"),
            cell(deployment, "/message")
        ),
    }
}

/// `NAME@VERSION` of a deployment.
fn release_at(deployment: &Value) -> String {
    format!(
        "{}@{}",
        cell(deployment, "/release"),
        cell(deployment, "/version")
    )
}

/// Prints followed lines on stdout: text, or one JSON object per line with `-o json`.
struct LogPrinter {
    format: Format,
}

impl Observer for LogPrinter {
    fn deployment(&mut self, _: &Value) {}

    fn line(&mut self, line: &Value, target: Option<&str>) {
        match self.format {
            Format::Table => println!("{}", log_text(line)),
            Format::Json => {
                let mut line = line.clone();
                line["target"] = json!(target);
                output::json_line(&line);
            }
        }
    }

    fn retrying(&mut self, cause: &ClientError) {
        eprintln!("{}  {cause}; retrying", output::now());
    }

    fn finished(&mut self, _: &Value) {}
}

fn log_text(line: &Value) -> String {
    format!("{}  {}", cell(line, "/at"), cell(line, "/message"))
}

/// A log line with `target`: its task's target, or null for the server's own lines.
fn with_target(mut line: Value, targets: &std::collections::HashMap<String, String>) -> Value {
    let target = line["task_id"]
        .as_str()
        .and_then(|task| targets.get(task))
        .cloned();
    line["target"] = json!(target);
    line
}

/// One component as a target runs it.
struct Component {
    name: String,
    image: String,
}

/// The components each task deploys (task id → components): the task's own list when
/// the server sends one; otherwise the release's components that the target selects
/// (its `components` setting, else all). Empty when neither can be read.
async fn task_components(
    context: &Context,
    deployment: &Value,
) -> BTreeMap<String, Vec<Component>> {
    let mut found = BTreeMap::new();
    let tasks = deployment["tasks"].as_array().cloned().unwrap_or_default();
    let from_server = |task: &Value| {
        task["components"].as_array().map(|components| {
            components
                .iter()
                .map(|c| Component {
                    name: cell(c, "/name"),
                    image: cell(c, "/image"),
                })
                .collect::<Vec<_>>()
        })
    };
    let mut release = None;
    for task in &tasks {
        let id = cell(task, "/id");
        if let Some(components) = from_server(task) {
            found.insert(id, components);
            continue;
        }
        if release.is_none() {
            let url = format!(
                "/releases/{}/{}",
                path(&cell(deployment, "/release")),
                path(&cell(deployment, "/version"))
            );
            release = Some(context.client.get(&url).await.ok());
        }
        let Some(Some(release)) = &release else {
            continue;
        };
        let target = context
            .client
            .get(&format!("/targets/{}", path(&cell(task, "/target"))))
            .await
            .ok();
        let selected: Option<Vec<String>> = target
            .as_ref()
            .and_then(|t| t.pointer("/settings/components"))
            .and_then(Value::as_str)
            .map(|list| list.split(',').map(|c| c.trim().to_owned()).collect());
        let components = release["components"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                selected
                    .as_ref()
                    .is_none_or(|wanted| wanted.contains(&cell(c, "/name")))
            })
            .map(|c| Component {
                name: cell(c, "/name"),
                image: cell(c, "/image"),
            })
            .collect();
        found.insert(id, components);
    }
    found
}

fn deployment_details(value: &Value, components: &BTreeMap<String, Vec<Component>>) {
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
    rollout_details(&value["rollout"]);
    let tasks = value["tasks"].as_array().cloned().unwrap_or_default();
    if tasks.is_empty() {
        return;
    }
    println!();
    rows(
        &value["tasks"],
        &[
            "target", "kind", "slot", "state", "epoch", "finished", "message",
        ],
        &[
            "/target",
            "/kind",
            "/slot",
            "/state",
            "/epoch",
            "/finished_at",
            "/message",
        ],
    );
    let mut component_rows = Vec::new();
    for task in &tasks {
        for component in components.get(&cell(task, "/id")).into_iter().flatten() {
            let (repository, digest) = component
                .image
                .split_once('@')
                .unwrap_or((component.image.as_str(), "-"));
            component_rows.push(vec![
                cell(task, "/target"),
                component.name.clone(),
                digest.to_owned(),
                repository.to_owned(),
            ]);
        }
    }
    if !component_rows.is_empty() {
        println!();
        output::table(&["target", "component", "digest", "image"], component_rows);
    }
}

/// The rollout part of `deployment show`: where it is, the weights, every step.
fn rollout_details(rollout: &Value) {
    if rollout.is_null() {
        return;
    }
    let weights: Vec<String> = rollout["weights"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| format!("{} {}%", cell(w, "/slot"), cell(w, "/percent")))
        .collect();
    println!();
    output::details(
        &json!({
            "strategy": rollout["strategy"]["strategy"],
            "state": rollout["state"],
            "phase": rollout["phase"],
            "step": rollout["current_step"],
            "weights": if weights.is_empty() { Value::Null } else { Value::from(weights.join(", ")) },
            "message": rollout["message"],
            "requested": rollout["requested"],
        }),
        &[
            ("rollout", "/strategy"),
            ("rollout state", "/state"),
            ("phase", "/phase"),
            ("current step", "/step"),
            ("weights", "/weights"),
            ("rollout message", "/message"),
            ("requested", "/requested"),
        ],
    );
    if rollout["steps"].as_array().is_some_and(|s| !s.is_empty()) {
        println!();
        rows(
            &rollout["steps"],
            &["step", "phase", "what", "state", "finished", "message"],
            &[
                "/seq",
                "/phase",
                "/step",
                "/state",
                "/finished_at",
                "/message",
            ],
        );
    }
}
