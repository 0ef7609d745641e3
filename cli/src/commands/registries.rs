//! `stella registry …`: registries and their credentials.

use clap::Subcommand;
use serde_json::json;

use super::{print, rows, Context};
use crate::output;

/// `stella registry …`
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Add (or replace) a registry and its credentials; the password is stored sealed.
    Add {
        /// `host[:port]`.
        host: String,
        /// Allow plain HTTP.
        #[arg(long)]
        insecure: bool,
        /// User name.
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Read the password from standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
    },
    /// List registries (never with passwords).
    List,
    /// Delete a registry's settings and credentials (refused while a deployment pulls
    /// from it).
    #[command(visible_alias = "rm")]
    Delete {
        /// `host[:port]`.
        host: String,
    },
}

/// `stella registry …`.
pub async fn registry(context: &Context, command: RegistryCommand) -> anyhow::Result<()> {
    let (client, format) = (&context.client, context.format);
    match command {
        RegistryCommand::Add {
            host,
            insecure,
            username,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(super::read_stdin("password")?)
            } else {
                None
            };
            let value = client
                .post("/registries", json!({"host": host, "insecure": insecure, "username": username, "password": password}))
                .await?;
            print(format, &value, |v| {
                output::details(
                    v,
                    &[
                        ("host", "/host"),
                        ("insecure", "/insecure"),
                        ("username", "/username"),
                        ("password", "/has_password"),
                    ],
                );
            });
        }
        RegistryCommand::Delete { host } => {
            client
                .delete(&format!("/registries/{}", super::path(&host)))
                .await?;
            context.deleted("registry", &host);
        }
        RegistryCommand::List => {
            let list = client.get("/registries").await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["host", "insecure", "username", "password"],
                    &["/host", "/insecure", "/username", "/has_password"],
                );
            });
        }
    }
    Ok(())
}
