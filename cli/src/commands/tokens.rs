//! `stella token …` (the caller's API tokens; admins: anyone's) and `stella client …`
//! (OAuth2 clients of the client credentials grant, admin only).

use std::time::Duration;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{path, rows, Context};
use crate::output::{self, cell};

/// `stella token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List your API tokens: name, expiry, last use, state.
    #[command(visible_alias = "ls")]
    List {
        /// Another user's tokens (admin only).
        #[arg(long, conflicts_with = "all")]
        user: Option<String>,
        /// Every user's tokens (admin only).
        #[arg(long)]
        all: bool,
    },
    /// Create an API token for yourself; prints it once.
    Create {
        /// A name to tell it by.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `30d`, `12h` (default and maximum: the server's settings).
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires_in: Option<Duration>,
    },
    /// Revoke a token by id (yours; admins: anyone's); it stops working at once.
    Revoke {
        /// Token id (`tok_…`), as `token list` shows it.
        id: String,
    },
}

/// `stella client …`
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create an OAuth2 client acting in the tenant of `--tenant` (`default` without
    /// it); prints its secret once.
    Create {
        /// Client id: 1 to 63 of `a-z 0-9 . _ -`.
        name: String,
        /// Scopes it may be granted (repeatable or comma-separated): stella.viewer,
        /// stella.operator, stella.approver, stella.admin, taskrunner.viewer,
        /// taskrunner.operator, taskrunner.admin.
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
    },
    /// List OAuth2 clients.
    #[command(visible_alias = "ls")]
    List,
    /// Revoke a client: no more tokens, and its tokens are refused within seconds.
    Revoke {
        /// Client id.
        id: String,
    },
}

/// `stella token …`.
pub async fn token(context: &Context, command: TokenCommand) -> anyhow::Result<()> {
    let client = &context.client;
    match command {
        TokenCommand::List { user, all } => {
            let query = match (all, user) {
                (true, _) => "?all=true".to_owned(),
                (false, Some(user)) => format!("?user={}", path(&user)),
                (false, None) => String::new(),
            };
            let tokens = client.get(&format!("/tokens{query}")).await?;
            context.print(&tokens, |tokens| {
                rows(
                    tokens,
                    &[
                        "id",
                        "name",
                        "user",
                        "state",
                        "expires",
                        "last used",
                        "created",
                    ],
                    &[
                        "/id",
                        "/name",
                        "/user",
                        "/state",
                        "/expires_at",
                        "/last_used_at",
                        "/created_at",
                    ],
                );
            });
        }
        TokenCommand::Create { name, expires_in } => {
            let mut body = json!({});
            if let Some(name) = name {
                body["name"] = Value::from(name);
            }
            if let Some(ttl) = expires_in {
                body["expires_in_seconds"] = Value::from(ttl.as_secs().max(1));
            }
            let created = client.post("/tokens", body).await?;
            context.print(&created, |created| {
                println!("{}", cell(created, "/token"));
                context.note(&format!(
                    "created token {} (expires {}); it is shown only once",
                    cell(created, "/id"),
                    cell(created, "/expires_at")
                ));
            });
        }
        TokenCommand::Revoke { id } => {
            let revoked = client.delete(&format!("/tokens/{}", path(&id))).await?;
            context.print(&revoked, |revoked| {
                context.note(&format!("revoked token {}", cell(revoked, "/id")));
            });
        }
    }
    Ok(())
}

/// `stella client …`.
pub async fn client(context: &Context, command: ClientCommand) -> anyhow::Result<()> {
    // Clients are the server's, managed in `default`; `--tenant` names the tenant a
    // new client's tokens act in.
    let http = &context.client.in_default_tenant();
    match command {
        ClientCommand::Create { name, scopes } => {
            let tenant = context.client.tenant().unwrap_or("default");
            let created = http
                .post(
                    "/clients",
                    json!({ "name": name, "scopes": scopes, "tenant": tenant }),
                )
                .await?;
            context.print(&created, |created| {
                println!("{}", cell(created, "/client_secret"));
                context.note(&format!(
                    "created client {} with scopes {}; the secret above is shown only once",
                    cell(created, "/client/client_id"),
                    cell(created, "/client/scopes")
                ));
            });
        }
        ClientCommand::List => {
            let clients = http.get("/clients").await?;
            context.print(&clients, |clients| {
                rows(
                    clients,
                    &[
                        "client id",
                        "tenant",
                        "scopes",
                        "created by",
                        "created",
                        "revoked",
                    ],
                    &[
                        "/client_id",
                        "/tenant",
                        "/scopes",
                        "/created_by",
                        "/created_at",
                        "/revoked_at",
                    ],
                );
            });
        }
        ClientCommand::Revoke { id } => {
            let revoked = http.delete(&format!("/clients/{}", path(&id))).await?;
            context.print(&revoked, |revoked| {
                output::details(
                    revoked,
                    &[("client id", "/client_id"), ("revoked", "/revoked_at")],
                );
            });
        }
    }
    Ok(())
}
