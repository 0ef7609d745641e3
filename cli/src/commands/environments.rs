//! `stella env …`: environments and their promotion order.

use clap::Subcommand;
use serde_json::json;

use super::{print, rows, Context};
use crate::output;

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
        /// What drift does here: report it, or redeploy what was promoted
        /// [default: report].
        #[arg(long, value_parser = ["report", "remediate"])]
        drift: Option<String>,
    },
    /// Change an environment.
    Update {
        /// Name.
        name: String,
        /// New predecessor ("" clears it).
        #[arg(long)]
        after: Option<String>,
        /// What drift does here: report it, or redeploy what was promoted.
        #[arg(long, value_parser = ["report", "remediate"])]
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

/// `stella env …`.
pub async fn env(context: &Context, command: EnvCommand) -> anyhow::Result<()> {
    let (client, format) = (&context.client, context.format);
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
                    &format!("/environments/{}", super::path(&name)),
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
                .get(&format!("/environments/{}", super::path(&name)))
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
