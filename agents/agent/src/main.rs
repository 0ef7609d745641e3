//! `stella-agent`: the agent on its own, for hosts that do not need the `stella` CLI.
//! Same flags as `stella agent run`.

use std::process::ExitCode;

use clap::Parser;
use stella_agent::logging;
use tokio_util::sync::CancellationToken;

/// Runs a Stella agent: enrols with a join token if its data dir holds no identity,
/// then keeps a mutually authenticated session with the control plane.
#[derive(Debug, Parser)]
#[command(name = "stella-agent", version, after_help = logging::LOG_ENV_HELP)]
struct Args {
    #[command(flatten)]
    run: stella_agent::RunArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    logging::init("info", args.run.log.log_format);
    let shutdown = CancellationToken::new();
    stella_agent::cancel_on_signals(shutdown.clone());
    match stella_agent::run(args.run.into_config(), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the chain without repeats (see `error_chain`).
            eprintln!(
                "error: agent stopped: {}",
                stella_agent_core::error_chain(&error)
            );
            ExitCode::from(stella_agent::exit_status(&error))
        }
    }
}
