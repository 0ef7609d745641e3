//! `stella agent …` (alias `agents`): run an agent, make join tokens, and list, show and
//! revoke enrolled agents.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

mod install;

use super::{path, Context};
use crate::output::{self, cell, Format};

/// `stella agent …`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Enrol (first start, with a join token) and stay connected.
    #[command(after_help = stella_agent::logging::LOG_ENV_HELP)]
    Run(stella_agent::RunArgs),
    /// The commands that talk to the API.
    #[command(flatten)]
    Api(AgentApiCommand),
}

/// `stella agent …` but `run`.
#[derive(Debug, Subcommand)]
pub enum AgentApiCommand {
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List agents with their state and last heartbeat.
    List,
    /// Show one agent, by name or id.
    Show {
        /// Name or id.
        agent: String,
    },
    /// Revoke an agent: its stream is closed and its certificate refused from now on.
    Revoke {
        /// Name or id.
        agent: String,
        /// Why (kept with the agent).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete a revoked agent so its name can be used again (its certificate stays
    /// refused). Refused while a target names it.
    #[command(visible_alias = "rm")]
    Delete {
        /// Name or id.
        agent: String,
    },
}

/// `stella agent token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new one-time join token.
    Create {
        /// Lifetime, e.g. `30m`, `2h`.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Print the one command that installs and enrols an agent on a new host: it
        /// fetches the install script and the agent from this server, pinning the API's
        /// TLS key.
        #[arg(long)]
        install: bool,
        /// The server's URL as the new host reaches it [default: `--server`].
        #[arg(long, requires = "install", value_name = "URL")]
        install_server: Option<String>,
    },
}

/// `stella agent …`; `run` is the agent itself and needs no API client (`context`).
pub async fn agent(
    command: AgentCommand,
    context: impl FnOnce() -> anyhow::Result<Context>,
) -> anyhow::Result<()> {
    let command = match command {
        AgentCommand::Run(args) => {
            let shutdown = CancellationToken::new();
            stella_agent::cancel_on_signals(shutdown.clone());
            return stella_agent::run(args.into_config(), shutdown)
                .await
                .context("agent stopped");
        }
        AgentCommand::Api(command) => command,
    };
    let context = context()?;
    let client = &context.client;
    let value = match command {
        AgentApiCommand::Token(TokenCommand::Create {
            ttl,
            install: true,
            install_server,
        }) => {
            let server = install_server.unwrap_or_else(|| client.base().to_owned());
            let server = install::server_url(&server)?;
            // Asked before the token is made, so that a failure leaves no token behind.
            let gateway = client.get("/gateway").await?;
            let pin = gateway
                .get("api_key_pin")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let mut issued = client
                .post(
                    "/agents/join-tokens",
                    json!({ "ttl_seconds": ttl.as_secs() }),
                )
                .await?;
            let token = cell(&issued, "/token");
            let command = install::command(&server, &token, pin.as_deref());
            if let Value::Object(fields) = &mut issued {
                fields.insert("install_command".to_owned(), Value::String(command.clone()));
            }
            context.print(&issued, |issued| {
                println!("{command}");
                context.note(&install::note(
                    &server,
                    pin.is_some(),
                    &cell(issued, "/expires_at"),
                ));
            });
            return Ok(());
        }
        AgentApiCommand::Token(TokenCommand::Create { ttl, .. }) => {
            let issued = client
                .post(
                    "/agents/join-tokens",
                    // Sub-second lifetimes are 0 s: the server refuses them.
                    json!({ "ttl_seconds": ttl.as_secs() }),
                )
                .await?;
            context.print(&issued, |issued| {
                println!("{}", cell(issued, "/token"));
                context.note(&format!(
                    "expires {}; on the new host run:\n  stella agent run --server {} --data-dir /var/lib/stella-agent --join-token <token>",
                    cell(issued, "/expires_at"),
                    client.base()
                ));
            });
            return Ok(());
        }
        AgentApiCommand::List => client.get("/agents").await?,
        AgentApiCommand::Show { agent } => client.get(&format!("/agents/{}", path(&agent))).await?,
        AgentApiCommand::Delete { agent } => {
            client.delete(&format!("/agents/{}", path(&agent))).await?;
            context.deleted("agent", &agent);
            return Ok(());
        }
        AgentApiCommand::Revoke { agent, reason } => {
            client
                .post(
                    &format!("/agents/{}/revoke", path(&agent)),
                    json!({ "reason": reason }),
                )
                .await?
        }
    };
    match (context.format, &value) {
        (Format::Json, _) => output::json(&value),
        (Format::Table, Value::Array(items)) => {
            output::table(&AGENT_COLUMNS, items.iter().map(agent_row).collect());
        }
        (Format::Table, agent) => agent_details(agent),
    }
    Ok(())
}

const AGENT_COLUMNS: [&str; 6] = [
    "name",
    "state",
    "last seen",
    "capabilities",
    "version",
    "id",
];

fn agent_row(agent: &Value) -> Vec<String> {
    vec![
        cell(agent, "/name"),
        cell(agent, "/state"),
        cell(agent, "/last_seen_at"),
        cell(agent, "/capabilities"),
        cell(agent, "/agent_version"),
        cell(agent, "/id"),
    ]
}

fn agent_details(agent: &Value) {
    output::details(
        agent,
        &[
            ("name", "/name"),
            ("id", "/id"),
            ("state", "/state"),
            ("spiffe id", "/spiffe_id"),
            ("version", "/agent_version"),
            ("capabilities", "/capabilities"),
            ("labels", "/labels"),
            ("hostname", "/host/hostname"),
            ("os", "/host/os_name"),
            ("os version", "/host/os_version"),
            ("kernel", "/host/kernel_version"),
            ("arch", "/host/arch"),
            ("cpus", "/host/cpu_count"),
            ("memory bytes", "/host/memory_total_bytes"),
            ("enrolled at", "/enrolled_at"),
            ("last seen", "/last_seen_at"),
            ("cert expires", "/certificate_not_after"),
            ("revoked at", "/revoked_at"),
            ("revoke reason", "/revoke_reason"),
        ],
    );
}
