//! `stella target …`: deployment targets.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde_json::json;

use super::{parse_pair, print, query, rows};
use crate::client::Client;
use crate::output::{self, Format};

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
                .get(&format!("/targets/{}", super::path(&name)))
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
