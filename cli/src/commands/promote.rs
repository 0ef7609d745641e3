//! `stella promote NAME@VERSION --to ENV [--wait]`.

use anyhow::anyhow;
use clap::Args;
use serde_json::json;

use super::deployments::{succeeded, wait};
use super::{split_release, Context};
use crate::output::{cell, Format};

/// `stella promote NAME@VERSION --to ENV`
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// `NAME@VERSION`.
    release: String,
    /// Target environment.
    #[arg(long, value_name = "ENV")]
    to: String,
    /// Follow the deployment with progress on stderr; exit non-zero if it fails.
    #[arg(long)]
    wait: bool,
}

/// Prints the promotion's id (with `-o json`: the promotion, with `release`, `version`
/// and `environment`; after `--wait` also its final `state` and the `deployment`).
pub async fn promote(context: &Context, args: PromoteArgs) -> anyhow::Result<()> {
    let (name, version) = split_release(&args.release, None)?;
    let mut promotion = context
        .client
        .post(
            "/promotions",
            json!({"release": name, "version": version, "environment": args.to}),
        )
        .await?;
    let deployment_id = promotion["deployment_id"]
        .as_str()
        .ok_or_else(|| anyhow!("the server's answer has no deployment id"))?
        .to_owned();
    for (key, value) in [
        ("release", &name),
        ("version", &version),
        ("environment", &args.to),
    ] {
        if promotion.get(key).is_none() {
            promotion[key] = json!(value);
        }
    }
    if context.format == Format::Table {
        context.note(&format!(
            "promoting {name}@{version} to {}: deployment {deployment_id}",
            args.to
        ));
    }
    if !args.wait {
        context.print(&promotion, |p| println!("{}", cell(p, "/id")));
        return Ok(());
    }
    let deployment = wait(context, &deployment_id).await?;
    let state = if deployment["state"] == "succeeded" {
        "deployed"
    } else {
        "failed"
    };
    promotion["state"] = json!(state);
    promotion["deployment"] = deployment.clone();
    context.print(&promotion, |p| println!("{}", cell(p, "/id")));
    succeeded(&deployment)
}
