//! `stella user …`: users, roles and API tokens (admin only).

use clap::Subcommand;
use serde_json::{json, Value};

use super::path;
use crate::client::Client;
use crate::output::{self, cell, Format};

/// `stella user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints its first API token once.
    Create {
        /// User name.
        name: String,
        /// Roles: viewer, operator, approver, admin (repeatable or comma-separated).
        #[arg(long = "role", required = true, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// List users.
    List,
    /// Print a new API token for a user.
    Token {
        /// User name.
        name: String,
    },
}

pub async fn user(client: &Client, format: Format, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Create { name, roles } => {
            let created = client
                .post("/users", json!({ "name": name, "roles": roles }))
                .await?;
            match format {
                Format::Json => output::json(&created),
                Format::Table => {
                    println!("{}", cell(&created, "/token"));
                    eprintln!(
                        "created user {} with roles {}; the token above is shown only once",
                        cell(&created, "/user/name"),
                        cell(&created, "/user/roles")
                    );
                }
            }
        }
        UserCommand::List => {
            let users = client.get("/users").await?;
            match (format, &users) {
                (Format::Table, Value::Array(items)) => output::table(
                    &["name", "roles", "created", "id"],
                    items
                        .iter()
                        .map(|u| {
                            vec![
                                cell(u, "/name"),
                                cell(u, "/roles"),
                                cell(u, "/created_at"),
                                cell(u, "/id"),
                            ]
                        })
                        .collect(),
                ),
                _ => output::json(&users),
            }
        }
        UserCommand::Token { name } => {
            let token = client
                .post(&format!("/users/{}/tokens", path(&name)), json!({}))
                .await?;
            match format {
                Format::Json => output::json(&token),
                Format::Table => println!("{}", cell(&token, "/token")),
            }
        }
    }
    Ok(())
}
