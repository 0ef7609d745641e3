//! `stella release …`: named, versioned sets of image digests.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{parse_pair, print, query, rows, split_release, Context};
use crate::output;

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
    println!();
    // `release show` says whether each digest was scanned; `create` does not.
    let scanned = value
        .pointer("/components/0/scanned")
        .is_some_and(Value::is_boolean);
    if scanned {
        rows(
            &value["components"],
            &["component", "image", "from", "scanned"],
            &["/name", "/image", "/source", "/scanned"],
        );
    } else {
        rows(
            &value["components"],
            &["component", "image", "from"],
            &["/name", "/image", "/source"],
        );
    }
    let events = value["events"].as_array().map_or(0, Vec::len);
    if events > 0 {
        println!();
        rows(
            &value["events"],
            &["at", "event", "environment", "message"],
            &["/at", "/kind", "/environment", "/message"],
        );
    }
}

/// `stella release …`.
pub async fn release(context: &Context, command: ReleaseCommand) -> anyhow::Result<()> {
    let (client, format) = (&context.client, context.format);
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
                    super::path(&name),
                    super::path(&version)
                ))
                .await?;
            print(format, &value, release_details);
        }
    }
    Ok(())
}
