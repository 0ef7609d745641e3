//! `stella-agent`: the agent on its own, for hosts that do not need the `stella` CLI.
//! Same flags as `stella agent run`.

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Runs a Stella agent: enrols with a join token if its data dir holds no identity,
/// then keeps a mutually authenticated session with the control plane.
#[derive(Debug, Parser)]
#[command(name = "stella-agent", version)]
struct Args {
    /// REST URL of the control plane (the gateway is discovered from it).
    #[arg(long, env = "STELLA_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    #[command(flatten)]
    run: stella_agent::RunArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STELLA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let shutdown = CancellationToken::new();
    stella_agent::cancel_on_signals(shutdown.clone());
    stella_agent::run(args.run.into_config(&args.server), shutdown)
        .await
        .context("agent stopped")
}
