//! `stella promote NAME@VERSION --to ENV`.

use anyhow::anyhow;
use clap::Args;
use serde_json::json;

use super::deployments::{finish, follow, waiting_lines};
use super::split_release;
use crate::client::Client;
use crate::output::{self, cell, Format};

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
