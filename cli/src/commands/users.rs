//! `stella user …`: users, roles and API tokens (admin only).

use clap::Subcommand;
use serde_json::json;

use super::{path, rows, Context};
use crate::output::{self, cell};

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
    /// Replace a user's roles (the last admin keeps admin).
    Update {
        /// User name.
        name: String,
        /// Roles: viewer, operator, approver, admin (repeatable or comma-separated).
        #[arg(long = "role", required = true, value_delimiter = ',')]
        roles: Vec<String>,
    },
    /// Delete a user; its tokens stop working at once. Not yourself, not the last admin.
    #[command(visible_alias = "rm")]
    Delete {
        /// User name.
        name: String,
    },
}

/// `stella user …`.
pub async fn user(context: &Context, command: UserCommand) -> anyhow::Result<()> {
    let client = &context.client;
    match command {
        UserCommand::Create { name, roles } => {
            let created = client
                .post("/users", json!({ "name": name, "roles": roles }))
                .await?;
            context.print(&created, |created| {
                println!("{}", cell(created, "/token"));
                context.note(&format!(
                    "created user {} with roles {}; the token above is shown only once",
                    cell(created, "/user/name"),
                    cell(created, "/user/roles")
                ));
            });
        }
        UserCommand::List => {
            let users = client.get("/users").await?;
            context.print(&users, |users| {
                rows(
                    users,
                    &["name", "roles", "created", "id"],
                    &["/name", "/roles", "/created_at", "/id"],
                );
            });
        }
        UserCommand::Update { name, roles } => {
            let user = client
                .patch(
                    &format!("/users/{}", path(&name)),
                    json!({ "roles": roles }),
                )
                .await?;
            context.print(&user, |user| {
                output::details(
                    user,
                    &[("name", "/name"), ("roles", "/roles"), ("id", "/id")],
                );
            });
        }
        UserCommand::Delete { name } => {
            client.delete(&format!("/users/{}", path(&name))).await?;
            context.deleted("user", &name);
        }
        UserCommand::Token { name } => {
            let token = client
                .post(&format!("/users/{}/tokens", path(&name)), json!({}))
                .await?;
            context.print(&token, |token| println!("{}", cell(token, "/token")));
        }
    }
    Ok(())
}

/// `stella whoami`: who the token belongs to.
pub async fn whoami(context: &Context) -> anyhow::Result<()> {
    let user = context.client.get("/whoami").await?;
    context.print(&user, |user| {
        output::details(
            user,
            &[
                ("name", "/name"),
                ("roles", "/roles"),
                ("created", "/created_at"),
                ("id", "/id"),
            ],
        );
    });
    Ok(())
}
