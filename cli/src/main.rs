//! `stella`: the control plane (`stella server`), the agent (`stella agent run`) and
//! the operator commands, which talk to the REST API.
//!
//! Exit status 0 on success; 1 with a one-line message on stderr when a command fails
//! (a failed deployment included); 2 for a command line clap refuses.
//!
//! Adding an operator command: a module under `commands/` with its clap enum and an
//! `async fn(&Context, …)`, a variant in [`Command`] and a line in [`run`]. It gets the
//! client flags (`--server`, `--token`, `-o`, `--quiet`, `--timeout`) by itself; see
//! [`command`].

mod client;
mod commands;
mod follow;
mod output;
mod progress;
mod server;
mod trust;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use stella_agent::logging;

use commands::{
    agents, audit, completions, decisions, deployments, drift, environments, offline, promote,
    registries, releases, routers, runs, scans, targets, tokens, users, webhooks, Context,
};
use output::Format;

/// Stella: release control plane for container estates without Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "stella", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

/// The flags of every command that talks to the REST API. Accepted before the command
/// (`stella -o json env list`) and anywhere after it (`stella env list -o json`), but
/// not by `server`, `agent run` or `completions`, which are not API clients.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Global options")]
struct ClientArgs {
    /// REST URL of the control plane.
    #[arg(
        long,
        env = "STELLA_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    server: String,
    /// API bearer token.
    #[arg(
        long,
        env = "STELLA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Act in this tenant (sent as `X-StellaOps-Tenant`; the server's `default` tenant
    /// when absent).
    #[arg(long, env = "STELLA_TENANT", value_name = "TENANT")]
    tenant: Option<String>,
    /// Trust only the CA certificates in this PEM file for an `https://` server (default:
    /// the system's roots, else the server's own CA pinned at first use).
    #[arg(long, env = "STELLA_CA_FILE", value_name = "FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Output format: `table` for people, `json` for scripts (one document on stdout).
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        value_name = "FORMAT"
    )]
    output: Format,
    /// Print no progress or notes on stderr, only results and errors.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Give up on a request that has no answer after this long.
    #[arg(
        long,
        env = "STELLA_TIMEOUT",
        default_value = "30s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    timeout: Duration,
}

/// The ids of [`ClientArgs`]' flags.
const CLIENT_ARGS: [&str; 7] = [
    "server", "token", "tenant", "ca_file", "output", "quiet", "timeout",
];

/// Commands that do not talk to the REST API, by path: they get no client flags.
const NOT_CLIENTS: [&[&str]; 3] = [&["server"], &["agent", "run"], &["completions"]];

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    #[command(after_help = logging::LOG_ENV_HELP)]
    Server(server::ServerArgs),
    /// Agents: run one, make join tokens, list, show and revoke enrolled ones.
    #[command(subcommand, visible_alias = "agents")]
    Agent(agents::AgentCommand),
    /// Users, roles and API tokens (admin only).
    #[command(subcommand, visible_alias = "users")]
    User(users::UserCommand),
    /// The user the token belongs to, its roles in the tenant, and its bindings.
    Whoami,
    /// Tenants: create, list, delete (server admins).
    #[command(subcommand, visible_alias = "tenants")]
    Tenant(users::TenantCommand),
    /// Your API tokens: list, create (named, expiring), revoke.
    #[command(subcommand, visible_alias = "tokens")]
    Token(tokens::TokenCommand),
    /// OAuth2 clients (service accounts): create, list, revoke (admin only).
    #[command(subcommand, visible_alias = "clients")]
    Client(tokens::ClientCommand),
    /// Environments and their promotion order.
    #[command(
        subcommand,
        visible_aliases = ["envs", "environment", "environments"]
    )]
    Env(environments::EnvCommand),
    /// Deployment targets.
    #[command(subcommand, visible_alias = "targets")]
    Target(targets::TargetCommand),
    /// Routers (nginx, HAProxy, …) and the weighted routes applied through them.
    #[command(subcommand, visible_alias = "routers")]
    Router(routers::RouterCommand),
    /// Registries and their credentials.
    #[command(subcommand, visible_alias = "registries")]
    Registry(registries::RegistryCommand),
    /// Releases: named, versioned sets of image digests.
    #[command(subcommand, visible_alias = "releases")]
    Release(releases::ReleaseCommand),
    /// Scan reports and VEX documents: import them, show an image's findings.
    #[command(subcommand, visible_alias = "scans")]
    Scan(scans::ScanCommand),
    /// Promote a release to an environment: its gates decide.
    Promote(promote::PromoteArgs),
    /// Promotions: list, show, approve, reject.
    #[command(subcommand, visible_alias = "promotions")]
    Promotion(promote::PromotionCommand),
    /// Signed decision records: show, replay.
    #[command(subcommand, visible_alias = "decisions")]
    Decision(decisions::DecisionCommand),
    /// Evidence packets: export from the server, verify with no server.
    #[command(subcommand)]
    Evidence(decisions::EvidenceCommand),
    /// Offline kits: bundle releases with their images and evidence, verify a kit with
    /// no server, import it into an air-gapped server and registry.
    #[command(subcommand)]
    Offline(offline::OfflineCommand),
    /// Deployments and their logs.
    #[command(subcommand, visible_alias = "deployments")]
    Deployment(deployments::DeploymentCommand),
    /// Redeploy the version deployed before the current one (or the one named).
    Rollback(deployments::RollbackArgs),
    /// Drift between what runs and what was promoted.
    #[command(subcommand)]
    Drift(drift::DriftCommand),
    /// Task packs: simulate one, or start a run of it.
    #[command(subcommand, visible_alias = "packs")]
    Pack(runs::PackCommand),
    /// Task-pack runs: list, show, logs, approve, reject, cancel.
    #[command(subcommand, visible_alias = "runs")]
    Run(runs::RunCommand),
    /// Webhooks: signed deliveries of events to URLs (admin only).
    #[command(subcommand, visible_alias = "webhooks")]
    Webhook(webhooks::WebhookCommand),
    /// Events: promotions, drift, verdicts, unreachable agents; newest first.
    Events(webhooks::EventsArgs),
    /// The tamper-evident audit log of every API change: list, verify (admin only).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Print a shell completion script: `source <(stella completions bash)`.
    Completions(completions::CompletionsArgs),
}

/// The whole command line: the derived one, with [`ClientArgs`] copied as global flags
/// onto every subtree of API commands (clap's own `global` would put them on `server`
/// and `agent run` too, whose `--server` means something else).
pub fn command() -> clap::Command {
    let root = Cli::command();
    let client_args: Vec<Arg> = root
        .get_arguments()
        .filter(|arg| CLIENT_ARGS.contains(&arg.get_id().as_str()))
        .map(|arg| arg.clone().global(true))
        .collect();
    root.mut_subcommands(|sub| {
        let path = [sub.get_name().to_owned()];
        with_client_args(sub, &client_args, &path)
    })
}

fn with_client_args(sub: clap::Command, args: &[Arg], path: &[String]) -> clap::Command {
    let excluded = |prefix_only: bool| {
        NOT_CLIENTS.iter().any(|not_client| {
            let matches_prefix =
                not_client.len() >= path.len() && not_client.iter().zip(path).all(|(a, b)| a == b);
            matches_prefix && (prefix_only || not_client.len() == path.len())
        })
    };
    if excluded(false) {
        return sub;
    }
    if excluded(true) {
        // Some command below is not a client: give the flags to each child instead.
        return sub.mut_subcommands(|child| {
            let mut child_path = path.to_vec();
            child_path.push(child.get_name().to_owned());
            with_client_args(child, args, &child_path)
        });
    }
    sub.args(args.iter().cloned())
}

/// A client flag given before a command that is not an API client (`stella -o json
/// server`): refused like any unknown flag rather than silently ignored.
fn misplaced_client_flag(cli: &Cli, matches: &clap::ArgMatches) -> Option<clap::Error> {
    let name = match &cli.command {
        Command::Server(_) => "server",
        Command::Agent(agents::AgentCommand::Run(_)) => "agent run",
        Command::Completions(_) => "completions",
        _ => return None,
    };
    let given = CLIENT_ARGS
        .iter()
        .find(|id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine))?;
    let flag = match *given {
        "output" => "-o/--output".to_owned(),
        other => format!("--{other}"),
    };
    Some(command().error(
        clap::error::ErrorKind::ArgumentConflict,
        format!("{flag} is not an option of `stella {name}`"),
    ))
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.format(&mut command()).exit(),
    };
    if let Some(error) = misplaced_client_flag(&cli, &matches) {
        error.exit();
    }
    match &cli.command {
        Command::Server(args) => logging::init("info", args.log.log_format),
        Command::Agent(agents::AgentCommand::Run(args)) => {
            logging::init("info", args.log.log_format);
        }
        _ => logging::init("warn", logging::LogFormat::Text),
    }
    if matches!(
        cli.command,
        Command::Server(_) | Command::Agent(agents::AgentCommand::Run(_))
    ) {
        raise_fd_limit();
    }
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            // `stella agent run` revoked: a status of its own, so a service manager does
            // not restart it.
            let agent_error = error
                .chain()
                .find_map(|cause| cause.downcast_ref::<stella_agent_core::AgentError>());
            // A promotion that was blocked, rejected or failed: a status per outcome.
            let promotion = error
                .chain()
                .find_map(|cause| cause.downcast_ref::<commands::promote::PromotionOutcome>());
            match (promotion, agent_error) {
                (Some(outcome), _) => ExitCode::from(outcome.status),
                (None, agent_error) => {
                    ExitCode::from(agent_error.map_or(1, stella_agent::exit_status))
                }
            }
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

/// An error and its causes on one line, each cause once: a cause whose text is already
/// in the line (errors that repeat their source) is left out.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client_args = cli.client;
    let context = || Context::new(&client_args);
    match cli.command {
        Command::Server(args) => server::run(args).await,
        Command::Agent(command) => agents::agent(command, context).await,
        Command::User(command) => users::user(&context()?, command).await,
        Command::Whoami => users::whoami(&context()?).await,
        Command::Tenant(command) => users::tenant(&context()?, command).await,
        Command::Token(command) => tokens::token(&context()?, command).await,
        Command::Client(command) => tokens::client(&context()?, command).await,
        Command::Env(command) => environments::env(&context()?, command).await,
        Command::Target(command) => targets::target(&context()?, command).await,
        Command::Router(command) => routers::router(&context()?, command).await,
        Command::Registry(command) => registries::registry(&context()?, command).await,
        Command::Release(command) => releases::release(&context()?, command).await,
        Command::Scan(command) => scans::scan(&context()?, command).await,
        Command::Promote(args) => promote::promote(&context()?, args).await,
        Command::Promotion(command) => promote::promotion(&context()?, command).await,
        Command::Decision(command) => decisions::decision(&context()?, command).await,
        Command::Evidence(command) => decisions::evidence(&context()?, command).await,
        Command::Offline(command) => offline::offline(&context()?, command).await,
        Command::Deployment(command) => deployments::deployment(&context()?, command).await,
        Command::Rollback(args) => deployments::rollback(&context()?, args).await,
        Command::Drift(command) => drift::drift(&context()?, command).await,
        Command::Pack(command) => runs::pack(&context()?, command).await,
        Command::Run(command) => runs::run(&context()?, command).await,
        Command::Webhook(command) => webhooks::webhook(&context()?, command).await,
        Command::Events(args) => webhooks::events(&context()?, args).await,
        Command::Audit(command) => audit::audit(&context()?, command).await,
        Command::Completions(args) => {
            completions::print(&args, command());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = command().try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }

    fn help(path: &[&str]) -> String {
        let mut command = command();
        command.build();
        let mut sub = &mut command;
        for name in path {
            sub = match sub.find_subcommand_mut(name) {
                Some(sub) => sub,
                None => panic!("no subcommand {name}"),
            };
        }
        sub.render_long_help().to_string()
    }

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn client_flags_are_taken_before_and_after_the_command() {
        for args in [
            &[
                "stella",
                "-o",
                "json",
                "--server",
                "http://a:1",
                "env",
                "list",
            ][..],
            &[
                "stella",
                "env",
                "list",
                "-o",
                "json",
                "--server",
                "http://a:1",
            ][..],
            &[
                "stella",
                "env",
                "-o",
                "json",
                "list",
                "--server",
                "http://a:1",
            ][..],
            &[
                "stella",
                "agents",
                "list",
                "--server",
                "http://a:1",
                "-o",
                "json",
            ][..],
            &[
                "stella",
                "agent",
                "token",
                "create",
                "--server",
                "http://a:1",
                "-ojson",
            ][..],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.client.server, "http://a:1", "{args:?}");
            assert_eq!(cli.client.output, Format::Json, "{args:?}");
        }
    }

    #[test]
    fn server_and_agent_run_do_not_take_client_flags() {
        for args in [
            &["stella", "server", "--token", "x"][..],
            &["stella", "server", "-o", "json"][..],
            &["stella", "agent", "run", "--token", "x"][..],
            &["stella", "agent", "run", "-o", "json"][..],
            &["stella", "completions", "bash", "--server", "http://a:1"][..],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
        for args in [
            &["stella", "-o", "json", "server"][..],
            &["stella", "--token", "x", "agent", "run"][..],
        ] {
            let matches = command().try_get_matches_from(args);
            let misplaced = matches.ok().and_then(|matches| {
                let cli = Cli::from_arg_matches(&matches).ok()?;
                misplaced_client_flag(&cli, &matches)
            });
            assert!(misplaced.is_some(), "{args:?} was accepted");
        }
        // `agent run` has a --server of its own.
        match parse(&["stella", "agent", "run", "--server", "http://b:2"]) {
            Ok(Cli {
                command: Command::Agent(agents::AgentCommand::Run(args)),
                ..
            }) => assert_eq!(args.server, "http://b:2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn help_shows_server_defaults_and_no_client_flags() {
        let server = help(&["server"]);
        for expected in [
            "[default: 127.0.0.1:8080]",
            "[default: 0.0.0.0:8443; 127.0.0.1:8443 with --dev]",
            "[default: /var/lib/stella; a temp dir with --dev]",
            "--log-format",
            "STELLA_LOG",
        ] {
            assert!(server.contains(expected), "{expected}:\n{server}");
        }
        for absent in ["--token", "--output", "--timeout", "Global options"] {
            assert!(!server.contains(absent), "{absent}:\n{server}");
        }
        let run = help(&["agent", "run"]);
        assert!(run.contains("--server <URL>"), "{run}");
        assert!(!run.contains("--token"), "{run}");
        let list = help(&["env", "list"]);
        assert!(list.contains("Global options:"), "{list}");
        assert!(list.contains("--server <URL>"), "{list}");
    }

    #[test]
    fn errors_print_each_cause_once() {
        let error = anyhow::anyhow!("connection refused (os error 111)")
            .context("tcp connect error: connection refused (os error 111)")
            .context("agent stopped");
        assert_eq!(
            one_line(&error),
            "agent stopped: tcp connect error: connection refused (os error 111)"
        );
        let error = anyhow::anyhow!("two\nlines").context("outer");
        assert_eq!(one_line(&error), "outer: two lines");
    }
}
