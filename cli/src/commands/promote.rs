//! `stella promote NAME@VERSION --to ENV [--wait] [--break-glass REASON]` and
//! `stella promotion list|show|approve|reject`.
//!
//! Exit status of `promote` (with or without `--wait`) and of `promotion approve`:
//! 0 allowed (deploying; with `--wait`: deployed) or awaiting approval (without
//! `--wait`); 3 blocked by a gate; 4 rejected; 5 the deployment failed; 6 still awaiting
//! approval when `--wait` gave up.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::deployments::wait;
use super::{path, query, rows, split_release, Context};
use crate::output::{self, cell, Format};

/// Exit status: a gate blocked the promotion.
pub const EXIT_BLOCKED: u8 = 3;
/// Exit status: an approver rejected it.
pub const EXIT_REJECTED: u8 = 4;
/// Exit status: its deployment failed.
pub const EXIT_FAILED: u8 = 5;
/// Exit status: `--wait` gave up while it still awaited approval.
pub const EXIT_AWAITING: u8 = 6;

/// A promotion that did not end as hoped: the message, and the exit status that tells
/// a script which way it ended.
#[derive(Debug)]
pub struct PromotionOutcome {
    /// One line.
    pub message: String,
    /// The process exit status.
    pub status: u8,
}

impl std::fmt::Display for PromotionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PromotionOutcome {}

/// `stella promote NAME@VERSION --to ENV`
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 deploying, deployed (--wait) or awaiting approval \
(without --wait); 3 blocked by a gate; 4 rejected; 5 the deployment failed; 6 still \
awaiting approval when --wait gave up."
)]
pub struct PromoteArgs {
    /// `NAME@VERSION`.
    release: String,
    /// Target environment.
    #[arg(long, value_name = "ENV")]
    to: String,
    /// Wait for approvals and follow the deployment with progress on stderr; the exit
    /// status says how it ended.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits for approvals.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION", default_value = "1h")]
    approval_timeout: Duration,
    /// Promote inside a freeze window (admins only); the reason and your name go into
    /// the signed decision and the audit log.
    #[arg(long, value_name = "REASON")]
    break_glass: Option<String>,
}

/// `stella promotion …`
#[derive(Debug, Subcommand)]
pub enum PromotionCommand {
    /// List promotions, newest first.
    List {
        /// Only this environment's.
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
        /// Only in this state.
        #[arg(long, value_parser = ["awaiting_approval", "blocked", "rejected", "deploying", "deployed", "failed"])]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show a promotion: its gates, approvals and decision.
    Show {
        /// Promotion id (or a unique prefix of at least 8 characters).
        id: String,
    },
    /// Approve a promotion (approvers; never the requester).
    Approve {
        /// Promotion id.
        id: String,
        /// A comment kept with the approval.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a promotion: that ends it.
    Reject {
        /// Promotion id.
        id: String,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
    },
}

/// Prints the promotion's id (with `-o json`: the promotion, its state, each gate's
/// result and, once decided, its `decision_id`; after `--wait` also the `deployment`).
pub async fn promote(context: &Context, args: PromoteArgs) -> anyhow::Result<()> {
    let (name, version) = split_release(&args.release, None)?;
    let mut promotion = context
        .client
        .post(
            "/promotions",
            json!({
                "release": name,
                "version": version,
                "environment": args.to,
                "break_glass": args.break_glass,
            }),
        )
        .await?;
    let id = cell(&promotion, "/id");
    if context.format == Format::Table {
        context.note(&format!(
            "promotion {id} of {name}@{version} to {}: {}",
            args.to,
            summary(&promotion)
        ));
    }
    if args.wait {
        promotion = wait_for_approvals(context, promotion, args.approval_timeout).await?;
        if promotion["state"] == "deploying" && promotion["run_id"].is_string() {
            promotion = wait_for_workflow(context, promotion).await?;
        } else if promotion["state"] == "deploying" {
            let deployment_id = cell(&promotion, "/deployment_id");
            let deployment = wait(context, &deployment_id).await?;
            promotion = context
                .client
                .get(&format!("/promotions/{}", path(&id)))
                .await?;
            promotion["deployment"] = deployment;
        }
    }
    context.print(&promotion, |p| println!("{}", cell(p, "/id")));
    outcome(&promotion, args.wait)
}

/// Polls a promotion that a workflow run carries out until the run has settled it,
/// saying each change of its message.
async fn wait_for_workflow(context: &Context, mut promotion: Value) -> anyhow::Result<Value> {
    let id = cell(&promotion, "/id");
    if context.format == Format::Table {
        context.note(&format!(
            "carried out by workflow run {id} (stella run show {id})",
            id = cell(&promotion, "/run_id")
        ));
    }
    while promotion["state"] == "deploying" {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match context
            .client
            .get(&format!("/promotions/{}", path(&id)))
            .await
        {
            Ok(latest) => promotion = latest,
            Err(error) if error.is_transport() => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(promotion)
}

/// Polls a promotion while it awaits approval, at most `timeout`.
async fn wait_for_approvals(
    context: &Context,
    mut promotion: Value,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let id = cell(&promotion, "/id");
    let mut said = String::new();
    while promotion["state"] == "awaiting_approval" && started.elapsed() < timeout {
        let line = cell(&promotion, "/message");
        if line != said && context.format == Format::Table {
            context.note(&format!("waiting: {line}"));
            said = line;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        match context
            .client
            .get(&format!("/promotions/{}", path(&id)))
            .await
        {
            Ok(latest) => promotion = latest,
            Err(error) if error.is_transport() => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(promotion)
}

/// One line on where a promotion stands.
fn summary(promotion: &Value) -> String {
    let state = cell(promotion, "/state");
    match promotion["message"].as_str() {
        Some(message) if !message.is_empty() => format!("{state}: {message}"),
        _ => state,
    }
}

/// The exit status a promotion's state calls for.
fn outcome(promotion: &Value, waited: bool) -> anyhow::Result<()> {
    let id = cell(promotion, "/id");
    let fail = |status: u8, what: &str| -> anyhow::Result<()> {
        Err(PromotionOutcome {
            message: format!("promotion {id} {what}: {}", cell(promotion, "/message")),
            status,
        }
        .into())
    };
    match promotion["state"].as_str() {
        Some("blocked") => fail(EXIT_BLOCKED, "is blocked"),
        Some("rejected") => fail(EXIT_REJECTED, "was rejected"),
        Some("failed") => fail(EXIT_FAILED, "failed"),
        Some("awaiting_approval") if waited => fail(EXIT_AWAITING, "still awaits approval"),
        Some("deploying") if waited => fail(EXIT_FAILED, "did not finish deploying"),
        Some(_) => Ok(()),
        None => bail!("the server's answer has no promotion state"),
    }
}

/// `stella promotion …`.
pub async fn promotion(context: &Context, command: PromotionCommand) -> anyhow::Result<()> {
    let client = &context.client;
    let value = match command {
        PromotionCommand::List { env, state, limit } => {
            let limit = limit.to_string();
            let list = client
                .get(&format!(
                    "/promotions{}",
                    query(&[
                        ("environment", env.as_deref()),
                        ("state", state.as_deref()),
                        ("limit", Some(&limit)),
                    ])
                ))
                .await?;
            context.print(&list, |v| {
                rows(
                    v,
                    &[
                        "id",
                        "release",
                        "version",
                        "env",
                        "state",
                        "requested by",
                        "requested",
                        "message",
                    ],
                    &[
                        "/id",
                        "/release",
                        "/version",
                        "/environment",
                        "/state",
                        "/requested_by",
                        "/requested_at",
                        "/message",
                    ],
                );
            });
            return Ok(());
        }
        PromotionCommand::Show { id } => client.get(&format!("/promotions/{}", path(&id))).await?,
        PromotionCommand::Approve { id, comment } => {
            let promotion = client
                .post(
                    &format!("/promotions/{}/approve", path(&id)),
                    json!({ "comment": comment }),
                )
                .await?;
            context.print(&promotion, details);
            return outcome(&promotion, false);
        }
        PromotionCommand::Reject { id, comment } => {
            client
                .post(
                    &format!("/promotions/{}/reject", path(&id)),
                    json!({ "comment": comment }),
                )
                .await?
        }
    };
    context.print(&value, details);
    Ok(())
}

/// A promotion for people: its fields, each gate, each approval.
fn details(promotion: &Value) {
    output::details(
        promotion,
        &[
            ("id", "/id"),
            ("release", "/release"),
            ("version", "/version"),
            ("environment", "/environment"),
            ("state", "/state"),
            ("message", "/message"),
            ("requested by", "/requested_by"),
            ("requested", "/requested_at"),
            ("plan", "/plan_hash"),
            ("decision", "/decision_id"),
            ("deployment", "/deployment_id"),
            ("break-glass by", "/break_glass/by"),
            ("break-glass reason", "/break_glass/reason"),
        ],
    );
    println!();
    rows(
        &promotion["gates"],
        &["gate", "status", "reason"],
        &["/gate", "/status", "/reason"],
    );
    for gate in promotion["gates"].as_array().into_iter().flatten() {
        for line in gate["details"].as_array().into_iter().flatten() {
            if let Some(line) = line.as_str() {
                println!("  {}: {line}", cell(gate, "/gate"));
            }
        }
    }
    if promotion["approvals"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        println!();
        rows(
            &promotion["approvals"],
            &["user", "verdict", "current plan", "at", "comment"],
            &["/user", "/verdict", "/current", "/at", "/comment"],
        );
    }
}
