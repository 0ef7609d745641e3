//! Delivery commands: environments, targets, registries, releases, promote,
//! deployments, rollback, drift.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::Client;

/// How often `--wait` and `logs --follow` poll the deployment.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
use crate::output::{self, cell, Format};

/// `stella env …`
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Create an environment.
    Create {
        /// Name.
        name: String,
        /// The environment a release must pass first.
        #[arg(long)]
        after: Option<String>,
        /// What drift does here: report (default) or remediate.
        #[arg(long)]
        drift: Option<String>,
    },
    /// Change an environment.
    Update {
        /// Name.
        name: String,
        /// New predecessor ("" clears it).
        #[arg(long)]
        after: Option<String>,
        /// report or remediate.
        #[arg(long)]
        drift: Option<String>,
    },
    /// List environments.
    List,
    /// Show one environment.
    Show {
        /// Name.
        name: String,
    },
}

/// `stella target …`
#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Create a deployment target.
    Create {
        /// Name.
        name: String,
        /// Environment.
        #[arg(long)]
        env: String,
        /// docker, compose, ssh, winrm, ecs or nomad.
        #[arg(long)]
        kind: String,
        /// The agent that drives it (name or id).
        #[arg(long)]
        agent: String,
        /// Settings, `key=value`, repeatable (unknown keys are refused).
        #[arg(long = "set", value_parser = parse_pair)]
        settings: Vec<(String, String)>,
    },
    /// List targets.
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
    },
    /// Show one target.
    Show {
        /// Name.
        name: String,
    },
}

/// `stella registry …`
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Add (or replace) a registry and its credentials; the password is stored sealed.
    Add {
        /// `host[:port]`.
        host: String,
        /// Allow plain HTTP.
        #[arg(long)]
        insecure: bool,
        /// User name.
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
    /// List registries (never with passwords).
    List,
}

/// `stella release …`
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Create a release; tags are resolved to digests now, once.
    Create {
        /// Name.
        name: String,
        /// Version.
        #[arg(id = "release_version", value_name = "VERSION")]
        version: String,
        /// `NAME=IMAGE_REF`, repeatable.
        #[arg(long = "component", required = true, value_parser = parse_pair)]
        components: Vec<(String, String)>,
    },
    /// List releases, newest first.
    List {
        /// Only this name.
        name: Option<String>,
    },
    /// Show a release: `NAME@VERSION` or `NAME VERSION`.
    Show {
        /// `NAME@VERSION` or NAME.
        release: String,
        /// VERSION when the first argument is a name.
        #[arg(id = "release_version", value_name = "VERSION")]
        version: Option<String>,
    },
}

/// `stella promote NAME@VERSION --to ENV`
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// `NAME@VERSION`.
    release: String,
    /// Target environment.
    #[arg(long)]
    to: String,
    /// Follow the deployment; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

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

/// `stella drift …`
#[derive(Debug, Subcommand)]
pub enum DriftCommand {
    /// Open drift findings.
    List {
        /// Only this environment's.
        #[arg(long)]
        env: Option<String>,
        /// Include resolved findings.
        #[arg(long)]
        all: bool,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

fn split_release(release: &str, version: Option<String>) -> anyhow::Result<(String, String)> {
    match (release.split_once('@'), version) {
        (Some((name, version)), None) if !name.is_empty() && !version.is_empty() => {
            Ok((name.to_owned(), version.to_owned()))
        }
        (None, Some(version)) => Ok((release.to_owned(), version)),
        _ => bail!("name the release as NAME@VERSION"),
    }
}

fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", crate::commands::path(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn print(format: Format, value: &Value, table: impl FnOnce(&Value)) {
    match format {
        Format::Json => output::json(value),
        Format::Table => table(value),
    }
}

fn rows(value: &Value, columns: &[&str], pointers: &[&str]) {
    let items = value.as_array().cloned().unwrap_or_default();
    output::table(
        columns,
        items
            .iter()
            .map(|item| pointers.iter().map(|p| cell(item, p)).collect())
            .collect(),
    );
}

pub async fn env(client: &Client, format: Format, command: EnvCommand) -> anyhow::Result<()> {
    let value = match command {
        EnvCommand::Create { name, after, drift } => {
            client
                .post(
                    "/environments",
                    json!({"name": name, "after": after, "drift": drift}),
                )
                .await?
        }
        EnvCommand::Update { name, after, drift } => {
            client
                .patch(
                    &format!("/environments/{}", crate::commands::path(&name)),
                    json!({"after": after, "drift": drift}),
                )
                .await?
        }
        EnvCommand::List => {
            let list = client.get("/environments").await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["name", "after", "drift", "current", "targets"],
                    &["/name", "/after", "/drift", "/current", "/targets"],
                );
            });
            return Ok(());
        }
        EnvCommand::Show { name } => {
            client
                .get(&format!("/environments/{}", crate::commands::path(&name)))
                .await?
        }
    };
    print(format, &value, |v| {
        output::details(
            v,
            &[
                ("name", "/name"),
                ("after", "/after"),
                ("drift", "/drift"),
                ("current", "/current"),
                ("targets", "/targets"),
                ("created", "/created_at"),
            ],
        );
    });
    Ok(())
}

pub async fn target(client: &Client, format: Format, command: TargetCommand) -> anyhow::Result<()> {
    let value = match command {
        TargetCommand::Create {
            name,
            env,
            kind,
            agent,
            settings,
        } => {
            let settings: BTreeMap<String, String> = settings.into_iter().collect();
            client
                .post("/targets", json!({"name": name, "environment": env, "kind": kind, "agent": agent, "settings": settings}))
                .await?
        }
        TargetCommand::List { env } => {
            let list = client
                .get(&format!(
                    "/targets{}",
                    query(&[("environment", env.as_deref())])
                ))
                .await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["name", "environment", "kind", "agent", "settings"],
                    &["/name", "/environment", "/kind", "/agent", "/settings"],
                );
            });
            return Ok(());
        }
        TargetCommand::Show { name } => {
            client
                .get(&format!("/targets/{}", crate::commands::path(&name)))
                .await?
        }
    };
    print(format, &value, |v| {
        output::details(
            v,
            &[
                ("name", "/name"),
                ("environment", "/environment"),
                ("kind", "/kind"),
                ("agent", "/agent"),
                ("agent id", "/agent_id"),
                ("settings", "/settings"),
                ("created", "/created_at"),
            ],
        );
    });
    Ok(())
}

pub async fn registry(
    client: &Client,
    format: Format,
    command: RegistryCommand,
) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Add {
            host,
            insecure,
            username,
            password_stdin,
        } => {
            let password = if password_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the password from standard input")?;
                let text = text.trim_end_matches(['\n', '\r']).to_owned();
                if text.is_empty() {
                    bail!("no password on standard input");
                }
                Some(text)
            } else {
                None
            };
            let value = client
                .post("/registries", json!({"host": host, "insecure": insecure, "username": username, "password": password}))
                .await?;
            print(format, &value, |v| {
                output::details(
                    v,
                    &[
                        ("host", "/host"),
                        ("insecure", "/insecure"),
                        ("username", "/username"),
                        ("password", "/has_password"),
                    ],
                );
            });
        }
        RegistryCommand::List => {
            let list = client.get("/registries").await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["host", "insecure", "username", "password"],
                    &["/host", "/insecure", "/username", "/has_password"],
                );
            });
        }
    }
    Ok(())
}

fn release_details(value: &Value) {
    output::details(
        value,
        &[
            ("name", "/name"),
            ("version", "/version"),
            ("created by", "/created_by"),
            ("created", "/created_at"),
        ],
    );
    rows(
        &value["components"],
        &["component", "image", "from"],
        &["/name", "/image", "/source"],
    );
}

pub async fn release(
    client: &Client,
    format: Format,
    command: ReleaseCommand,
) -> anyhow::Result<()> {
    match command {
        ReleaseCommand::Create {
            name,
            version,
            components,
        } => {
            let components: BTreeMap<String, String> = components.into_iter().collect();
            let value = client
                .post(
                    "/releases",
                    json!({"name": name, "version": version, "components": components}),
                )
                .await?;
            print(format, &value, release_details);
        }
        ReleaseCommand::List { name } => {
            let list = client
                .get(&format!("/releases{}", query(&[("name", name.as_deref())])))
                .await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["name", "version", "created", "by"],
                    &["/name", "/version", "/created_at", "/created_by"],
                );
            });
        }
        ReleaseCommand::Show { release, version } => {
            let (name, version) = split_release(&release, version)?;
            let value = client
                .get(&format!(
                    "/releases/{}/{}",
                    crate::commands::path(&name),
                    crate::commands::path(&version)
                ))
                .await?;
            print(format, &value, release_details);
        }
    }
    Ok(())
}

pub async fn promote(client: &Client, format: Format, args: PromoteArgs) -> anyhow::Result<()> {
    let (name, version) = split_release(&args.release, None)?;
    let promotion = client
        .post(
            "/promotions",
            json!({"release": name, "version": version, "environment": args.to}),
        )
        .await?;
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no deployment id in the answer"))?
        .to_owned();
    if !args.wait {
        match format {
            Format::Json => output::json(&promotion),
            Format::Table => println!("{}", cell(&promotion, "/id")),
        }
        return Ok(());
    }
    let deployment = follow(client, &deployment_id, waiting_lines(format)).await?;
    let state = deployment["state"].as_str().unwrap_or_default().to_owned();
    let mut promotion = promotion;
    promotion["state"] = json!(if state == "succeeded" {
        "deployed"
    } else {
        "failed"
    });
    promotion["deployment"] = deployment.clone();
    match format {
        Format::Json => output::json(&promotion),
        Format::Table => println!("{}", cell(&promotion, "/id")),
    }
    finish(&deployment)
}

/// Exit status of a finished deployment.
fn finish(deployment: &Value) -> anyhow::Result<()> {
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
enum Lines {
    /// Standard output (`deployment logs --follow`).
    Stdout,
    /// Standard error, so that stdout keeps one document (`--wait`).
    Stderr,
    /// Nowhere (`-o json`).
    Hidden,
}

/// Prints log lines until the deployment is terminal and every line is out; returns it.
async fn follow(client: &Client, id: &str, lines: Lines) -> anyhow::Result<Value> {
    let id = crate::commands::path(id);
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

fn waiting_lines(format: Format) -> Lines {
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
                .get(&format!("/deployments/{}", crate::commands::path(&id)))
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
                .get(&format!("/deployments/{}/logs", crate::commands::path(&id)))
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
            &format!(
                "/environments/{}/rollback",
                crate::commands::path(&args.env)
            ),
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

pub async fn drift(client: &Client, format: Format, command: DriftCommand) -> anyhow::Result<()> {
    let DriftCommand::List { env, all } = command;
    let list = client
        .get(&format!(
            "/drift{}",
            query(&[
                ("environment", env.as_deref()),
                ("all", all.then_some("true"))
            ])
        ))
        .await?;
    print(format, &list, |v| {
        rows(
            v,
            &[
                "target",
                "component",
                "kind",
                "environment",
                "last seen",
                "resolved",
                "detail",
            ],
            &[
                "/target",
                "/component",
                "/kind",
                "/environment",
                "/last_seen_at",
                "/resolved_at",
                "/detail",
            ],
        );
    });
    Ok(())
}
