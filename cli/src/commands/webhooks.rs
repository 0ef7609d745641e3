//! `stella webhook …` (alias `webhooks`): webhooks and their deliveries (admin only);
//! and `stella events`: what operators are told about.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{path, query, rows, split_release, Context};
use crate::output::{self, cell};

/// `stella webhook …`
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Create a webhook; prints its id and its signing secret, shown only once.
    #[command(after_help = EVENTS_HELP)]
    Create {
        /// The `http` or `https` URL that receives the deliveries.
        url: String,
        /// An event it receives (repeatable or comma-separated), or `*` for all.
        #[arg(
            long = "event",
            required = true,
            value_delimiter = ',',
            value_name = "EVENT"
        )]
        events: Vec<String>,
    },
    /// List webhooks (never with their secrets).
    List,
    /// Delete a webhook and its deliveries; what is not delivered yet never will be.
    #[command(visible_alias = "rm")]
    Delete {
        /// Webhook id.
        id: String,
    },
    /// A webhook's deliveries, newest first: state, attempts, last status or error.
    Deliveries {
        /// Webhook id.
        id: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

const EVENTS_HELP: &str = "Events: promotion.awaiting_approval, promotion.approved, \
promotion.rejected, promotion.blocked, promotion.deployed, promotion.failed, drift.detected, \
drift.resolved, verdict.changed, agent.unreachable.\n\nEach delivery is a POST of the event \
as JSON, with X-Stella-Event, X-Stella-Delivery (the same on every retry) and \
X-Stella-Signature: sha256=<hex HMAC-SHA256 of the body keyed with the secret>.";

/// `stella events [--env E] [--release NAME@VERSION] [--kind K]`
#[derive(Debug, Args)]
#[command(after_help = EVENTS_HELP)]
pub struct EventsArgs {
    /// Only this environment's.
    #[arg(long)]
    env: Option<String>,
    /// Only this release's, as NAME@VERSION.
    #[arg(long, value_name = "NAME@VERSION")]
    release: Option<String>,
    /// Only this kind, e.g. drift.detected.
    #[arg(long)]
    kind: Option<String>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
}

/// `stella webhook …`.
pub async fn webhook(context: &Context, command: WebhookCommand) -> anyhow::Result<()> {
    let client = &context.client;
    match command {
        WebhookCommand::Create { url, events } => {
            let created = client
                .post("/webhooks", json!({ "url": url, "events": events }))
                .await?;
            context.print(&created, |created| {
                output::details(
                    created,
                    &[
                        ("id", "/id"),
                        ("url", "/url"),
                        ("events", "/events"),
                        ("secret", "/secret"),
                    ],
                );
                context.note("the secret above is shown only once: receivers check X-Stella-Signature with it");
            });
        }
        WebhookCommand::List => {
            let list = client.get("/webhooks").await?;
            context.print(&list, |list| {
                rows(
                    list,
                    &["id", "url", "events", "created by", "created"],
                    &["/id", "/url", "/events", "/created_by", "/created_at"],
                );
            });
        }
        WebhookCommand::Delete { id } => {
            client.delete(&format!("/webhooks/{}", path(&id))).await?;
            context.deleted("webhook", &id);
        }
        WebhookCommand::Deliveries { id, limit } => {
            let limit = limit.to_string();
            let list = client
                .get(&format!(
                    "/webhooks/{}/deliveries{}",
                    path(&id),
                    query(&[("limit", Some(&limit))])
                ))
                .await?;
            context.print(&list, |list| {
                rows(
                    list,
                    &[
                        "id", "event", "state", "attempts", "status", "created", "next", "error",
                    ],
                    &[
                        "/id",
                        "/event",
                        "/state",
                        "/attempts",
                        "/last_status",
                        "/created_at",
                        "/next_attempt_at",
                        "/last_error",
                    ],
                );
            });
        }
    }
    Ok(())
}

/// `stella events`.
pub async fn events(context: &Context, args: EventsArgs) -> anyhow::Result<()> {
    let release = args
        .release
        .as_deref()
        .map(|release| split_release(release, None).map(|(n, v)| format!("{n}@{v}")))
        .transpose()?;
    let limit = args.limit.to_string();
    let list = context
        .client
        .get(&format!(
            "/events{}",
            query(&[
                ("environment", args.env.as_deref()),
                ("release", release.as_deref()),
                ("kind", args.kind.as_deref()),
                ("limit", Some(&limit)),
            ])
        ))
        .await?;
    context.print(&list, |list| {
        let items = list.as_array().cloned().unwrap_or_default();
        output::table(
            &["at", "kind", "environment", "release", "subject", "message"],
            items.iter().map(event_row).collect(),
        );
    });
    Ok(())
}

fn event_row(event: &Value) -> Vec<String> {
    let release = match (
        event.pointer("/release/name").and_then(Value::as_str),
        event.pointer("/release/version").and_then(Value::as_str),
    ) {
        (Some(name), Some(version)) => format!("{name}@{version}"),
        _ => "-".to_owned(),
    };
    vec![
        cell(event, "/at"),
        cell(event, "/kind"),
        cell(event, "/environment"),
        release,
        cell(event, "/subject"),
        cell(event, "/message"),
    ]
}
