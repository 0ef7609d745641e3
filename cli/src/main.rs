//! `stella`: the control plane (`stella server`), the agent (`stella agent run`) and
//! the operator commands, which talk to the REST API.
//!
//! Exit status 0 on success; otherwise non-zero with a one-line message on stderr.

mod client;
mod commands;
mod output;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{
    agents, deployments, drift, environments, promote, registries, releases, targets, users,
};
use output::Format;

/// Stella: release control plane for container estates without Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "stella", version, propagate_version = true)]
pub struct Cli {
    /// REST URL of the control plane.
    #[arg(
        long,
        global = true,
        env = "STELLA_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// API bearer token.
    #[arg(long, global = true, env = "STELLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Server(server::ServerArgs),
    /// Run an agent, or make join tokens for new agents.
    #[command(subcommand)]
    Agent(agents::AgentCommand),
    /// Enrolled agents.
    #[command(subcommand)]
    Agents(agents::AgentsCommand),
    /// Users, roles and API tokens (admin only).
    #[command(subcommand)]
    User(users::UserCommand),
    /// Environments and their promotion order.
    #[command(subcommand)]
    Env(environments::EnvCommand),
    /// Deployment targets.
    #[command(subcommand)]
    Target(targets::TargetCommand),
    /// Registries and their credentials.
    #[command(subcommand)]
    Registry(registries::RegistryCommand),
    /// Releases: named, versioned sets of image digests.
    #[command(subcommand)]
    Release(releases::ReleaseCommand),
    /// Promote a release to an environment.
    Promote(promote::PromoteArgs),
    /// Deployments and their logs.
    #[command(subcommand)]
    Deployment(deployments::DeploymentCommand),
    /// Redeploy the version deployed before the current one.
    Rollback(deployments::RollbackArgs),
    /// Drift between what runs and what was promoted.
    #[command(subcommand)]
    Drift(drift::DriftCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let long_running = matches!(
        cli.command,
        Command::Server(_) | Command::Agent(agents::AgentCommand::Run(_))
    );
    init_tracing(if long_running { "info" } else { "warn" });
    if long_running {
        raise_fd_limit();
    }
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A server holds one socket per agent; an agent one per target connection. Raise the
/// soft limit on open files to the hard limit (often 1024 → 524288) so neither runs out.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STELLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // oci-client logs registry token responses (bearer tokens) at debug: never show them.
    let filter = match "oci_client=info".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.output;
    let (server_url, token) = (cli.server, cli.token);
    let client = || client::Client::new(&server_url, token.clone());
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Agent(command) => agents::agent(&server_url, token, format, command).await,
        Command::Agents(command) => agents::agents(&client()?, format, command).await,
        Command::User(command) => users::user(&client()?, format, command).await,
        Command::Env(command) => environments::env(&client()?, format, command).await,
        Command::Target(command) => targets::target(&client()?, format, command).await,
        Command::Registry(command) => registries::registry(&client()?, format, command).await,
        Command::Release(command) => releases::release(&client()?, format, command).await,
        Command::Promote(args) => promote::promote(&client()?, format, args).await,
        Command::Deployment(command) => deployments::deployment(&client()?, format, command).await,
        Command::Rollback(args) => deployments::rollback(&client()?, format, args).await,
        Command::Drift(command) => drift::drift(&client()?, format, command).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
