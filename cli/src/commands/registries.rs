//! `stella registry …`: registries and their credentials.

use std::io::Read;

use anyhow::{bail, Context as _};
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
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("reading the password from standard input")?;
                let text = text.trim_end_matches(['\n', '\r']).to_owned();
                if text.is_empty() {
                    bail!("no password on standard input");
                }
                Some(text)
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
