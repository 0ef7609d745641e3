//! `stella drift …`: drift between what runs and what was promoted.

use clap::Subcommand;

use super::{print, query, rows, Context};

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

/// `stella drift …`.
pub async fn drift(context: &Context, command: DriftCommand) -> anyhow::Result<()> {
    let (client, format) = (&context.client, context.format);
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
